
# Copyright (c) turbovec authors

# Distributed kNN over postgres_fdw: a partitioned table on a coordinator
# whose two hash partitions are foreign tables on two other servers, each
# with its own turbo index (flat on one, IVF on the other), over the
# committed GloVe slice (3,000 100-d base vectors, 50 queries).  The servers
# have extensions 'turbovec' (so <=> is shippable) and async_capable 'true'.
#
#  - ORDER BY v <=> q LIMIT k on the parent runs as Limit -> Merge Append of
#    one Foreign Scan per partition whose Remote SQL carries the ORDER BY,
#    and each remote answers it with its turbo index (auto_explain on the
#    remotes); the same holds with the query vector as a parameter in a
#    generic plan ($1::real[] in the Remote SQL);
#  - the per-partition form (UNION ALL of one ORDER BY ... LIMIT k subquery
#    per foreign table) ships ORDER BY ... LIMIT k in each Remote SQL, and
#    with a Sort on top the remote scans run asynchronously (Async Foreign
#    Scan under Append);
#  - with candidates and probes covering every row on the remotes, both
#    forms answer all 50 queries exactly like one table holding the same
#    rows on one node;
#  - settings do not travel: SET turbovec.candidates on the coordinator
#    leaves the remote answers unchanged; the server option
#    options '-c turbovec.candidates=...' (libpq options, which postgres_fdw
#    accepts as a server option) and ALTER DATABASE ... SET on a remote do
#    change them;
#  - a row inserted through the coordinator is found at once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $data = "$FindBin::RealBin/../sql/data/glove3k.data";

# Two remotes preloading turbovec, with auto_explain loadable per session.
# On 1,500 rows a sort is cheaper than the index's start-up (about the index
# pages plus candidates x random_page_cost) and the planner rightly sorts;
# from a few thousand rows per shard up it picks the index.  The remotes
# here are forced to use it, as a larger shard would.
my @shards = map {
	start_node("fdw_shard$_",
		conf => preload_conf(
			"session_preload_libraries = 'auto_explain'",
			'enable_seqscan = off'))
} (1, 2);
my $coord = start_node('fdw_coord');

my %index_options = (1 => '', 2 => 'WITH (lists = 16)');
foreach my $i (1, 2)
{
	$shards[ $i - 1 ]->safe_psql('postgres', qq{
		CREATE EXTENSION turbovec;
		CREATE TABLE g (id int PRIMARY KEY, v real[]);
		CREATE INDEX g_v ON g USING turbo (v real_cosine_ops) $index_options{$i};
	});
}

# The single-table reference (no index: always an exact scan) and the
# queries, on the coordinator; then the partitioned table over the remotes.
$coord->safe_psql('postgres', qq{
	CREATE EXTENSION turbovec;
	CREATE EXTENSION postgres_fdw;
	CREATE TABLE g_all (id int PRIMARY KEY, v real[]);
	\\copy g_all FROM '$data'
	CREATE TABLE q AS SELECT id, v FROM g_all WHERE id > 3000;
	DELETE FROM g_all WHERE id > 3000;
	CREATE TABLE g (id int, v real[]) PARTITION BY HASH (id);
});
foreach my $i (1, 2)
{
	my $shard = $shards[ $i - 1 ];
	my ($host, $port) = ($shard->host, $shard->port);
	my $r = $i - 1;
	# fdw_tuple_cost as PostgreSQL 17's default (0.2; 15's is 0.01), which
	# makes a single foreign table's ORDER BY ... LIMIT ship whole.
	$coord->safe_psql('postgres', qq{
		CREATE SERVER s$i FOREIGN DATA WRAPPER postgres_fdw
			OPTIONS (host '$host', port '$port', dbname 'postgres',
					 extensions 'turbovec', async_capable 'true',
					 fdw_tuple_cost '0.2', batch_size '500');
		CREATE USER MAPPING FOR CURRENT_USER SERVER s$i;
		CREATE FOREIGN TABLE g_p$i PARTITION OF g
			FOR VALUES WITH (MODULUS 2, REMAINDER $r)
			SERVER s$i OPTIONS (table_name 'g');
	});
}
$coord->safe_psql('postgres', 'INSERT INTO g SELECT * FROM g_all; ANALYZE g_all, q');
$_->safe_psql('postgres', 'ANALYZE g') foreach @shards;

