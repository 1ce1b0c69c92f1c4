
# Copyright (c) turbovec authors

# Snapshots through REINDEX, DROP INDEX and DROP DATABASE.
#
# A snapshot names the relfilenode it was dumped from, so REINDEX makes the
# old file useless: once the worker has built the copy of the new index,
# the next checkpoint must dump it, and a restart must then load it with no
# WARNING (not refuse an old file and rebuild).  DROP INDEX removes the
# index's file.  A database whose indexes have a worker can still be
# dropped (workers exit when idle).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20250306);

my $dim   = 16;
my $force = "$FORCE_INDEX $ALL_CANDIDATES";

my $node = start_node('lifecycle', conf => preload_conf());

sub status
{
	my ($idx, $cols, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		"SELECT $cols FROM turbo_resident_status() WHERE indexrelid = '$idx'::regclass");
}

# Poll $sql until it returns 't', at most $secs seconds.
sub poll_true
{
	my ($sql, $secs, $db) = @_;
	my $deadline = time() + $secs;
	while (time() < $deadline)
	{
		return 1 if $node->safe_psql($db // 'postgres', $sql) eq 't';
		usleep(100_000);
	}
	return 0;
}

sub check_answers
{
	my ($label) = @_;
	for my $i (1 .. 3)
	{
		my $q = random_vector($dim);
		same_as_seq_scan($node, $force, top10_sql('x', '<->', $q),
			"$label: query $i equals a sequential scan");
	}
}

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE x (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('x', $dim, 2000, 0.37) ]}
CREATE INDEX x_l2 ON x USING turbo (v real_l2_ops);
CREATE INDEX x_gone ON x USING turbo (v real_cosine_ops);
});
foreach my $idx ('x_l2', 'x_gone')
{
	wait_ready_ok($node, $idx, "$idx is ready");
}
$node->safe_psql('postgres', 'CHECKPOINT');
ok( poll_true(
		"SELECT count(*) = 2 FROM turbo_indexes WHERE snapshot_time IS NOT NULL", 20),
	'both indexes have a snapshot');

my $dboid = database_oid($node, 'postgres');
my %rel   = map { $_ => snapshot_rel($dboid, index_oid($node, $_)) } ('x_l2', 'x_gone');
ok(-f $node->data_dir . "/$rel{$_}", "$_ has its file") for sort keys %rel;

# REINDEX: the copy of the new index is built, then dumped after a checkpoint.
my $t0 = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
my $filenode = $node->safe_psql('postgres', "SELECT pg_relation_filenode('x_l2')");
$node->safe_psql('postgres', 'REINDEX INDEX x_l2');
isnt($node->safe_psql('postgres', "SELECT pg_relation_filenode('x_l2')"),
	$filenode, 'REINDEX gave x_l2 a new relfilenode');
ok(poll_true("SELECT state = 'ready' AND ready_since > '$t0' FROM turbo_resident_status() "
		  . "WHERE indexrelid = 'x_l2'::regclass", 30),
	'after REINDEX: the copy of the new index is ready');
check_answers('after REINDEX');
$node->safe_psql('postgres', 'CHECKPOINT');
ok( poll_true(
		"SELECT coalesce(snapshot_time > '$t0', false) FROM turbo_resident_status() "
		  . "WHERE indexrelid = 'x_l2'::regclass", 10),
	'after REINDEX and a checkpoint: the new copy is dumped');
{
	my (undef, $hdr) = read_header($node->data_dir . "/$rel{x_l2}");
	my (undef, undef, undef, undef, undef, $relfilenode) = unpack('a8 V7', $hdr);
	is($relfilenode, $node->safe_psql('postgres', "SELECT pg_relation_filenode('x_l2')"),
		"after REINDEX and a checkpoint: the file has the new relfilenode");
}

my $offset = -s $node->logfile;
$node->restart;
ok( $node->poll_query_until('postgres', "SELECT turbo_wait_ready('x_l2', 60000)"),
	'after restart: x_l2 is ready');
like(slurp_file($node->logfile, $offset),
	qr/turbovec loaded snapshot "\Q$rel{x_l2}\E" for index "x_l2"/,
	'after restart: the snapshot of the reindexed x_l2 was loaded');
my @warnings = grep { /WARNING/ } split /\n/, slurp_file($node->logfile, $offset);
is(scalar(@warnings), 0, 'after restart: no WARNING') or diag(join("\n", @warnings));
is(status('x_l2', 'from_snapshot'), 't', 'after restart: x_l2 is from its snapshot');
check_answers('after restart');

# DROP INDEX removes the file.
$node->safe_psql('postgres', 'DROP INDEX x_gone');
my $gone = 0;
for (1 .. 60)
{
	$node->safe_psql('postgres', "SELECT turbo_wait_ready('x_l2', 100)");    # wakes the worker
	if (!-e $node->data_dir . "/$rel{x_gone}") { $gone = 1; last; }
	usleep(100_000);
}
ok($gone, 'DROP INDEX: the dropped index\'s snapshot file is removed');

# DROP DATABASE with a turbovec worker serving it.
$node->safe_psql('postgres', 'CREATE DATABASE scratch');
$node->safe_psql(
	'scratch', qq{
CREATE EXTENSION turbovec;
CREATE TABLE y (id int, v real[]);
INSERT INTO y SELECT i, array_fill(i::real, ARRAY[$dim]) FROM generate_series(1, 500) i;
CREATE INDEX y_l2 ON y USING turbo (v real_l2_ops);
});
wait_ready_ok($node, 'y_l2', 'scratch: y_l2 is ready', 'scratch');
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE scratch');
is($ret, 0, 'DROP DATABASE of a database with resident copies succeeds')
  or diag($err);
check_answers('after DROP DATABASE');

$node->stop;
done_testing();
