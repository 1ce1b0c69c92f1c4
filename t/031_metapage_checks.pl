
# Copyright (c) turbovec authors

# Every metapage field is validated before it sizes anything, and the
# per-index cache does not grow with relcache flushes.
#
# Corruption: with the server stopped, one field of a turbo index's metapage
# is overwritten in the index file (flat and IVF indexes; block_bytes, dim,
# bits, lists, list_area, nslots, ndatapages, free_hint and flags), then the
# server is started and one session runs an index scan twice and an insert
# twice (the second call of each must check again, not trust what the first
# one cached), and turbo_verify.  Each scan and insert must fail with
# XX002, turbo_verify must report the damage, and the server must never
# crash.  The original page is put back before the next case.
#
# Flushes: a cursor keeps an IVF index open while each ANALYZE of its table
# invalidates the index's relcache entry and an insert then reloads the
# cached state; the memory of the index's contexts must stay flat.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20261203);

my $dim  = 16;
# The test edits index pages on disk: a data checksum (initdb's default from
# PostgreSQL 18 on) would refuse them before turbovec sees them, so the
# server only warns about checksum failures here.
my $node = start_node('metapage', conf => 'ignore_checksum_failure = on');

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE tf (id serial PRIMARY KEY, v real[]);
CREATE TABLE ti (id serial PRIMARY KEY, v real[]);
} . random_rows_sql('tf', $dim, 600, 0.1) . random_rows_sql('ti', $dim, 600, 0.2) . q{
CREATE INDEX tf_idx ON tf USING turbo (v real_l2_ops);
CREATE INDEX ti_idx ON ti USING turbo (v real_l2_ops) WITH (lists = 8);
CHECKPOINT;
});

my $pgdata = $node->data_dir;
my %file = map {
	$_ => "$pgdata/" . $node->safe_psql('postgres', "SELECT pg_relation_filepath('$_')")
} qw(tf_idx ti_idx);

# TvMetaPageData fields: offset in the page (after the 24-byte page header)
# and pack format.
my %field = (
	dim         => [ 24 + 8,  'V' ],
	bits        => [ 24 + 12, 'v' ],
	block_bytes => [ 24 + 24, 'V' ],
	nslots      => [ 24 + 32, 'Q<' ],
	free_hint   => [ 24 + 40, 'Q<' ],
	ndatapages  => [ 24 + 56, 'V' ],
	lists       => [ 24 + 60, 'V' ],
	list_area   => [ 24 + 64, 'V' ],
	flags       => [ 24 + 68, 'V' ],);

sub read_page0
{
	my ($path) = @_;
	open(my $fh, '<:raw', $path) or die "open $path: $!";
	my $n = sysread($fh, my $page, 8192);
	close($fh);
	die "short read of $path" unless $n == 8192;
	return $page;
}

sub write_page0
{
	my ($path, $page) = @_;
	open(my $fh, '+<:raw', $path) or die "open $path: $!";
	syswrite($fh, $page) == 8192 or die "write $path: $!";
	close($fh);
}

sub get_field
{
	my ($page, $name) = @_;
	my ($off, $fmt) = @{ $field{$name} };
	return unpack($fmt, substr($page, $off, length(pack($fmt, 0))));
}

sub set_field
{
	my ($page, $name, $value) = @_;
	my ($off, $fmt) = @{ $field{$name} };
	my $bytes = pack($fmt, $value);
	substr($page, $off, length($bytes)) = $bytes;
	return $page;
}

my %orig = map { $_ => read_page0($file{$_}) } keys %file;
my %table = (tf_idx => 'tf', ti_idx => 'ti');
my $q = random_vector($dim);
my $ndata_f = get_field($orig{tf_idx}, 'ndatapages');
my $ndata_i = get_field($orig{ti_idx}, 'ndatapages');
my $bb_f = get_field($orig{tf_idx}, 'block_bytes');
ok($bb_f > 464 && $ndata_f > 1 && get_field($orig{ti_idx}, 'lists') == 8,
	"metapage fields read back (block_bytes $bb_f, ndatapages $ndata_f)");

# [index, field, value]: every value contradicts the rest of the metapage
# or the relation
my @cases = (
	[ 'tf_idx', 'block_bytes', 8 ],
	[ 'tf_idx', 'block_bytes', $bb_f + 8 ],
	[ 'tf_idx', 'dim',         0 ],
	[ 'tf_idx', 'dim',         20000 ],
	[ 'tf_idx', 'bits',        7 ],
	[ 'tf_idx', 'nslots',      600 + 32 * 1000 ],
	[ 'tf_idx', 'nslots',      '18446744073709551584' ],
	[ 'tf_idx', 'ndatapages',  $ndata_f + 1000 ],
	[ 'tf_idx', 'free_hint',   1000 ],
	[ 'tf_idx', 'lists',       8 ],
	[ 'ti_idx', 'lists',       9 ],
	[ 'ti_idx', 'lists',       40000 ],
	[ 'ti_idx', 'list_area',   0x7fffffff ],
	[ 'ti_idx', 'nslots',      get_field($orig{ti_idx}, 'nslots') + 1 ],
	[ 'ti_idx', 'nslots',      get_field($orig{ti_idx}, 'nslots') + 32 * 2000 ],
	[ 'ti_idx', 'ndatapages',  $ndata_i + 5000 ],
	[ 'ti_idx', 'flags',       0x80 ],);

