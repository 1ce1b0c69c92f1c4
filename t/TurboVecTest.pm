
# Copyright (c) turbovec authors

# Helpers shared by the TAP tests in t/.
#
# Load with
#
#   use FindBin;
#   use lib $FindBin::RealBin;
#   use TurboVecTest;
#
# (prove runs from the tree root with only PostgreSQL's perl modules and ./
# on the include path, so t/ must be added by the test itself).
#
# Nothing here calls rand() or srand() on its own: random_vector() draws
# from the caller's seeded generator exactly as an inline copy would, so a
# test's sequence of random numbers depends only on the order of its calls.
package TurboVecTest;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(
  $FORCE_INDEX $FORCE_SEQ $ALL_CANDIDATES
  start_node start_standby preload_conf wait_for_replay
  random_vector random_rows_sql top10_sql
  verify_output index_info indexes_row wait_ready_ok same_as_seq_scan
  buffers_touched database_oid index_oid snapshot_rel read_header
  set_build_delay insert_script log_has crc32c read_bytes write_bytes
  skip_without_pgvector random_pgvector create_pgvector_docs);

# Scan settings: an index scan only; a sequential scan only; a re-rank
# window covering any table the tests build.
our $FORCE_INDEX    = 'SET enable_seqscan = off; SET enable_bitmapscan = off;';
our $FORCE_SEQ      = 'SET enable_indexscan = off; SET enable_bitmapscan = off;';
our $ALL_CANDIDATES = 'SET turbovec.candidates = 100000;';

# End the test file as skipped when pgvector is not installed for $node's
# server (the suite installs it from ../shared/vendor; a bare checkout may not).
sub skip_without_pgvector
{
	my ($node) = @_;
	my $available = $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'");
	return if $available eq '1';
	$node->stop;
	plan skip_all => 'pgvector (extension "vector") is not installed: '
	  . 'turbovec_pgvector tests skipped';
}

# A random $dim-dimensional vector as a pgvector literal, from perl's seeded
# generator.
sub random_pgvector
{
	my ($dim) = @_;
	return '[' . join(',', map { sprintf('%.5f', rand(2) - 1) } 1 .. $dim) . ']';
}

# On $node: the extensions vector, turbovec and turbovec_pgvector, and a
# table docs (id serial, embedding vector($dim)) of $n random rows.
sub create_pgvector_docs
{
	my ($node, $dim, $n) = @_;
	$node->safe_psql('postgres', qq{
	CREATE EXTENSION vector;
	CREATE EXTENSION turbovec;
	CREATE EXTENSION turbovec_pgvector;
	CREATE TABLE docs (id serial PRIMARY KEY, embedding vector($dim));
});
	$node->safe_psql('postgres',
		'INSERT INTO docs (embedding) VALUES '
		  . join(',', map { "('" . random_pgvector($dim) . "')" } 1 .. $n));
}

# A started node: init(%{ $opts{init} }), then $opts{conf} (if any) appended
# to postgresql.conf.
sub start_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	$node->append_conf('postgresql.conf', $opts{conf}) if defined $opts{conf};
	$node->start;
	return $node;
}

# A streaming standby of $primary, started from a new base backup.
sub start_standby
{
	my ($primary, $backup_name, $name) = @_;
	$primary->backup($backup_name);
	my $standby = PostgreSQL::Test::Cluster->new($name);
	$standby->init_from_backup($primary, $backup_name, has_streaming => 1);
	$standby->start;
	return $standby;
}

# postgresql.conf lines preloading turbovec with a fast worker; @extra lines
# go before log_statement.
sub preload_conf
{
	my (@extra) = @_;
	return "\nshared_preload_libraries = 'turbovec'\n"
	  . "turbovec.worker_naptime = 200ms\n"
	  . join('', map { "$_\n" } @extra)
	  . "log_statement = none\n";
}

