
# Copyright (c) turbovec authors

# Damaged .tv snapshots are refused, never loaded.
#
# A snapshot is only a cache: whatever is wrong with a file, the worker logs
# one WARNING naming the file and the reason (SQLSTATE XX001), ignores it and
# rebuilds the copy from the index and the table.  One small node (3000
# rows of 16 dimensions, a flat l2 and a flat cosine index on the same
# table); for each defect the server is stopped, d_l2's file is replaced by
# a damaged copy of a good dump, and the server started again:
#
#   bad magic; a wrong version and a wrong dimension, seed and change
#   counter, each with both CRCs re-sealed so that only that check can trip;
#   a header byte flipped (header CRC); a body byte flipped (body CRC); a
#   truncated file; a trailing byte; the other index's snapshot copied in
#   its place; an empty file; and what a crash mid-dump could leave behind
#   (a stray .tv.tmp next to a truncated .tv).
#
# Each start must log exactly one WARNING for the file, with the expected
# reason, no "loaded snapshot" line for it; the copy must become ready with
# from_snapshot = false and answer like the extent and a sequential scan,
# while d_cos keeps loading its own, good, file.  Then a turbovec worker is
# killed with SIGKILL right after a checkpoint asked it to dump (it may or
# may not be mid-dump): after the crash restart the copy is either loaded
# from a whole file or refused with a WARNING, and the answers are correct.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20250303);

my $dim      = 16;
my %opclass  = (d_l2 => '<->', d_cos => '<=>');
my @indexes  = sort keys %opclass;
my $force    = $FORCE_INDEX;
my $covering = $ALL_CANDIDATES;

my $node = start_node('defects', conf => preload_conf('restart_after_crash = on'));

# crc32c (TurboVecTest) is CRC-32C as docs/SNAPSHOT.md specifies: reflected
# polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF.
is(crc32c('123456789'), 0xE3069283, 'CRC-32C check value');

# The 120-byte header: magic, 12 uint32 (version .. reserved), 7 uint64
# (seed .. refine_bytes), body_crc, header_crc; all little-endian.
my @fields = qw(magic version header_bytes dboid indexoid relfilenode dim bits
  metric lists list_area block_bytes reserved seed lsn change_count nslots
  live stream_bytes refine_bytes body_crc header_crc);
my $layout = 'a8 V12 Q<7 V2';

sub split_file
{
	my ($bytes) = @_;
	my %h;
	@h{@fields} = unpack($layout, substr($bytes, 0, 120));
	my $stream  = substr($bytes, 120, $h{stream_bytes});
	my $refines = substr($bytes, 120 + $h{stream_bytes});
	return (\%h, $stream, $refines);
}

# Header and body with sizes and both CRCs made consistent again.
sub seal
{
	my ($h, $stream, $refines) = @_;
	$h->{stream_bytes} = length($stream);
	$h->{refine_bytes} = length($refines);
	$h->{body_crc}     = crc32c($stream, $refines);
	$h->{header_crc}   = 0;
	$h->{header_crc}   = crc32c(pack($layout, @{$h}{@fields}));
	return pack($layout, @{$h}{@fields}) . $stream . $refines;
}

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE d (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('d', $dim, 3000, 0.17) ]}
CREATE INDEX d_l2 ON d USING turbo (v real_l2_ops);
CREATE INDEX d_cos ON d USING turbo (v real_cosine_ops);
});

my $dboid = database_oid($node, 'postgres');
my %rel   = map { $_ => snapshot_rel($dboid, index_oid($node, $_)) } @indexes;
my %file = map { $_ => $node->data_dir . "/$rel{$_}" } @indexes;

# Fixed queries; their default-window answers through the copy must never
# change (the table does not change until the last part).
my @queries = map { random_vector($dim) } 1 .. 3;

sub answers
{
	my ($idx, $settings) = @_;
	return join(
		' ',
		map {
			$node->safe_psql('postgres', "$settings " . top10_sql('d', $opclass{$idx}, $_))
		} @queries);
}

sub check_answers
{
	my ($label, $baseline) = @_;
	foreach my $idx (@indexes)
	{
		is(answers($idx, $force), $baseline->{$idx},
			"$label: $idx answers as before, at the default window");
		is( answers($idx, "$force $covering"),
			answers($idx, $FORCE_SEQ),
			"$label: $idx equals a sequential scan at a covering window");
	}
}

foreach my $idx (@indexes)
{
	wait_ready_ok($node, $idx, "$idx is ready after the build");
}
my %baseline = map { $_ => answers($_, $force) } @indexes;
foreach my $idx (@indexes)
{
	is($baseline{$idx}, answers($_, "$force SET turbovec.use_resident = off;"),
		"$idx: copy and extent agree") for ($idx);
}

# Good dumps of both indexes, taken while the server is down.
$node->safe_psql('postgres', 'CHECKPOINT');
ok( $node->poll_query_until(
		'postgres',
		'SELECT count(*) = 2 FROM turbo_indexes WHERE snapshot_time IS NOT NULL'),
	'both indexes have a snapshot');
