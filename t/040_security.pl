
# Copyright (c) turbovec authors

# User code run by turbovec outside the user's own command runs as the
# table owner, under SECURITY_RESTRICTED_OPERATION and a safe search_path,
# and turbovec's own SQL in the worker cannot be captured by user objects.
#
#  1. A non-superuser's expression index calls a function that logs who
#     runs it.  Neither the worker's rebuild of the resident copy nor a
#     superuser's turbo_rebuild() runs it as a superuser: every call runs
#     as the table owner, restricted, with search_path pg_catalog, pg_temp.
#  2. In a database whose search_path (ALTER DATABASE SET) puts a schema
#     with its own to_timestamp(numeric), now() and oid "=" before
#     pg_catalog, the worker lists, rebuilds and records the indexes
#     without calling any of them.
#  3. SQL functions check privileges before they lock: a role without
#     SELECT on the table gets "permission denied" at once while another
#     session holds an ACCESS EXCLUSIVE lock on it, instead of queueing.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $node = start_node('security', conf => preload_conf());

# 1. The expression index of a non-superuser.
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION turbovec;
CREATE ROLE alice LOGIN;
CREATE SCHEMA s AUTHORIZATION alice;
});
$node->safe_psql(
	'postgres', q{
SET ROLE alice;
CREATE TABLE s.calls (who name, super boolean, restricted boolean, path text, app text);
-- g records who evaluates it, and whether SET ROLE (even to oneself) is
-- refused, as it is under SECURITY_RESTRICTED_OPERATION; a SET ROLE that
-- went through is rolled back with its subtransaction
CREATE FUNCTION s.g(x real[]) RETURNS real[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
	u name := current_user;
	su boolean;
	r boolean;
BEGIN
	SELECT rolsuper INTO su FROM pg_catalog.pg_roles WHERE rolname = u;
	BEGIN
		PERFORM pg_catalog.set_config('role', 'alice', true);
		RAISE EXCEPTION 'not restricted';
	EXCEPTION WHEN OTHERS THEN
		r := SQLSTATE <> 'P0001';
	END;
	INSERT INTO s.calls VALUES (u, su, r, pg_catalog.current_setting('search_path'),
		pg_catalog.current_setting('application_name'));
	RETURN x;
END $$;
CREATE FUNCTION s.f(x real[]) RETURNS real[] LANGUAGE sql IMMUTABLE AS 'SELECT s.g(x)';
CREATE TABLE s.t (id int, a real[]);
INSERT INTO s.t SELECT i, ARRAY[i, 1, 2, 3]::real[] FROM generate_series(1, 50) i;
CREATE INDEX t_f ON s.t USING turbo ((s.f(a)) real_l2_ops);
});
wait_ready_ok($node, 's.t_f', 'the copy of the expression index is ready');
# CREATE INDEX evaluated f once per row, and so did the worker, whose
# transaction commits just after the copy is ready
ok($node->poll_query_until('postgres', 'SELECT count(*) = 100 FROM s.calls'),
	'CREATE INDEX and the worker each evaluated the expression once per row');

my $calls = q{SELECT count(*), count(*) FILTER (WHERE super),
	count(*) FILTER (WHERE who <> 'alice' OR NOT restricted)
	FROM s.calls};
is($node->safe_psql('postgres', $calls),
	'100|0|0',
	'the worker evaluated the expression as alice, restricted, never as a superuser');
is( $node->safe_psql(
		'postgres',
		# the worker's evaluations: it has no application_name, clients here do
		# (from 17 on CREATE INDEX, too, runs with the safe search_path)
		q{SELECT count(*) FROM s.calls
		  WHERE app = '' AND path = 'pg_catalog, pg_temp'}),
	'50',
	'the worker evaluated it with search_path pg_catalog, pg_temp')
  or diag($node->safe_psql('postgres',
	'SELECT app, path, count(*) FROM s.calls GROUP BY 1, 2'));

is($node->safe_psql('postgres', "SELECT turbo_rebuild('s.t_f')"),
	't', 'a superuser rebuilds the copy of alice\'s index');
is($node->safe_psql('postgres', $calls),
	'150|0|0', 'turbo_rebuild() by a superuser evaluated the expression as alice, restricted');
is( $node->safe_psql(
		'postgres',
		"SELECT turbo_rebuild('s.t_f'), current_user, current_setting('search_path')"),
	't|postgres|"$user", public',
	'and its user and search_path within the statement');

# 2. Objects that would capture the worker's SQL.
$node->safe_psql('postgres', 'CREATE DATABASE capt');
$node->safe_psql(
	'capt', q{
CREATE EXTENSION turbovec;
CREATE SCHEMA trap;
CREATE TABLE trap.calls (fn text, backend text);
GRANT ALL ON SCHEMA trap TO PUBLIC;
GRANT ALL ON trap.calls TO PUBLIC;
CREATE FUNCTION trap.log(fn text) RETURNS void LANGUAGE sql
	SET search_path = pg_catalog AS $$
	INSERT INTO trap.calls SELECT fn, backend_type FROM pg_stat_activity
	WHERE pid = pg_backend_pid() $$;
CREATE FUNCTION trap.to_timestamp(numeric) RETURNS timestamptz LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
BEGIN
	PERFORM trap.log('to_timestamp');
	RETURN to_timestamp($1::float8);
END $$;
CREATE FUNCTION trap.now() RETURNS timestamptz LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
BEGIN
	PERFORM trap.log('now');
	RETURN now();
END $$;
CREATE FUNCTION trap.oideq(oid, oid) RETURNS boolean LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
BEGIN
	PERFORM trap.log('=');
	RETURN $1 = $2;
END $$;
CREATE OPERATOR trap.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = trap.oideq);
CREATE TABLE c (id int, v real[]);
INSERT INTO c SELECT i, ARRAY[i, 2, 3]::real[] FROM generate_series(1, 100) i;
ALTER DATABASE capt SET search_path = trap, pg_catalog, public;
});
# a new worker starts with the database's settings
$node->safe_psql('capt', 'CREATE INDEX c_v ON c USING turbo (v real_l2_ops)');
wait_ready_ok($node, 'c_v', 'the index in database capt is ready', 'capt');
ok( $node->poll_query_until(
		'capt',
		'SELECT ready FROM public.turbovec_index_state s '
		  . "WHERE s.indexrelid OPERATOR(pg_catalog.=) 'c_v'::regclass"),
	'the worker recorded the ready copy in the shadow table');
