
# Copyright (c) turbovec authors

# pgvector's vector type through the resident copy (turbovec_pgvector,
# preloaded).  The copy holds codes and refinement codes made from the same
# floats as the index's codes; candidates are re-ranked in memory, then on
# pgvector's own distance functions over the table rows, so with a window
# that covers the table every metric, flat and IVF, gives exactly the rows
# of a sequential scan, and reads few of the index's pages (the copy
# answers).  Skipped where pgvector is not installed.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20261203);

my $node = start_node('pgvres', conf => preload_conf('turbovec.snapshots = off'));

skip_without_pgvector($node);

my $dim = 24;

create_pgvector_docs($node, $dim, 4000);
$node->safe_psql('postgres', qq{
	CREATE INDEX docs_l2 ON docs USING turbo (embedding vector_l2_ops);
	CREATE INDEX docs_ip ON docs USING turbo (embedding vector_ip_ops) WITH (lists = 8);
	CREATE INDEX docs_cos ON docs USING turbo (embedding vector_cosine_ops) WITH (lists = 8);
});
my %operator = (docs_l2 => '<->', docs_ip => '<#>', docs_cos => '<=>');

# $sql's rows and the index blocks it read, with use_resident on or off
sub run_scan
{
	my ($idx, $sql, $resident) = @_;
	my $out = $node->safe_psql('postgres',
		"$FORCE_INDEX $ALL_CANDIDATES SET turbovec.probes = 8; "
		  . "SET turbovec.use_resident = $resident; BEGIN; $sql; "
		  . "SELECT pg_stat_get_xact_blocks_fetched('$idx'::regclass); COMMIT;");
	return split /\n/, $out;
}

sub check_all
{
	my ($label) = @_;
	foreach my $idx (sort keys %operator)
	{
		wait_ready_ok($node, $idx, "$label: $idx copy is ready");
		for my $i (1 .. 3)
		{
			my $q   = random_pgvector($dim);
			my $sql = "SELECT string_agg(id::text, ',') FROM (SELECT id FROM docs "
			  . "ORDER BY embedding $operator{$idx} '$q' LIMIT 10) s";
			# each opclass orders by its own operator: no other index competes
			my $plan = $node->safe_psql('postgres', "$FORCE_INDEX EXPLAIN (COSTS OFF) $sql");
			like($plan, qr/Index Scan using $idx /, "$label: $idx is used");
			my ($rows, $blocks) = run_scan($idx, $sql, 'on');
			my (undef, $pages) = run_scan($idx, $sql, 'off');
			is($rows, $node->safe_psql('postgres', "$FORCE_SEQ $sql"),
				"$label: $idx query $i through the copy equals a sequential scan");
			cmp_ok($blocks, '<', $pages / 3,
				"$label: $idx query $i is answered by the copy ($blocks vs $pages index blocks)");
		}
	}
}

check_all('after the build');

# writes are mirrored into the copies, refinement codes included
$node->safe_psql('postgres',
	'INSERT INTO docs (embedding) VALUES '
	  . join(',', map { "('" . random_pgvector($dim) . "')" } 1 .. 500));
$node->safe_psql('postgres', 'DELETE FROM docs WHERE id % 9 = 4; VACUUM docs');
check_all('after inserts, deletes and VACUUM');

$node->stop;
done_testing();