my @counts = map { $_->safe_psql('postgres', 'SELECT count(*) FROM g') } @shards;
ok($counts[0] > 1000 && $counts[1] > 1000 && $counts[0] + $counts[1] == 3000,
	"the rows are spread over both remotes (@counts)");
wait_ready_ok($shards[$_], 'g_v', "remote " . ($_ + 1) . ": index ready") for (0, 1);

my $q1 = $coord->safe_psql('postgres', 'SELECT v FROM q ORDER BY id LIMIT 1');
my $parent_sql = "SELECT id FROM g ORDER BY v <=> '$q1' LIMIT 10";
# the per-partition form: each foreign table ordered and limited on its
# own, merged by the coordinator ($order is the outer ORDER BY expression)
sub per_partition_sql
{
	my ($qv, $order) = @_;
	return "SELECT id FROM ("
	  . join(' UNION ALL ',
		map { "(SELECT id, v <=> $qv AS d FROM g_p$_ ORDER BY 2 LIMIT 10)" } (1, 2))
	  . ") u ORDER BY $order LIMIT 10";
}

# ---------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------
my $plan = $coord->safe_psql('postgres', "EXPLAIN (VERBOSE, COSTS OFF) $parent_sql");
like($plan, qr/Limit\n\s+Output:[^\n]*\n\s+->  Merge Append/,
	'parent: Limit -> Merge Append of the partitions');
foreach my $i (1, 2)
{
	like($plan,
		qr/Foreign Scan on public\.g_p$i .*?Remote SQL: SELECT id, v FROM public\.g ORDER BY \(v OPERATOR\(public\.<=>\) '\{[^}]+\}'(?:::real\[\])?\) ASC NULLS LAST/s,
		"parent: the ORDER BY ships to remote $i");
}

# what the remotes run: auto_explain on the fdw sessions only
$coord->safe_psql('postgres',
	"ALTER SERVER s$_ OPTIONS (ADD options '-c auto_explain.log_min_duration=0')")
  for (1, 2);
my @log_offsets = map { -s $_->logfile } @shards;
$coord->safe_psql('postgres', $parent_sql);
foreach my $i (0, 1)
{
	my $log = slurp_file($shards[$i]->logfile, $log_offsets[$i]);
	like($log, qr/Index Scan using g_v on (?:public\.)?g/,
		'remote ' . ($i + 1) . ': the shipped ORDER BY runs as a turbo index scan');
}
$coord->safe_psql('postgres', "ALTER SERVER s$_ OPTIONS (DROP options)") for (1, 2);

# the query vector as a parameter of a generic plan still ships
$plan = $coord->safe_psql('postgres', qq{
	SET plan_cache_mode = force_generic_plan;
	PREPARE knn(real[]) AS SELECT id FROM g ORDER BY v <=> \$1 LIMIT 10;
	EXPLAIN (VERBOSE, COSTS OFF) EXECUTE knn('$q1');
});
is(scalar(() = $plan =~
	  /Remote SQL: SELECT id, v FROM public\.g ORDER BY \(v OPERATOR\(public\.<=>\) \$1::real\[\]\) ASC NULLS LAST/g),
	2, 'generic plan: the parameter ships in both Remote SQLs');

# the per-partition form ships ORDER BY ... LIMIT whole
my $shipped_limit =
  qr/Remote SQL: SELECT id, v FROM public\.g ORDER BY \(v OPERATOR\(public\.<=>\) '\{[^}]+\}'(?:::real\[\])?\) ASC NULLS LAST LIMIT 10::bigint/;
$plan = $coord->safe_psql('postgres',
	"EXPLAIN (VERBOSE, COSTS OFF) " . per_partition_sql("'$q1'", 'd'));
