
# Copyright (c) turbovec authors

# .tv snapshots across a restart.
#
# After a checkpoint the worker dumps every ready resident copy to
# $PGDATA/pgsql_tmp_turbovec/<dboid>_<indexoid>.tv.  At the next start it
# loads a whole and current snapshot instead of rebuilding, and says so in
# the log.  On a table of 20000 32-dimensional rows with a flat l2 index and
# an IVF cosine index (16 lists):
#
#  - CHECKPOINT makes both snapshots appear (turbo_indexes.snapshot_time,
#    files of snapshot_bytes bytes with the right magic and identity);
#  - after a restart the log names each loaded file and its slot count, the
#    copies are ready with from_snapshot = true, no snapshot is refused,
#    and LIMIT 10 answers are exactly those from before the restart (at the
#    default re-rank window too) and equal a sequential scan's;
#  - the first query after ready is not slower than twice the median of
#    the next 20 (no lazy loading behind "ready");
#  - with the l2 index's file removed while the server is down, the next
#    start rebuilds it (no "loaded snapshot" line for it, from_snapshot =
#    false, no WARNING: a missing file is normal) while the other index
#    still loads its file, and the answers are unchanged.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use List::Util qw(sum);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20250302);

my $dim      = 32;
my %opclass  = (s_l2 => '<->', s_cos => '<=>');
my @indexes  = sort keys %opclass;
my $force    = $FORCE_INDEX;
my $covering = "$ALL_CANDIDATES SET turbovec.probes = 16;";

my $node = start_node('snap', conf => preload_conf());

sub wait_ready
{
	my ($label) = @_;
	foreach my $idx (@indexes, 'w_l2')
	{
		wait_ready_ok($node, $idx, "$label: $idx is ready");
	}
}

# LIMIT 10 ids of each fixed query through each index, at the default window
# and at a covering one, plus a sequential scan's.
my %queries = map { $_ => [ map { random_vector($dim) } 1 .. 4 ] } @indexes;

sub answers
{
	my %got;
	foreach my $idx (@indexes)
	{
		foreach my $i (0 .. $#{ $queries{$idx} })
		{
			my $sql = top10_sql('s', $opclass{$idx}, $queries{$idx}[$i]);
			$got{"$idx default $i"}  = $node->safe_psql('postgres', "$force $sql");
			$got{"$idx covering $i"} = $node->safe_psql('postgres', "$force $covering $sql");
			$got{"$idx seq $i"}      = $node->safe_psql('postgres', "$FORCE_SEQ $sql");
		}
	}
	return \%got;
}

sub check_answers
{
	my ($label, $before) = @_;
	my $now = answers();
	foreach my $key (sort keys %$before)
	{
		is($now->{$key}, $before->{$key}, "$label: $key answer as before the restart");
	}
}

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE s (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('s', $dim, 20000, 0.31) ]}
CREATE INDEX s_l2 ON s USING turbo (v real_l2_ops);
CREATE INDEX s_cos ON s USING turbo (v real_cosine_ops) WITH (lists = 16);
-- a small index the timed session touches first, so that what a backend
-- does once (attaching the shared area) is not charged to the first query
CREATE TABLE w (id int, v real[]);
INSERT INTO w SELECT i, array_fill(i::real, ARRAY[$dim]) FROM generate_series(1, 100) i;
CREATE INDEX w_l2 ON w USING turbo (v real_l2_ops);
});
wait_ready('after build');

my $dboid = database_oid($node, 'postgres');
my %oid   = map { $_ => index_oid($node, $_) } @indexes;
my %rel   = map { $_ => snapshot_rel($dboid, $oid{$_}) } @indexes;
my %file  = map { $_ => $node->data_dir . "/$rel{$_}" } @indexes;

my $before = answers();
foreach my $idx (@indexes)
{
	foreach my $i (0 .. $#{ $queries{$idx} })
	{
		is($before->{"$idx covering $i"}, $before->{"$idx seq $i"},
			"before the restart: $idx query $i equals a sequential scan");
	}
}

# A checkpoint makes the worker dump both copies.
$node->safe_psql('postgres', 'CHECKPOINT');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 2 FROM turbo_indexes WHERE snapshot_time IS NOT NULL "
		  . "AND index IN ('s_l2'::regclass, 's_cos'::regclass)"),
	'after CHECKPOINT both indexes have a snapshot');
foreach my $idx (@indexes)
{
	ok(-f $file{$idx}, "$idx: snapshot file $rel{$idx} exists");
	is(-s $file{$idx}, indexes_row($node, $idx, 'snapshot_bytes'),
		"$idx: the file has snapshot_bytes bytes");
	my ($n, $hdr) = read_header($file{$idx});
	is($n, 120, "$idx: the file has a whole header");
	my ($magic, $version, $hbytes, $db, $ix, $relfilenode, $d) = unpack('a8 V7', $hdr);
	is($magic, "TURBOTV\x01", "$idx: magic");
	is("$version $hbytes $db $ix $d", "2 120 $dboid $oid{$idx} $dim",
		"$idx: version, header size, database, index and dimension");
	is($relfilenode, $node->safe_psql('postgres', "SELECT pg_relation_filenode('$idx')"),
		"$idx: relfilenode");
}
ok(!-e "$file{s_l2}.tmp", 'no temporary file is left behind');

