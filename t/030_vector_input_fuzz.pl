
# Copyright (c) turbovec authors

# Randomized hostile vector input.
#
# Thousands of generated real[] literals (wrong lengths, NULL elements, NaN
# and infinities, values at the edges of float4, nested arrays, garbage)
# go through every entry point that takes a vector: the distance functions,
# INSERT into an indexed table, an ordered index scan and the encoder.  Each
# must either succeed or fail with one of the SQLSTATEs the contract names;
# the server must never crash, and the index must verify clean at the end.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20261125);

my $node = start_node('fuzz');

$node->safe_psql('postgres', q{
	CREATE EXTENSION turbovec;
	CREATE TABLE f (id serial, v real[]);
	CREATE INDEX f_l2 ON f USING turbo (v real_l2_ops);
	CREATE INDEX f_cos ON f USING turbo (v real_cosine_ops) WITH (bits = 2);
	INSERT INTO f (v) VALUES ('{1,2,3,4,5,6,7,8}');
	-- run one statement, return its SQLSTATE or 'ok'
	CREATE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
		EXECUTE stmt;
		RETURN 'ok';
	EXCEPTION WHEN OTHERS THEN
		RETURN SQLSTATE;
	END $$;
	CREATE TABLE outcome (stmt text, state text);
});

my @elements = (
	sub { sprintf('%.6g', rand(20) - 10) },
	sub { 'NaN' }, sub { 'Infinity' }, sub { '-Infinity' }, sub { 'NULL' },
	sub { '3.4028235e38' }, sub { '-3.4028235e38' }, sub { '1e39' },
	sub { '1.4e-45' }, sub { '0' }, sub { '-0' }, sub { '"1"' },
	sub { 'abc' }, sub { '' }, sub { '1,2' },
);

sub element
{
	# mostly ordinary numbers, sometimes something hostile
	return $elements[0]->() if rand() < 0.8;
	return $elements[ 1 + int(rand(@elements - 1)) ]->();
}

sub literal
{
	my $r = rand();
	return '{}' if $r < 0.03;
	return '{{1,2},{3,4}}' if $r < 0.06;
	return '{{' . join(',', map { element() } 1 .. 8) . '}}' if $r < 0.08;
	return '{' . join(',', ('1') x 16001) . '}' if $r < 0.085;
	return '[1:8]={' . join(',', map { element() } 1 .. 8) . '}' if $r < 0.10;
	my $n = rand() < 0.7 ? 8 : int(rand(12));
	return '{' . join(',', map { element() } 1 .. $n) . '}';
}

my @stmts;
for my $i (1 .. 400)
{
	my $lit = literal();
	$lit =~ s/'/''/g;
	push @stmts,
	  "SELECT l2_distance('$lit'::real[], '{1,2,3,4,5,6,7,8}')",
	  "SELECT cosine_distance('{1,2,3,4,5,6,7,8}', '$lit'::real[])",
	  "INSERT INTO f (v) VALUES ('$lit')",
	  "SELECT id FROM f ORDER BY v <-> '$lit' LIMIT 1",
	  "SELECT id FROM f ORDER BY v <=> '$lit' LIMIT 1",
	  "SELECT turbo_encode('$lit', 2 + $i % 3)";
}

# run them in batches through the try() wrapper, with the index forced
for (my $i = 0; $i < @stmts; $i += 200)
{
	my @batch = @stmts[ $i .. ($i + 199 < $#stmts ? $i + 199 : $#stmts) ];
	my $values = join(",\n", map { my $s = $_; $s =~ s/'/''/g; "('$s')" } @batch);
	$node->safe_psql('postgres',
		"SET enable_seqscan = off; INSERT INTO outcome SELECT s, try(s) FROM (VALUES $values) AS b(s)");
}

# what may come out of hostile input, and nothing else
my %allowed = map { $_ => 1 } (
	'ok',
	'22000',    # data exception: dimensions, NaN, infinity, multi-dimensional
	'22004',    # NULL element
	'54000',    # more than 16000 dimensions
	'22P02',    # not a real[] literal at all
	'22003',    # out of range for real
	'22023',    # bad argument (bits)
);
my $states = $node->safe_psql('postgres',
	"SELECT state || ' ' || count(*) FROM outcome GROUP BY state ORDER BY state");
note("outcomes:\n$states");
my $unexpected = $node->safe_psql('postgres',
	"SELECT count(*) FROM outcome WHERE state NOT IN ("
	  . join(',', map { "'$_'" } sort keys %allowed) . ")");
is($unexpected, '0', 'every hostile vector fails with a contract SQLSTATE or succeeds');
is($node->safe_psql('postgres', 'SELECT count(*) FROM outcome'),
	scalar(@stmts), 'every statement ran (the server never went away)');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM outcome WHERE state = 'ok'"),
	'>', 0, 'well-formed vectors got through');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM outcome WHERE state <> 'ok'"),
	'>', 0, 'hostile vectors were refused');

# nothing bad made it into the index
is($node->safe_psql('postgres', "SELECT count(*) FROM turbo_verify('f_l2')"), '0', 'f_l2 verifies clean');
is($node->safe_psql('postgres', "SELECT count(*) FROM turbo_verify('f_cos')"), '0', 'f_cos verifies clean');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM f WHERE v IS NOT NULL AND (array_length(v, 1) <> 8 "
		  . "OR EXISTS (SELECT 1 FROM unnest(v) x WHERE x IS NULL OR x = 'NaN' OR x IN ('Infinity', '-Infinity')))"),
	'0', 'only valid 8-dimensional vectors were stored');
is( $node->safe_psql('postgres', "SELECT live_rows FROM turbo_index_info('f_l2')"),
	$node->safe_psql('postgres', 'SELECT count(*) FROM f WHERE v IS NOT NULL'),
	'the index holds every stored vector');

$node->stop;
done_testing();
