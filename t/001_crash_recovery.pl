
# Copyright (c) turbovec authors

# Crash recovery of turbo indexes.
#
# A table with three turbo indexes (l2 at 4 bits, cosine at 2 bits, inner
# product at 3 bits) takes concurrent inserts, updates and deletes from two
# pgbench clients (and, in later cycles, a session running DELETE and
# VACUUM in a loop); mid-stream the server crashes: odd cycles stop the
# postmaster with an immediate shutdown (no checkpoint, shared buffers
# lost), even cycles SIGKILL one inserting backend so that the postmaster
# resets shared memory and replays WAL itself.  Checkpoints are rare, so
# recovery replays the generic WAL records of the index pages.  After each
# restart every index must be structurally sound (turbo_verify), complete
# (every live row is found by an index scan, a full ordered scan returns
# exactly the live rows) and exact (with the re-rank window covering the
# table, LIMIT 10 equals a sequential scan), and after VACUUM its live-row
# count must match the table.
#
# A second table, iv, carries two IVF indexes (l2 at 32 lists and 4 bits,
# cosine at 8 lists and 2 bits) and takes its own share of the same
# writes, deletes and VACUUMs, so the crashes also cut list-routed inserts,
# lane reuse through the per-list free hints and new blocks linked to a
# list.  With turbovec.probes covering every list they must pass the same
# checks, and turbo_verify also walks their list chains; an unlimited
# ordered scan probing fewer lists (the default 16 of 32, or 1 of 8) must
# go on to the other lists and still return every live row (in
# turbovec.iterative_scan = relaxed_order, which returns every row).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;
use Time::HiRes qw(usleep);

srand(20240611);

my $dim     = 16;
my $ncycles = 6;
my $nsample = 50;
# Re-rank window covering the whole table: index answers must be exact.
my $all_candidates = 100000;

my %opclass = (
	t_l2   => '<->',
	t_cos  => '<=>',
	t_ip   => '<#>',
	iv_l2  => '<->',
	iv_cos => '<=>');
my @indexes = sort keys %opclass;
# The table each index is on, and the lists of the IVF ones.
my %table = map { $_ => (/^iv_/ ? 'iv' : 't') } @indexes;
my %lists = (iv_l2 => 32, iv_cos => 8);

my $node = start_node(
	'crash', conf => qq{
restart_after_crash = on
log_statement = none
checkpoint_timeout = 1h
max_wal_size = 1GB
max_connections = 20
});

# Ids of the rows an ordered index scan of $table must return.
sub live_ids
{
	my ($table) = @_;
	return $node->safe_psql('postgres',
		"SELECT id FROM $table WHERE v IS NOT NULL ORDER BY id");
}

# Settings for a scan through $idx: no sequential or bitmap scan, the given
# re-rank window (default when undef) and, for an IVF index, $probes lists
# probed first ('default': the GUC's default; undef: every list).
sub scan_settings
{
	my ($idx, $cand, $probes) = @_;
	my $set = "$FORCE_INDEX ";
	$set .= "SET turbovec.candidates = $cand; " if defined $cand;
	$probes //= $lists{$idx};
	$set .= "SET turbovec.probes = $probes; "
	  if $lists{$idx} && $probes ne 'default';
	return $set;
}

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
CREATE TABLE t (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('t', $dim, 3000, 0.25, 50) ]}
CREATE INDEX t_l2 ON t USING turbo (v real_l2_ops);
CREATE INDEX t_cos ON t USING turbo (v real_cosine_ops) WITH (bits = 2);
CREATE INDEX t_ip ON t USING turbo (v real_ip_ops) WITH (bits = 3);
CREATE TABLE iv (id serial PRIMARY KEY, v real[]);
@{[ random_rows_sql('iv', $dim, 2000, 0.75, 50) ]}
CREATE INDEX iv_l2 ON iv USING turbo (v real_l2_ops) WITH (lists = $lists{iv_l2});
CREATE INDEX iv_cos ON iv USING turbo (v real_cosine_ops)
	WITH (lists = $lists{iv_cos}, bits = 2);
});