is( $node->safe_psql(
		'capt', q{SELECT count(*) FROM trap.calls WHERE backend = 'turbovec worker'}),
	'0', 'the worker\'s SQL called none of the capturing objects');
$node->safe_psql('capt', q{SELECT count(*) FROM pg_class WHERE oid = 'c_v'::regclass});
cmp_ok(
	$node->safe_psql('capt', q{SELECT count(*) FROM trap.calls WHERE backend = 'client backend'}),
	'>', 0, 'the capturing objects do capture unqualified SQL');

# 3. Privileges are checked before any lock is taken.
$node->safe_psql(
	'postgres', q{
CREATE ROLE mallory LOGIN;
CREATE TABLE p (id int, v real[]);
INSERT INTO p VALUES (1, '{1,2,3}');
CREATE INDEX p_v ON p USING turbo (v real_l2_ops);
});
wait_ready_ok($node, 'p_v', 'p_v is ready');

my ($in, $out, $err) = ('', '', '');
my $locker = IPC::Run::start(
	[ 'psql', '-XAtq', '-h', $node->host, '-p', $node->port, '-d', 'postgres', '-f', '-' ],
	'<', \$in, '>', \$out, '2>', \$err,
	IPC::Run::timeout(120));
$in .= "BEGIN;\nLOCK TABLE p IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n";
$locker->pump until $out =~ /locked/;

foreach my $call (
	"turbo_wait_ready('p_v', 1000)", "turbo_index_info('p_v')",
	"turbo_index_layout('p_v')", "turbo_verify('p_v')",
	"turbo_rebuild('p_v')", "turbo_snapshot_now('p_v')")
{
	my ($ret, $o, $e) = $node->psql(
		'postgres',
		"SET ROLE mallory;\nSET lock_timeout = '5s';\n\\set VERBOSITY verbose\n"
		  . "SELECT * FROM $call;");
	my $denied = ($call =~ /layout/) ? qr/^$/ : qr/ERROR:  42501: (permission denied|must be owner)/;
	like($e, $denied, "$call: denied at once while the table is locked");
	is($o, ($call =~ /layout/) ? '||||' : '', "$call: no result");
}
is( $node->safe_psql(
		'postgres',
		"SET ROLE mallory; SET lock_timeout = '5s'; "
		  . "SELECT dim IS NULL, lists IS NULL FROM turbo_indexes "
		  . "WHERE index = 'p_v'::regclass"),
	't|t', 'turbo_indexes shows mallory no layout of p_v, without waiting for the lock');

$in .= "COMMIT;\n\\q\n";
$locker->finish;

done_testing();
