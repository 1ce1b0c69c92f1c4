# Copyright (c) turbovec authors

# CREATE INDEX reports progress in pg_stat_progress_create_index, and every
# phase of a build moves: the sampling pass (heap blocks and vectors), the
# k-means rounds (samples assigned), the coding (vectors coded) and the
# layout of the lists (vectors written); a flat build and an IVF build that
# reads its table twice move through "encoding vectors".  The builds are
# slowed down by turbovec.test_build_delay (a sleep after every 1024 rows
# of a phase and every k-means round), and a second session samples the
# view meanwhile.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use TurboVecTest;

my $node = start_node(
	'progress',
	conf => "max_parallel_maintenance_workers = 0\n"
	  . "turbovec.test_build_delay = 150ms\nlog_statement = none");

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION turbovec;
CREATE TABLE t (id int PRIMARY KEY, v real[]);
INSERT INTO t
	SELECT i, array_agg(((i % 4) * 5 + sin(i * 1.7 + j))::real ORDER BY j)
	FROM generate_series(1, 5000) i, generate_series(1, 64) j GROUP BY i;
});

# Run $create in a second session; sample the view until it is done.
# Returns { phase => { distinct "tuples_done/blocks_done" => 1 } }.
sub watch_build
{
	my ($create, $setup) = @_;
	my ($out, $err) = ('', '');
	# -c, not stdin: IPC::Run keeps a started child's stdin open until finish
	my $h = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
			'-d', 'postgres', (defined $setup ? ('-c', $setup) : ()), '-c', $create
		],
		'<', '/dev/null', '>', \$out, '2>', \$err,
		IPC::Run::timeout(120));
	my %seen;
	while ($h->pumpable)
	{
		$h->pump_nb;
		my $rows = $node->safe_psql('postgres',
			"SELECT phase, tuples_done, blocks_done FROM pg_stat_progress_create_index");
		foreach my $row (split /\n/, $rows)
		{
			my ($phase, $tuples, $blocks) = split /\|/, $row;
			$seen{$phase}{"$tuples/$blocks"} = 1;
		}
		usleep(30_000);
	}
	ok($h->finish, "build finished: $create") or diag($err);
	return \%seen;
}

sub moved
{
	my ($seen, $phase) = @_;
	my $n = scalar keys %{ $seen->{$phase} // {} };
	ok($n >= 2, "phase \"$phase\" moved ($n distinct values)")
	  or diag(explain($seen));
}

# IVF, the vectors in memory: all four phases
my $seen = watch_build('CREATE INDEX t_ivf ON t USING turbo (v real_l2_ops) WITH (lists = 4)');
moved($seen, "building index: $_")
  for ('sampling vectors', 'training lists', 'encoding vectors', 'writing lists');

# flat: the one heap pass codes
$seen = watch_build('CREATE INDEX t_flat ON t USING turbo (v real_l2_ops) WITH (lists = 0)');
moved($seen, 'building index: encoding vectors');

# IVF whose vectors do not fit: the second heap pass codes
$seen = watch_build('CREATE INDEX t_twice ON t USING turbo (v real_l2_ops) WITH (lists = 4)',
	"SET maintenance_work_mem = '1MB'");
moved($seen, "building index: $_") for ('sampling vectors', 'encoding vectors', 'writing lists');

is( $node->safe_psql('postgres',
		"SELECT string_agg(lists::text, ',' ORDER BY i) FROM unnest(ARRAY['t_ivf', 't_flat', 't_twice']) WITH ORDINALITY AS n(i_name, i), turbo_index_info(i_name::regclass)"),
	'4,0,4', 'the builds made the lists asked for');

$node->stop;
done_testing();
