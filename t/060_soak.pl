
# Copyright (c) turbovec authors

# Soak: mixed concurrent load on flat and IVF turbo indexes, on a preloaded
# primary (resident copies kept by the worker) with a streaming standby.
#
# For TV_SOAK_SECONDS (default 120) three pgbench runs go at once:
#   - the primary, 4 clients: INSERT, UPDATE, DELETE and kNN queries with
#     and without filters, through the resident copy and through the pages;
#   - the primary, 1 client: VACUUM and REINDEX INDEX CONCURRENTLY of both
#     indexes, one every couple of seconds;
#   - the standby, 2 clients: the same kNN queries through both paths.
# Every script runs its statements in autocommit, so any ERROR aborts its
# client and fails pgbench.
#
# One error is PostgreSQL's own, not ours: on a hot standby the planner can
# read a table's index list just before replay marks REINDEX CONCURRENTLY's
# old index dead, and then fail to open that index once replay has dropped it
# ("could not open relation with OID N", raised in get_relation_info).  The
# primary waits out such readers before it drops the index; a standby does
# not.  A plain btree index on a standby fails the same way within seconds of
# a REINDEX CONCURRENTLY loop.  So the standby's clients run in a loop that
# restarts pgbench when a client aborts, and the test allows that one error
# only when N names a relation that no longer exists at the end (an old index
# dropped by the maintenance client): a wrong or live OID still fails.
#
# Pass: no pgbench run reports any other error or an aborted client; turbo_verify
# is clean on both nodes; every live row's self-query finds it; with a
# window and probes covering the whole table the primary and the standby
# give a sequential scan's answers for a sample of queries.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $seconds = $ENV{TV_SOAK_SECONDS} // 120;
my $dim     = 24;
my $rows    = 6000;

my $primary = start_node(
	'soak_primary',
	init => { allows_streaming => 1 },
	conf => preload_conf(
		'max_connections = 40',
		'autovacuum_naptime = 5s',
		'turbovec.ready_timeout = 200ms'));

$primary->safe_psql(
	'postgres', qq{
CREATE EXTENSION turbovec;
-- a random vector; VOLATILE so each call draws anew
CREATE FUNCTION rvec(d int) RETURNS real[] LANGUAGE sql VOLATILE AS
	\$\$ SELECT array_agg((random() * 2 - 1)::real) FROM generate_series(1, d) \$\$;
CREATE TABLE sf (id bigserial PRIMARY KEY, cat int NOT NULL, v real[]);
CREATE TABLE si (id bigserial PRIMARY KEY, cat int NOT NULL, v real[]);
SELECT setseed(0.25);
INSERT INTO sf (cat, v) SELECT i % 20, rvec($dim) FROM generate_series(1, $rows) i;
INSERT INTO si (cat, v) SELECT i % 20, rvec($dim) FROM generate_series(1, $rows) i;
-- flat by request: the load takes sf past 50,000 rows, where the
-- maintenance client's REINDEX would otherwise choose IVF lists
CREATE INDEX sf_v ON sf USING turbo (v real_cosine_ops) WITH (lists = 0);
CREATE INDEX si_v ON si USING turbo (v real_l2_ops) WITH (lists = 16);
});
wait_ready_ok($primary, 'sf_v', 'flat index resident before the load');
wait_ready_ok($primary, 'si_v', 'IVF index resident before the load');

# The standby streams through a physical slot: the load writes about 1 MB of
# WAL a second against the test clusters' max_wal_size of 128MB, so without
# one a standby that lost its connection for half a minute would find the
# WAL it needs removed and never catch up.
$primary->safe_psql('postgres',
	"SELECT pg_create_physical_replication_slot('soak_standby', true)");
my $standby = start_standby($primary, 'soak_backup', 'soak_standby');
$standby->append_conf('postgresql.conf',
	"hot_standby_feedback = on\nmax_standby_streaming_delay = -1\n"
	  . "primary_slot_name = 'soak_standby'\n");