# pgbench scripts: random vectors come from pgbench's seeded generator.
my $tmp     = PostgreSQL::Test::Utils::tempdir;
my $sets    = join('', map { "\\set x$_ random(-1000000, 1000000) / 1000000.0\n" } 1 .. $dim);
my $array   = 'ARRAY[' . join(', ', map { ":x$_" } 1 .. $dim) . ']::real[]';
my %scripts = (
	'insert.sql@8'      => "$sets" . "INSERT INTO t (v) VALUES ($array);\n",
	'insert_null.sql@1' => "INSERT INTO t (v) VALUES (NULL);\n",
	'update.sql@2'      => "$sets\\set id random(1, 3000)\n"
	  . "UPDATE t SET v = $array WHERE id = :id;\n",
	'delete.sql@1' => "\\set id random(1, 6000)\nDELETE FROM t WHERE id = :id;\n",
	'iv_insert.sql@6'      => "$sets" . "INSERT INTO iv (v) VALUES ($array);\n",
	'iv_insert_null.sql@1' => "INSERT INTO iv (v) VALUES (NULL);\n",
	'iv_update.sql@2'      => "$sets\\set id random(1, 2000)\n"
	  . "UPDATE iv SET v = $array WHERE id = :id;\n",
	'iv_delete.sql@1' => "\\set id random(1, 5000)\nDELETE FROM iv WHERE id = :id;\n",);
my @script_args;
foreach my $name (sort keys %scripts)
{
	my ($file) = split /@/, $name;
	PostgreSQL::Test::Utils::append_to_file("$tmp/$file", $scripts{$name});
	push @script_args, '-f', "$tmp/$name";
}

