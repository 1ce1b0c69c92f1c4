
# Copyright (c) turbovec authors

# Page scans that do not find their pages in shared buffers.  A 768-d IVF
# index (blocks of 12.7 KB, most of them across two pages) is larger than
# the 1 MB of shared buffers, so a scan that probes every list evicts its
# own pages: the backend's buffer hints go stale, pages are read in, and
# the scan reads ahead down each list (PrefetchBuffer).  The codes-only
# answers (the index alone picks the rows) must be those of the same index
# when it is all in shared buffers, and the answers with every row
# re-ranked must be a sequential scan's.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $node = start_node(
	'cold',
	conf => "autovacuum = off\nshared_buffers = 1MB\neffective_io_concurrency = 8");

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION turbovec;
SELECT setseed(0.5);
CREATE TABLE t (id int PRIMARY KEY, v real[]);
INSERT INTO t
	SELECT i, array_agg((random() - 0.5 + (i % 8) * 0.05)::real ORDER BY j)
	FROM generate_series(1, 3000) i, generate_series(1, 768) j GROUP BY i;
CREATE INDEX t_ivf ON t USING turbo (v real_cosine_ops) WITH (lists = 8);
});
cmp_ok($node->safe_psql('postgres', "SELECT pg_relation_size('t_ivf')"),
	'>', 1 << 20, 'the index is larger than shared buffers');

# eight queries, codes only, in one session, twice: the second pass meets
# the hints the first left behind, most of them stale by then
my $codes_only = q{
SET turbovec.probes = 8;
SET turbovec.candidates = 10;
SET enable_seqscan = off;
SELECT string_agg(ids, ' ' ORDER BY pass, q) FROM (
	SELECT pass, q.id AS q, (SELECT array_agg(id)::text FROM
		(SELECT t.id FROM t ORDER BY t.v <=> q.v LIMIT 10) s) AS ids
	FROM generate_series(1, 2) pass, (SELECT id, v FROM t WHERE id % 300 = 1) q) r;
};
my $cold = $node->safe_psql('postgres', $codes_only);
my $n = () = $cold =~ /\{/g;
is($n, 20, 'two passes of ten queries');

# re-ranking every row gives the exact order
same_as_seq_scan(
	$node,
	'SET turbovec.probes = 8; SET turbovec.candidates = 3000; SET enable_seqscan = off;',
	q{SELECT string_agg(ids, ' ' ORDER BY q) FROM (
	SELECT q.id AS q, (SELECT array_agg(id)::text FROM
		(SELECT t.id FROM t ORDER BY t.v <=> q.v LIMIT 10) s) AS ids
	FROM (SELECT id, v FROM t WHERE id % 300 = 1) q) r;},
	'cold scans re-rank to the exact order');

# the same index with room for all of it: the same rows
$node->stop;
$node->append_conf('postgresql.conf', "shared_buffers = 64MB");
$node->start;
$node->safe_psql('postgres', 'SELECT count(*) FROM t; ' . $codes_only);
is($node->safe_psql('postgres', $codes_only), $cold,
	'codes-only answers do not depend on where the pages were');
is($node->safe_psql('postgres', 'SELECT count(*) FROM turbo_verify(\'t_ivf\')'),
	'0', 'turbo_verify is clean');

$node->stop;
done_testing();
