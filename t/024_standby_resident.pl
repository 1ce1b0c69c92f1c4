
# Copyright (c) turbovec authors

# Resident copies on a streaming standby.
#
# Primary and standby both preload turbovec.  WAL redo changes the index
# pages on the standby behind its copies' backs: the metapage counter moves,
# scans read the extent meanwhile, and the standby's worker rebuilds the
# copies that fell behind.  After the initial load and after each of four
# insert/delete/VACUUM rounds on the primary, once the standby has replayed
# them:
#
#  - the standby's LIMIT 10 answers equal the primary's at once (extent or
#    copy), and again once the standby's copies are ready and current;
#  - turbo_indexes works on the standby and shows its live state, while the
#    persisted shadow table is only ever written by the primary.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

srand(20250305);

my $dim     = 24;
my %opclass = (r_ip => '<#>', r_l2 => '<->');
my @indexes = sort keys %opclass;
my $force   = "$FORCE_INDEX SET turbovec.probes = 8;";

my $primary = start_node(
	'primary',
	init => { allows_streaming => 1 },
	conf => preload_conf());
$primary->safe_psql(
	'postgres', q{
CREATE EXTENSION turbovec;
CREATE TABLE r (id serial PRIMARY KEY, v real[]);
});
my $standby = start_standby($primary, 'resident_backup', 'standby');

sub insert_rows
{
	my ($n, $seed) = @_;
	$primary->safe_psql('postgres', random_rows_sql('r', $dim, $n, $seed));
}

# Are both of the standby's copies ready with the metapage's counter?
sub standby_current
{
	return $standby->safe_psql(
		'postgres', q{
SELECT count(*) = 2 FROM turbo_resident_status() r
	CROSS JOIN LATERAL turbo_index_info(r.indexrelid::regclass) i
WHERE r.state = 'ready' AND r.change_count = i.change_count
	AND r.indexrelid IN ('r_l2'::regclass, 'r_ip'::regclass)});
}

sub compare_nodes
{
	my ($label) = @_;
	foreach my $idx (@indexes)
	{
		for my $i (1 .. 3)
		{
			my $q   = random_vector($dim);
			my $sql = top10_sql('r', $opclass{$idx}, $q);
			my $on_primary = $primary->safe_psql('postgres', "$force $sql");
			is(scalar(split /,/, $on_primary), 10, "$label: $idx query $i: 10 rows");
			is($standby->safe_psql('postgres', "$force $sql"),
				$on_primary, "$label: $idx query $i: the standby answers like the primary");
		}
	}
}

insert_rows(6000, 0.13);
$primary->safe_psql(
	'postgres', q{
CREATE INDEX r_l2 ON r USING turbo (v real_l2_ops);
CREATE INDEX r_ip ON r USING turbo (v real_ip_ops) WITH (lists = 8, bits = 3);
});
foreach my $idx (@indexes)
{
	wait_ready_ok($primary, $idx, "primary: $idx is ready");
}
wait_for_replay($primary, $standby);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery(), turbo_preloaded()'),
	't|t', 'the standby is in recovery with turbovec preloaded');
foreach my $idx (@indexes)
{
	wait_ready_ok($standby, $idx, "standby: $idx is ready");
}
compare_nodes('after build');

for my $round (1 .. 4)
{
	$primary->safe_psql('postgres',
		"DELETE FROM r WHERE id % 9 = $round; VACUUM (INDEX_CLEANUP ON) r;");
	insert_rows(400, $round / 10);
	wait_for_replay($primary, $standby);
	# At once: extent or copy, the answers are the same.
	compare_nodes("round $round, at once");
	my $deadline = time() + 30;
	my $current  = standby_current();
	while ($current ne 't' && time() < $deadline)
	{
		usleep(100_000);
		$current = standby_current();
	}
	is($current, 't', "round $round: the standby's copies catch up (ready, current)");
	compare_nodes("round $round, copies current");
	is( $standby->safe_psql(
			'postgres',
			"SELECT string_agg(index || ':' || ready || ':' || resident_state || ':' "
			  . "|| (resident_bytes > 0), ',' ORDER BY index::text) FROM turbo_indexes"),
		'r_ip:true:ready:true,r_l2:true:ready:true',
		"round $round: turbo_indexes on the standby shows its copies ready");
	foreach my $idx (@indexes)
	{
		is(index_info($standby, $idx, 'live_rows'),
			$primary->safe_psql('postgres', 'SELECT count(*) FROM r'),
			"round $round: $idx live rows on the standby equal the primary's table");
	}
}

# The shadow table is written on the primary only; the standby sees the
# primary's rows through replication and its own live state beside them.
ok( $primary->poll_query_until(
		'postgres',
		"SELECT count(*) = 2 FROM turbovec_index_state WHERE ready"),
	'primary: turbovec_index_state shows both indexes ready');
wait_for_replay($primary, $standby);
is( $standby->safe_psql('postgres',
		'SELECT count(*) FROM turbovec_index_state WHERE ready'),
	2, 'standby: turbovec_index_state holds the replicated rows');
is( $standby->safe_psql('postgres',
		'SELECT count(*) FROM turbo_indexes WHERE ready AND persisted_ready'),
	2, 'standby: turbo_indexes joins live and persisted state');
my $log = slurp_file($standby->logfile);
unlike($log, qr/cannot execute .* in a read-only transaction|turbovec_index_state/,
	'the standby never tried to write the shadow table');

$standby->stop;
$primary->stop;
done_testing();
