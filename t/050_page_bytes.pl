
# Copyright (c) turbovec authors

# The on-disk format does not depend on the server version.
#
# A table built from integer arithmetic alone (no random(), no libm, so the
# vectors are bit-identical under any PostgreSQL and C library) gets a flat
# L2 index at 4 bits, a flat inner-product index at 3 bits and an IVF cosine
# index; part of the table is deleted and vacuumed and new rows inserted.
# After a checkpoint the test hashes each index's relation file with the
# parts of every page that are not turbovec's (pd_lsn and pd_checksum, which
# depend on WAL positions and on initdb's checksum default) masked, and
# compares the hashes with the values pinned below.  scripts/test.sh runs
# this file on PostgreSQL 15, 17 and 18: passing on each means that an index
# built under one major is byte for byte the index another major builds, so
# pg_upgrade (which copies index files as they are) carries it over intact.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

# sha256 of each index's masked pages, the same under every major
my %pinned = (
	fl4_l2 => '37468e642c4d08e7ba8e499c5695e0e5b04b5ba6906c28a411fd38ade23c29d1',
	fl3_ip => '24e9b1e813decebf4d567f2989349acc473ef5c2a3da0f78f8cc14ac2da97149',
	iv_cos => '02684cb8e4a81b612125f247d77a052b70cf5dfa98900652ae01fcb317b8e443');

my $node = start_node(
	'pages',
	conf => "autovacuum = off\nmax_parallel_maintenance_workers = 0\nlog_statement = none");

# Element j of row i: an integer pattern scaled by a power of two, exact in
# float4 whatever the platform.
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION turbovec;
CREATE TABLE t (id int PRIMARY KEY, v real[]);
INSERT INTO t
	SELECT i, (SELECT array_agg((((i * 7919 + j * 104729 + i * j * 31) % 2001) - 1000)::real / 1024
			ORDER BY j)
		FROM generate_series(1, 20) j)
	FROM generate_series(1, 3000) i;
CREATE INDEX fl4_l2 ON t USING turbo (v real_l2_ops);
CREATE INDEX fl3_ip ON t USING turbo (v real_ip_ops) WITH (bits = 3);
CREATE INDEX iv_cos ON t USING turbo (v real_cosine_ops) WITH (lists = 8);
DELETE FROM t WHERE id % 7 = 0;
VACUUM t;
INSERT INTO t
	SELECT i, (SELECT array_agg((((i * 613 + j * 7) % 999) - 499)::real / 512 ORDER BY j)
		FROM generate_series(1, 20) j)
	FROM generate_series(3001, 3300) i;
CHECKPOINT;
});

my $pgdata = $node->data_dir;
foreach my $idx (sort keys %pinned)
{
	my $rel = $node->safe_psql('postgres', "SELECT pg_relation_filepath('$idx')");
	open(my $fh, '<', "$pgdata/$rel") or die "open $pgdata/$rel: $!";
	binmode $fh;
	my $sha   = Digest::SHA->new(256);
	my $pages = 0;
	while ((my $n = read($fh, my $page, 8192)) > 0)
	{
		die "short page in $rel" if $n != 8192;
		# pd_lsn (8 bytes) and pd_checksum (2 bytes) are the server's, not ours
		substr($page, 0, 10) = "\0" x 10;
		$sha->add($page);
		$pages++;
	}
	close $fh;
	my $hex = $sha->hexdigest;
	note("$idx: $pages pages, sha256 $hex");
	is($hex, $pinned{$idx},
		"$idx: pages byte for byte as pinned (PostgreSQL " . $node->pg_version . ")");
	is(verify_output($node, $idx), '', "$idx: turbo_verify is clean");
}

$node->stop;
done_testing();
