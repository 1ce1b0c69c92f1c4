
# Copyright (c) turbovec authors

# Turbo indexes on pgvector's halfvec type (turbovec_pgvector 0.2.0).
#
# Like t/010_pgvector.pl for vector: skipped, saying so, where pgvector is
# not installed (or too old to have halfvec).  Where it runs, for each
# metric, flat and IVF, a turbo index on a halfvec column answers ORDER BY
# ... LIMIT through pgvector's own operators with the same rows as a
# sequential scan, through the resident copy (preloaded) and through the
# pages, after build and after inserts, deletes and VACUUM; a 3,072-dim
# halfvec column (past the 2,000 dims pgvector's HNSW indexes for vector)
# is indexed and queried; and ALTER EXTENSION turbovec_pgvector UPDATE from
# 0.1.0 gives the catalog a fresh 0.2.0 install has.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20261203);

my $node = start_node('halfvec',
	conf => preload_conf('turbovec.resident_memory = 64MB'));

skip_without_pgvector($node);
$node->safe_psql('postgres', 'CREATE EXTENSION vector');
if ($node->safe_psql('postgres', "SELECT to_regtype('halfvec') IS NULL") eq 't')
{
	$node->stop;
	plan skip_all => 'pgvector has no halfvec (before 0.7.0): halfvec tests skipped';
}

# turbo_halfvec_to_float4 widens every finite binary16 value exactly: all
# 63,488 bit patterns (exponent 31 is infinity and NaN, which halfvec
# refuses), one vector per sign and exponent, against the float4 each came
# from and against pgvector's own cast (text, so that -0 counts).
$node->safe_psql('postgres', 'CREATE EXTENSION turbovec; CREATE EXTENSION turbovec_pgvector');
is( $node->safe_psql('postgres', q{
	WITH b AS (
		SELECT p, p >> 15 AS s, (p >> 10) & 31 AS e, p & 1023 AS m
		FROM generate_series(0, 65535) p WHERE (p >> 10) & 31 <> 31),
	v AS (
		SELECT p >> 10 AS g, array_agg(((1 - 2 * s) * CASE WHEN e = 0
				THEN m * 2::float8 ^ -24
				ELSE 2::float8 ^ (e - 15) * (1 + m / 1024::float8) END)::real ORDER BY p) AS a
		FROM b GROUP BY 1)
	SELECT count(*) || ' vectors, ' || sum(cardinality(a)) || ' values, '
		|| count(*) FILTER (WHERE turbo_halfvec_to_float4(a::halfvec, -1, false)::text = a::text)
		|| ' exact, '
		|| count(*) FILTER (WHERE turbo_halfvec_to_float4(a::halfvec, -1, false)::text = a::halfvec::real[]::text)
		|| ' as pgvector casts'
	FROM v}),
	'62 vectors, 63488 values, 62 exact, 62 as pgvector casts',
	'every finite half float converts exactly, as pgvector converts it');

# A halfvec whose size disagrees with its dimension count (made from bytes
# through a binary cast) is refused as corrupt, never read past its end;
# the same bytes with the right size convert.
foreach my $case (
	[ '\\x0200000000003c', 'invalid halfvec of 11 bytes' ],
	[ '\\x020000',         'invalid halfvec of 7 bytes' ],
	[ '\\x0000000000',     'invalid halfvec of 9 bytes' ],
	[ '\\x02000000003c0040', undef ])
{
	my ($bytes, $error) = @$case;
	my ($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\n"
		  . "BEGIN; CREATE CAST (bytea AS halfvec) WITHOUT FUNCTION;\n"
		  . "SELECT turbo_halfvec_to_float4('$bytes'::bytea::halfvec, -1, false);\n"
		  . "ROLLBACK;");
	if (defined $error)
	{
		like($err, qr/XX001: $error/, "$bytes: $error (SQLSTATE XX001)");
	}
	else
	{
		is($out, '{1,2}', "$bytes: the halfvec [1,2] converts");
	}
}

my $dim = 12;

