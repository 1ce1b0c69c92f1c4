
# Copyright (c) turbovec authors

# CREATE INDEX reads the table with parallel workers (tvparallel.c): in the
# sampling pass of an IVF build the workers send their vectors to the
# leader, in the encoding pass of a build whose vectors do not fit in
# maintenance_work_mem (and of a flat build) their codes.  With
# min_parallel_table_scan_size = 0 a small table is enough.  Each build must
# say in a DEBUG1 message that a worker scanned, and write exactly the
# pages of the same build without workers: the leader lays the lists out
# in TID order whoever read which row.  The indexes must pass turbo_verify
# and answer like a sequential scan.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20261203);

my $dim   = 64;
my $nrows = 6000;

my $node = start_node('parscan',
	conf => "max_parallel_maintenance_workers = 1\nautovacuum = off\n");

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE EXTENSION pageinspect;
CREATE TABLE p (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('p', $dim, $nrows, 0.54, 97) ]}
});

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
	my ($idx, $opclass, $with, $parallel, $settings) = @_;
	my $par = $parallel
	  ? 'SET min_parallel_table_scan_size = 0;'
	  : 'SET max_parallel_maintenance_workers = 0;';
	my ($ret, $out, $err) = $node->psql('postgres',
		"$par $settings SET client_min_messages = debug1;
		 DROP INDEX IF EXISTS $idx;
		 CREATE INDEX $idx ON p USING turbo (v $opclass) $with;");
	is($ret, 0, "$idx builds") or diag($err);
	return ($err, pages_md5($idx));
}

my $scanned = qr/table scanned by the leader and 1 parallel workers/;

for my $case (
	[ 'ivf',  'real_l2_ops',     'WITH (lists = 24)', '' ],
	[ 'flat', 'real_cosine_ops', 'WITH (lists = 0)',  '' ],
	# 1.5 MB of vectors do not fit in 1 MB: the sampling pass, then an
	# encoding pass over the table, both with the worker
	[ 'twice', 'real_l2_ops', 'WITH (lists = 8)', "SET maintenance_work_mem = '1MB';" ],
	# from 1,024 lists on, vectors go to lists through groups of lists
	# (tvivf.c): k-means rounds with the worker, then both passes as above.
	# 5 MB: the vectors do not fit, their codes do (with less, a parallel
	# build's queues leave less room for codes than a serial build has, and
	# the layouts differ by design)
	[ 'grouped', 'real_cosine_ops', 'WITH (lists = 1100)', '' ],
	[ 'grouped_twice', 'real_l2_ops', 'WITH (lists = 1100)', "SET maintenance_work_mem = '5MB';" ])
{
	my ($name, $opclass, $with, $settings) = @$case;
	my ($serr, $serial) = build("p_$name", $opclass, $with, 0, $settings);
	unlike($serr, $scanned, "$name: no worker without parallel maintenance workers");
	my ($perr, $parallel) = build("p_$name", $opclass, $with, 1, $settings);
	my @scans = $perr =~ /$scanned/g;
	is(scalar @scans, $name =~ /twice/ ? 2 : 1,
		"$name: a worker took part in every heap scan");
	like($perr, qr/reads its table twice/, "$name: the table is read twice")
	  if $name =~ /twice/;
	is($parallel, $serial, "$name: the same pages as without workers");
	is(verify_output($node, "p_$name"), '', "$name: turbo_verify is clean");
	is(index_info($node, "p_$name", 'live_rows'), $nrows - int($nrows / 97),
		"$name: every non-NULL row is indexed");

	my $op = $opclass eq 'real_l2_ops' ? '<->' : '<=>';
	my $q  = random_vector($dim);
	same_as_seq_scan($node,
		"$FORCE_INDEX $ALL_CANDIDATES SET turbovec.probes = 2000;",
		top10_sql('p', $op, $q), "$name: answers like a sequential scan");
}

# CREATE INDEX CONCURRENTLY: the workers scan under the build's MVCC snapshot
my ($ret, $out, $err) = $node->psql('postgres',
	"SET min_parallel_table_scan_size = 0; SET client_min_messages = debug1;
	 CREATE INDEX CONCURRENTLY p_cic ON p USING turbo (v real_l2_ops) WITH (lists = 24);");
is($ret, 0, 'CREATE INDEX CONCURRENTLY builds') or diag($err);
like($err, $scanned, 'CREATE INDEX CONCURRENTLY: a worker scanned');
is(pages_md5('p_cic'), pages_md5('p_ivf'), 'CREATE INDEX CONCURRENTLY: the same pages');

# rows of another dimension, whoever reads them, fail the build with the
# error a serial build gives
$node->safe_psql('postgres',
	"CREATE TABLE bad AS SELECT * FROM p;
	 INSERT INTO bad (v) SELECT array_fill(1::real, ARRAY[$dim + 1]) FROM generate_series(1, 2000)");
($ret, $out, $err) = $node->psql('postgres',
	"SET min_parallel_table_scan_size = 0;
	 CREATE INDEX bad_idx ON bad USING turbo (v real_l2_ops) WITH (lists = 24);");
isnt($ret, 0, 'a build over rows of two dimensions fails');
like($err, qr/expected 64 dimensions, not 65|expected 65 dimensions, not 64/,
	'with the error about the dimension');

$node->stop;
done_testing();
