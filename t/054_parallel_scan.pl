
# Copyright (c) turbovec authors

# CREATE INDEX reads the table with parallel workers (tvparallel.c).  Table
# p holds 64-d rows whose vectors lie in the row: an IVF build reads it
# twice instead of spooling the vectors (tvbuild.c VectorsInRows), so the
# workers send in the sampling pass only the vectors that may be sampled,
# and in the encoding pass the leader reads the rows and workers code
# windows of them (which tvparallel.c keeps for the whole pass).  Table pt holds 520-d rows TOASTed
# out of line, which an IVF build spools while they fit: in its sampling
# pass the workers send every vector, and when they do not fit in
# maintenance_work_mem the encoding pass reads the table again.  A flat
# build's single pass sends codes.  With min_parallel_table_scan_size = 0
# small tables are enough.  Each build must say in a DEBUG1 message that a
# worker scanned, and write exactly the pages of the same build without
# workers: the leader lays the lists out in TID order whoever read which
# row.  The indexes must pass turbo_verify and answer like a sequential
# scan.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20261203);

my %dim   = (p => 64,   pt => 520);
my %nrows = (p => 6000, pt => 2000);

my $node = start_node('parscan',
	conf => "max_parallel_maintenance_workers = 1\nautovacuum = off\n");

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE EXTENSION pageinspect;
CREATE TABLE p (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('p', $dim{p}, $nrows{p}, 0.54, 97) ]}
CREATE TABLE pt (id serial PRIMARY KEY, v real[]);
ALTER TABLE pt ALTER COLUMN v SET STORAGE EXTERNAL;
@{[ random_rows_sql('pt', $dim{pt}, $nrows{pt}, 0.55, 97) ]}
});
is($node->safe_psql('postgres',
	"SELECT pg_relation_size(reltoastrelid) >= 2000 * 2080 FROM pg_class WHERE relname = 'pt'"),
	't', 'the 520-d vectors are stored out of line');

