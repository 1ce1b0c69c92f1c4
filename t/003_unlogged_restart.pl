
# Copyright (c) turbovec authors

# Turbo indexes on unlogged tables.
#
# A clean restart keeps an unlogged table and its index as they were.  A
# crash (immediate shutdown) resets both from their init forks: the table
# comes back empty and the index must come back as a valid empty index
# (ambuildempty), ready for inserts and ordered scans.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20240613);

my $dim      = 8;
my $settings = "$FORCE_INDEX $ALL_CANDIDATES";
my %opclass = (u_l2 => '<->', u_ip => '<#>');
my @indexes = sort keys %opclass;

my $node = start_node('unlogged');

sub insert_rows
{
	my ($n, $seed) = @_;
	$node->safe_psql('postgres', random_rows_sql('u', $dim, $n, $seed));
}

# Index answers equal a sequential scan's, through the index, and the
# indexes are sound and count $count rows.
sub check_index
{
	my ($label, $count) = @_;

	is($node->safe_psql('postgres', 'SELECT count(*) FROM u'),
		$count, "$label: table has $count rows");
	foreach my $idx (@indexes)
	{
		my $op  = $opclass{$idx};
		my $q   = random_vector($dim);
		my $sql = "SELECT id FROM u ORDER BY v $op '$q' LIMIT 5";
		like($node->safe_psql('postgres', "$settings EXPLAIN (COSTS OFF) $sql"),
			qr/Index Scan using $idx/, "$label: query uses $idx");
		is( $node->safe_psql('postgres', "$settings $sql"),
			$node->safe_psql('postgres', "SET enable_indexscan = off; $sql"),
			"$label: $idx top 5 equals a sequential scan");
		is(verify_output($node, $idx),
			'', "$label: turbo_verify($idx) finds no problem");
		is(index_info($node, $idx, 'live_rows'),
			$count,
			"$label: turbo_index_info($idx).live_rows is $count");
	}
}

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION turbovec;
CREATE UNLOGGED TABLE u (id serial PRIMARY KEY, v real[]);
CREATE INDEX u_l2 ON u USING turbo (v real_l2_ops);
CREATE INDEX u_ip ON u USING turbo (v real_ip_ops) WITH (bits = 2);
});
insert_rows(300, 0.5);
check_index('before restart', 300);

$node->restart;
check_index('after clean restart', 300);

$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', 'SELECT count(*) FROM u'),
	0, 'crash restart empties the unlogged table');
foreach my $idx (@indexes)
{
	is(verify_output($node, $idx),
		'', "after crash restart: turbo_verify($idx) on the empty index finds no problem");
	is( $node->safe_psql(
			'postgres',
			"$settings SELECT count(*) FROM (SELECT id FROM u "
			  . "ORDER BY v $opclass{$idx} '" . random_vector($dim) . "') s"),
		0,
		"after crash restart: an ordered scan of $idx returns nothing");
}

insert_rows(120, 0.75);
check_index('after crash restart and inserts', 120);

$node->stop;
done_testing();