is(scalar(() = $plan =~ /$shipped_limit/g), 2,
	'per-partition form: ORDER BY ... LIMIT ships to both remotes');
$plan = $coord->safe_psql('postgres',
	"EXPLAIN (VERBOSE, COSTS OFF) " . per_partition_sql("'$q1'", 'd + 0'));
is(scalar(() = $plan =~ /Async Foreign Scan on public\.g_p\d/g), 2,
	'per-partition form under a Sort: both remote scans run asynchronously');
is(scalar(() = $plan =~ /$shipped_limit/g), 2,
	'... each with ORDER BY ... LIMIT shipped');

# ---------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------

# query id => comma-separated top 10 ids, for every query, by $form:
# 'exact' (the single table), 'parent' or 'partition' (the two forms).
sub answers
{
	my ($form, $settings) = @_;
	my %inner = (
		exact  => 'SELECT id FROM g_all ORDER BY v <=> q.v LIMIT 10',
		parent => 'SELECT id FROM g ORDER BY v <=> q.v LIMIT 10',
		partition => per_partition_sql('q.v', 'd + 0'),);
	my $out = $coord->safe_psql('postgres', ($settings // '') . qq{
		SELECT q.id || ' ' || (SELECT string_agg(id::text, ',') FROM ($inner{$form}) s)
		FROM q ORDER BY q.id});
	return { map { split / /, $_, 2 } split /\n/, $out };
}

# how many of the 50 queries $got answers differently from $want
sub mismatches
{
	my ($got, $want) = @_;
	return scalar grep { ($got->{$_} // '') ne $want->{$_} } keys %$want;
}

my $exact = answers('exact');
is(scalar(keys %$exact), 50, '50 queries');

my $covering = q{-c turbovec.candidates=100000 -c turbovec.probes=16};
$coord->safe_psql('postgres', "ALTER SERVER s$_ OPTIONS (ADD options '$covering')")
  for (1, 2);
is(mismatches(answers('parent'), $exact), 0,
	'parent, covering settings on the remotes: the single-table answers');
is(mismatches(answers('partition'), $exact), 0,
	'per-partition form, covering settings: the single-table answers');
$coord->safe_psql('postgres', "ALTER SERVER s$_ OPTIONS (DROP options)") for (1, 2);

# settings: the coordinator's SET does not reach the remotes
my $default = answers('parent');
my $cand1 = answers('parent', 'SET turbovec.candidates = 1; SET turbovec.probes = 1;');
is(mismatches($cand1, $default), 0,
	'SET turbovec.candidates/probes on the coordinator does not change remote answers');
$coord->safe_psql('postgres',
	"ALTER SERVER s$_ OPTIONS (ADD options '-c turbovec.candidates=1 -c turbovec.probes=1')")
  for (1, 2);
my $low = answers('parent');
my $low_miss = mismatches($low, $exact);
cmp_ok($low_miss, '>', mismatches($default, $exact),
	"the server option options '-c turbovec.candidates=1' does ($low_miss of 50 queries off)");
$coord->safe_psql('postgres', "ALTER SERVER s$_ OPTIONS (DROP options)") for (1, 2);
$_->safe_psql('postgres',
	'ALTER DATABASE postgres SET turbovec.candidates = 1; ALTER DATABASE postgres SET turbovec.probes = 1')
  foreach @shards;
is(mismatches(answers('parent'), $low), 0,
	'ALTER DATABASE ... SET on the remotes does too (new fdw connections)');
$_->safe_psql('postgres', 'ALTER DATABASE postgres RESET ALL') foreach @shards;
is(mismatches(answers('parent'), $default), 0, 'and RESET puts the defaults back');

# a row inserted through the coordinator is found at once
$coord->safe_psql('postgres', "INSERT INTO g VALUES (100001, '$q1')");
is($coord->safe_psql('postgres',
		"SELECT id FROM g ORDER BY v <=> '$q1' LIMIT 1"),
	'100001', 'a row inserted through the coordinator is found at once');

$coord->stop;
$_->stop foreach @shards;
done_testing();
