
# Copyright (c) turbovec authors

# A scan of the resident copy does not hold the entry lock while it scores
# (issue 8): it pins the copy (TvResidentPin) and scores without the lock,
# so an insert, which mirrors its row into the copy under that lock while
# it holds the metapage and a data page locked, does not wait for the
# scan, and nor does a second scan, which reads the metapage first.
#
# turbovec.test_scan_delay makes one session's resident scan sleep for a
# few seconds with the copy pinned; meanwhile an INSERT into the same
# index and a second resident scan must both finish, while the first scan
# is still asleep.  Were the lock held across the scoring, the insert would
# wait for the whole sleep, and the second scan behind it.  A scan
# cancelled during the sleep gives its pin back, so a rebuild, which waits
# for the pins of the copy it replaces, is not stuck behind it.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20261203);

my $dim      = 16;
my $delay_ms = 10000;

my $node = start_node('resident_pin',
	conf => preload_conf('turbovec.snapshots = off'));

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE n (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('n', $dim, 3000, 0.52) ]}
CREATE INDEX n_l2 ON n USING turbo (v real_l2_ops);
});
wait_ready_ok($node, 'n_l2', 'n_l2 is ready');

my $q      = random_vector($dim);
my $top10  = top10_sql('n', '<->', $q);
my $expect = $node->safe_psql('postgres', "$FORCE_SEQ $top10");

# The slow scan, in the background; it says when it is done.
my ($in, $out, $err) = ('', '', '');
my $slow = IPC::Run::start(
	[ 'psql', '-XAtq', '-h', $node->host, '-p', $node->port, '-d', 'postgres', '-f', '-' ],
	'<', \$in, '>', \$out, '2>', \$err,
	IPC::Run::timeout(120));
$in .= "SELECT pg_backend_pid();\n";
$slow->pump until $out =~ /^(\d+)\n/;
my $pid = $1;
$in .=
	"SET turbovec.test_scan_delay = '${delay_ms}ms';\n$FORCE_INDEX\n$top10;\nSELECT 'scan done';\n";
my $start = time();
# pump() would wait for output, which comes only after the sleep
while (length $in)
{
	$slow->pump_nb;
	usleep(10_000);
}

# Asleep with the copy pinned (the sleep is a WaitLatch with the
# extension wait event).
my $asleep =
  "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND wait_event = 'Extension'";
sub slow_scan_asleep
{
	return $node->safe_psql('postgres', $asleep) eq 't';
}
ok($node->poll_query_until('postgres', $asleep),
	'the first scan sleeps inside the resident copy');

# An insert into the index, in the background; while it runs, or once it
# is done, a second scan through the copy.  Waits on LWLocks and buffer
# locks cannot be cancelled, so the test times them.
my $quick = $delay_ms / 2000;
my ($ins_out, $ins_err) = ('', '');
my $ins_start = time();
my $insert = IPC::Run::start(
	[
		'psql', '-XAtq', '-h', $node->host, '-p', $node->port, '-d', 'postgres',
		'-c', "INSERT INTO n (v) VALUES ('$q')"
	],
	'>', \$ins_out, '2>', \$ins_err,
	IPC::Run::timeout(120));
usleep(200_000);

my $scan_start = time();
my ($ret, $second, $e) = $node->psql('postgres', "$FORCE_INDEX $top10");
my $scan_took = time() - $scan_start;
is($ret, 0, 'the second scan succeeds') or diag($e);
cmp_ok($scan_took, '<', $quick, 'the second scan does not wait for the first');
ok(slow_scan_asleep(), 'the first scan is still asleep after the second scan');
like($second, qr/^\d+(,\d+){9}$/, 'the second scan answers 10 rows');

$insert->finish;
my $ins_took = time() - $ins_start;
is($ins_err, '', 'the insert succeeds');
cmp_ok($ins_took, '<', $quick, 'the insert does not wait for the scan');
ok(slow_scan_asleep(), 'the first scan is still asleep after the insert');
is(indexes_row($node, 'n_l2', 'ready, resident_state'),
	't|ready', 'the insert is mirrored into the copy');

# The first scan finishes after its sleep, with the rows it saw.
$slow->pump until $out =~ /scan done/;
my $took = time() - $start;
cmp_ok($took, '>=', $delay_ms / 1000 - 0.5, 'the first scan slept');
my ($first) = grep { /,/ } split /\n/, $out;
is($first, $expect, 'the first scan gives the sequential scan\'s answer');
is($err, '', 'the first scan had no error');

# A scan cancelled while it holds the pin gives it back at abort: a
# rebuild, which waits for the pins of the copy it replaces, finishes.
$in .= "$top10;\nSELECT 'cancelled scan done';\n";
while (length $in)
{
	$slow->pump_nb;
	usleep(10_000);
}
ok($node->poll_query_until('postgres', $asleep), 'another scan sleeps in the copy');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
$slow->pump until $out =~ /cancelled scan done/;
like($err, qr/canceling statement due to user request/, 'the scan was cancelled');
# (a leaked pin would hold it forever, uncancellable: give up after 60 s)
my ($rout, $rerr, $timed_out) = ('', '', 0);
my $rret = $node->psql(
	'postgres', "SELECT turbo_rebuild('n_l2')",
	stdout => \$rout, stderr => \$rerr,
	timeout => 60, timed_out => \$timed_out);
ok(!$timed_out && $rret == 0, 'a rebuild after the cancel does not wait for a pin')
  or diag($rerr);
$in .= "\\q\n";
$slow->finish;

done_testing();