# Run the checks every cycle makes; $label names the cycle and phase.
sub check_indexes
{
	my ($label, $after_vacuum) = @_;

	foreach my $idx (@indexes)
	{
		is(verify_output($node, $idx),
			'', "$label: turbo_verify($idx) finds no problem");
	}

	# The IVF indexes keep the lists they were built with.
	foreach my $idx (grep { $lists{$_} } @indexes)
	{
		is(index_info($node, $idx, 'lists'),
			$lists{$idx},
			"$label: turbo_index_info($idx).lists is $lists{$idx}");
	}

	my (%live_list, %live);
	foreach my $table ('t', 'iv')
	{
		$live_list{$table} = [ split /\n/, live_ids($table) ];
		$live{$table} = { map { $_ => 1 } @{ $live_list{$table} } };
	}

	# Every sampled live row finds itself (distance 0) through the l2 and
	# cosine indexes.  Vectors are random, so no two rows are equal.
	foreach my $idx (grep { $opclass{$_} ne '<#>' } @indexes)
	{
		my $table    = $table{$idx};
		my @live     = @{ $live_list{$table} };
		my @sample   = (sort { $a <=> $b } map { $live[ int(rand(@live)) ] } 1 .. $nsample);
		my %seen;
		@sample = grep { !$seen{$_}++ } @sample;
		my $in       = join(',', @sample);
		my $op       = $opclass{$idx};
		my $settings = scan_settings($idx, $all_candidates);
		my $sql =
		    "SELECT s.id, (SELECT u.id FROM $table u ORDER BY u.v $op s.v LIMIT 1) "
		  . "FROM $table s WHERE s.id IN ($in) ORDER BY s.id";
		my $plan = $node->safe_psql('postgres', "$settings EXPLAIN (COSTS OFF) $sql");
		like($plan, qr/Index Scan using $idx /, "$label: self lookups use $idx");
		my @wrong;
		foreach my $line (split /\n/, $node->safe_psql('postgres', "$settings $sql"))
		{
			my ($id, $found) = split /\|/, $line, -1;
			push @wrong, "$id->" . ($found eq '' ? 'nothing' : $found) if $found ne $id;
		}
		is(scalar(@wrong), 0,
			"$label: each of " . scalar(@sample) . " sampled rows is found by $idx")
		  or diag("row -> nearest row found: @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)]");
	}

	# Full ordered scans return exactly the live rows, at a covering re-rank
	# window (every list probed) and, at the default window, through t_l2
	# and through IVF indexes probing fewer lists than they have: those
	# scans must go on to the other lists.
	my $q = random_vector($dim);
	foreach my $case (
		(map { [ $_, $all_candidates ] } @indexes),
		[ 't_l2',   undef ],
		[ 'iv_l2',  undef, 'default' ],
		[ 'iv_cos', undef, 1 ])
	{
		my ($idx, $cand, $probes) = @$case;
		my $table = $table{$idx};
		my $op    = $opclass{$idx};
		# every row comes back in relaxed_order; strict_order leaves out
		# rows a later window finds nearer than one already returned
		my $set   = scan_settings($idx, $cand, $probes)
		  . 'SET turbovec.iterative_scan = relaxed_order; ';
		my $what  = "$idx, candidates " . ($cand // 'default');
		$what .= ', probes ' . ($probes // $lists{$idx}) if $lists{$idx};
		my $sql = "SELECT id FROM $table ORDER BY v $op '$q'";
		like(
			$node->safe_psql('postgres', "$set EXPLAIN (COSTS OFF) $sql"),
			qr/Index Scan using $idx /,
			"$label: full scan uses $what");
		my @got = split /\n/, $node->safe_psql('postgres', "$set $sql");
		my %got;
		my @dups    = grep { $got{$_}++ } @got;
		my @extra   = grep { !$live{$table}{$_} } keys %got;
		my @missing = grep { !$got{$_} } @{ $live_list{$table} };
		ok(!@dups && !@extra && !@missing,
			"$label: full scan on $what returns the "
			  . scalar(@{ $live_list{$table} })
			  . " live rows")
		  or diag(sprintf(
			"got %d rows; %d duplicated (%s), %d not live (%s), %d missing (%s)",
			scalar(@got), scalar(@dups), join(',', @dups[0 .. ($#dups < 9 ? $#dups : 9)]),
			scalar(@extra), join(',', @extra[0 .. ($#extra < 9 ? $#extra : 9)]),
			scalar(@missing), join(',', @missing[0 .. ($#missing < 9 ? $#missing : 9)])));
	}

	# With a covering re-rank window (and every list probed) the top 10
	# equal a sequential scan's.
	foreach my $idx (@indexes)
	{
		my $table    = $table{$idx};
		my $op       = $opclass{$idx};
		my $settings = scan_settings($idx, $all_candidates);
		for my $i (1 .. 2)
		{
			my $qv  = random_vector($dim);
			my $sql = "SELECT id FROM $table ORDER BY v $op '$qv' LIMIT 10";
			my $exact = $node->safe_psql('postgres', "$FORCE_SEQ $sql");
			my $got = $node->safe_psql('postgres', "$settings $sql");
			is($got, $exact, "$label: $idx top 10 equals a sequential scan (query $i)");
		}
	}

	if ($after_vacuum)
	{
		my %count = map {
			$_ => $node->safe_psql('postgres',
				"SELECT count(*) FROM $_ WHERE v IS NOT NULL")
		} ('t', 'iv');
		foreach my $idx (@indexes)
		{
			my $count = $count{ $table{$idx} };
			is(index_info($node, $idx, 'live_rows'),
				$count,
				"$label: turbo_index_info($idx).live_rows equals the $count non-NULL rows");
		}
	}
}

check_indexes('after build', 0);

for my $cycle (1 .. $ncycles)
{
	# Give the cycle some history to replay: deletes, a VACUUM of the indexes
	# and, every other cycle, a checkpoint so some pages come back from full
	# page images and some from the records alone.
	$node->safe_psql('postgres',
		"DELETE FROM t WHERE id % 17 = $cycle; VACUUM (INDEX_CLEANUP ON) t; "
		  . "DELETE FROM iv WHERE id % 13 = $cycle; VACUUM (INDEX_CLEANUP ON) iv;");
	$node->safe_psql('postgres', 'CHECKPOINT') if $cycle % 2 == 0;

	my $max_ids =
	  'SELECT coalesce(max(id), 0) FROM t UNION ALL SELECT coalesce(max(id), 0) FROM iv';
	my ($before, $iv_before) = split /\n/, $node->safe_psql('postgres', $max_ids);
	my ($out, $err) = ('', '');
	my ($vacuum, $vout, $verr) = (undef, '', '');
	my $pgbench;
	{
		# From cycle 4 on, a third session deletes and vacuums while pgbench
		# writes, so the crash can also cut a VACUUM of the indexes short.
		if ($cycle >= 4)
		{
			local $ENV{PGAPPNAME} = 'turbo_vacuum';
			my $sql = join('',
				map { "DELETE FROM t WHERE id % 1999 = $_; VACUUM (INDEX_CLEANUP ON) t;\n"
					  . "DELETE FROM iv WHERE id % 997 = $_; VACUUM (INDEX_CLEANUP ON) iv;\n" } 1 .. 200);
			$vacuum = IPC::Run::start(
				[
					'psql', '-XAtq', '-h', $node->host, '-p', $node->port,
					'-d', 'postgres'
				],
				'<', \$sql, '>', \$vout, '2>', \$verr,
				IPC::Run::timeout(120));
		}
		# PostgreSQL::Test::Utils names every client after the test file;
		# give pgbench's sessions their own name so they can be found.
		local $ENV{PGAPPNAME} = 'turbo_pgbench';
		$pgbench = IPC::Run::start(
			[
				'pgbench', '-n', '-c', '2', '-j', '2', '-T', '60',
				'-R', '1000', "--random-seed=$cycle", @script_args,
				'-h', $node->host, '-p', $node->port, 'postgres'
			],
			'>', \$out, '2>', \$err,
			IPC::Run::timeout(120));
	}

	# Crash only once the clients are busy writing: at least 500 rows in t
	# and 300 in iv.
	my $grown = 0;
	for (1 .. 100)
	{
		usleep(100_000);
		my ($now, $iv_now) = split /\n/, $node->safe_psql('postgres', $max_ids);
		if ($now >= $before + 500 && $iv_now >= $iv_before + 300) { $grown = 1; last; }
	}
	ok($grown, "cycle $cycle: pgbench inserted rows before the crash");

	if ($vacuum)
	{
		is( $node->safe_psql(
				'postgres',
				"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'turbo_vacuum'"),
			1,
			"cycle $cycle: the DELETE/VACUUM session is still at work");
	}

	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE application_name = 'turbo_pgbench' "
		  . "AND backend_type = 'client backend' AND pid <> pg_backend_pid() LIMIT 1");
	if ($cycle % 2 == 0 && $pid =~ /^\d+$/)
	{
		# A backend dies in the middle of its work: the postmaster kills the
		# others, resets shared memory and replays WAL.
		my $offset = -s $node->logfile;
		kill 'KILL', $pid;
		$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
		$node->wait_for_log(qr/database system is ready to accept connections/, $offset);
		pass("cycle $cycle: crash by SIGKILL of backend $pid");
	}
	else
	{
		# Odd cycles (or no backend to kill): an immediate shutdown.
		fail("cycle $cycle: no pgbench backend to kill") if $cycle % 2 == 0;
		$node->stop('immediate');
		$node->start;
	}

	# The clients lose their connections; collect them.
	foreach my $h (grep { defined } $pgbench, $vacuum)
	{
		eval { $h->finish; };
		$h->kill_kill if $@;
	}
	diag("pgbench did not write: $err") unless $grown;

	check_indexes("cycle $cycle after crash", 0);

	$node->safe_psql('postgres', 'VACUUM (INDEX_CLEANUP ON) t; VACUUM (INDEX_CLEANUP ON) iv;');
	check_indexes("cycle $cycle after vacuum", 1);
}

$node->stop;
done_testing();
