
# Copyright (c) turbovec authors

# A .tv snapshot is loaded only when it describes the index as it is, not
# merely when the change counters match.
#
#   1. A dump flushes WAL up to the copy's LSN first: with
#      synchronous_commit = off and a lazy WAL writer, the flush position
#      after turbo_snapshot_now() is at least the snapshot's LSN, so no dump
#      ever describes WAL a crash could still lose.
#   2. A snapshot whose counter matches but whose stream differs from the
#      index pages (a norm changed, CRCs re-sealed) is refused with a
#      WARNING and the copy rebuilt; so is one whose LSN is older than the
#      metapage's.
#   3. Unlogged indexes are never dumped.  A crash resets one from its init
#      fork; new rows climb its counter back to the pre-crash value; at the
#      next start the copy comes from the index, not from a file (not even
#      one an older release left there), and the pre-crash rows never come
#      back in answers.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20261204);

my $dim  = 16;
my $node = start_node('currency',
	conf => preload_conf('wal_writer_delay = 10000ms', 'restart_after_crash = on'));

my @fields = qw(magic version header_bytes dboid indexoid relfilenode dim bits
  metric lists list_area block_bytes reserved seed lsn change_count nslots
  live stream_bytes vector_bytes body_crc header_crc);
my $layout = 'a8 V12 Q<7 V2';

# $bytes with $edit applied to its (header hash, stream, vectors), re-sealed
sub edited
{
	my ($bytes, $edit) = @_;
	my %h;
	@h{@fields} = unpack($layout, substr($bytes, 0, 120));
	my $stream  = substr($bytes, 120, $h{stream_bytes});
	my $vectors = substr($bytes, 120 + $h{stream_bytes});
	$edit->(\%h, \$stream);
	$h{body_crc}   = crc32c($stream, $vectors);
	$h{header_crc} = 0;
	$h{header_crc} = crc32c(pack($layout, @h{@fields}));
	return pack($layout, @h{@fields}) . $stream . $vectors;
}

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE s (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('s', $dim, 2000, 0.3) ]}
CREATE INDEX s_l2 ON s USING turbo (v real_l2_ops);
CREATE UNLOGGED TABLE u (id serial PRIMARY KEY, v real[]);
CREATE INDEX u_l2 ON u USING turbo (v real_l2_ops);
});
my $dboid = database_oid($node, 'postgres');
my %file = map {
	$_ => $node->data_dir . '/' . snapshot_rel($dboid, index_oid($node, $_))
} qw(s_l2 u_l2);
wait_ready_ok($node, 's_l2', 's_l2 is ready');

# 1. WAL is flushed up to the dumped LSN
my ($bytes, $flush) = grep { /^\d/ } split(
	/\n/,
	$node->safe_psql(
		'postgres', qq{
SET synchronous_commit = off;
@{[ random_rows_sql('s', $dim, 50, 0.4) ]}
SELECT turbo_snapshot_now('s_l2');
SELECT pg_current_wal_flush_lsn() - '0/0';
}));
ok($bytes > 0, 'turbo_snapshot_now wrote s_l2');
my (undef, $header) = read_header($file{s_l2});
my %h;
@h{@fields} = unpack($layout, $header);
cmp_ok($flush, '>=', $h{lsn},
	'WAL is flushed up to the LSN of the dumped copy');

# 2. counter matches, contents do not
my @queries = map { random_vector($dim) } 1 .. 3;
my $settings = "$FORCE_INDEX $ALL_CANDIDATES";

sub same_answers
{
	my ($label) = @_;
	foreach my $q (@queries)
	{
		same_as_seq_scan($node, $settings, top10_sql('s', '<->', $q),
			"$label: s_l2 answers like a sequential scan");
	}
}

