
# Copyright (c) turbovec authors

# The resident index (shared_preload_libraries = 'turbovec').
#
# With the library preloaded, the background worker builds a shared-memory
# copy of every turbo index; scans use it while its change counter equals
# the metapage's.  On a table of 20000 32-dimensional rows with a flat
# cosine index and an IVF l2 index (16 lists):
#
#  - turbo_wait_ready() says true, turbo_indexes says ready / 'ready' with
#    resident bytes, and the copy's change counter is the metapage's;
#  - a scan through the copy reads (almost) no index pages, unlike a scan
#    of the extent (EXPLAIN BUFFERS), so the copy really is what answers;
#  - a LIMIT 10 query reads few more than 10 rows from the table;
#  - LIMIT 10 answers through the copy equal the extent's at the default
#    re-rank window, and a sequential scan's with a covering window;
#  - inserts, deletes and VACUUM are mirrored into the copy: it stays ready
#    and current, and answers still equal a sequential scan's;
#  - the worker persists the state into turbovec_index_state.
#
# Then the same data directory restarts without the library: everything
# still works from the index pages, turbo_indexes says ready = true and
# resident_state = 'extent', and turbo_rebuild() raises SQLSTATE 55000.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20250301);

my $dim      = 32;
my $nrows    = 20000;
my %opclass  = (t_cos => '<=>', t_l2 => '<->');
my @indexes  = sort keys %opclass;
my %lists    = (t_l2 => 16);
my $covering = "$ALL_CANDIDATES SET turbovec.probes = 16;";
my $force    = $FORCE_INDEX;

my $node = start_node('resident',
	conf => preload_conf('turbovec.resident_memory = 64MB'));

sub insert_rows
{
	my ($n, $seed) = @_;
	$node->safe_psql('postgres', random_rows_sql('t', $dim, $n, $seed));
}

# The top 10 ids of a query: 'resident' and 'extent' through the index at
# the default re-rank window (and probes), 'covering' through the copy with
# every lane re-ranked and every list probed, 'seq' by a sequential scan.
sub top10
{
	my ($idx, $q, $how) = @_;
	my $sql = top10_sql('t', $opclass{$idx}, $q);
	my %settings = (
		resident => "$force SET turbovec.use_resident = on;",
		extent   => "$force SET turbovec.use_resident = off;",
		covering => "$force SET turbovec.use_resident = on; $covering",
		seq      => $FORCE_SEQ);
	return $node->safe_psql('postgres', "$settings{$how} $sql");
}

# Answers through the copy equal the extent's and a sequential scan's.
sub check_answers
{
	my ($label, $nq) = @_;
	foreach my $idx (@indexes)
	{
		for my $i (1 .. $nq)
		{
			my $q        = random_vector($dim);
			my $resident = top10($idx, $q, 'resident');
			is(scalar(split /,/, $resident), 10,
				"$label: $idx query $i returns 10 rows through the copy");
			is($resident, top10($idx, $q, 'extent'),
				"$label: $idx query $i: copy and extent agree at the default window");
			is(top10($idx, $q, 'covering'), top10($idx, $q, 'seq'),
				"$label: $idx query $i: copy with a covering window equals a sequential scan");
		}
	}
}

# The live state of an index's copy: state and whether its counter is the
# metapage's.
sub copy_state
{
	my ($idx) = @_;
	return $node->safe_psql(
		'postgres', qq{
SELECT r.state, r.change_count = i.change_count
FROM turbo_resident_status() r, turbo_index_info('$idx') i
WHERE r.indexrelid = '$idx'::regclass});
}

# Shared buffers an index scan touches, from EXPLAIN (ANALYZE, BUFFERS):
# the index scan node's "Buffers:" line (hits plus reads).
sub scan_buffers
{
	my ($idx, $settings) = @_;
	my $q    = random_vector($dim);
	my $sql  = "SELECT id FROM t ORDER BY v $opclass{$idx} '$q' LIMIT 10";
	my $plan = $node->safe_psql('postgres',
		"$force $settings EXPLAIN (COSTS OFF) $sql");
	like($plan, qr/Index Scan using $idx /, "EXPLAIN uses $idx ($settings)");
	# the index's own buffers: the heap rows fetched are the same either way
	my $out = $node->safe_psql('postgres',
		"$force $settings BEGIN; SELECT count(*) FROM ($sql) s; "
		  . "SELECT pg_stat_get_xact_blocks_fetched('$idx'::regclass); COMMIT;");
	return (split /\n/, $out)[-1];
}

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'turbovec', 'turbovec is preloaded');

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION turbovec;
CREATE TABLE t (id serial PRIMARY KEY, v real[]);
});
insert_rows($nrows, 0.42);
$node->safe_psql(
	'postgres', qq{
CREATE INDEX t_cos ON t USING turbo (v real_cosine_ops);
CREATE INDEX t_l2 ON t USING turbo (v real_l2_ops) WITH (lists = $lists{t_l2});
});

is($node->safe_psql('postgres', 'SELECT turbo_preloaded()'),
	't', 'turbo_preloaded() is true');