$node->stop;
my %good = map { $_ => read_bytes($file{$_}) } @indexes;
my ($gh, $gstream, $gvectors) = split_file($good{d_l2});
is($gh->{header_crc}, do { my %h = %$gh; $h{header_crc} = 0; crc32c(pack($layout, @h{@fields})) },
	'the dumped header CRC is CRC-32C of the header with that field zeroed');
is($gh->{body_crc}, crc32c($gstream, $gvectors),
	'the dumped body CRC is CRC-32C of stream then refinement codes');
is(length($good{d_l2}), 120 + $gh->{stream_bytes} + $gh->{refine_bytes},
	'the file is header, stream and refinement codes');
is("$gh->{dim} $gh->{nslots} $gh->{refine_bytes}", "$dim 3000 " . (3000 * refine_bytes($dim)),
	'header dimension, slots and refinement bytes (one code per slot)');
is(seal({%$gh}, $gstream, $gvectors), $good{d_l2}, 're-sealing a good file changes nothing');

# A clean start loads both.
my $offset = -s $node->logfile;
$node->start;
foreach my $idx (@indexes)
{
	ok(log_has($node, qr/turbovec loaded snapshot "\Q$rel{$idx}\E" for index "$idx"/, $offset),
		"clean start: $idx loaded from its snapshot");
}

# Bytes of one slot's refinement code: a float, then a nibble per
# dimension, rounded up to 4 (TV_REFINE_BYTES in src/tvcodec.h).
sub refine_bytes
{
	my ($d) = @_;
	return (4 + int(($d + 1) / 2) + 3) & ~3;
}

# A re-sealed header with one field changed.
sub resealed
{
	my (%change) = @_;
	my ($h, $stream, $refines) = split_file($good{d_l2});
	$h->{$_} = $change{$_} for keys %change;
	if ($change{dim})
	{
		# a consistent file of that dimension: refinement codes cut to match
		$refines = substr($refines, 0, $h->{nslots} * refine_bytes($change{dim}));
	}
	return seal($h, $stream, $refines);
}

sub flip
{
	my ($bytes, $at) = @_;
	substr($bytes, $at, 1) = chr(ord(substr($bytes, $at, 1)) ^ 0x5A);
	return $bytes;
}

my $cc   = $gh->{change_count};
my $len  = length($good{d_l2});
my @cases = (
	[ 'bad magic', 'X' . substr($good{d_l2}, 1), qr/bad magic/ ],
	[ 'version 1 (0.2.0, float vectors; re-sealed)', resealed(version => 1), qr/unsupported version 1/ ],
	[ 'wrong version (re-sealed)', resealed(version => 3), qr/unsupported version 3/ ],
	[ 'header byte flipped', flip($good{d_l2}, 88), qr/header CRC mismatch/ ],
	[ 'body byte flipped', flip($good{d_l2}, $len - 7), qr/body CRC mismatch/ ],
	[ 'stream byte flipped', flip($good{d_l2}, 120 + 500), qr/body CRC mismatch/ ],
	[ 'truncated', substr($good{d_l2}, 0, $len - 64), qr/truncated/ ],
	[ 'truncated inside the header', substr($good{d_l2}, 0, 60), qr/truncated/ ],
	[ 'trailing byte', $good{d_l2} . "\0", qr/trailing bytes/ ],
	[ 'wrong dimension (re-sealed)', resealed(dim => 8), qr/dimension 8, expected $dim/ ],
	[ 'wrong seed (re-sealed)', resealed(seed => $gh->{seed} + 1), qr/seed differs/ ],
	[
		'stale change counter (re-sealed)', resealed(change_count => $cc + 3),
		qr/stale: change counter @{[$cc + 3]}, expected $cc/
	],
	[
		'older change counter (re-sealed)', resealed(change_count => $cc - 1),
		qr/stale: change counter @{[$cc - 1]}, expected $cc/
	],
	[ "the other index's snapshot", $good{d_cos}, qr/belongs to another index/ ],
	[ 'empty file', '', qr/empty file/ ],
	[ 'crash leftovers: .tv.tmp and a truncated .tv',
		substr($good{d_l2}, 0, int($len / 2)), qr/truncated/, 1 ],);

