
# Copyright (c) turbovec authors

# Distributed kNN on Citus: a coordinator and two workers on this machine
# (shared_preload_libraries = 'citus,turbovec' everywhere), the committed
# GloVe slice (3,000 100-d base vectors, 50 queries) in a table distributed
# by a tenant column (cat = id % 50) over 4 shards, 2 per worker.
#
#  - CREATE EXTENSION turbovec on the coordinator reaches the workers, and
#    CREATE INDEX ... USING turbo on the distributed table makes one index
#    per shard (flat, then IVF);
#  - the workers' resident copies of shard indexes are built without any
#    Citus setting (Citus hides shards from other processes' catalog
#    queries; the turbovec worker lists indexes with a catalog scan);
#    readiness shows through run_command_on_workers;
#  - ORDER BY v <=> q LIMIT 10 runs as Limit -> Index Scan using the shard's
#    turbo index in each of the 4 tasks, and the coordinator's merge equals
#    the exact top 10 (one local table, sequential scan) for all 50 queries
#    at covering settings; recall@10 at defaults is >= 0.95;
#  - settings reach the shards with citus.propagate_set_commands = 'local'
#    and SET LOCAL (a plain SET does not), and with ALTER DATABASE ... SET
#    on the coordinator (propagated to the workers, for new sessions):
#    candidates = 1 changes per-shard answers, probes = 1 changes IVF ones;
#  - filtered kNN on the distribution column is one task (Task Count: 1),
#    on another column all tasks, and both return 10 exact rows;
#  - COPY, INSERT, DELETE and VACUUM through the coordinator, and
#    citus_move_shard_placement of a shard between the workers (logical
#    replication over the nodes' unix sockets), keep every row findable
#    through the indexes and every shard index verified clean;
#  - a worker restarted after a checkpoint loads its shard indexes from
#    their .tv snapshots (from_snapshot) and the answers are unchanged;
#  - with pgvector installed, a vector(100) column with turbovec_pgvector
#    gets per-shard turbo index scans with exact answers too.
#
# Citus 13.2.2 supports PostgreSQL 15 to 17: on 18 this test skips, saying
# so.  Elsewhere Citus must be installed (scripts/vendor.sh builds it from
# ../shared/vendor, and the test command runs it first): missing, it fails.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use List::Util qw(sum);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $coord = PostgreSQL::Test::Cluster->new('citus_coord');
my $major = $coord->pg_version->major;
plan skip_all => "Citus 13.2.2 supports PostgreSQL 15 to 17, not $major"
  if $major >= 18;
my $sharedir = $coord->config_data('--sharedir');
if (!-f "$sharedir/extension/citus.control")
{
	fail('Citus is installed (scripts/vendor.sh citus builds it from ../shared/vendor)');
	done_testing();
	exit 0;
}

srand(20251203);

my $conf = qq{
shared_preload_libraries = 'citus,turbovec'
turbovec.worker_naptime = 200ms
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_worker_processes = 32
log_statement = none
};
# citus.local_hostname: how a node reaches itself (shard moves do), by
# default localhost over TCP, where these nodes do not listen.
$coord->init;
$coord->append_conf('postgresql.conf',
	$conf . "citus.shard_count = 4\ncitus.local_hostname = '" . $coord->host . "'\n");
$coord->start;
# Shards of ~750 rows would rather be sorted than scanned through the index
# (its start-up is about candidates x random_page_cost): the workers are
# told to use it, as larger shards would.
my @workers = map { PostgreSQL::Test::Cluster->new("citus_worker$_") } (1, 2);
foreach my $w (@workers)
{
	$w->init;
	$w->append_conf('postgresql.conf',
		$conf . "enable_seqscan = off\ncitus.local_hostname = '" . $w->host . "'\n");
	$w->start;
}
my %worker_of = map { ($_->port => $_) } @workers;

