
# Copyright (c) turbovec authors

# How long a scan waits for a resident copy that is not ready.
#
#  1. turbovec.not_ready = extent (the default) never waits: the first
#     query after a restart, while the copy is still being built (slowed
#     down by turbovec.test_build_delay), answers from the index pages at
#     once, well under a long turbovec.ready_timeout, with the right rows;
#     once the copy is ready the next query uses it.  not_ready = error
#     still waits ready_timeout for the copy being built, then fails with
#     SQLSTATE 55000.
#  2. A copy that can never become ready on its own is not waited for,
#     even with not_ready = error and a long ready_timeout: an index too
#     big for turbovec.resident_memory, and one beyond
#     turbovec.max_resident_indexes (no registry entry), answer at once
#     from their pages.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20260312);

my $dim   = 16;
my $force = $FORCE_INDEX;
my $seq   = $FORCE_SEQ;

my $node = start_node(
	'readywait',
	conf => preload_conf(
		'turbovec.max_resident_indexes = 2',
		'turbovec.resident_memory = 16MB',
		'turbovec.snapshots = off'));

# Run $sql with the given settings; its output and how long it took.
sub timed
{
	my ($settings, $sql) = @_;
	my $start = time();
	my ($ret, $out, $err) = $node->psql('postgres', "$settings\n$force\n$sql");
	return ($ret, $out, $err, time() - $start);
}

sub state_of
{
	my ($idx) = @_;
	return $node->safe_psql('postgres',
		"SELECT resident_state FROM turbo_indexes WHERE index = '$idx'::regclass");
}

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE n (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('n', $dim, 10000, 0.31) ]}
CREATE INDEX n_l2 ON n USING turbo (v real_l2_ops);
});
wait_ready_ok($node, 'n_l2', 'n_l2 is ready');

# 16000 vectors of 1024 dimensions: a copy of 8.4 MB of codes and 8.3 MB
# of refinement codes (1,040 bytes a row), more than 16 MB.
$node->safe_psql(
	'postgres', q{
CREATE TABLE big (id serial PRIMARY KEY, v real[]);
INSERT INTO big (v) SELECT array_fill((i % 97)::real, ARRAY[1024]) FROM generate_series(1, 16000) i;
CREATE INDEX big_l2 ON big USING turbo (v real_l2_ops);
});
ok($node->poll_query_until('postgres',
		"SELECT resident_state = 'too big' FROM turbo_indexes WHERE index = 'big_l2'::regclass"),
	'big_l2 does not fit turbovec.resident_memory');
cmp_ok(indexes_row($node, 'big_l2', 'resident_bytes_needed'), '>', 16 * 1024 * 1024,
	'big_l2: turbo_indexes says its copy needs more than turbovec.resident_memory');
like(slurp_file($node->logfile),
	qr/index "big_l2" does not fit turbovec.resident_memory.*\n.*DETAIL:  Its resident copy needs \d+ MB; turbovec.resident_memory is 16 MB/,
	'the log says how much memory big_l2 needs');

# The limits size shared memory: set at server start only.
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(name || '=' || setting || ':' || context, ',' ORDER BY name) "
		  . "FROM pg_settings WHERE name IN ('turbovec.max_resident_indexes', 'turbovec.max_databases')"),
	'turbovec.max_databases=64:postmaster,turbovec.max_resident_indexes=2:postmaster',
	'max_resident_indexes and max_databases are postmaster settings');
my ($ret0, $out0, $err0) = $node->psql('postgres', 'SET turbovec.max_resident_indexes = 3');
like($err0, qr/cannot be changed without restarting the server/,
	'max_resident_indexes cannot be SET');

# Both registry entries are taken: c_l2 gets none.
$node->safe_psql(
	'postgres', qq{
CREATE TABLE c (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('c', $dim, 2000, 0.47) ]}
CREATE INDEX c_l2 ON c USING turbo (v real_l2_ops);
});
usleep(500_000);	# a worker round or two
is(state_of('c_l2'), 'not loaded', 'c_l2 has no resident copy');

# 2. Copies that never come are not waited for, even in error mode.
my $long = 'SET turbovec.not_ready = error; SET turbovec.ready_timeout = 20000;';
for my $case (['big', "'{" . join(',', (3) x 1024) . "}'"],
	['c', "'" . random_vector($dim) . "'"])
{
	my ($t, $q) = @$case;
	# distances, not ids: big has ties
	my $sql = "SELECT string_agg(d::text, ',') FROM "
	  . "(SELECT v <-> $q AS d FROM $t ORDER BY v <-> $q LIMIT 10) s";
	my ($ret, $out, $err, $secs) = timed($long, $sql);
	is($ret, 0, "${t}_l2, not_ready = error: the scan succeeds") or diag($err);
	cmp_ok($secs, '<', 10,
		"${t}_l2, not_ready = error: answered at once (${secs}s), not after ready_timeout");
	is($out, $node->safe_psql('postgres', "$seq $sql"),
		"${t}_l2: the rows of a sequential scan");
}

# 1. The first query after a restart, while the copy is being built.
$node->append_conf('postgresql.conf', "turbovec.test_build_delay = 500ms\n");
$node->restart;
my $q   = random_vector($dim);
my $sql = top10_sql('n', '<->', $q);
my ($ret, $out, $err, $secs) =
  timed('SET turbovec.not_ready = extent; SET turbovec.ready_timeout = 5000;', $sql);
is($ret, 0, 'after restart, not_ready = extent: the first query succeeds') or diag($err);
cmp_ok($secs, '<', 2.5,
	"after restart, not_ready = extent: the first query did not wait (${secs}s)");
is($out, $node->safe_psql('postgres', "$seq $ALL_CANDIDATES $sql"),
	'after restart, not_ready = extent: the rows of a sequential scan');
isnt(state_of('n_l2'), 'ready', 'after restart: the copy is still not ready');

($ret, $out, $err, $secs) =
  timed("\\set VERBOSITY verbose\nSET turbovec.not_ready = error; SET turbovec.ready_timeout = 1000;",
	$sql);
isnt($ret, 0, 'after restart, not_ready = error: the scan fails');
like($err, qr/ERROR:  55000: turbo index "n_l2" is not ready/,
	'after restart, not_ready = error: SQLSTATE 55000');
cmp_ok($secs, '>=', 1, "after restart, not_ready = error: it waited ready_timeout (${secs}s)");

wait_ready_ok($node, 'n_l2', 'after restart: the copy gets ready');
# the index's own buffers (both paths read the table for the rows they return)
sub index_blocks
{
	my ($settings) = @_;
	my $out = $node->safe_psql('postgres',
		"$settings $force BEGIN; SELECT count(*) FROM ($sql) s; "
		  . "SELECT pg_stat_get_xact_blocks_fetched('n_l2'::regclass); COMMIT;");
	return (split /\n/, $out)[-1];
}
cmp_ok(index_blocks(''), '<', index_blocks('SET turbovec.use_resident = off;') / 4,
	'once ready, the next query uses the copy');

$node->stop;
done_testing();
