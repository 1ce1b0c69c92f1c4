
# Copyright (c) turbovec authors

# The worker's rebuild of a resident copy gives way to DDL.
#
# The worker holds AccessShareLock on the table and the index while it
# copies, and used to hold it to the end of the copy: after CREATE INDEX of
# a million rows a DROP INDEX waited 20 s, and every query of the table
# queued behind the waiting DROP.  Now the worker looks for a waiting lock
# request between batches of rows, drops its unfinished copy, lets go and
# copies again once the lock is free.
#
# turbovec.test_build_delay (900 ms after every 1024 rows) makes a worker
# copy of 10000 rows last about 9 s; snapshots are off, so a restart makes
# the worker copy from the table.  With lock_timeout = 5s:
#
#  1. ALTER TABLE during the copy succeeds within a second or so, a query
#     issued while it waits succeeds too, the log says the copy gave way,
#     and the worker copies again by itself: the copy turns ready without
#     a scan asking for it, and answers like a sequential scan.
#  2. A transaction that holds ACCESS EXCLUSIVE for 4 s (longer than the
#     2 s an idle worker lingers): the worker stays and copies once the
#     lock is gone, again without a scan asking.
#  3. With snapshots on, the load of the snapshot at start-up (its file
#     read slowed to 3 s a piece) gives way to ALTER TABLE too, and the
#     worker loads the snapshot again afterwards rather than copy from the
#     table.
#  4. DROP INDEX during the copy succeeds quickly and its entry goes.
#  5. On a hot standby, replaying a DROP INDEX takes the same lock: replay
#     does not wait for the standby worker's copy either (it used to wait
#     up to max_standby_streaming_delay, then cancel the copy).
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

srand(20261205);

my $dim   = 16;
my $nrows = 10000;

my $node = start_node(
	'givesway',
	init => { allows_streaming => 1 },
	conf => preload_conf('turbovec.snapshots = off'));

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE g (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('g', $dim, $nrows, 0.19) ]}
CREATE INDEX g_l2 ON g USING turbo (v real_l2_ops);
});
wait_ready_ok($node, 'g_l2', 'g_l2 is ready');

# The copy's state and rows done on $on (default: the primary), from
# shared memory alone: reading it does not ask the worker for anything.
sub copy_state
{
	my ($idx, $on) = @_;
	return ($on // $node)->safe_psql('postgres',
		"SELECT state, rows_done FROM turbo_resident_status() "
		  . "WHERE indexrelid = '$idx'::regclass");
}

# Poll until the copy of $idx is building with some rows done.
sub wait_building
{
	my ($idx, $on) = @_;
	my $deadline = time() + 60;
	while (time() < $deadline)
	{
		my ($state, $done) = split /\|/, copy_state($idx, $on);
		return 1 if defined $state && $state eq 'building' && $done > 0;
		usleep(20_000);
	}
	return 0;
}

# Poll until the copy of $idx is ready, without running a scan.
sub wait_ready_quietly
{
	my ($idx, $secs) = @_;
	my $deadline = time() + $secs;
	while (time() < $deadline)
	{
		my ($state) = split /\|/, copy_state($idx);
		return 1 if defined $state && $state eq 'ready';
		usleep(100_000);
	}
	return 0;
}

# Restart with the slow copy, and wait until the worker is copying.
sub restart_slow
{
	my ($label) = @_;
	$node->restart;
	ok(wait_building('g_l2'), "$label: the worker is copying after the restart");
}

# Run $sql with lock_timeout = 5s; its exit status, stderr and duration.
sub timed
{
	my ($sql) = @_;
	my $start = time();
	my ($ret, $out, $err) = $node->psql('postgres', "SET lock_timeout = '5s'; $sql");
	return ($ret, $err, time() - $start);
}

# The checks of one lock request the copy gave way to: it succeeded (when
# its exit status is known), it took less than the bound, and the log of
# $args{on} says the copy of $args{index} gave way after $args{log_offset}.
sub gave_way_ok
{
	my (%args) = @_;
	my $what = $args{what};

	if (defined $args{ret})
	{
		is($args{ret}, 0, "$what during the copy succeeds within lock_timeout")
		  or diag($args{err});
	}
	cmp_ok($args{secs}, '<', $args{bound}, "$what did not wait for the copy ($args{secs}s)");
	ok( log_has(
			$args{on},
			qr/the resident copy of index "$args{index}" gives way to a waiting lock request/,
			$args{log_offset}, 10),
		"$what: the log says the copy gave way");
}

$node->append_conf('postgresql.conf', "turbovec.test_build_delay = 900ms\n");

# 1. ALTER TABLE, and a query queued behind it.
restart_slow('ALTER TABLE');
my $log_offset = -s $node->logfile;
my ($alter_out, $alter_err) = ('', '');
my $alter_start = time();
my $alter = IPC::Run::start(
	[
		'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
		'-d', 'postgres', '-c', "SET lock_timeout = '5s'",
		'-c', 'ALTER TABLE g ADD COLUMN note text'
	],
	'>', \$alter_out, '2>', \$alter_err,
	IPC::Run::timeout(60));
# the query comes once the ALTER waits, or after it: either way it must
# not wait for the copy
usleep(100_000);
my ($qret, $qerr, $qsecs) = timed('SELECT count(*) FROM g');
is($qret, 0, 'a query of the table issued during the ALTER succeeds') or diag($qerr);
cmp_ok($qsecs, '<', 4, "the query did not wait for the copy (${qsecs}s)");
$alter->finish;
gave_way_ok(
	what => 'ALTER TABLE',
	on => $node,
	ret => $alter->result(0),
	err => $alter_err,
	secs => time() - $alter_start,
	bound => 4,
	index => 'g_l2',
	log_offset => $log_offset);