$_->safe_psql('postgres', 'CREATE EXTENSION citus') foreach ($coord, @workers);
$coord->safe_psql('postgres',
	"SELECT citus_set_coordinator_host('" . $coord->host . "', " . $coord->port . ')');
$coord->safe_psql('postgres',
	"SELECT citus_add_node('" . $_->host . "', " . $_->port . ')')
  foreach @workers;
$coord->safe_psql('postgres', 'CREATE EXTENSION turbovec');

# port => result of $sql on each worker (through the coordinator)
sub on_workers
{
	my ($sql) = @_;
	my $out = $coord->safe_psql('postgres', qq{
		SELECT nodeport || ' ' || CASE WHEN success THEN result ELSE 'ERROR ' || result END
		FROM run_command_on_workers(\$rcw\$$sql\$rcw\$) ORDER BY nodeport});
	return { map { split / /, $_, 2 } split /\n/, $out };
}

my $version = $coord->safe_psql('postgres',
	"SELECT extversion FROM pg_extension WHERE extname = 'turbovec'");
is_deeply(
	on_workers("SELECT extversion FROM pg_extension WHERE extname = 'turbovec'"),
	{ map { ($_->port => $version) } @workers },
	'CREATE EXTENSION turbovec on the coordinator creates it on the workers');

# ---------------------------------------------------------------------------
# data: COPY through the coordinator (base rows and queries), then DELETE of
# the queries; the same base rows in a local table for exact answers
# ---------------------------------------------------------------------------
my $tmp = PostgreSQL::Test::Utils::tempdir();
{
	open(my $in,  '<', "$FindBin::RealBin/../sql/data/glove3k.data") or die $!;
	open(my $out, '>', "$tmp/glove.data") or die $!;
	while (my $line = <$in>)
	{
		my ($id) = $line =~ /^(\d+)\t/;
		print $out ($id % 50) . "\t$line";
	}
	close $in;
	close $out;
}
$coord->safe_psql('postgres', qq{
	CREATE TABLE g (cat int, id int, v real[], PRIMARY KEY (id, cat));
	SELECT create_distributed_table('g', 'cat');
	\\copy g FROM '$tmp/glove.data'
	CREATE TABLE g_all (cat int, id int, v real[]);
	\\copy g_all FROM '$tmp/glove.data'
	CREATE TABLE q AS SELECT id, v FROM g_all WHERE id > 3000 ORDER BY id;
	DELETE FROM g WHERE id > 3000;
	DELETE FROM g_all WHERE id > 3000;
	VACUUM ANALYZE g_all;
	VACUUM ANALYZE g;
});
is($coord->safe_psql('postgres', 'SELECT count(*) FROM g'), '3000',
	'3000 rows in the distributed table');
my %placements = map { split /\|/ } split /\n/, $coord->safe_psql('postgres',
	"SELECT nodeport, count(*) FROM citus_shards WHERE table_name = 'g'::regclass GROUP BY 1");
is_deeply(\%placements, { map { ($_->port => 2) } @workers },
	'4 shards, 2 on each worker');

my @qv = split /\n/, $coord->safe_psql('postgres', 'SELECT v FROM q ORDER BY id');
is(scalar @qv, 50, '50 queries');