sub random_halfvec
{
	my ($d) = @_;
	return '[' . join(',', map { sprintf('%.4f', rand(2) - 1) } 1 .. ($d // $dim)) . ']';
}

$node->safe_psql('postgres', qq{
	CREATE TABLE docs (id serial PRIMARY KEY, embedding halfvec($dim));
});

sub insert_rows
{
	my ($n) = @_;
	$node->safe_psql('postgres',
		'INSERT INTO docs (embedding) VALUES '
		  . join(',', map { "('" . random_halfvec() . "')" } 1 .. $n));
}
insert_rows(2000);
$node->safe_psql('postgres', 'INSERT INTO docs (embedding) VALUES (NULL)');

my %opclass = (l2 => 'halfvec_l2_ops', ip => 'halfvec_ip_ops', cos => 'halfvec_cosine_ops');
my %operator = (l2 => '<->', ip => '<#>', cos => '<=>');

# Every lane re-ranked and every list probed: the index answer is exact.
my $exact = "$FORCE_INDEX $ALL_CANDIDATES SET turbovec.probes = 8;";

# The top 10 ids of $table by $op to the query expression $q.
sub top10
{
	my ($table, $op, $q) = @_;
	return "SELECT string_agg(id::text, ',') FROM "
	  . "(SELECT id FROM $table ORDER BY embedding $op $q LIMIT 10) s";
}

# Index $idx of $table answers like a sequential scan, through the resident
# copy and through the pages, for each query expression in @queries.
sub check_index
{
	my ($when, $table, $idx, $op, @queries) = @_;
	my $plan = $node->safe_psql('postgres',
		"$FORCE_INDEX EXPLAIN (COSTS OFF) " . top10($table, $op, $queries[0]));
	like($plan, qr/Index Scan using $idx/, "$when: $idx is used for $op");
	wait_ready_ok($node, $idx, "$when: $idx has a resident copy");
	foreach my $q (@queries)
	{
		my $sql = top10($table, $op, $q);
		my $seq = $node->safe_psql('postgres', "$FORCE_SEQ $sql");
		is(scalar(split /,/, $seq), 10, "$when: a query of $table has 10 answers");
		is($node->safe_psql('postgres', "$exact SET turbovec.use_resident = on; $sql"),
			$seq, "$when: $idx through its resident copy answers like a sequential scan");
		is($node->safe_psql('postgres', "$exact SET turbovec.use_resident = off; $sql"),
			$seq, "$when: $idx through its pages answers like a sequential scan");
	}
	is(verify_output($node, $idx), '', "$when: $idx verifies clean");
}

# metric:lists:dim of each index named
sub layouts
{
	return $node->safe_psql('postgres',
		"SELECT string_agg(i.metric || ':' || i.lists || ':' || i.dim, ',' ORDER BY n) "
		  . "FROM unnest(ARRAY['" . join("','", @_) . "']) n, turbo_index_info(n::regclass) i");
}

foreach my $layout ('flat', 'ivf')
{
	my $lists = $layout eq 'flat' ? 0 : 8;
	foreach my $m (sort keys %opclass)
	{
		my $bits = $m eq 'ip' ? 3 : 4;
		$node->safe_psql('postgres',
			"DROP INDEX IF EXISTS docs_$m; CREATE INDEX docs_$m ON docs "
			  . "USING turbo (embedding $opclass{$m}) WITH (lists = $lists, bits = $bits)");
	}
	is(layouts('docs_cos', 'docs_ip', 'docs_l2'),
		"cosine:$lists:$dim,ip:$lists:$dim,l2:$lists:$dim",
		"$layout: three indexes of $dim dims, $lists lists");

	foreach my $when ("$layout after build", "$layout after inserts, deletes and VACUUM")
	{
		if ($when =~ /inserts/)
		{
			insert_rows(300);
			$node->safe_psql('postgres',
				'DELETE FROM docs WHERE id % 7 = 0; VACUUM (INDEX_CLEANUP ON) docs;');
		}
		check_index($when, 'docs', "docs_$_", $operator{$_},
			map { "'" . random_halfvec() . "'" } 1 .. 3)
		  foreach sort keys %opclass;
		is(index_info($node, 'docs_l2', 'live_rows'),
			$node->safe_psql('postgres',
				'SELECT count(*) FROM docs WHERE embedding IS NOT NULL'),
			"$when: live rows match the table");
	}
}

# a query of the wrong dimension is an error naming both numbers
my ($ret, $out, $err) = $node->psql('postgres',
	"$FORCE_INDEX SELECT id FROM docs ORDER BY embedding <-> '[1,2,3]' LIMIT 1");
isnt($ret, 0, 'wrong query dimension fails');
like($err, qr/expected $dim dimensions, not 3|different halfvec dimensions/,
	'the error names the dimensions');

# Past pgvector's 2,000 dims for vector: halfvec(3072), as the largest
# embedding models give, server-generated (setseed), queries in a table.
my $wide = 3072;
$node->safe_psql('postgres', qq{
	CREATE TABLE wide (id serial PRIMARY KEY, embedding halfvec($wide));
	CREATE TABLE wide_q (id int PRIMARY KEY, q halfvec($wide));
	SELECT setseed(0.42);
	INSERT INTO wide (embedding)
		SELECT (SELECT array_agg((random() * 2 - 1)::real)
				FROM generate_series(1, $wide) WHERE i > 0)::halfvec
		FROM generate_series(1, 300) i;
	INSERT INTO wide_q
		SELECT i, (SELECT array_agg((random() * 2 - 1)::real)
				   FROM generate_series(1, $wide) WHERE i > 0)::halfvec
		FROM generate_series(1, 3) i;
	CREATE INDEX wide_cos ON wide USING turbo (embedding halfvec_cosine_ops) WITH (lists = 4);
	CREATE INDEX wide_l2 ON wide USING turbo (embedding halfvec_l2_ops) WITH (lists = 0);
});
is(layouts('wide_cos', 'wide_l2'), "cosine:4:$wide,l2:0:$wide",
	"$wide dims: an IVF and a flat index");
my @wide_q = map { "(SELECT q FROM wide_q WHERE id = $_)" } 1 .. 3;
check_index("$wide dims after build", 'wide', 'wide_cos', '<=>', @wide_q);
check_index("$wide dims after build", 'wide', 'wide_l2', '<->', @wide_q);
$node->safe_psql('postgres', qq{
	SELECT setseed(0.24);
	INSERT INTO wide (embedding)
		SELECT (SELECT array_agg((random() * 2 - 1)::real)
				FROM generate_series(1, $wide) WHERE i > 0)::halfvec
		FROM generate_series(1, 50) i;
	-- the queries' exact rows: each must come first
	INSERT INTO wide (embedding) SELECT q FROM wide_q ORDER BY id;
});
check_index("$wide dims after inserts", 'wide', 'wide_cos', '<=>', @wide_q);
check_index("$wide dims after inserts", 'wide', 'wide_l2', '<->', @wide_q);
is($node->safe_psql('postgres',
		"$FORCE_INDEX SELECT string_agg(id::text, ',' ORDER BY k) FROM generate_series(1, 3) k, "
		  . "LATERAL (SELECT id FROM wide ORDER BY embedding <=> (SELECT q FROM wide_q WHERE id = k) LIMIT 1) s"),
	'351,352,353', "$wide dims: each query finds its own row first");

# With use_resident on, the copy answers: such a scan reads none of the
# index's pages, only what both scans read (the query, the heap rows).
sub scan_buffers
{
	my ($settings) = @_;
	my $plan = $node->safe_psql('postgres',
		"$FORCE_INDEX SET turbovec.candidates = 1; $settings "
		  . "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) SELECT id FROM wide "
		  . "ORDER BY embedding <-> (SELECT q FROM wide_q WHERE id = 1) LIMIT 1");
	like($plan, qr/Index Scan using wide_l2 /, "EXPLAIN uses wide_l2 ($settings)");
	return buffers_touched($plan);
}
my $pages = $node->safe_psql('postgres',
	"SELECT pg_relation_size('wide_l2') / current_setting('block_size')::int");
my $resident = scan_buffers('SET turbovec.use_resident = on;');
my $extent   = scan_buffers('SET turbovec.use_resident = off;');
cmp_ok($extent - $resident, '>=', $pages - 2,
	"wide_l2: a scan through the copy reads none of the $pages index pages "
	  . "($resident buffers, through the pages $extent)");

# ALTER EXTENSION turbovec_pgvector UPDATE from 0.1.0: the same objects as
# the fresh 0.2.0 install of database postgres.
my $catalog = q{
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
	SELECT 'version ' || extversion || ', comment ' || coalesce(obj_description(oid, 'pg_extension'), '-') AS x
	FROM pg_extension WHERE extname = 'turbovec_pgvector'
  UNION ALL
	SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
	FROM pg_depend
	WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
	  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'turbovec_pgvector')
  UNION ALL
	SELECT format('opclass %s for %s default %s family %s key %s', c.opcname,
				  c.opcintype::regtype, c.opcdefault, f.opfname, c.opckeytype::regtype)
	FROM pg_opclass c JOIN pg_opfamily f ON f.oid = c.opcfamily
	JOIN pg_am a ON a.oid = c.opcmethod WHERE a.amname = 'turbo'
  UNION ALL
	SELECT format('amop %s %s %s purpose %s sortfamily %s', f.opfname, o.amopstrategy,
				  o.amopopr::regoperator, o.amoppurpose, s.opfname)
	FROM pg_amop o JOIN pg_opfamily f ON f.oid = o.amopfamily
	JOIN pg_am a ON a.oid = f.opfmethod
	LEFT JOIN pg_opfamily s ON s.oid = o.amopsortfamily WHERE a.amname = 'turbo'
  UNION ALL
	SELECT format('amproc %s %s (%s, %s) %s', f.opfname, p.amprocnum, p.amproclefttype::regtype,
				  p.amprocrighttype::regtype, p.amproc::regprocedure)
	FROM pg_amproc p JOIN pg_opfamily f ON f.oid = p.amprocfamily
	JOIN pg_am a ON a.oid = f.opfmethod WHERE a.amname = 'turbo'
) s
};
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('upgraded', qq{
	CREATE EXTENSION vector;
	CREATE EXTENSION turbovec;
	CREATE EXTENSION turbovec_pgvector VERSION '0.1.0';
	CREATE TABLE old (id serial PRIMARY KEY, embedding vector(8));
	SELECT setseed(0.5);
	INSERT INTO old (embedding)
		SELECT (SELECT array_agg((random() * 2 - 1)::real)
				FROM generate_series(1, 8) WHERE i > 0)::vector
		FROM generate_series(1, 200) i;
	CREATE INDEX old_l2 ON old USING turbo (embedding vector_l2_ops);
	-- the comment 0.1.0's control file gave (this tree's names both types)
	COMMENT ON EXTENSION turbovec_pgvector IS
		'turbo index operator classes for the vector type of pgvector';
});
is($node->safe_psql('upgraded',
		"SELECT count(*) FROM pg_opclass WHERE opcname LIKE 'halfvec%' "
		  . "AND opcmethod = (SELECT oid FROM pg_am WHERE amname = 'turbo')"),
	'0', '0.1.0 has no halfvec operator classes');