foreach my $idx (@indexes)
{
	wait_ready_ok($node, $idx, "turbo_wait_ready($idx) is true");
	is( indexes_row(
			$node, $idx,
			'ready, resident_state, resident_bytes > 0, rows_done = rows_total, dim, lists'),
		"t|ready|t|t|$dim|" . ($lists{$idx} // 0),
		"turbo_indexes: $idx is ready, resident, fully built");
	is(copy_state($idx), 'ready|t', "$idx: the copy's counter is the metapage's");
}

# The copy is what answers: a scan through it touches a handful of index
# buffers (the metapage); the extent scan reads every page.  (Both read the
# table for the rows they return, so the table's buffers say nothing.)
foreach my $idx (@indexes)
{
	my $pages = $node->safe_psql('postgres',
		"SELECT pg_relation_size('$idx') / current_setting('block_size')::int");
	my $resident = scan_buffers($idx, 'SET turbovec.use_resident = on;');
	my $extent   = scan_buffers($idx, 'SET turbovec.use_resident = off;');
	cmp_ok($extent, '>=', $pages / 2,
		"$idx: the extent scan touches many buffers ($extent of $pages index pages)");
	cmp_ok($resident, '<', $extent / 4,
		"$idx: a scan through the copy touches few buffers ($resident vs $extent)");
}

check_answers('after build', 4);

# A LIMIT 10 query through the copy reads from the table only the rows it
# returns and those the refined estimates cannot yet place behind them, not
# batches of 16 and more (a 768-d real[] row is a TOAST fetch, the dearest
# step of a query).  With 100 candidates: at most 25 rows here, where the
# batches read 30-52 (32-d codes leave a wider margin than 768-d ones,
# where about 11 rows are read).
foreach my $idx (@indexes)
{
	my @read;
	for my $i (1 .. 5)
	{
		my $q = random_vector($dim);
		my ($ret, $out, $err) = $node->psql('postgres',
			"$force SET turbovec.use_resident = on; SET turbovec.candidates = 100; "
			  . "SET client_min_messages = debug2; "
			  . top10_sql('t', $opclass{$idx}, $q));
		my $rows = 0;
		$rows += $1 while $err =~ /batch of (\d+) rows read from the table/g;
		push @read, $rows;
	}
	my $most = (sort { $b <=> $a } @read)[0];
	cmp_ok($most, '>=', 10, "$idx: LIMIT 10 through the copy reads at least 10 rows (@read)");
	cmp_ok($most, '<=', 25, "$idx: LIMIT 10 through the copy reads at most 25 rows (@read)");
}

# Writes afterwards are mirrored into the copy, which stays ready.
insert_rows(700, 0.77);
foreach my $idx (@indexes)
{
	is(copy_state($idx), 'ready|t', "after inserts: $idx copy is ready and current");
}
check_answers('after inserts', 2);

$node->safe_psql('postgres', 'DELETE FROM t WHERE id % 7 = 3; VACUUM (INDEX_CLEANUP ON) t;');
foreach my $idx (@indexes)
{
	is(copy_state($idx), 'ready|t',
		"after deletes and VACUUM: $idx copy is ready and current");
	is(index_info($node, $idx, 'live_rows'),
		$node->safe_psql('postgres', 'SELECT count(*) FROM t'),
		"after deletes and VACUUM: $idx live_rows equals the table");
}
check_answers('after deletes and VACUUM', 2);

# Deleted rows never come back through the copy (before VACUUM too).
$node->safe_psql('postgres', 'DELETE FROM t WHERE id % 5 = 1');
foreach my $idx (@indexes)
{
	my $q = random_vector($dim);
	is( $node->safe_psql(
			'postgres',
			"$force $covering SELECT count(*) FROM (SELECT id FROM t "
			  . "ORDER BY v $opclass{$idx} '$q' LIMIT 1000) s WHERE id % 5 = 1"),
		0,
		"after deletes without VACUUM: $idx returns no deleted row");
	is(top10($idx, $q, 'covering'), top10($idx, $q, 'seq'),
		"after deletes without VACUUM: $idx equals a sequential scan");
}

# The worker persists the live state.
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 2 AND bool_and(ready) AND bool_and(ready_since IS NOT NULL)
FROM turbovec_index_state WHERE indexrelid IN ('t_cos'::regclass, 't_l2'::regclass)}),
	'turbovec_index_state shows both indexes ready');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM turbo_indexes WHERE persisted_ready AND ready"),
	2,
	'turbo_indexes shows the persisted state');

# The same cluster without the library.
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->restart;
is($node->safe_psql('postgres', 'SELECT turbo_preloaded()'),
	'f', 'without preload: turbo_preloaded() is false');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(index || ':' || ready || ':' || resident_state "
		  . "|| ':' || resident_bytes, ',' ORDER BY index::text) FROM turbo_indexes"),
	't_cos:true:extent:0,t_l2:true:extent:0',
	'without preload: turbo_indexes says ready, extent');
is($node->safe_psql('postgres', 'SELECT count(*) FROM turbo_resident_status()'),
	0, 'without preload: turbo_resident_status() is empty');
foreach my $idx (@indexes)
{
	is($node->safe_psql('postgres', "SELECT turbo_wait_ready('$idx', 100)"),
		't', "without preload: turbo_wait_ready($idx) is true at once");
	my ($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT turbo_rebuild('$idx')");
	isnt($ret, 0, "without preload: turbo_rebuild($idx) fails");
	like($err, qr/ERROR:  55000: turbovec is not in shared_preload_libraries/,
		"without preload: turbo_rebuild($idx) raises SQLSTATE 55000");
	($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT turbo_snapshot_now('$idx')");
	like($err, qr/ERROR:  55000: /,
		"without preload: turbo_snapshot_now($idx) raises SQLSTATE 55000");
}
insert_rows(300, 0.91);
$node->safe_psql('postgres', 'DELETE FROM t WHERE id % 11 = 4; VACUUM (INDEX_CLEANUP ON) t;');
foreach my $idx (@indexes)
{
	for my $i (1 .. 2)
	{
		my $q = random_vector($dim);
		is(top10($idx, $q, 'covering'), top10($idx, $q, 'seq'),
			"without preload: $idx query $i equals a sequential scan");
	}
	is(index_info($node, $idx, 'live_rows'),
		$node->safe_psql('postgres', 'SELECT count(*) FROM t'),
		"without preload: $idx live_rows equals the table");
}

$node->stop;
done_testing();