$standby->restart;
wait_for_replay($primary, $standby);

# pgbench scripts: a name and its text; weights follow the @ in the file
# argument.
my $tmp = PostgreSQL::Test::Utils::tempdir;
my %scripts;
for my $t ('sf', 'si')
{
	my $op = $t eq 'sf' ? '<=>' : '<->';
	for my $path ('on', 'off')
	{
		$scripts{"knn_${t}_$path"} = qq{SET turbovec.use_resident = $path;
SELECT count(*) FROM (SELECT id FROM $t ORDER BY v $op (SELECT rvec($dim)) LIMIT 10) s;
};
		$scripts{"filter_${t}_$path"} = qq{\\set c random(0, 19)
SET turbovec.use_resident = $path;
SELECT count(*) FROM (SELECT id FROM $t WHERE cat = :c ORDER BY v $op (SELECT rvec($dim)) LIMIT 10) s;
};
	}
	$scripts{"insert_$t"} = qq{INSERT INTO $t (cat, v) SELECT i % 20, rvec($dim) FROM generate_series(1, 10) i;
};
	$scripts{"update_$t"} = qq{\\set id random(1, $rows)
UPDATE $t SET v = rvec($dim) WHERE id = :id;
};
	$scripts{"delete_$t"} = qq{\\set id random(1, $rows)
DELETE FROM $t WHERE id = :id;
};
}
$scripts{maint} = q{VACUUM sf;
\sleep 1 s
REINDEX INDEX CONCURRENTLY si_v;
\sleep 1 s
VACUUM si;
\sleep 1 s
REINDEX INDEX CONCURRENTLY sf_v;
\sleep 1 s
};
for my $name (keys %scripts)
{
	PostgreSQL::Test::Utils::append_to_file("$tmp/$name.sql", $scripts{$name});
}

sub script_args
{
	my (%weights) = @_;
	return map { ('-f', "$tmp/$_.sql\@$weights{$_}") } sort keys %weights;
}

my %queries = map { $_ => 3 }
  grep { /^(knn|filter)_/ } keys %scripts;
my %writes = map { ("insert_$_" => 4, "update_$_" => 3, "delete_$_" => 2) } ('sf', 'si');

sub pgbench_cmd
{
	my ($node, $clients, $secs, @args) = @_;
	return (
		'pgbench', '-n', '-h', $node->host, '-p', $node->port,
		'-c', $clients, '-j', 1, '-T', $secs, @args, 'postgres');
}

# Start one pgbench against $node in the background.
sub start_pgbench
{
	my ($node, $clients, $log, @args) = @_;
	my @cmd = pgbench_cmd($node, $clients, $seconds, @args);
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(\@cmd, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, name => $log };
}

# Start pgbench against a standby in the background, again and again until
# $seconds have passed: a run that PostgreSQL's standby race (see above)
# aborts is followed by a new one.  The loop exits 0; each run's output is
# kept for the checks.
sub start_pgbench_loop
{
	my ($node, $clients, $log, @args) = @_;
	my $cmd = join(' ', map { quotemeta } pgbench_cmd($node, $clients, 'SECS', @args));
	$cmd =~ s/SECS/\$left/;
	my $loop = qq{end=\$((SECONDS + $seconds))
while left=\$((end - SECONDS)); [ \$left -gt 0 ]; do $cmd || true; done};
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ 'bash', '-c', $loop ], '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, name => $log, standby_loop => 1 };
}

my @runs = (
	start_pgbench($primary, 4, 'primary load', script_args(%queries, %writes)),
	start_pgbench($primary, 1, 'primary maintenance', '-f', "$tmp/maint.sql"),
	start_pgbench_loop($standby, 2, 'standby queries', script_args(%queries)));

