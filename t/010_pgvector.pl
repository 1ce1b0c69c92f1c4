
# Copyright (c) turbovec authors

# Turbo indexes on pgvector's vector type (extension turbovec_pgvector).
#
# pgvector is not packaged for Debian 12, so this test runs only where it is
# installed and says so when it skips.  Where it runs, a turbo index built on
# an existing pgvector table answers ORDER BY ... LIMIT through pgvector's
# own operators with the same rows as a sequential scan, for each metric,
# flat and IVF, and keeps doing so after inserts, deletes and VACUUM.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest qw(start_node skip_without_pgvector random_pgvector create_pgvector_docs);

srand(20241125);

my $node = start_node('pgvector');

skip_without_pgvector($node);

my $dim = 12;

create_pgvector_docs($node, $dim, 2000);
$node->safe_psql('postgres', 'INSERT INTO docs (embedding) VALUES (NULL)');

# the migration from HNSW: the same column, a turbo opclass of the same name
$node->safe_psql('postgres', qq{
	CREATE INDEX docs_l2 ON docs USING turbo (embedding vector_l2_ops);
	CREATE INDEX docs_ip ON docs USING turbo (embedding vector_ip_ops) WITH (bits = 3);
	CREATE INDEX docs_cos ON docs USING turbo (embedding vector_cosine_ops) WITH (lists = 8);
});

my %operator = (docs_l2 => '<->', docs_ip => '<#>', docs_cos => '<=>');

# The top 10 ids for a query, through the index or a sequential scan; every
# lane re-ranked and every list probed, so the index answer must be exact.
sub top10
{
	my ($op, $q, $via_index) = @_;
	my $settings = $via_index
	  ? 'SET enable_seqscan = off; SET turbovec.candidates = 100000; SET turbovec.probes = 8;'
	  : 'SET enable_indexscan = off;';
	return $node->safe_psql('postgres',
		"$settings SELECT string_agg(id::text, ',') FROM "
		  . "(SELECT id FROM docs ORDER BY embedding $op '$q' LIMIT 10) s");
}

sub check_all
{
	my ($when) = @_;
	foreach my $idx (sort keys %operator)
	{
		my $op = $operator{$idx};
		my $plan = $node->safe_psql('postgres',
			"SET enable_seqscan = off; EXPLAIN (COSTS OFF) SELECT id FROM docs "
			  . "ORDER BY embedding $op '" . random_pgvector($dim) . "' LIMIT 10");
		like($plan, qr/Index Scan using $idx/, "$when: $idx is used for $op");
		for (1 .. 5)
		{
			my $q = random_pgvector($dim);
			is(top10($op, $q, 1), top10($op, $q, 0),
				"$when: $idx answers like a sequential scan");
		}
		is($node->safe_psql('postgres', "SELECT count(*) FROM turbo_verify('$idx')"),
			'0', "$when: $idx verifies clean");
	}
}

check_all('after build');

$node->safe_psql('postgres',
	'INSERT INTO docs (embedding) VALUES '
	  . join(',', map { "('" . random_pgvector($dim) . "')" } 1 .. 300));
$node->safe_psql('postgres', 'DELETE FROM docs WHERE id % 5 = 0; VACUUM (INDEX_CLEANUP ON) docs;');
check_all('after inserts, deletes and VACUUM');

is( $node->safe_psql('postgres',
		"SELECT live_rows FROM turbo_index_info('docs_l2')"),
	$node->safe_psql('postgres',
		'SELECT count(*) FROM docs WHERE embedding IS NOT NULL'),
	'live rows match the table');

# Wider vectors: the index reads a vector's floats where they lie (a 4-byte
# header inline at 300 dimensions, out of line at 700) instead of through
# pgvector's cast to real[]; the answers must still be a sequential scan's.
foreach my $wdim (300, 700)
{
	$node->safe_psql('postgres', qq{
		CREATE TABLE wide$wdim (id serial PRIMARY KEY, embedding vector($wdim));
		INSERT INTO wide$wdim (embedding) VALUES }
		  . join(',', map { "('" . random_pgvector($wdim) . "')" } 1 .. 400) . qq{;
		CREATE INDEX wide${wdim}_cos ON wide$wdim USING turbo (embedding vector_cosine_ops) WITH (lists = 4);
	});
	is($node->safe_psql('postgres',
			"SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE relname = 'wide$wdim'"),
		$wdim > 500 ? 't' : 'f', "$wdim dimensions: vectors are out of line only at 700");
	for (1 .. 3)
	{
		my $q = random_pgvector($wdim);
		my $sql = "SELECT string_agg(id::text, ',') FROM "
		  . "(SELECT id FROM wide$wdim ORDER BY embedding <=> '$q' LIMIT 10) s";
		is( $node->safe_psql('postgres',
				"SET enable_seqscan = off; SET turbovec.candidates = 100000; "
				  . "SET turbovec.probes = 4; $sql"),
			$node->safe_psql('postgres', "SET enable_indexscan = off; $sql"),
			"$wdim dimensions: the index answers like a sequential scan");
	}
	$node->safe_psql('postgres',
		"INSERT INTO wide$wdim (embedding) VALUES ('" . random_pgvector($wdim) . "')");
	is($node->safe_psql('postgres', "SELECT count(*) FROM turbo_verify('wide${wdim}_cos')"),
		'0', "$wdim dimensions: the index verifies clean after an insert");
}

# a query of the wrong dimension is an error naming both numbers
my ($ret, $out, $err) = $node->psql('postgres',
	"SET enable_seqscan = off; SELECT id FROM docs ORDER BY embedding <-> '[1,2,3]' LIMIT 1");
isnt($ret, 0, 'wrong query dimension fails');
like($err, qr/expected $dim dimensions, not 3|different vector dimensions/,
	'the error names the dimensions');

$node->stop;
done_testing();
