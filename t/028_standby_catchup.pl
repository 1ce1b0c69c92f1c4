
# Copyright (c) turbovec authors

# On a hot standby, keeping the resident copy in step with replay never
# stalls replay.
#
# WAL replay moves the index under the standby's copy with every insert.
# Its worker used to rebuild the copy from the table each time, and a
# rebuild that lost its race three times kept the metapage locked through
# a fourth pass over the table, so the startup process queued on that lock
# and replay stopped for a whole pass.  Now the worker catches the copy up
# from the pages and fetches only the changed rows, with no index lock
# across table access.  With the standby's table passes slowed to about
# 2 s (turbovec.test_build_delay) and pgbench inserting on the primary for
# 10 s, every probe of the replay delay stays under a second; afterwards
# the standby's copy gets ready and current and answers like a sequential
# scan.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20260314);

my $dim   = 16;
my $force = $FORCE_INDEX;
my $seq   = $FORCE_SEQ;

my $primary = start_node('catchup_primary',
	init => { allows_streaming => 1 }, conf => preload_conf());
$primary->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE s (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('s', $dim, 10000, 0.29) ]}
CREATE INDEX s_l2 ON s USING turbo (v real_l2_ops);
});
my $standby = start_standby($primary, 'catchup_backup', 'catchup_standby');
wait_for_replay($primary, $standby);
wait_ready_ok($standby, 's_l2', 'the standby\'s copy is ready');
$standby->append_conf('postgresql.conf', "turbovec.test_build_delay = 200ms\n");
$standby->reload;
ok( $standby->poll_query_until(
		'postgres', "SELECT current_setting('turbovec.test_build_delay') = '200ms'"),
	'the standby\'s table passes are slow');

my $tmp   = PostgreSQL::Test::Utils::tempdir;
my $script = insert_script($tmp, 's', $dim);
my ($pb_out, $pb_err) = ('', '');
my $pgbench = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '2', '-j', '2', '-T', '10', '-R', '200',
		'--random-seed=11', '-f', $script,
		'-h', $primary->host, '-p', $primary->port, 'postgres'
	],
	'>', \$pb_out, '2>', \$pb_err,
	IPC::Run::timeout(120));

# Probe: how long until the standby has replayed what the primary wrote.
my ($probes, $worst) = (0, 0);
my $end = time() + 9;
while (time() < $end)
{
	my $lsn   = $primary->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
	my $start = time();
	$standby->poll_query_until('postgres',
		"SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")
	  or die 'the standby stopped replaying';
	my $lag = time() - $start;
	$worst = $lag if $lag > $worst;
	$probes++;
	usleep(100_000);
}
$pgbench->finish;
is($pgbench->result(0), 0, 'pgbench succeeded') or diag($pb_err);
cmp_ok($probes, '>', 10, "the replay delay was probed $probes times");
cmp_ok($worst, '<', 1, "replay never stalled for a second (worst ${worst}s)");

wait_for_replay($primary, $standby);
ok( $standby->poll_query_until(
		'postgres', q{
SELECT r.state = 'ready' AND r.change_count = i.change_count
FROM turbo_resident_status() r, turbo_index_info('s_l2') i
WHERE r.indexrelid = 's_l2'::regclass}),
	'the standby\'s copy gets ready and current');
is(verify_output($standby, 's_l2'), '', 'turbo_verify on the standby: the copy equals the pages');
for my $i (1 .. 3)
{
	my $sql = top10_sql('s', '<->', random_vector($dim));
	is($standby->safe_psql('postgres', "$force $ALL_CANDIDATES $sql"),
		$standby->safe_psql('postgres', "$seq $sql"),
		"standby query $i equals a sequential scan");
}

$standby->stop;
$primary->stop;
done_testing();