for my $run (@runs)
{
	my $ok = $run->{h}->finish;
	my $out = ${ $run->{out} };
	my $err = ${ $run->{err} };
	my $tx = 0;
	$tx += $_ for $out =~ /number of transactions actually processed: (\d+)/g;
	my $failed = 0;
	$failed += $_ for $out =~ /number of failed transactions: (\d+)/g;
	diag("$run->{name}: $tx transactions in $seconds s");
	ok($ok, "$run->{name}: pgbench exited cleanly");
	ok($tx > 0, "$run->{name}: transactions were processed");
	is($failed, 0, "$run->{name}: no failed transactions");
	my @errors = grep { /ERROR|aborted|FATAL/ } split /\n/, $err;
	if ($run->{standby_loop})
	{
		# drop the standby race's own lines: the client's ERROR naming a
		# relation that is gone now, and pgbench's "run was aborted" summary
		my @races;
		@errors = grep {
			if (/ERROR:  could not open relation with OID (\d+)$/)
			{
				push @races, $1;
				0;
			}
			else { !/Run was aborted; the above results are incomplete/ }
		} @errors;
		my $live = scalar(@races)
		  ? $primary->safe_psql('postgres',
			'SELECT count(*) FROM pg_class WHERE oid IN (' . join(',', @races) . ')')
		  : 0;
		is($live, 0, "$run->{name}: the standby race named only dropped relations ("
			  . scalar(@races) . ' seen)');
	}
	is(scalar(@errors), 0, "$run->{name}: no errors")
	  or diag(join("\n", @errors[0 .. ($#errors < 9 ? $#errors : 9)]));
}

# Let the worker catch up, then check both nodes.
$primary->safe_psql('postgres', 'VACUUM (INDEX_CLEANUP ON) sf; VACUUM (INDEX_CLEANUP ON) si; CHECKPOINT');
wait_for_replay($primary, $standby);

for my $node ($primary, $standby)
{
	my $name = $node->name;
	for my $idx ('sf_v', 'si_v')
	{
		is(verify_output($node, $idx), '', "$name: turbo_verify($idx) is clean");
	}

	for my $path ('on', 'off')
	{
		# every live row finds itself among its five nearest; a row's code
		# ranks it first among the estimates, so a 20-row window is plenty
		# and keeps these thousands of queries quick
		for my $t (['sf', '<=>'], ['si', '<->'])
		{
			my ($table, $op) = @$t;
			my $missing = $node->safe_psql(
				'postgres', qq{$FORCE_INDEX SET turbovec.use_resident = $path;
SET turbovec.candidates = 20;
SELECT count(*) FROM $table t
WHERE t.v IS NOT NULL AND NOT EXISTS (
	SELECT 1 FROM (SELECT s.id FROM $table s ORDER BY s.v $op t.v LIMIT 5) n
	WHERE n.id = t.id)});
			is($missing, '0',
				"$name, resident $path: every row of $table finds itself");
		}
	}
}

# A sample of queries through the whole table agrees with a sequential scan.
srand(6060);
my $wide = "$FORCE_INDEX $ALL_CANDIDATES SET turbovec.probes = 16;";
for my $i (1 .. 5)
{
	my $q = random_vector($dim);
	for my $t (['sf', '<=>'], ['si', '<->'])
	{
		my ($table, $op) = @$t;
		my $sql = "SELECT string_agg(id::text, ',') FROM "
		  . "(SELECT id FROM $table ORDER BY v $op '$q' LIMIT 10) s";
		my $seq = $primary->safe_psql('postgres', "$FORCE_SEQ $sql");
		for my $node ($primary, $standby)
		{
			for my $path ('on', 'off')
			{
				is( $node->safe_psql(
						'postgres',
						"$wide SET turbovec.use_resident = $path; $sql"),
					$seq,
					$node->name . ", resident $path: query $i on $table matches a sequential scan");
			}
		}
	}
}

ok(!$primary->log_contains('terminated by signal') && !$standby->log_contains('terminated by signal'),
	'no server process crashed');

$standby->stop;
$primary->stop;
done_testing();