my $settings = "$FORCE_INDEX $ALL_CANDIDATES";
foreach my $case (@cases)
{
	my ($idx, $name, $value) = @$case;
	my $label = "$idx.$name = $value";
	my $tab = $table{$idx};

	$node->stop;
	write_page0($file{$_}, $orig{$_}) for keys %file;
	write_page0($file{$idx}, set_field($orig{$idx}, $name, $value));
	$node->start;

	my $scan   = "SELECT id FROM $tab ORDER BY v <-> '$q' LIMIT 3;";
	my $insert = "INSERT INTO $tab (v) VALUES ('$q');";
	my ($out, $err) = ('', '');
	$node->psql(
		'postgres',
		"\\set VERBOSITY verbose\n$settings\n$scan\n$scan\n$insert\n$insert\n",
		stdout        => \$out,
		stderr        => \$err,
		on_error_stop => 0);
	my @errors = ($err =~ /ERROR:\s+(\w+):/g);
	is(join(',', @errors), 'XX002,XX002,XX002,XX002',
		"$label: two scans and two inserts fail with XX002");
	like($err, qr/turbo index "$idx"/, "$label: the error names the index")
	  or diag($err);
	# (turbo_verify's own metapage checks do not look at flags)
	like(verify_output($node, $idx), qr/\S/, "$label: turbo_verify reports it")
	  unless $name eq 'flags';
	is($node->safe_psql('postgres', 'SELECT 1'), '1', "$label: server is up");
}

$node->stop;
write_page0($file{$_}, $orig{$_}) for keys %file;
$node->start;
unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no backend crashed on a corrupted metapage');
is(verify_output($node, $_), '', "$_ is sound again once restored")
  for sort keys %file;

# A legitimate change of shape under the same relfilenode is no corruption:
# TRUNCATE of a table created in the same transaction rebuilds its index in
# place, and the next rows may have another dimension.
is( $node->safe_psql(
		'postgres', q{
BEGIN;
CREATE TABLE tt (id serial, v real[]);
INSERT INTO tt (v) SELECT ARRAY[i, 1, 2, 3]::real[] FROM generate_series(1, 100) i;
CREATE INDEX tt_idx ON tt USING turbo (v real_l2_ops) WITH (lists = 4);
SET LOCAL enable_seqscan = off;
SET LOCAL turbovec.candidates = 100000;
SELECT id FROM tt ORDER BY v <-> '{7,1,2,3}' LIMIT 1;
INSERT INTO tt (v) VALUES ('{5,5,5,5}');
TRUNCATE tt;
INSERT INTO tt (v) SELECT ARRAY[i, 1]::real[] FROM generate_series(1, 50) i;
SELECT id FROM tt ORDER BY v <-> '{3,1}' LIMIT 1;
COMMIT;
}), "7\n104", 'TRUNCATE in the creating transaction: the index takes another dimension');

# Relcache flushes of an open index: the cursor holds ti_idx open, each
# ANALYZE (after new rows changed its reltuples) invalidates its entry, and
# each insert rebuilds the cached state.  Growth of the index's contexts
# after the first rounds must stay far below one round's codec and
# centroids per flush.
$node->safe_psql('postgres', q{
CREATE TABLE big (id serial PRIMARY KEY, v real[]);
INSERT INTO big (v) SELECT (SELECT array_agg((i % 7 + j % 5 + random())::real)
	FROM generate_series(1, 256) j) FROM generate_series(1, 2000) i;
CREATE INDEX big_idx ON big USING turbo (v real_l2_ops) WITH (lists = 40);
});
my $mem = q{SELECT sum(total_bytes) FROM pg_backend_memory_contexts WHERE ident = 'big_idx'};
my $round = q{
INSERT INTO big (v) SELECT (SELECT array_agg(random()::real)
	FROM generate_series(1, 256) j WHERE i > 0) FROM generate_series(1, 5) i;
ANALYZE big;
};
my $sql = "SET enable_seqscan = off; SET enable_bitmapscan = off;\nBEGIN;\n"
  . "DECLARE c CURSOR FOR SELECT id FROM big ORDER BY v <-> (SELECT v FROM big LIMIT 1);\n"
  . "FETCH 1 FROM c;\n"
  . ($round x 3) . "$mem;\n" . ($round x 40) . "$mem;\nCOMMIT;\n";
my $out = $node->safe_psql('postgres', $sql);
my @sizes = grep { /^\d+$/ } split(/\n/, $out);
is(scalar(@sizes), 3, 'memory of big_idx measured') or diag($out);
my $growth = $sizes[2] - $sizes[1];
# one flush used to leak the codec and 40 x 256 centroids and norms (~60 kB)
cmp_ok($growth, '<', 100 * 1024,
	"40 relcache flushes of an open index grow its contexts by $growth bytes");

$node->stop;
done_testing();