foreach my $case (@cases)
{
	my ($label, $bytes, $reason, $leftover) = @$case;

	$node->stop;
	write_bytes($file{d_l2}, $bytes);
	# the good d_cos file stays (it may have been dumped again meanwhile)
	write_bytes("$file{d_l2}.tmp", substr($good{d_l2}, 0, int($len / 3))) if $leftover;
	$offset = -s $node->logfile;
	$node->start;

	my $warning = qr/WARNING:  turbovec snapshot "\Q$rel{d_l2}\E" not used: $reason/;
	ok(log_has($node, $warning, $offset), "$label: WARNING names the file and the reason")
	  or diag(join("\n", grep { /turbovec/ } split /\n/, slurp_file($node->logfile, $offset)));
	wait_ready_ok($node, 'd_l2', "$label: d_l2 becomes ready");
	is(indexes_row($node, 'd_l2', 'ready, resident_state, from_snapshot'),
		't|ready|f',
		"$label: d_l2 is ready, rebuilt (not from the snapshot)");
	wait_ready_ok($node, 'd_cos', "$label: d_cos becomes ready");
	ok(log_has($node, qr/turbovec loaded snapshot "\Q$rel{d_cos}\E" for index "d_cos"/, $offset),
		"$label: d_cos still loads its own snapshot");
	check_answers($label, \%baseline);

	my $log   = slurp_file($node->logfile, $offset);
	my @warns = $log =~ /(WARNING:  turbovec snapshot "\Q$rel{d_l2}\E[^\n]*)/g;
	is(scalar(@warns), 1, "$label: exactly one WARNING for the file")
	  or diag(join("\n", @warns));
	unlike($log, qr/loaded snapshot "\Q$rel{d_l2}\E"/, "$label: the file was not loaded");
	like($log, qr/WARNING:  XX001: |WARNING:  turbovec snapshot/, "$label: logged as a WARNING");

	if ($leftover)
	{
		unlike($log, qr/\.tv\.tmp/, "$label: nothing reads or complains about the .tmp file");
		# the next dump of the rebuilt copy replaces both
		ok( $node->poll_query_until(
				'postgres',
				"SELECT snapshot_time IS NOT NULL FROM turbo_indexes WHERE index = 'd_l2'::regclass"),
			"$label: the rebuilt copy is dumped again");
		ok(!-e "$file{d_l2}.tmp", "$label: the dump left no .tmp file");
		my ($h) = split_file(read_bytes($file{d_l2}));
		is("$h->{change_count} $h->{nslots}", "$cc 3000", "$label: the new dump is whole");
	}
}

# SQLSTATE of the WARNING: with verbose error fields in the log.
$node->append_conf('postgresql.conf', 'log_error_verbosity = verbose');
$node->stop;
write_bytes($file{d_l2}, 'TURBOTV');
$offset = -s $node->logfile;
$node->start;
ok( log_has(
		$node,
		qr/WARNING:  XX001: turbovec snapshot "\Q$rel{d_l2}\E" not used: (truncated|bad magic)/,
		$offset),
	'the WARNING has SQLSTATE XX001');
wait_ready_ok($node, 'd_l2', 'd_l2 ready after a 7-byte file');

# SIGKILL of the worker right after a checkpoint asked it to dump changed
# copies.  Dumps do not honour turbovec.test_build_delay and take about a
# millisecond here, so the kill may land before, during or after the dump:
# whatever the file is left as, it must be loaded whole or refused.
$node->safe_psql(
	'postgres', qq{
@{[ random_rows_sql('d', $dim, 500, 0.5) ]}
DELETE FROM d WHERE id % 9 = 0;
VACUUM (INDEX_CLEANUP ON) d;
CHECKPOINT;
});
my $pid = '';
for (1 .. 100)
{
	$pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'turbovec worker' LIMIT 1");
	last if $pid =~ /^\d+$/;
	usleep(50_000);
}
like($pid, qr/^\d+$/, 'found the turbovec worker');
$offset = -s $node->logfile;
kill 'KILL', $pid if $pid =~ /^\d+$/;
ok(log_has($node, qr/database system is ready to accept connections/, $offset, 60),
	'crash restart after the SIGKILL of the worker');
wait_ready_ok($node, 'd_l2', 'after the crash: d_l2 is ready');
my $log = slurp_file($node->logfile, $offset);
my $loaded  = () = $log =~ /loaded snapshot "\Q$rel{d_l2}\E"/g;
my $refused = () = $log =~ /turbovec snapshot "\Q$rel{d_l2}\E" not used/g;
is($loaded + $refused, 1, "after the crash: d_l2's file was loaded or refused, once")
  or diag("loaded $loaded, refused $refused");
is(indexes_row($node, 'd_l2', 'from_snapshot'),
	$loaded ? 't' : 'f',
	'after the crash: from_snapshot says which');
my $info = $node->safe_psql('postgres',
	"SELECT change_count FROM turbo_resident_status() WHERE indexrelid = 'd_l2'::regclass");
is($info, index_info($node, 'd_l2', 'change_count'),
	"after the crash: the copy's counter is the metapage's");
foreach my $idx (@indexes)
{
	is( answers($idx, "$force $covering"),
		answers($idx, $FORCE_SEQ),
		"after the crash: $idx equals a sequential scan");
	is(answers($idx, $force), answers($idx, "$force SET turbovec.use_resident = off;"),
		"after the crash: $idx copy and extent agree");
}

$node->stop;
done_testing();
