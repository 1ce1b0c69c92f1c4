
# Copyright (c) turbovec authors

# After a restart the worker reads a turbo index's pages into
# shared_buffers before it loads the index's snapshot (PrewarmPages in
# tvworker.c): until the copy is ready scans read the pages, and the first
# queries after a restart should not pay a read for every block.
#
# The worker logs (DEBUG1) when it has read the pages; that line must come
# before the one saying the snapshot was loaded, and once the copy is
# ready every page of the index is in shared_buffers.  An index bigger
# than an eighth of shared_buffers is left alone.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $dim = 16;

# 4MB of shared_buffers: 512 buffers, so indexes up to 64 pages qualify
my $node = start_node('restart_prewarm',
	conf => preload_conf('shared_buffers = 4MB', 'log_min_messages = debug1'));

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE EXTENSION pg_buffercache;
CREATE TABLE s (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('s', $dim, 3000, 0.47) ]}
CREATE INDEX s_l2 ON s USING turbo (v real_l2_ops) WITH (lists = 8);
CREATE TABLE b (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('b', 64, 20000, 0.48) ]}
CREATE INDEX b_l2 ON b USING turbo (v real_l2_ops);
});
wait_ready_ok($node, $_, "$_ is ready") for qw(s_l2 b_l2);

my %pages = map {
	$_ => $node->safe_psql('postgres', "SELECT pg_relation_size('$_') / 8192")
} qw(s_l2 b_l2);
cmp_ok($pages{s_l2}, '<=', 64, "s_l2 ($pages{s_l2} pages) fits an eighth of shared_buffers");
cmp_ok($pages{b_l2}, '>', 64, "b_l2 ($pages{b_l2} pages) does not");

# write the snapshots, then restart
$node->safe_psql('postgres', 'CHECKPOINT');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 2 FROM turbo_indexes WHERE persisted_snapshot_time IS NOT NULL"),
	'both snapshots are written');
my $offset = -s $node->logfile;
$node->restart;
wait_ready_ok($node, $_, "after the restart: $_ is ready") for qw(s_l2 b_l2);
is(indexes_row($node, 's_l2', 'from_snapshot'), 't', 's_l2 was loaded from its snapshot');

my $log = slurp_file($node->logfile, $offset);
my $read = index($log, 'turbovec read the ' . $pages{s_l2} . ' pages of index "s_l2" into shared_buffers');
my $loaded = $log =~ /loaded snapshot "[^"]*" for index "s_l2"/ ? $-[0] : -1;
ok($read >= 0, 'the worker read the pages of s_l2');
ok($read >= 0 && $loaded > $read, 'before it loaded the snapshot of s_l2');
unlike($log, qr/pages of index "b_l2"/, 'b_l2, too big, was not read ahead');

is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_buffercache WHERE relfilenode = pg_relation_filenode('s_l2')"),
	$pages{s_l2}, 'every page of s_l2 is in shared_buffers');

done_testing();