$node->stop;
my $good = read_bytes($file{s_l2});
my @cases = (
	[
		'a norm changed',
		sub {
			my ($h, $stream) = @_;
			my $at = 16 + 32 * 6 + 4 * 3;    # block 0, lane 3's norm
			substr($$stream, $at, 4) = pack('f', unpack('f', substr($$stream, $at, 4)) * 2 + 1);
		},
		qr/its stream differs from the index's \(slot 3 differs\)/
	],
	[
		'a TID changed',
		sub {
			my ($h, $stream) = @_;
			my $b = int(($h->{nslots} - 1) / 32);
			my $at = $b * $h->{block_bytes} + 16;    # last block, lane 0's TID
			substr($$stream, $at + 4, 2) = pack('v', unpack('v', substr($$stream, $at + 4, 2)) + 1);
		},
		qr/its stream differs from the index's \(slot \d+ differs\)/
	],
	[
		'an LSN older than the metapage\'s',
		sub { $_[0]->{lsn} = 1 },
		qr/stale: LSN 0\/1, expected at least/
	],);
foreach my $case (@cases)
{
	my ($label, $edit, $reason) = @$case;
	write_bytes($file{s_l2}, edited($good, $edit));
	my $offset = -s $node->logfile;
	$node->start;
	ok(log_has($node, qr/WARNING:.*snapshot ".*" not used: $reason/, $offset),
		"$label: the snapshot is refused with a WARNING");
	wait_ready_ok($node, 's_l2', "$label: s_l2 is ready");
	is(indexes_row($node, 's_l2', 'from_snapshot'), 'f', "$label: the copy was rebuilt");
	unlike(slurp_file($node->logfile, $offset), qr/loaded snapshot/,
		"$label: nothing was loaded");
	same_answers($label);
	$node->stop;
}

# the good file still loads (the checks accept a current snapshot)
write_bytes($file{s_l2}, $good);
my $offset = -s $node->logfile;
$node->start;
ok(log_has($node, qr/turbovec loaded snapshot ".*" for index "s_l2"/, $offset),
	'the unchanged snapshot is loaded');
same_answers('loaded');

# 3. unlogged.  A first crash resets u_l2 to its init fork, so both runs
# below start from the same counter.  The first run's rows are far from the
# second's, so stale vectors would show in answers.
$node->stop('immediate');
$node->start;
my $far = "SELECT setseed(0.6); INSERT INTO u (v) SELECT (SELECT array_agg(
	(CASE WHEN j = 1 THEN 100 ELSE 0 END + random())::real)
	FROM generate_series(1, $dim) j WHERE i > 0) FROM generate_series(1, 300) i;";
$node->safe_psql('postgres', $far);
wait_ready_ok($node, 'u_l2', 'u_l2 is ready');
my $cc = index_info($node, 'u_l2', 'change_count');
is($node->safe_psql('postgres', "SELECT turbo_snapshot_now('u_l2')"),
	'0', 'turbo_snapshot_now writes nothing for an unlogged index');
$node->safe_psql('postgres', 'CHECKPOINT');
usleep(1_000_000);
ok(!-e $file{u_l2}, 'no snapshot file for the unlogged index');
# (a file from a release that wrote them would be here now)
my $old = -e $file{u_l2} ? read_bytes($file{u_l2}) : undef;

$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', 'SELECT count(*) FROM u'), '0',
	'the crash emptied the unlogged table');
$node->safe_psql('postgres', random_rows_sql('u', $dim, 300, 0.7));
is(index_info($node, 'u_l2', 'change_count, slots'), "$cc|300",
	'the counter and slot count climbed back to their pre-crash values');
$node->stop;
write_bytes($file{u_l2}, $old) if defined $old;
$offset = -s $node->logfile;
$node->start;
wait_ready_ok($node, 'u_l2', 'u_l2 is ready after the restart');
is(indexes_row($node, 'u_l2', 'from_snapshot'), 'f',
	'the copy of the unlogged index did not come from a file');
unlike(slurp_file($node->logfile, $offset), qr/loaded snapshot "[^"]*" for index "u_l2"/,
	'no snapshot was loaded for u_l2');
my $q = '{' . join(',', 100, (0) x ($dim - 1)) . '}';
foreach my $sql (top10_sql('u', '<->', $q), top10_sql('u', '<->', random_vector($dim)))
{
	same_as_seq_scan($node, $FORCE_INDEX, $sql,
		'u_l2 answers like a sequential scan, no pre-crash rows');
}
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no crash');

$node->stop;
done_testing();