# Wait until $standby has replayed everything $primary wrote.  On a timeout,
# say what the standby was doing before failing: whether its WAL receiver
# was connected, how far it had received and replayed, and who waited on
# which lock (a replay stuck behind a lock looks, from the primary, just
# like a slow one).
sub wait_for_replay
{
	my ($primary, $standby) = @_;
	my $target = $primary->lsn('insert');
	return if eval { $primary->wait_for_catchup($standby, 'replay', $target); 1 };
	my $failure = $@;
	for my $sql (
		"SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), pg_is_wal_replay_paused()",
		"SELECT status, flushed_lsn, last_msg_receipt_time FROM pg_stat_wal_receiver",
		"SELECT pid, backend_type, wait_event_type, wait_event, state, left(query, 60) FROM pg_stat_activity",
		"SELECT pid, locktype, relation, mode, granted FROM pg_locks WHERE relation IN "
		  . "(SELECT relation FROM pg_locks WHERE NOT granted) ORDER BY relation, granted")
	{
		my ($ret, $out, $err) =
		  $standby->psql('postgres', $sql, timeout => 30, on_error_stop => 0);
		Test::More::diag($standby->name . ": $sql\n" . ($out // '') . ($err // ''));
	}
	my ($ret, $out, $err) = $primary->psql('postgres',
		'SELECT application_name, state, sent_lsn, replay_lsn FROM pg_stat_replication',
		timeout => 30, on_error_stop => 0);
	Test::More::diag($primary->name . ": replication: " . ($out // '') . ($err // ''));
	die $failure;
}

# A random $dim-dimensional vector as a real[] literal, from perl's seeded
# generator.
sub random_vector
{
	my ($dim) = @_;
	return '{' . join(',', map { sprintf('%.6f', rand(2) - 1) } 1 .. $dim) . '}';
}

# SQL inserting $n random $dim-dimensional vectors into $table (id, v) from
# the server's generator seeded with $seed; with $null_every, every row
# whose number is a multiple of it gets NULL instead.  Setseed and INSERT
# must run in one session: embed the text in a larger statement list or
# run it alone.
sub random_rows_sql
{
	my ($table, $dim, $n, $seed, $null_every) = @_;
	my $vector = $null_every
	  ? "CASE WHEN i % $null_every = 0 THEN NULL
		ELSE (SELECT array_agg((random() * 2 - 1)::real)
			  FROM generate_series(1, $dim) WHERE i > 0) END"
	  : "(SELECT array_agg((random() * 2 - 1)::real)
			FROM generate_series(1, $dim) WHERE i > 0)";
	return "SELECT setseed($seed);
INSERT INTO $table (v)
	SELECT $vector
	FROM generate_series(1, $n) i;";
}

# SQL giving the ids of the 10 rows of $table nearest to $q by $op, as one
# comma-separated string.
sub top10_sql
{
	my ($table, $op, $q) = @_;
	return "SELECT string_agg(id::text, ',') FROM "
	  . "(SELECT id FROM $table ORDER BY v $op '$q' LIMIT 10) s";
}

# What turbo_verify says about an index: its problem rows, or the error it
# raised.  A healthy index gives the empty string.
sub verify_output
{
	my ($node, $idx) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', "SELECT * FROM turbo_verify('$idx')",
		stdout => \$out, stderr => \$err);
	return join("\n", grep { $_ ne '' } $out, $err);
}

# Columns $cols of turbo_index_info($idx).
sub index_info
{
	my ($node, $idx, $cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM turbo_index_info('$idx')");
}

# Columns $cols of $idx's row in turbo_indexes.
sub indexes_row
{
	my ($node, $idx, $cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM turbo_indexes WHERE index = '$idx'::regclass");
}

# One test: turbo_wait_ready($idx, 60000) in database $db (default
# postgres) says true.
sub wait_ready_ok
{
	my ($node, $idx, $name, $db) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return is(
		$node->safe_psql($db // 'postgres', "SELECT turbo_wait_ready('$idx', 60000)"),
		't', $name);
}

# One test: $sql gives the same answer under $settings (run first) as under
# $FORCE_SEQ.
sub same_as_seq_scan
{
	my ($node, $settings, $sql, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return is(
		$node->safe_psql('postgres', "$settings $sql"),
		$node->safe_psql('postgres', "$FORCE_SEQ $sql"), $name);
}

# Shared buffers (hits plus reads) on the first "Buffers:" line of an
# EXPLAIN (ANALYZE, BUFFERS) output: the top node's, which for
# Limit -> Index Scan is the scan's.
sub buffers_touched
{
	my ($plan) = @_;
	my ($line) = $plan =~ /Buffers: shared ([^\n]*)/;
	my $n = 0;
	$n += $_ for (($line // '') =~ /(?:hit|read)=(\d+)/g);
	return $n;
}

sub database_oid
{
	my ($node, $db) = @_;
	return $node->safe_psql('postgres',
		"SELECT oid FROM pg_database WHERE datname = '$db'");
}

sub index_oid
{
	my ($node, $idx) = @_;
	return $node->safe_psql('postgres', "SELECT '$idx'::regclass::oid");
}

# Set turbovec.test_build_delay (slows resident rebuilds down) to $delay
# with ALTER SYSTEM, and wait until $node's sessions see it; true once they
# do.
sub set_build_delay
{
	my ($node, $delay) = @_;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET turbovec.test_build_delay = '$delay'; SELECT pg_reload_conf();");
	return $node->poll_query_until('postgres',
		"SELECT current_setting('turbovec.test_build_delay') = '$delay'");
}

# A pgbench script in $dir that inserts one random $dim-dimensional vector
# into $table (v); its path.
sub insert_script
{
	my ($dir, $table, $dim) = @_;
	my $sets = join('', map { "\\set x$_ random(-1000000, 1000000) / 1000000.0\n" } 1 .. $dim);
	my $array = 'ARRAY[' . join(', ', map { ":x$_" } 1 .. $dim) . ']::real[]';
	PostgreSQL::Test::Utils::append_to_file("$dir/insert_$table.sql",
		$sets . "INSERT INTO $table (v) VALUES ($array);\n");
	return "$dir/insert_$table.sql";
}

# A snapshot file's path relative to the data directory.
sub snapshot_rel
{
	my ($dboid, $indexoid) = @_;
	return "pgsql_tmp_turbovec/${dboid}_$indexoid.tv";
}

# True once $node's server log, read from byte $offset, matches $re;
# polls for at most $secs seconds (default 30).
sub log_has
{
	my ($node, $re, $offset, $secs) = @_;
	for (1 .. ($secs // 30) * 10)
	{
		return 1 if slurp_file($node->logfile, $offset) =~ $re;
		usleep(100_000);
	}
	return 0;
}

# CRC-32C (Castagnoli, reflected, as PostgreSQL and .tv files use it) of
# the concatenated byte strings @_.
my @crc_table;
for my $n (0 .. 255)
{
	my $c = $n;
	$c = ($c & 1) ? (($c >> 1) ^ 0x82F63B78) : ($c >> 1) for 1 .. 8;
	$crc_table[$n] = $c;
}

sub crc32c
{
	my $crc = 0xFFFFFFFF;
	foreach my $data (@_)
	{
		$crc = $crc_table[ ($crc ^ $_) & 0xFF ] ^ ($crc >> 8) for unpack('C*', $data);
	}
	return $crc ^ 0xFFFFFFFF;
}

# The whole of file $path, as bytes.
sub read_bytes
{
	my ($path) = @_;
	open(my $fh, '<:raw', $path) or die "open $path: $!";
	local $/;
	my $bytes = <$fh>;
	close $fh;
	return $bytes;
}

# Replace file $path's contents with $bytes.
sub write_bytes
{
	my ($path, $bytes) = @_;
	open(my $fh, '>:raw', $path) or die "open $path: $!";
	print $fh $bytes;
	close $fh or die "close $path: $!";
}

# The first 120 bytes (a .tv header) of $path: (bytes read, bytes).
sub read_header
{
	my ($path) = @_;
	open(my $fh, '<', $path) or die "open $path: $!";
	binmode $fh;
	my $n = read($fh, my $hdr, 120);
	close $fh;
	return ($n, $hdr);
}

1;
