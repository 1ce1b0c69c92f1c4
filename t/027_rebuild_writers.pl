
# Copyright (c) turbovec authors

# A rebuild of the resident copy never holds writers up for long.
#
# Two pgbench clients insert for 12 s while turbo_rebuild() rebuilds the
# copies of a flat and an IVF index of the table, one after the other,
# each slowed down by turbovec.test_build_delay to about 2 s per pass over
# the table.  A rebuild used to start over whenever the index moved under
# it and to keep the metapage locked through its fourth pass, stalling
# every insert for a whole pass.  Now it reads the table without index
# locks and catches up with the changes: no insert may take a second, the
# rebuilds finish while the inserts go on, and the copies are ready,
# current and equal to the index pages (turbo_verify's resident check),
# and answer like a sequential scan, also for the rows inserted meanwhile.
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

srand(20260313);

my $dim      = 16;
my $nrows    = 10000;
my $delay_ms = 200;
my $force    = $FORCE_INDEX;
my $seq      = $FORCE_SEQ;

my $node = start_node('rebuildwriters', conf => preload_conf('turbovec.snapshots = off'));

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE w (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('w', $dim, $nrows, 0.19) ]}
CREATE INDEX w_l2 ON w USING turbo (v real_l2_ops);
CREATE INDEX w_ivf ON w USING turbo (v real_cosine_ops) WITH (lists = 16);
});
wait_ready_ok($node, 'w_l2',  'w_l2 is ready');
wait_ready_ok($node, 'w_ivf', 'w_ivf is ready');
ok(set_build_delay($node, "${delay_ms}ms"), 'turbovec.test_build_delay is set');

my $tmp   = PostgreSQL::Test::Utils::tempdir;
my $script = insert_script($tmp, 'w', $dim);

my ($pb_out, $pb_err) = ('', '');
my $pgbench = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '2', '-j', '2', '-T', '12', '-R', '400',
		'--random-seed=7', '-f', $script, '-l', "--log-prefix=$tmp/ins",
		'-h', $node->host, '-p', $node->port, 'postgres'
	],
	'>', \$pb_out, '2>', \$pb_err,
	IPC::Run::timeout(120));
usleep(1_000_000);

# Flat, then IVF.
my $secs = 0;
for my $idx ('w_l2', 'w_ivf')
{
	my $start = time();
	my ($ret, $out, $err) = $node->psql('postgres', "SELECT turbo_rebuild('$idx')");
	my $took = time() - $start;
	$secs += $took;
	is($ret, 0, "$idx: turbo_rebuild succeeds under the insert load") or diag($err);
	is($out, 't', "$idx: turbo_rebuild published a copy");
	cmp_ok($took, '>=', 1.5, "$idx: the rebuild took a while (${took}s)");
}

$pgbench->finish;
is($pgbench->result(0), 0, 'pgbench succeeded') or diag($pb_err);
cmp_ok($secs, '<', 10, 'the rebuilds ended while the inserts went on');

# The latency of every insert, from pgbench's per-transaction logs.
my ($n, $max) = (0, 0);
for my $log (glob("$tmp/ins*"))
{
	open my $fh, '<', $log or die "$log: $!";
	while (<$fh>)
	{
		my @f = split;
		$n++;
		$max = $f[2] if $f[2] > $max;
	}
	close $fh;
}
cmp_ok($n, '>', 1000, "pgbench logged its inserts ($n)");
cmp_ok($max / 1e6, '<', 1, "no insert waited a second for the rebuild (max " . ($max / 1e3) . " ms)");

for my $idx ('w_l2', 'w_ivf')
{
	wait_ready_ok($node, $idx, "$idx: the copy is ready");
	is( $node->safe_psql(
			'postgres', qq{
SELECT r.state, r.change_count = i.change_count
FROM turbo_resident_status() r, turbo_index_info('$idx') i
WHERE r.indexrelid = '$idx'::regclass}),
		'ready|t',
		"$idx: the copy is current");
	is(verify_output($node, $idx), '', "$idx: turbo_verify: the copy equals the index pages");
}
for my $i (1 .. 3)
{
	my $q = random_vector($dim);
	for my $op ('<->', '<=>')
	{
		my $sql = top10_sql('w', $op, $q);
		is($node->safe_psql('postgres', "$force $ALL_CANDIDATES SET turbovec.probes = 16; $sql"),
			$node->safe_psql('postgres', "$seq $sql"),
			"query $i ($op) through the copy equals a sequential scan");
	}
}
my $self = $node->safe_psql(
	'postgres', qq{
$force
SELECT count(*) FILTER (WHERE found = s.id), count(*) FROM
	(SELECT id, v FROM w ORDER BY id DESC LIMIT 50) s,
	LATERAL (SELECT u.id AS found FROM w u ORDER BY u.v <-> s.v LIMIT 1) f});
my ($found, $total) = split /\|/, $self;
is($found, $total, "the $total newest rows (inserted during the rebuild) find themselves");

$node->stop;
done_testing();
