
# Copyright (c) turbovec authors

# A rebuild of a resident copy that ends in an error gives its shared
# memory back and does not leave the copy "building".
#
#  1. An index whose expression raises an error on a rebuild: the caller
#     gets the error and the copy is not left "building"; after a restart
#     without snapshots the worker's own build fails too, and the copy is
#     "failed", never "building".
#  2. turbo_rebuild() under a statement_timeout shorter than the (slowed
#     down) rebuild, several times over, in a turbovec.resident_memory that
#     holds fewer copies than there are attempts: afterwards the copy is
#     not "building", becomes ready again, and a full rebuild still fits.
#  3. turbo_wait_ready() ends on statement_timeout, whatever its timeout.
#  4. A rebuild whose session is terminated meanwhile does not stay
#     "building" either.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

# 128 dimensions: copies of about 2.7 MB (codes and refinement codes), so
# that $attempts leaked ones fill the 16 MB and three fit
my $dim      = 128;
my $nrows    = 15000;
my $attempts = 6;
my $budget   = 16 * 1024 * 1024;

my $node = start_node('rebuild_errors',
	conf => preload_conf('turbovec.resident_memory = 16MB'));

sub set_delay
{
	my ($delay) = @_;
	set_build_delay($node, $delay) or die "turbovec.test_build_delay is not $delay";
}

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE r (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('r', $dim, $nrows, 0.5) ]}
CREATE INDEX r_v ON r USING turbo (v real_l2_ops);
});
wait_ready_ok($node, 'r_v', 'r_v is ready after the build');
my $bytes = indexes_row($node, 'r_v', 'resident_bytes');
cmp_ok($bytes * ($attempts + 1), '>', $budget,
	"$attempts leaked copies of $bytes bytes would not leave room for another");
cmp_ok($bytes * 3, '<', $budget, 'three copies fit turbovec.resident_memory');

# 1. An index expression that fails on a rebuild.
$node->safe_psql(
	'postgres', q{
CREATE TABLE flags (boom boolean);
INSERT INTO flags VALUES (false);
CREATE FUNCTION h(a real[]) RETURNS real[] LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF (SELECT boom FROM public.flags) THEN
		RAISE EXCEPTION 'h went boom';
	END IF;
	RETURN a;
END $$;
CREATE TABLE x (id int, a real[]);
INSERT INTO x SELECT i, ARRAY[i, 1, 2]::real[] FROM generate_series(1, 100) i;
CREATE INDEX x_h ON x USING turbo ((public.h(a)) real_l2_ops);
});
wait_ready_ok($node, 'x_h', 'x_h is ready');
$node->safe_psql('postgres', 'UPDATE flags SET boom = true');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT turbo_rebuild('x_h')");
like($err, qr/h went boom/, 'turbo_rebuild() raises the expression\'s error');
isnt(indexes_row($node, 'x_h', 'resident_state'), 'building',
	'the failed turbo_rebuild() does not leave the copy "building"');
# The failed rebuild kept the older copy, which is still current, so the
# worker may catch it up without evaluating anything.  Started without
# snapshots, the worker builds the copy from the table and fails too; before
# the fix the copy stayed "building" forever.
$node->append_conf('postgresql.conf', 'turbovec.snapshots = off');
$node->restart;
ok($node->poll_query_until('postgres',
		"SELECT resident_state = 'failed' AND NOT ready FROM turbo_indexes "
		  . "WHERE index = 'x_h'::regclass"),
	'once the worker failed too, turbo_indexes says "failed", not "building"');
wait_ready_ok($node, 'r_v', 'the other copy is ready');

# 2. Rebuilds cancelled by statement_timeout.
set_delay('200ms');
for my $i (1 .. $attempts)
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"SET statement_timeout = '300ms'; SELECT turbo_rebuild('r_v');");
	like($err, qr/canceling statement due to statement timeout/,
		"attempt $i: turbo_rebuild() was cancelled by statement_timeout");
}
set_delay('0');
# the worker rebuilds the copy the attempts left behind; before the fix it
# stayed "building" and the leaked copies filled turbovec.resident_memory
is($node->safe_psql('postgres', "SELECT turbo_wait_ready('r_v', 30000)"),
	't', 'the cancelled rebuilds did not stay "building": the worker makes the copy ready');
is($node->safe_psql('postgres', "SELECT turbo_rebuild('r_v')"),
	't', 'a full rebuild still fits: the cancelled attempts freed their memory');
is(indexes_row($node, 'r_v', 'resident_state, resident_bytes'),
	"ready|$bytes", 'the copy is ready, of the same size');

# 3. turbo_wait_ready() obeys statement_timeout.
set_delay('500ms');
my ($bg_out, $bg_err) = ('', '');
my $bg = IPC::Run::start(
	[
		'psql', '-XAtq', '-h', $node->host, '-p', $node->port,
		'-d', 'postgres', '-c', "SELECT turbo_rebuild('r_v')"
	],
	'>', \$bg_out, '2>', \$bg_err,
	IPC::Run::timeout(120));
ok($node->poll_query_until('postgres',
		"SELECT state = 'building' FROM turbo_resident_status() "
		  . "WHERE indexrelid = 'r_v'::regclass"),
	'a rebuild is running');
my $start = time();
($ret, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '200ms'; SELECT turbo_wait_ready('r_v', 600000);");
like($err, qr/canceling statement due to statement timeout/,
	'turbo_wait_ready() is cancelled by statement_timeout');
cmp_ok(time() - $start, '<', 10, 'and returns at once');

# 4. A rebuild whose session is terminated (FATAL: no PG_CATCH runs).
$node->safe_psql('postgres',
	"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
	  . "WHERE query LIKE 'SELECT turbo_rebuild%' AND pid <> pg_backend_pid()");
$bg->finish;
like($bg_err, qr/terminating connection due to administrator command/,
	'the rebuilding session was terminated');
set_delay('0');
is($node->safe_psql('postgres', "SELECT turbo_wait_ready('r_v', 30000)"),
	't', 'the copy is ready again: the terminated rebuild did not stay "building"');
is($node->safe_psql('postgres', "SELECT turbo_rebuild('r_v')"),
	't', 'and a full rebuild fits');

done_testing();