# Restart: both snapshots are loaded.
my $offset = -s $node->logfile;
$node->restart;
foreach my $idx (@indexes)
{
	my $slots = $node->safe_psql('postgres', "SELECT slots FROM turbo_index_info('$idx')");
	ok( $node->wait_for_log(
			qr/LOG:  turbovec loaded snapshot "\Q$rel{$idx}\E" for index "$idx" \($slots slots\)/,
			$offset),
		"after restart: the log says $idx was loaded from $rel{$idx} ($slots slots)");
}

# The first query after ready against the next 20.  The timings are
# EXPLAIN (ANALYZE, TIMING OFF)'s Execution Time: measured by the server
# around the executor only, so neither the client, the socket, connection
# start-up nor planning (catalog caches) adds noise, which on a busy machine
# dwarfs a scan of well under a millisecond; TIMING OFF keeps per-row clock
# reads out.  Every run is the same query vector, so the same work, and each
# of the 21 runs is the first scan of s in a new session, preceded there by
# a scan of the small index w: a backend's first touch of the shared copy
# (page faults mapping the area) costs every new session the same, so the
# first query after ready is compared with like, and only what the first
# one alone would pay (a copy loaded lazily behind "ready", a rebuild) can
# make it slower.  Client-side wall time (Time::HiRes) was rejected: the
# connection and round trips cost more than the scan.  The bound is twice
# the median of the next 20: a median is not moved by the few slow runs
# that the machine's noise causes.
# A machine's noise can still hit the one first run: the measurement is
# taken after up to three restarts, and the bound must hold after one of
# them (a first query that always pays for something fails all three).
wait_ready_ok($node, 's_l2', 'after restart: s_l2 is ready');
{
	my $q    = random_vector($dim);
	my $sql  = "$force SELECT id FROM w ORDER BY v <-> '$q' LIMIT 1;\n"
	  . "$force EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) "
	  . "SELECT id FROM s ORDER BY v <-> '$q' LIMIT 10;\n";
	my ($plan, @ms, $first, $median, @sorted);
	for my $attempt (1 .. 3)
	{
		if ($attempt > 1)
		{
			$node->restart;
			$node->safe_psql('postgres', "SELECT turbo_wait_ready('s_l2', 60000)");
		}
		@ms = ();
		for my $run (0 .. 20)
		{
			my $out = $node->safe_psql('postgres', $sql);
			$plan = $out if $run == 0;
			push @ms, $out =~ /Execution Time: ([0-9.]+) ms/ ? $1 : 'none';
		}
		last if grep { $_ eq 'none' } @ms;
		$first  = shift @ms;
		@sorted = sort { $a <=> $b } @ms;
		$median = ($sorted[9] + $sorted[10]) / 2;
		diag(sprintf('attempt %d: first %.3f ms, next 20: median %.3f, min %.3f, max %.3f',
			$attempt, $first, $median, $sorted[0], $sorted[-1]));
		last if $first <= 2 * $median;
	}
	like($plan, qr/Index Scan using s_l2 /, 'timed runs use s_l2');
	is(scalar(grep { $_ eq 'none' } @ms), 0, 'every timed run reports its execution time');
	cmp_ok($first, '<=', 2 * $median,
		"first query after ready ($first ms) within twice the median of the next 20 ($median ms)");
}
wait_ready('after restart');
foreach my $idx (@indexes)
{
	is(indexes_row($node, $idx, 'ready, resident_state, from_snapshot'),
		't|ready|t', "after restart: $idx is ready from its snapshot");
}
check_answers('after restart', $before);
my $log = slurp_file($node->logfile, $offset);
unlike($log, qr/not used/, 'after restart: no snapshot was refused');

# The l2 index's file removed while the server is down: a rebuild.
$node->stop;
unlink $file{s_l2} or die "unlink $file{s_l2}: $!";
$offset = -s $node->logfile;
$node->start;
ok( $node->wait_for_log(
		qr/LOG:  turbovec loaded snapshot "\Q$rel{s_cos}\E" for index "s_cos"/, $offset),
	'without the l2 file: s_cos still loads its snapshot');
wait_ready('without the l2 file');
is(indexes_row($node, 's_l2', 'ready, resident_state, from_snapshot'),
	't|ready|f', 'without the l2 file: s_l2 is ready, rebuilt');
is(indexes_row($node, 's_cos', 'from_snapshot'),
	't', 'without the l2 file: s_cos is from its snapshot');
check_answers('without the l2 file', $before);
$log = slurp_file($node->logfile, $offset);
unlike($log, qr/loaded snapshot "\Q$rel{s_l2}\E"/, 'without the l2 file: no snapshot loaded for s_l2');
unlike($log, qr/WARNING/, 'without the l2 file: no WARNING');

$node->stop;
done_testing();
