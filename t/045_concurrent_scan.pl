
# Copyright (c) turbovec authors

# Scans of the index pages while other sessions insert (issue 8).
#
# A scan reads the metapage, then the IVF directory, then follows the
# chains of the lists it probes; inserts meanwhile append blocks to those
# lists.  A chain that an insert extended after the scan read the metapage
# is not corrupt, and must not be reported as "broken".
#
# pgbench runs for a while with 4 clients mixing kNN queries (most with the
# resident copy off, so they walk the pages; some through the copy) and
# inserts of 50 rows per transaction, on a flat and an IVF index.  Pass = no client aborted (a
# query error aborts its client), and turbo_verify is clean afterwards.
#
# Then a hot standby answers the same queries, and runs turbo_verify, while
# it replays the inserts the primary goes on with: replay appends blocks
# under both, and neither may take that for damage.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $dim     = 32;
my $nrows   = 20000;
my $seconds = 20;

my $node = start_node('concurrent_scan',
	init => { allows_streaming => 1 },
	conf => preload_conf('enable_seqscan = off', 'enable_bitmapscan = off'));

$node->safe_psql('postgres', 'CREATE EXTENSION turbovec');
for my $t ('t_flat', 't_ivf')
{
	$node->safe_psql('postgres',
		"CREATE TABLE $t (id serial PRIMARY KEY, v real[]);\n"
		  . random_rows_sql($t, $dim, $nrows, 0.41));
}
$node->safe_psql('postgres',
	"CREATE TABLE q (id int PRIMARY KEY, v real[]);
	 SELECT setseed(0.42);
	 INSERT INTO q SELECT i, (SELECT array_agg((random() * 2 - 1)::real)
		FROM generate_series(1, $dim) WHERE i > 0) FROM generate_series(1, 1000) i;
	 CREATE INDEX t_flat_idx ON t_flat USING turbo (v real_l2_ops);
	 CREATE INDEX t_ivf_idx ON t_ivf USING turbo (v real_l2_ops) WITH (lists = 64);");

my $query = sub {
	my ($t, $resident) = @_;
	return "\\set r random(1, 1000)\n"
	  . "SET turbovec.use_resident = " . ($resident ? 'on' : 'off') . ";\n"
	  . "SELECT count(*) FROM (SELECT id FROM $t "
	  . "ORDER BY v <-> (SELECT v FROM q WHERE id = :r) LIMIT 10) s;\n";
};
my $insert = sub {
	my ($t) = @_;
	return "INSERT INTO $t (v) SELECT (SELECT array_agg((random() * 2 - 1)::real) "
	  . "FROM generate_series(1, $dim) WHERE i > 0) FROM generate_series(1, 50) i;\n";
};

# About half the transactions query, half insert.  A failed query aborts its client and pgbench exits 2.
$node->pgbench(
	"-n -c 4 -j 2 -T $seconds",
	0,
	[qr{processed: [1-9]}],
	[qr{\A(?!.*(?:ERROR|aborted|broken chain))}s],
	'queries beside inserts of 50 rows: no errors',
	{
		'041_query_ivf@2'   => $query->('t_ivf'),
		'041_query_flat@1'  => $query->('t_flat'),
		'041_query_res@1'   => $query->('t_ivf', 1),
		'041_insert_ivf@2'  => $insert->('t_ivf'),
		'041_insert_flat@1' => $insert->('t_flat'),
	});

for my $idx ('t_flat_idx', 't_ivf_idx')
{
	is(verify_output($node, $idx), '', "$idx: turbo_verify is clean");
}
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM t_ivf'),
	'>', $nrows, 'the inserts went in');

# A standby: queries and turbo_verify while the primary inserts
my $standby = start_standby($node, 'b041', 'concurrent_scan_standby');
my $basedir = $node->basedir;
for my $t ('t_flat', 't_ivf')
{
	PostgreSQL::Test::Utils::append_to_file("$basedir/041_bg_$t.sql", $insert->($t));
}
my ($bg_out, $bg_err) = ('', '');
my $bg = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '2', '-j', '2', '-T', $seconds / 2,
		'-f', "$basedir/041_bg_t_flat.sql", '-f', "$basedir/041_bg_t_ivf.sql",
		'-h', $node->host, '-p', $node->port, 'postgres'
	],
	'>', \$bg_out, '2>', \$bg_err,
	IPC::Run::timeout(120));

# turbo_verify's problems (any row) make this transaction fail
my $verify = sub {
	my ($idx) = @_;
	return "SELECT 1 / (count(*) = 0)::int FROM turbo_verify('$idx');\n";
};
$standby->pgbench(
	"-n -c 2 -j 2 -T " . ($seconds / 2),
	0,
	[qr{processed: [1-9]}],
	[qr{\A(?!.*(?:ERROR|aborted|broken chain))}s],
	'standby: queries and turbo_verify during replay: no errors',
	{
		'041_sb_query_ivf@4'   => $query->('t_ivf'),
		'041_sb_query_flat@2'  => $query->('t_flat'),
		'041_sb_query_res@1'   => $query->('t_ivf', 1),
		'041_sb_verify_ivf@1'  => $verify->('t_ivf_idx'),
		'041_sb_verify_flat@1' => $verify->('t_flat_idx'),
	});
$bg->finish;
like($bg_out, qr{processed: [1-9]}, 'the primary inserted meanwhile');
wait_for_replay($node, $standby);
for my $idx ('t_flat_idx', 't_ivf_idx')
{
	is(verify_output($standby, $idx), '', "standby: $idx: turbo_verify is clean");
}

$standby->stop;
$node->stop;
done_testing();
