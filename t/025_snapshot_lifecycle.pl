
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

srand(20250306);

my $dim   = 16;
my $force = 'SET enable_seqscan = off; SET enable_bitmapscan = off; '
  . 'SET turbovec.candidates = 100000;';
my $seq = 'SET enable_indexscan = off; SET enable_bitmapscan = off;';

my $node = PostgreSQL::Test::Cluster->new('lifecycle');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'turbovec'
turbovec.worker_naptime = 200ms
log_statement = none
});
$node->start;

sub random_vector
{
	return '{' . join(',', map { sprintf('%.6f', rand(2) - 1) } 1 .. $dim) . '}';
}

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
		my $q   = random_vector();
		my $sql = "SELECT string_agg(id::text, ',') FROM "
		  . "(SELECT id FROM x ORDER BY v <-> '$q' LIMIT 10) s";
		is($node->safe_psql('postgres', "$force $sql"),
			$node->safe_psql('postgres', "$seq $sql"),
			"$label: query $i equals a sequential scan");
	}
}

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE x (id serial PRIMARY KEY, v real[]);
SELECT setseed(0.37);
INSERT INTO x (v)
	SELECT (SELECT array_agg((random() * 2 - 1)::real)
			FROM generate_series(1, $dim) WHERE i > 0)
	FROM generate_series(1, 2000) i;
CREATE INDEX x_l2 ON x USING turbo (v real_l2_ops);
CREATE INDEX x_gone ON x USING turbo (v real_cosine_ops);
});
foreach my $idx ('x_l2', 'x_gone')
{
	is($node->safe_psql('postgres', "SELECT turbo_wait_ready('$idx', 60000)"),
		't', "$idx is ready");
}
$node->safe_psql('postgres', 'CHECKPOINT');
ok( poll_true(
		"SELECT count(*) = 2 FROM turbo_indexes WHERE snapshot_time IS NOT NULL", 20),
	'both indexes have a snapshot');

my $dboid = $node->safe_psql('postgres',
	"SELECT oid FROM pg_database WHERE datname = 'postgres'");
my %rel = map {
	$_ => "pgsql_tmp_turbovec/${dboid}_"
	  . $node->safe_psql('postgres', "SELECT '$_'::regclass::oid") . '.tv'
} ('x_l2', 'x_gone');
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
	open(my $fh, '<', $node->data_dir . "/$rel{x_l2}") or die "open: $!";
	binmode $fh;
	read($fh, my $hdr, 120);
	close $fh;
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
is($node->safe_psql('scratch', "SELECT turbo_wait_ready('y_l2', 60000)"),
	't', 'scratch: y_l2 is ready');
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE scratch');
is($ret, 0, 'DROP DATABASE of a database with resident copies succeeds')
  or diag($err);
check_answers('after DROP DATABASE');

$node->stop;
done_testing();