ok(wait_ready_quietly('g_l2', 60), 'the worker copies again by itself: the copy is ready');
for my $i (1 .. 3)
{
	my $sql = top10_sql('g', '<->', random_vector($dim));
	same_as_seq_scan($node, "$FORCE_INDEX $ALL_CANDIDATES", $sql,
		"after giving way: query $i equals a sequential scan");
}
is(verify_output($node, 'g_l2'), '', 'turbo_verify: the new copy equals the index pages');

# 2. A lock held longer than an idle worker lingers.
restart_slow('held lock');
my ($lock_out, $lock_err) = ('', '');
my $lock_start = time();
my $locker = IPC::Run::start(
	[
		'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
		'-d', 'postgres', '-c',
		"BEGIN; SET LOCAL lock_timeout = '5s'; LOCK TABLE g IN ACCESS EXCLUSIVE MODE; "
		  . "SELECT pg_sleep(4); COMMIT;"
	],
	'>', \$lock_out, '2>', \$lock_err,
	IPC::Run::timeout(60));
$locker->finish;
is($locker->result(0), 0, 'LOCK TABLE during the copy succeeds within lock_timeout')
  or diag($lock_err);
cmp_ok(time() - $lock_start, '<', 8, 'LOCK TABLE did not wait for the copy');
ok(wait_ready_quietly('g_l2', 60),
	'the worker stayed through the lock and copied again: the copy is ready');

# 3. The snapshot load at start-up.
$node->append_conf('postgresql.conf', "turbovec.snapshots = on\n");
$node->reload;
$node->safe_psql('postgres', 'CHECKPOINT');
ok( $node->poll_query_until(
		'postgres',
		"SELECT snapshot_bytes > 0 FROM turbo_indexes WHERE index = 'g_l2'::regclass"),
	'snapshot: the copy is dumped');
# two pieces (stream and refinements) of 3 s: without giving way the ALTER
# would wait about 6 s, past its lock_timeout
$node->append_conf('postgresql.conf', "turbovec.test_build_delay = 3s\n");
$node->restart;
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'building' FROM turbo_resident_status() "
		  . "WHERE indexrelid = 'g_l2'::regclass"),
	'snapshot: the worker is loading the snapshot after the restart');
$log_offset = -s $node->logfile;
my ($sret, $serr, $ssecs) = timed('ALTER TABLE g ADD COLUMN note2 text');
gave_way_ok(
	what => 'snapshot: ALTER TABLE',
	on => $node,
	ret => $sret,
	err => $serr,
	secs => $ssecs,
	bound => 4.5,
	index => 'g_l2',
	log_offset => $log_offset);
ok(wait_ready_quietly('g_l2', 60), 'snapshot: the copy is ready again');
ok( log_has(
		$node, qr/turbovec loaded snapshot "[^"]+" for index "g_l2"/,
		$log_offset, 1),
	'snapshot: the worker loaded the snapshot again');
$node->append_conf('postgresql.conf',
	"turbovec.snapshots = off\nturbovec.test_build_delay = 900ms\n");

# 4. DROP INDEX.
restart_slow('DROP INDEX');
$log_offset = -s $node->logfile;
my ($dret, $derr, $dsecs) = timed('DROP INDEX g_l2');
gave_way_ok(
	what => 'DROP INDEX',
	on => $node,
	ret => $dret,
	err => $derr,
	secs => $dsecs,
	bound => 4,
	index => 'g_l2',
	log_offset => $log_offset);
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 0 FROM turbo_resident_status() r "
		  . "WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = r.indexrelid)"),
	'the dropped index has no resident entry');

# 5. Replay on a standby.  The primary builds and copies at full speed;
# the standby, from a backup taken then, copies slowly: three times the
# rows, so that its copy (about 27 s) is still going when the test looks,
# however long the standby takes to start and catch up on a loaded machine.
$node->append_conf('postgresql.conf', "turbovec.test_build_delay = 0\n");
$node->reload;
$node->safe_psql(
	'postgres', qq{
CREATE TABLE s (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('s', $dim, 3 * $nrows, 0.19) ]}
CREATE INDEX s_l2 ON s USING turbo (v real_l2_ops);
});
$node->backup('givesway_backup');
my $standby = PostgreSQL::Test::Cluster->new('givesway_standby');
$standby->init_from_backup($node, 'givesway_backup', has_streaming => 1);
$standby->append_conf('postgresql.conf', "turbovec.test_build_delay = 900ms\n");
$standby->start;
wait_for_replay($node, $standby);
ok(wait_building('s_l2', $standby), 'standby: the worker is copying s_l2');
$log_offset = -s $standby->logfile;
$node->safe_psql('postgres', 'DROP INDEX s_l2');
my $replay_start = time();
wait_for_replay($node, $standby);
gave_way_ok(
	what => 'standby: replaying DROP INDEX',
	on => $standby,
	secs => time() - $replay_start,
	bound => 4,
	index => 's_l2',
	log_offset => $log_offset);
is($standby->safe_psql('postgres', "SELECT count(*) FROM pg_class WHERE relname = 's_l2'"),
	'0', 'standby: the index is gone');

$standby->stop;
$node->stop;
done_testing();
