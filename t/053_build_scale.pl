# Copyright (c) turbovec authors

# An IVF build at embedding scale: 100,000 rows of 768 dimensions (cosine),
# generated in SQL, with the lists chosen automatically (TvAutoLists:
# round(sqrt(100000) / 2) = 158 at 768 dimensions) and the default probes;
# recall@10 of the index against the exact top 10 (computed here by a
# sequential scan) must be at least 0.95.  Then the same build with a
# maintenance_work_mem far too small for the codes of the vectors
# completes, says so in a NOTICE whose HINT names the memory that would lay
# the lists out, and a build with that memory has nothing to say and writes
# the same pages.
#
# The rows: 100 clusters, each a fixed choice of 6 slots of 128
# dimensions; every row takes for each slot one of 8 variants of the
# slot's piece (by a hash of its id), so rows of a cluster share most of
# their coordinates, and a row's neighbours are the rows of its cluster
# that share the most variants.  Values are pseudo-random (fractional parts
# of sin), the table unlogged with PLAIN storage (a 3 KB row fits a page)
# so that generating it and the exact scan stay cheap.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $node = start_node(
	'scale',
	conf => "shared_buffers = 512MB\nmax_parallel_maintenance_workers = 1\n"
	  . "maintenance_work_mem = 512MB\nmax_wal_size = 4GB\nlog_statement = none\n"
	  . "autovacuum = off\n");

my $t0 = time;

# piece (c * 6 + s) * 8 + k: slot s of cluster c, variant k
my $rows_sql = sub {
	my ($from, $to, $table) = @_;
	my $joins = join("\n",
		map { "JOIN piece p$_ ON p$_.id = ((i % 100) * 6 + $_) * 8 + abs(hashint4(i * 16 + $_)) % 8" }
		  0 .. 5);
	my $cat = join(' || ', map { "p$_.v" } 0 .. 5);
	return "INSERT INTO $table SELECT i, $cat FROM generate_series($from, $to) i\n$joins";
};

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE piece (id int PRIMARY KEY, v real[]);
INSERT INTO piece
	SELECT p, ARRAY(SELECT (a - floor(a) - 0.5 + 0.3 * (b - floor(b) - 0.5))::real
		FROM generate_series(1, 128) j,
			LATERAL (SELECT sin((p / 8) * 12.9898 + j * 78.233) * 43758.5453 AS a,
							sin(p * 4.1414 + j * 37.719) * 23421.631 AS b) h
		ORDER BY j)
	FROM generate_series(0, 100 * 6 * 8 - 1) p;
CREATE UNLOGGED TABLE emb (id int, v real[]);
ALTER TABLE emb ALTER COLUMN v SET STORAGE PLAIN;
CREATE TABLE queries (id int, v real[]);
@{[ $rows_sql->(1, 100000, 'emb') ]};
@{[ $rows_sql->(100001, 100010, 'queries') ]};
VACUUM ANALYZE emb;
});
note(sprintf('generated 100,000 x 768 in %.1f s', time - $t0));
is($node->safe_psql('postgres', 'SELECT count(*), min(array_length(v, 1)), max(array_length(v, 1)) FROM emb'),
	'100000|768|768', '100,000 rows of 768 dimensions');

# exact top 10 of each query: sequential scans (parallel where it can)
$node->safe_psql(
	'postgres', q{
SET enable_indexscan = off;
SET enable_bitmapscan = off;
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
CREATE TABLE exact AS
	SELECT q.id AS qid, x.id FROM queries q
	CROSS JOIN LATERAL (SELECT e.id FROM emb e ORDER BY e.v <=> q.v, e.id LIMIT 10) x;
});
$t0 = time;
$node->safe_psql('postgres', 'CREATE INDEX emb_idx ON emb USING turbo (v real_cosine_ops)');
my $build = time - $t0;
note(sprintf('CREATE INDEX: %.1f s', $build));
is( $node->safe_psql('postgres', "SELECT lists, dim, live_rows FROM turbo_index_info('emb_idx')"),
	'158|768|100000', 'automatic lists at 768 dimensions: round(sqrt(rows) / 2)');

sub recall
{
	my $hits = $node->safe_psql(
		'postgres', q{
SET enable_seqscan = off;
SELECT count(*) FROM queries q
	CROSS JOIN LATERAL (SELECT e.id FROM emb e ORDER BY e.v <=> q.v LIMIT 10) got
	JOIN exact x ON x.qid = q.id AND x.id = got.id;
});
	return $hits / 100;
}
my $recall = recall();
note("recall\@10 at the default probes: $recall");
cmp_ok($recall, '>=', 0.95, 'recall@10 >= 0.95 at the default probes');

my $pages = sub {
	$node->safe_psql('postgres', q{CREATE EXTENSION IF NOT EXISTS pageinspect;
SELECT md5(string_agg(substr(get_raw_page('emb_idx', b), 25), '' ORDER BY b))
	FROM generate_series(0, (pg_relation_size('emb_idx') / 8192 - 1)::int) b});
};
my $memory_pages = $pages->();

# far too little memory for the vectors (300 MB) and even their codes
# (42 MB).  The vectors lie in their rows (PLAIN), so every build reads
# the table twice rather than keep them in memory, and says nothing about
# that; this one completes, says the codes did not fit, and names the
# memory that would have been enough
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SET maintenance_work_mem = '32MB'; SET client_min_messages = debug1; REINDEX INDEX emb_idx;");
is($ret, 0, 'a build with maintenance_work_mem = 32MB completes');
like($stderr, qr/turbo index "emb_idx": the vectors lie in their rows, so the build reads them twice/,
	'it reads the vectors where they lie');
unlike($stderr, qr/reads its table twice/, 'which needs no NOTICE');
my ($hint_mb) = $stderr =~ /NOTICE:  turbo index "emb_idx" interleaves the blocks of its lists.*\n.*\n.*HINT:  Set maintenance_work_mem to (\d+) MB or more/;
ok(defined $hint_mb, 'it says the codes did not fit, and how much memory they need') or diag($stderr);
cmp_ok($hint_mb // 0, '>', 42, 'which is more than the codes take');
cmp_ok(recall(), '>=', 0.95, 'recall@10 >= 0.95 from the interleaved lists');

# the hinted memory is enough: the lists laid out, the pages of the first build
($ret, $stdout, $stderr) = $node->psql('postgres',
	"SET maintenance_work_mem = '${\ ($hint_mb // 1)}MB'; REINDEX INDEX emb_idx;");
is($ret, 0, 'a build with the hinted memory completes');
unlike($stderr, qr/NOTICE/, 'and has nothing to say') or diag($stderr);
is($pages->(), $memory_pages, 'same pages as the first build');

$node->stop;
done_testing();