isnt($node->safe_psql('upgraded', $catalog), $node->safe_psql('postgres', $catalog),
	'0.1.0 differs from 0.2.0');
$node->safe_psql('upgraded', 'ALTER EXTENSION turbovec_pgvector UPDATE');
is($node->safe_psql('upgraded', $catalog), $node->safe_psql('postgres', $catalog),
	'updated from 0.1.0: the same objects as a fresh 0.2.0');
my $old_sql = "SELECT string_agg(id::text, ',') FROM "
  . "(SELECT id FROM old ORDER BY embedding <-> '[0.31,-0.47,0.23,0.11,-0.59,0.07,0.83,-0.29]' LIMIT 10) s";
is($node->safe_psql('upgraded', "$exact $old_sql"),
	$node->safe_psql('upgraded', "$FORCE_SEQ $old_sql"),
	'updated: the index built by 0.1.0 answers like a sequential scan');
$node->safe_psql('upgraded', q{
	ALTER TABLE old ADD COLUMN half halfvec(8);
	UPDATE old SET half = embedding::halfvec;
	CREATE INDEX old_half ON old USING turbo (half halfvec_ip_ops);
});
my $half_sql = "SELECT string_agg(id::text, ',') FROM "
  . "(SELECT id FROM old ORDER BY half <#> '[0.31,-0.47,0.23,0.11,-0.59,0.07,0.83,-0.29]' LIMIT 10) s";
like($node->safe_psql('upgraded', "$FORCE_INDEX EXPLAIN (COSTS OFF) $half_sql"),
	qr/Index Scan using old_half/, 'updated: a halfvec index is used');
is($node->safe_psql('upgraded', "$exact $half_sql"),
	$node->safe_psql('upgraded', "$FORCE_SEQ $half_sql"),
	'updated: a halfvec index answers like a sequential scan');

$node->stop;
done_testing();