# Answers to the 50 queries: query number => comma-separated ids in answer
# order.  %opt: table (default g), col (default v), qcast (a cast after the
# query literal), where (a sub giving a WHERE clause for query number n),
# settings (run first, in the same transaction), limit (default 10).
sub answers
{
	my (%opt) = @_;
	my $table = $opt{table} // 'g';
	my $col   = $opt{col}   // 'v';
	my $limit = $opt{limit} // 10;
	my $qcast = $opt{qcast} // '';
	my $sql   = 'BEGIN; ' . ($opt{settings} // '') . "\n";
	foreach my $n (1 .. @qv)
	{
		my $where = $opt{where} ? 'WHERE ' . $opt{where}->($n) : '';
		$sql .= "SELECT 'q$n'; SELECT id FROM $table $where "
		  . "ORDER BY $col <=> '$qv[$n - 1]'$qcast LIMIT $limit;\n";
	}
	$sql .= 'COMMIT;';
	my (%got, $n);
	foreach my $line (split /\n/, $coord->safe_psql('postgres', $sql))
	{
		if ($line =~ /^q(\d+)$/) { $n = $1; $got{$n} = ''; next; }
		$got{$n} .= ($got{$n} eq '' ? '' : ',') . $line;
	}
	return \%got;
}

# the queries $got answers differently from $want
sub mismatches
{
	my ($got, $want) = @_;
	return scalar grep { ($got->{$_} // '') ne $want->{$_} } keys %$want;
}

# mean recall@10 of $got against $want
sub recall
{
	my ($got, $want) = @_;
	my @r;
	foreach my $n (keys %$want)
	{
		my %truth = map { $_ => 1 } split /,/, $want->{$n};
		push @r, scalar(grep { $truth{$_} } split /,/, ($got->{$n} // '')) / 10;
	}
	return sum(@r) / @r;
}

my $propagate = "SET citus.propagate_set_commands = 'local'; ";
my $covering =
  "$propagate SET LOCAL turbovec.candidates = 100000; SET LOCAL turbovec.probes = 64;";
my $exact = answers(table => 'g_all');

# the ids of the shard indexes of $idx on each worker
my $shard_index_sql = sub {
	my ($idx) = @_;
	return "SELECT c.oid FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
	  . "WHERE a.amname = 'turbo' AND c.relname ~ '^${idx}_[0-9]+\$'";
};

# port => "<number of shard indexes of $idx> <all ready>" on each worker.
# With $timeout, one turbo_wait_ready($timeout) per index; without, each
# is asked again every second (every call wakes the worker) for up to two
# minutes, and a diag says when it took more than one round.
sub shard_indexes_ready
{
	my ($idx, $timeout) = @_;
	my $sql = $shard_index_sql->($idx);
	my $ask = sub {
		on_workers("SELECT count(*) || ' ' || coalesce(bool_and(turbo_wait_ready(oid, $_[0])), true) "
			  . "FROM ($sql) s");
	};
	return $ask->($timeout) if defined $timeout;
	my $got;
	foreach my $round (1 .. 120)
	{
		$got = $ask->(1000);
		if (!grep { !/ true$/ } values %$got)
		{
			diag("shard indexes of $idx ready after $round rounds of turbo_wait_ready(1 s)")
			  if $round > 1;
			last;
		}
	}
	return $got;
}

# ---------------------------------------------------------------------------
# flat index
# ---------------------------------------------------------------------------
$coord->safe_psql('postgres', 'CREATE INDEX g_flat ON g USING turbo (v real_cosine_ops)');
my $sql = $shard_index_sql->('g_flat');
is_deeply(on_workers("SELECT count(*) FROM ($sql) s"),
	{ map { ($_->port => 2) } @workers },
	'CREATE INDEX on the distributed table: one turbo index per shard');

# Citus hides shards from the catalog queries of background workers other
# than PostgreSQL's own unless citus.show_shards_for_app_name_prefixes
# matches their application_name; the turbovec worker lists the turbo
# indexes of its database with a catalog scan, so it sees the shard
# indexes without that setting.
is_deeply(shard_indexes_ready('g_flat'),
	{ map { ($_->port => '2 true') } @workers },
	'every shard index gets a ready resident copy, with no Citus setting');
is_deeply(
	on_workers("SELECT count(*) FILTER (WHERE ready AND resident_state = 'ready' "
		  . "AND resident_bytes > 0) FROM turbo_indexes WHERE index::text ~ '^g_flat_[0-9]+\$'"),
	{ map { ($_->port => 2) } @workers },
	'run_command_on_workers shows the resident copies in turbo_indexes');

# per-shard plans
my $plan = $coord->safe_psql('postgres', qq{
	SET citus.explain_all_tasks = on;
	EXPLAIN (COSTS OFF) SELECT id FROM g ORDER BY v <=> '$qv[0]' LIMIT 10});
like($plan, qr/Task Count: 4/, 'EXPLAIN: 4 tasks');
is(scalar(() = $plan =~ /->  Limit\n\s+->  Index Scan using g_flat_\d+ on g_\d+/g), 4,
	'EXPLAIN: each task is Limit -> Index Scan using the shard\'s turbo index');

is(mismatches(answers(settings => $covering), $exact), 0,
	'flat, covering settings: the merged top 10 is the exact top 10 for all 50 queries');
my $flat_default = answers();
my $r = recall($flat_default, $exact);
cmp_ok($r, '>=', 0.95, "flat, defaults: recall\@10 $r >= 0.95");

# Router queries (a filter on the distribution column) are exact at
# covering settings, whatever plan the shard picks.
my $by_cat = sub { 'cat = ' . ($_[0] % 50) };
is(mismatches(answers(where => $by_cat, settings => $covering),
		answers(table => 'g_all', where => $by_cat)),
	0, 'router queries at covering settings: exact');

# Settings reach the shards.  The coordinator re-sorts a multi-shard
# answer on exact distances, so watch router queries instead: one shard's
# answer in the order its index scan gives (enable_sort = off there keeps
# the plan a turbo index scan), which a re-rank window of 1 changes.
my $router = "$propagate SET LOCAL enable_sort = off;";
my $router_default = answers(where => $by_cat, settings => $router);
is(mismatches(answers(where => $by_cat, settings => "$router SET turbovec.candidates = 1;"),
		$router_default),
	0, 'a plain SET turbovec.candidates does not reach the shards');
my $router_c1 = answers(where => $by_cat,
	settings => "$router SET LOCAL turbovec.candidates = 1;");
my $c1_miss = mismatches($router_c1, $router_default);
cmp_ok($c1_miss, '>', 0,
	"propagate_set_commands = 'local' + SET LOCAL turbovec.candidates = 1 does ($c1_miss of 50 answers change)");
$coord->safe_psql('postgres', 'ALTER DATABASE postgres SET turbovec.candidates = 1');
is(mismatches(answers(where => $by_cat, settings => $router), $router_c1), 0,
	'ALTER DATABASE ... SET on the coordinator reaches the workers (new sessions)');
$coord->safe_psql('postgres', 'ALTER DATABASE postgres RESET turbovec.candidates');
is(mismatches(answers(where => $by_cat, settings => $router), $router_default), 0,
	'... and RESET too');

# filtered kNN
$plan = $coord->safe_psql('postgres',
	"EXPLAIN (COSTS OFF) SELECT id FROM g WHERE cat = 7 ORDER BY v <=> '$qv[0]' LIMIT 10");
like($plan, qr/Task Count: 1\n/, 'filter on the distribution column: one task');
$plan = $coord->safe_psql('postgres',
	"EXPLAIN (COSTS OFF) SELECT id FROM g WHERE id % 7 = 0 ORDER BY v <=> '$qv[0]' LIMIT 10");
like($plan, qr/Task Count: 4\n/, 'filter on another column: every task');
my $by_id = sub { 'id % 7 = ' . ($_[0] % 7) };
my $filtered = answers(where => $by_id, settings => $covering);
is(scalar(grep { scalar(split /,/, $filtered->{$_}) == 10 } keys %$filtered), 50,
	'... and every query returns 10 rows');
is(mismatches($filtered, answers(table => 'g_all', where => $by_id)), 0,
	'... the exact ones at covering settings');

# ---------------------------------------------------------------------------
# IVF index
# ---------------------------------------------------------------------------
$coord->safe_psql('postgres', qq{
	DROP INDEX g_flat;
	CREATE INDEX g_ivf ON g USING turbo (v real_cosine_ops) WITH (lists = 8);
});
is_deeply(shard_indexes_ready('g_ivf'), { map { ($_->port => '2 true') } @workers },
	'IVF: one index per shard, all ready')
  or diag explain on_workers("SELECT string_agg(index || ' ' || resident_state "
	  . "|| ' ' || coalesce(rows_done, -1) || '/' || coalesce(rows_total, -1), ', ') FROM turbo_indexes");
is_deeply(
	on_workers("SELECT string_agg(DISTINCT layout || ' ' || lists, ',') FROM turbo_indexes "
		  . "WHERE index::text ~ '^g_ivf_[0-9]+\$'"),
	{ map { ($_->port => 'ivf 8') } @workers },
	'... each with 8 lists trained on its own shard');
$plan = $coord->safe_psql('postgres', qq{
	SET citus.explain_all_tasks = on;
	EXPLAIN (COSTS OFF) SELECT id FROM g ORDER BY v <=> '$qv[0]' LIMIT 10});
is(scalar(() = $plan =~ /->  Limit\n\s+->  Index Scan using g_ivf_\d+ on g_\d+/g), 4,
	'IVF: each task is Limit -> Index Scan using the shard\'s turbo index');
is(mismatches(answers(settings => $covering), $exact), 0,
	'IVF, covering settings: the exact top 10 for all 50 queries');
my $ivf_default = answers();
$r = recall($ivf_default, $exact);
cmp_ok($r, '>=', 0.95, "IVF, defaults: recall\@10 $r >= 0.95");
my $p1_miss = mismatches(answers(settings => "$propagate SET LOCAL turbovec.probes = 1;"),
	$ivf_default);
cmp_ok($p1_miss, '>', 0,
	"SET LOCAL turbovec.probes = 1 reaches the shards ($p1_miss of 50 answers change)");

# ---------------------------------------------------------------------------
# writes through the coordinator
# ---------------------------------------------------------------------------
# every row of g, found through the shard indexes
sub all_found
{
	return $coord->safe_psql('postgres', qq{
		BEGIN; $covering
		SELECT count(*) FROM (SELECT id FROM g ORDER BY v <=> '$qv[0]' LIMIT 100000) s;
		COMMIT;});
}

# problem rows reported by turbo_verify over every shard index
sub verify_shards
{
	my $sql = $shard_index_sql->('g_ivf');
	my %r = %{ on_workers("SELECT count(*) FROM ($sql) s, turbo_verify(s.oid)") };
	return sum(values %r);
}

$coord->safe_psql('postgres', "INSERT INTO g VALUES (1, 5001, '$qv[0]')");
is($coord->safe_psql('postgres',
		"SELECT id FROM g ORDER BY v <=> '$qv[0]' LIMIT 1"),
	'5001', 'a row inserted through the coordinator is found at once');
$coord->safe_psql('postgres', 'DELETE FROM g WHERE id % 10 = 0 OR id = 5001; VACUUM g');
$coord->safe_psql('postgres', 'DELETE FROM g_all WHERE id % 10 = 0');
is(all_found(), '2700', 'after DELETE + VACUUM every remaining row is found through the indexes');
is(verify_shards(), 0, '... every shard index verifies clean');
$exact = answers(table => 'g_all');
my $before_move = answers(settings => $covering);
is(mismatches($before_move, $exact), 0, '... and answers are exact at covering settings');

# ---------------------------------------------------------------------------
# a shard moves from worker 1 to worker 2
# ---------------------------------------------------------------------------
my ($from, $to) = @workers;
my $shard = $coord->safe_psql('postgres',
	"SELECT shardid FROM citus_shards WHERE table_name = 'g'::regclass AND nodeport = "
	  . $from->port . ' ORDER BY shardid LIMIT 1');
$coord->safe_psql('postgres',
	"SELECT citus_move_shard_placement($shard, '"
	  . $from->host . "', " . $from->port . ", '"
	  . $to->host . "', " . $to->port . ')');
is($coord->safe_psql('postgres',
		"SELECT nodeport FROM citus_shards WHERE shardid = $shard"),
	$to->port, "citus_move_shard_placement moved shard $shard to worker 2");
is(shard_indexes_ready('g_ivf')->{ $to->port }, '3 true',
	'worker 2 now has 3 ready shard indexes');
is(all_found(), '2700', 'after the move every row is found through the indexes');
is(verify_shards(), 0, '... every shard index verifies clean');
is(mismatches(answers(settings => $covering), $exact), 0,
	'... and the answers are still exact');

# ---------------------------------------------------------------------------
# a worker restarts from its .tv snapshots
# ---------------------------------------------------------------------------
my $ivf_before = answers();
$to->safe_psql('postgres', 'CHECKPOINT');
# A client session sees shard relations only with
# citus.show_shards_for_app_name_prefixes; poll_query_until would print the
# SET's command tag, so poll with safe_psql (quiet).
my $dumped = '';
foreach my $try (1 .. 120)
{
	$dumped = $to->safe_psql('postgres',
		"SET citus.show_shards_for_app_name_prefixes = '*'; "
		  . "SELECT count(*) FROM turbo_indexes WHERE index::text ~ '^g_ivf_[0-9]+\$' "
		  . 'AND snapshot_time IS NOT NULL');
	last if $dumped eq '3';
	sleep 1;
}
is($dumped, '3', 'worker 2 dumps a snapshot of each shard index after a checkpoint');
$to->restart;
is(shard_indexes_ready('g_ivf')->{ $to->port }, '3 true',
	'after a restart worker 2\'s shard indexes are ready');
is(on_workers("SELECT count(*) FILTER (WHERE from_snapshot) FROM turbo_indexes "
		  . "WHERE index::text ~ '^g_ivf_[0-9]+\$'")->{ $to->port },
	'3', '... loaded from their snapshots');
is(mismatches(answers(), $ivf_before), 0, '... and answer as before the restart');

# ---------------------------------------------------------------------------
# pgvector's vector type through turbovec_pgvector
# ---------------------------------------------------------------------------
if (!-f "$sharedir/extension/vector.control")
{
	fail('pgvector is installed (scripts/vendor.sh pgvector builds it)');
}
else
{
	$coord->safe_psql('postgres', qq{
		CREATE EXTENSION vector;
		CREATE EXTENSION turbovec_pgvector;
		CREATE TABLE gv (cat int, id int, e vector(100), PRIMARY KEY (id, cat));
		SELECT create_distributed_table('gv', 'cat', colocate_with => 'g');
		INSERT INTO gv SELECT cat, id, v::vector(100) FROM g;
		CREATE INDEX gv_cos ON gv USING turbo (e vector_cosine_ops);
	});
	my %gv_placements = map { split /\|/ } split /\n/, $coord->safe_psql('postgres',
		"SELECT nodeport, count(*) || ' true' FROM citus_shards "
		  . "WHERE table_name = 'gv'::regclass GROUP BY 1");
	is_deeply(shard_indexes_ready('gv_cos'), \%gv_placements,
		'pgvector column: one ready turbo index per shard');
	$plan = $coord->safe_psql('postgres', qq{
		SET citus.explain_all_tasks = on;
		EXPLAIN (COSTS OFF) SELECT id FROM gv ORDER BY e <=> '$qv[0]'::real[]::vector LIMIT 10});
	is(scalar(() = $plan =~ /->  Limit\n\s+->  Index Scan using gv_cos_\d+ on gv_\d+/g), 4,
		'pgvector column: each task is Limit -> Index Scan using the shard\'s turbo index');
	my $seq = "$propagate SET LOCAL enable_seqscan = on; SET LOCAL enable_indexscan = off;";
	my %gv = (table => 'gv', col => 'e', qcast => '::real[]::vector');
	is(mismatches(answers(%gv, settings => $covering), answers(%gv, settings => $seq)),
		0, 'pgvector column, covering settings: the answers of a sequential scan');
}

$coord->stop;
$_->stop foreach @workers;
done_testing();
