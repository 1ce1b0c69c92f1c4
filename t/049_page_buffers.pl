
# Copyright (c) turbovec authors

# Where a scan's pages go after it.  An IVF scan reads the few lists
# nearest its query, like any index scan, so the pages it reads in stay in
# shared buffers for the next query; a ring of 32 buffers (BAS_BULKREAD)
# would hand them back as soon as they were read, and after a restart the
# page path would read the same pages again query after query.  A flat
# index smaller than a quarter of shared buffers stays too.  Counted with
# pg_statio_user_indexes: the second session after a restart, asking the
# first one's queries, reads no page of the index.  Each session has its
# counts flushed before it ends (pg_stat_force_next_flush as its last
# statement), so the next one sees them.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $node = start_node('buffers', conf => "autovacuum = off\nshared_buffers = 16MB");

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE t (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('t', 768, 3000, 0.25) ]}
CREATE INDEX t_ivf ON t USING turbo (v real_cosine_ops) WITH (lists = 8);
CREATE TABLE f (id int PRIMARY KEY, v real[]);
INSERT INTO f SELECT id, v FROM t WHERE id <= 1000;
CREATE INDEX f_flat ON f USING turbo (v real_cosine_ops);
});

# ten queries over every list (or the whole flat index), codes only
sub queries
{
	my ($table) = @_;
	return qq{
SET turbovec.probes = 8;
SET turbovec.candidates = 10;
SET enable_seqscan = off;
SELECT count(ids) FROM (
	SELECT (SELECT array_agg(id) FROM
		(SELECT $table.id FROM $table ORDER BY $table.v <=> q.v LIMIT 10) s) AS ids
	FROM (SELECT id, v FROM t WHERE id % 300 = 1) q) r;
SELECT pg_stat_force_next_flush();
};
}

sub pages_read
{
	my ($index) = @_;
	return $node->safe_psql('postgres',
		"SELECT idx_blks_read FROM pg_statio_user_indexes WHERE indexrelname = '$index'"
	);
}

for my $case (['t', 't_ivf', 'IVF'], ['f', 'f_flat', 'flat'])
{
	my ($table, $index, $what) = @$case;

	$node->restart;
	my $before = pages_read($index);
	like($node->safe_psql('postgres', queries($table)), qr/^10\n/, "$what: ten queries");
	my $first = pages_read($index);
	cmp_ok($first - $before, '>', 32, "$what: the first session read the index in");
	$node->safe_psql('postgres', queries($table));
	is(pages_read($index), $first, "$what: the next session found every page in shared buffers");
}

$node->stop;
done_testing();