# md5 of the index pages past their headers (the LSN differs between builds)
sub pages_md5
{
	my ($idx) = @_;
	return $node->safe_psql('postgres',
		"SELECT md5(string_agg(substr(get_raw_page('$idx', b), 25), '' ORDER BY b))
		 FROM generate_series(0, (pg_relation_size('$idx') / 8192 - 1)::int) b");
}

# Build $idx with $with (parallel: workers allowed and a small table scanned
# by them) under $settings; returns (stderr, pages md5)
sub build
{
	my ($idx, $table, $opclass, $with, $parallel, $settings) = @_;
	my $par = $parallel
	  ? 'SET min_parallel_table_scan_size = 0;'
	  : 'SET max_parallel_maintenance_workers = 0;';
	my ($ret, $out, $err) = $node->psql('postgres',
		"$par $settings SET client_min_messages = debug1;
		 DROP INDEX IF EXISTS $idx;
		 CREATE INDEX $idx ON $table USING turbo (v $opclass) $with;");
	is($ret, 0, "$idx builds") or diag($err);
	return ($err, pages_md5($idx));
}

my $scanned = qr/table scanned by the leader and 1 parallel workers/;
my $in_rows = qr/the vectors lie in their rows, so the build reads them twice/;

# name, table, operator class, options, settings, heap scans with a
# worker, vectors coded by workers outside a heap scan.  Vectors that lie in
# their rows (table p) are read by the leader alone in the encoding pass,
# and workers code windows of them.
for my $case (
	[ 'ivf',  'p', 'real_l2_ops',     'WITH (lists = 24)', '', 1, 1 ],
	[ 'flat', 'p', 'real_cosine_ops', 'WITH (lists = 0)',  '', 1, 0 ],
	# from 1,024 lists on, vectors go to lists through groups of lists
	# (tvivf.c): k-means rounds with the worker, then both passes as above
	[ 'grouped', 'p', 'real_cosine_ops', 'WITH (lists = 1100)', '', 1, 1 ],
	# 7 MB: the codes fit (with less, the workers' windows and segment
	# leave less room for codes than a serial build has, and the layouts
	# differ by design); windows of 2,816 vectors, so three rounds
	[ 'grouped_mem', 'p', 'real_l2_ops', 'WITH (lists = 1100)', "SET maintenance_work_mem = '7MB';", 1, 1 ],
	# spooled: one heap scan, then the workers code the spool
	[ 'spooled', 'pt', 'real_l2_ops', 'WITH (lists = 24)', '', 1, 1 ],
	# 4 MB of vectors do not fit in 3 MB (their codes do): the sampling pass, then an
	# encoding pass over the table, both with the worker
	[ 'twice', 'pt', 'real_l2_ops', 'WITH (lists = 8)', "SET maintenance_work_mem = '3MB';", 2, 0 ],
	# the same with one row a message: a record of a 520-d code (280
	# bytes) is shorter than the dimension count, which the leader once
	# took for a bad message (a worker's last message of one or two codes)
	[ 'twice_one_row', 'pt', 'real_l2_ops', 'WITH (lists = 8)',
	  "SET maintenance_work_mem = '3MB'; SET turbovec.test_scan_message_rows = 1;", 2, 0 ])
{
	my ($name, $table, $opclass, $with, $settings, $scans, $coded) = @$case;
	my ($serr, $serial) = build("p_$name", $table, $opclass, $with, 0, $settings);
	unlike($serr, $scanned, "$name: no worker without parallel maintenance workers");
	my ($perr, $parallel) = build("p_$name", $table, $opclass, $with, 1, $settings);
	my @scans = $perr =~ /$scanned/g;
	is(scalar @scans, $scans, "$name: a worker took part in $scans heap scans");
	if ($coded)
	{
		like($perr, qr/"p_$name": \d+ vectors coded with 1 parallel workers/,
			"$name: a worker coded vectors");
	}
	else
	{
		unlike($perr, qr/vectors coded with/, "$name: no worker coded outside a scan");
	}
	if ($table eq 'p' && $with !~ /lists = 0/)
	{
		like($perr, $in_rows, "$name: the vectors are read where they lie");
	}
	else
	{
		unlike($perr, $in_rows, "$name: the vectors are not read twice by choice");
	}
	if ($name =~ /^twice/)
	{
		like($perr, qr/reads its table twice/, "$name: the table is read twice");
	}
	else
	{
		unlike($perr, qr/NOTICE/, "$name: nothing to say") or diag($perr);
	}
	is($parallel, $serial, "$name: the same pages as without workers");
	is(verify_output($node, "p_$name"), '', "$name: turbo_verify is clean");
	is(index_info($node, "p_$name", 'live_rows'), $nrows{$table} - int($nrows{$table} / 97),
		"$name: every non-NULL row is indexed");

	my $op = $opclass eq 'real_l2_ops' ? '<->' : '<=>';
	my $q  = random_vector($dim{$table});
	same_as_seq_scan($node,
		"$FORCE_INDEX $ALL_CANDIDATES SET turbovec.probes = 2000;",
		top10_sql($table, $op, $q), "$name: answers like a sequential scan");
	$node->safe_psql('postgres', "DROP INDEX p_$name") unless $name eq 'ivf';
}

# CREATE INDEX CONCURRENTLY: the workers scan under the build's MVCC snapshot
my ($ret, $out, $err) = $node->psql('postgres',
	"SET min_parallel_table_scan_size = 0; SET client_min_messages = debug1;
	 CREATE INDEX CONCURRENTLY p_cic ON p USING turbo (v real_l2_ops) WITH (lists = 24);");
is($ret, 0, 'CREATE INDEX CONCURRENTLY builds') or diag($err);
like($err, $scanned, 'CREATE INDEX CONCURRENTLY: a worker scanned');
is(pages_md5('p_cic'), pages_md5('p_ivf'), 'CREATE INDEX CONCURRENTLY: the same pages');

# an index on an expression: no parallel heap scan (its expression is user
# code), but workers code windows of the vectors the leader computes, and
# the leader leaves parallel mode between windows, so an expression may do
# what parallel mode forbids, here set a parameter (2 MB: the computed
# vectors do not fit, so the encoding pass reads the table again, in
# windows of 768 vectors; the expression runs between windows)
$node->safe_psql('postgres',
	"CREATE FUNCTION halve(real[]) RETURNS real[] LANGUAGE plpgsql IMMUTABLE AS \$\$
	 BEGIN
	   PERFORM set_config('app.halved', 'yes', true);
	   RETURN (SELECT array_agg(x / 2 ORDER BY i) FROM unnest(\$1) WITH ORDINALITY AS u(x, i));
	 END \$\$");
$node->safe_psql('postgres',
	"SET max_parallel_maintenance_workers = 0; SET maintenance_work_mem = '2MB';
	 CREATE INDEX p_expr ON p USING turbo ((halve(v)) real_l2_ops) WITH (lists = 24);");
my $eserial = pages_md5('p_expr');
($ret, $out, $err) = $node->psql('postgres',
	"SET min_parallel_table_scan_size = 0; SET maintenance_work_mem = '2MB';
	 SET client_min_messages = debug1;
	 DROP INDEX p_expr;
	 CREATE INDEX p_expr ON p USING turbo ((halve(v)) real_l2_ops) WITH (lists = 24);");
is($ret, 0, 'an expression index builds with workers') or diag($err);
unlike($err, $scanned, 'expression: no parallel heap scan');
like($err, qr/"p_expr" reads its table twice/, 'expression: the table is read again');
like($err, qr/"p_expr": \d+ vectors coded with 1 parallel workers/,
	'expression: a worker coded vectors');
is(pages_md5('p_expr'), $eserial, 'expression: the same pages as without workers');
is(verify_output($node, 'p_expr'), '', 'expression: turbo_verify is clean');

# rows of another dimension, whoever reads them, fail the build with the
# error a serial build gives
$node->safe_psql('postgres',
	"CREATE TABLE bad AS SELECT * FROM p;
	 INSERT INTO bad (v) SELECT array_fill(1::real, ARRAY[$dim{p} + 1]) FROM generate_series(1, 2000)");
($ret, $out, $err) = $node->psql('postgres',
	"SET min_parallel_table_scan_size = 0;
	 CREATE INDEX bad_idx ON bad USING turbo (v real_l2_ops) WITH (lists = 24);");
isnt($ret, 0, 'a build over rows of two dimensions fails');
like($err, qr/expected 64 dimensions, not 65|expected 65 dimensions, not 64/,
	'with the error about the dimension');

$node->stop;
done_testing();
