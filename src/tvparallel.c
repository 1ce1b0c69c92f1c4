/*
 * tvparallel.c
 *	  Assigning and encoding the spooled vectors of an IVF build, the
 *	  k-means rounds and the build's heap scans, shared with parallel
 *	  workers when max_parallel_maintenance_workers allows.
 *
 * Once the lists are trained, what is left of an IVF build is pure
 * arithmetic on vectors already in memory: pick each vector's list and
 * code it (tvpage.c TvEncodeVector).  That is most of the build's CPU time,
 * and it splits cleanly: each participant claims batches of 64 vectors
 * from an atomic counter and writes the batch's lists, row codes and
 * factors into arrays indexed by spool position.  The results do not
 * depend on who coded what, so a parallel build writes exactly the pages a
 * serial one does; the leader lays out the blocks afterwards, outside
 * parallel mode.
 *
 * Workers touch no relation: they read a window of vectors, the centroids
 * and the codec parameters from the dynamic shared memory segment.  The
 * window holds at most 32 MB and a quarter of maintenance_work_mem of
 * vectors, so the segment stays small whatever the size of the table; a
 * larger spool goes through in rounds on the same segment.
 *
 * Rounds (windows of the spool, Lloyd rounds of k-means) keep the same
 * workers: starting a worker costs a process start (about 30 ms on a small
 * VM), more than a k-means round takes, and the leader would wait for it
 * at the end of every round.  The workers sleep between rounds; see
 * TvRounds.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "commands/progress.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/shm_mq.h"
#include "storage/shm_toc.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "turbovec.h"

#define TV_PARALLEL_KEY_SHARED		UINT64CONST(0x7475726226FE0001)

/* vectors per claimed batch; divides TV_SPOOL_CHUNK so a batch never spans chunks */
#define TV_ENCODE_BATCH				64

/*
 * Bytes of vectors in the segment per round: a quarter of
 * maintenance_work_mem, and no more than 32 MB, because a fresh segment
 * costs a page fault per page on first touch and rounds reuse theirs
 * (Fashion-MNIST's 188 MB went through fastest in 32 MB rounds: 16 MB,
 * 64 MB and one 188 MB window were slower)
 */
#define TV_PARALLEL_WINDOW_MAX		((Size) 32 * 1024 * 1024)
#define TvParallelWindowBytes(mem_kb) \
	Min(TV_PARALLEL_WINDOW_MAX, (Size) (mem_kb) * 1024 / 4)

/*
 * Work in rounds with the same workers.  One 64-bit word holds the open
 * round and the next unclaimed item of it; a participant claims a batch
 * with a compare-and-swap that fails once the round has moved on, so a
 * late worker can never take an item of a round whose inputs it did not
 * read.  The leader writes a round's inputs, then opens it; it changes
 * them again only after every item of the round is done, which takes
 * every claim, so inputs read before a successful claim are whole.
 */
#define TV_ROUND_END		PG_UINT32_MAX

typedef struct TvRounds
{
	pg_atomic_uint64 claim;		/* open round << 32 | next unclaimed item */
	pg_atomic_uint64 done;		/* items of the open round finished */
	uint32		nitems;			/* items of the open round */
	ConditionVariable opened;	/* a round was opened, or the work ended */
	ConditionVariable finished; /* the open round's last item was finished */
} TvRounds;

static void
RoundsInit(TvRounds *rs)
{
	pg_atomic_init_u64(&rs->claim, 0);
	pg_atomic_init_u64(&rs->done, 0);
	rs->nitems = 0;
	ConditionVariableInit(&rs->opened);
	ConditionVariableInit(&rs->finished);
}

/* The leader: open the next round of nitems items (its inputs are written) */
static uint32
RoundsOpen(TvRounds *rs, uint32 nitems)
{
	uint32		round = (uint32) (pg_atomic_read_u64(&rs->claim) >> 32) + 1;

	Assert(round != TV_ROUND_END);
	rs->nitems = nitems;
	pg_atomic_write_u64(&rs->done, 0);
	pg_write_barrier();
	pg_atomic_write_u64(&rs->claim, (uint64) round << 32);
	ConditionVariableBroadcast(&rs->opened);
	return round;
}

/*
 * Claim up to batch items of the round: the first in *first, how many in
 * *count.  False once the round has no items left or is no longer open.
 */
static bool
RoundsClaim(TvRounds *rs, uint32 round, uint32 batch, uint32 *first, uint32 *count)
{
	uint64		v = pg_atomic_read_u64(&rs->claim);

	for (;;)
	{
		uint32		pos = (uint32) v;
		uint32		nitems;

		if ((uint32) (v >> 32) != round)
			return false;
		pg_read_barrier();
		nitems = rs->nitems;
		if (pos >= nitems)
			return false;
		*count = Min(batch, nitems - pos);
		/* a full barrier: the inputs are read after the claim succeeds */
		if (pg_atomic_compare_exchange_u64(&rs->claim, &v, v + *count))
		{
			*first = pos;
			return true;
		}
	}
}

/* count items of the round are done; the last of them wakes the leader */
static void
RoundsDone(TvRounds *rs, uint32 count)
{
	uint32		nitems = rs->nitems;

	if (pg_atomic_add_fetch_u64(&rs->done, count) == nitems)
		ConditionVariableBroadcast(&rs->finished);
}

/* The leader: wait until every item of the open round is done */
static void
RoundsWait(TvRounds *rs)
{
	if (pg_atomic_read_u64(&rs->done) < rs->nitems)
	{
		ConditionVariablePrepareToSleep(&rs->finished);
		while (pg_atomic_read_u64(&rs->done) < rs->nitems)
			ConditionVariableSleep(&rs->finished, PG_WAIT_EXTENSION);
		ConditionVariableCancelSleep();
	}
	/* the workers' results are read after their counts */
	pg_read_barrier();
}

/* The leader: no more rounds; the workers return */
static void
RoundsEnd(TvRounds *rs)
{
	pg_atomic_write_u64(&rs->claim, (uint64) TV_ROUND_END << 32);
	ConditionVariableBroadcast(&rs->opened);
}

/* A worker: sleep until a round after `seen` is open; TV_ROUND_END ends */
static uint32
RoundsNext(TvRounds *rs, uint32 seen)
{
	uint32		round = (uint32) (pg_atomic_read_u64(&rs->claim) >> 32);

	if (round == seen)
	{
		ConditionVariablePrepareToSleep(&rs->opened);
		while ((round = (uint32) (pg_atomic_read_u64(&rs->claim) >> 32)) == seen)
			ConditionVariableSleep(&rs->opened, PG_WAIT_EXTENSION);
		ConditionVariableCancelSleep();
	}
	pg_read_barrier();
	return round;
}

/* Where the arrays go in the segment (after the header), and the window */
typedef struct SegmentPlan
{
	uint64		capacity;		/* vectors per round */
	int			slots;			/* windows of vectors: 2 when filled in place */
	Size		total;
	Size		off_centroids;
	Size		off_cnorms;
	Size		off_vectors;	/* slot s at off_vectors + s * capacity vectors */
	Size		off_listof;
	Size		off_codes;
	Size		off_factors;
} SegmentPlan;

/* The segment: this header, then the arrays at the offsets it gives */
typedef struct TvEncodeShared
{
	/* the codec and the lists */
	int			dim;
	int			bits;
	uint64		seed;
	int			metric;
	int			lists;
	bool		residual;
	int			code_bytes;

	/* the rounds; a round's items are its window's vectors, in slot */
	TvRounds	rounds;
	int			slot;

	SegmentPlan plan;
} TvEncodeShared;

/* One participant's view of a piece of work: its input and where results go */
typedef struct EncodeJob
{
	TvEncodeInput in;
	int		   *listof;
	uint8	   *codes;
	TvFactors  *factors;
	uint64		progress_base;	/* the leader: report first vector + this */
	bool		progress;
} EncodeJob;

PGDLLEXPORT void TvParallelEncodeMain(dsm_segment *seg, shm_toc *toc);

/* Assign and code positions k0 .. k0 + m - 1 of a job */
static void
EncodeSpoolBatch(const EncodeJob *job, TvListAssigner *assigner, float *work,
				 uint64 k0, int m)
{
	const TvEncodeInput *in = &job->in;
	int			dim = in->codec->dim;
	int			code_bytes = in->codec->code_bytes;
	const float *xs = in->chunks[k0 / in->chunk_vectors] +
		(Size) (k0 % in->chunk_vectors) * dim;

	TvAssignLists(assigner, xs, m, job->listof + k0);
	for (int i = 0; i < m; i++)
	{
		const float *centroid = NULL;

		if (in->residual)
			centroid = in->centroids + (Size) job->listof[k0 + i] * dim;
		/* the build's first pass left out what cannot be indexed */
		if (!TvEncodeVector(in->codec, in->metric, centroid, xs + (Size) i * dim,
							job->codes + (k0 + i) * code_bytes,
							&job->factors[k0 + i], work))
			elog(ERROR, "turbo build met a vector it cannot index");
	}
}

static void
ReportEncoded(const EncodeJob *job, uint64 k0)
{
	if (job->progress && k0 % 1024 == 0)
	{
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
									 (int64) (job->progress_base + k0));
		TvTestBuildDelay();
	}
}

static TvListAssigner *
JobAssigner(const EncodeJob *job)
{
	return TvListAssignerCreate(job->in.centroids, job->in.cnorms, job->in.lists,
								job->in.codec->dim, job->in.metric);
}

/* Code every vector of a job alone */
static void
RunEncodeJob(const EncodeJob *job)
{
	float	   *work = palloc(sizeof(float) * TvEncodeWorkFloats(job->in.codec));
	TvListAssigner *assigner = JobAssigner(job);

	for (uint64 k0 = 0; k0 < job->in.n; k0 += TV_ENCODE_BATCH)
	{
		ReportEncoded(job, k0);
		EncodeSpoolBatch(job, assigner, work, k0,
						 (int) Min((uint64) TV_ENCODE_BATCH, job->in.n - k0));
		CHECK_FOR_INTERRUPTS();
	}
	TvListAssignerFree(assigner);
	pfree(work);
}

/*
 * Take part in one round of the segment's coding: claim batches of its
 * window until none is left; every output slot is written once
 */
static void
EncodeRound(TvEncodeShared *sh, uint32 round, const EncodeJob *job,
			TvListAssigner *assigner, float *work)
{
	uint32		first;
	uint32		count;

	while (RoundsClaim(&sh->rounds, round, TV_ENCODE_BATCH, &first, &count))
	{
		ReportEncoded(job, first);
		EncodeSpoolBatch(job, assigner, work, first, (int) count);
		RoundsDone(&sh->rounds, count);
		CHECK_FOR_INTERRUPTS();
	}
}

/* The vectors of a window slot of the segment */
static float *
SlotVectors(TvEncodeShared *sh, int slot)
{
	return (float *) ((char *) sh + sh->plan.off_vectors +
					  (Size) slot * sh->plan.capacity * sizeof(float) * sh->dim);
}

/*
 * A job over the segment's window, with the window as one chunk (*chunk,
 * which the caller points at the slot of each round)
 */
static EncodeJob
SharedJob(TvEncodeShared *sh, const TvCodec *codec, float **chunk)
{
	char	   *base = (char *) sh;
	EncodeJob	job;

	memset(&job, 0, sizeof(job));
	*chunk = SlotVectors(sh, 0);
	job.in.codec = codec;
	job.in.metric = (TvMetric) sh->metric;
	job.in.lists = sh->lists;
	job.in.residual = sh->residual;
	job.in.centroids = (const float *) (base + sh->plan.off_centroids);
	job.in.cnorms = (const float *) (base + sh->plan.off_cnorms);
	job.in.n = sh->plan.capacity;	/* rounds bound their own claims */
	job.in.chunk_vectors = (int) Max(sh->plan.capacity, 1);
	job.in.chunks = chunk;
	job.listof = (int *) (base + sh->plan.off_listof);
	job.codes = (uint8 *) (base + sh->plan.off_codes);
	job.factors = (TvFactors *) (base + sh->plan.off_factors);
	job.progress_base = 0;
	job.progress = false;
	return job;
}

/*
 * Entry point of a parallel worker (CreateParallelContext names it): the
 * centroids are in the segment before the workers start, the windows come
 * round by round
 */
void
TvParallelEncodeMain(dsm_segment *seg, shm_toc *toc)
{
	TvEncodeShared *sh = shm_toc_lookup(toc, TV_PARALLEL_KEY_SHARED, false);
	TvCodec    *codec = TvCreateCodec(sh->dim, sh->bits, sh->seed, CurrentMemoryContext);
	float	   *chunk;
	EncodeJob	job = SharedJob(sh, codec, &chunk);
	TvListAssigner *assigner = JobAssigner(&job);
	float	   *work = palloc(sizeof(float) * TvEncodeWorkFloats(codec));
	uint32		round = 0;

	while ((round = RoundsNext(&sh->rounds, round)) != TV_ROUND_END)
	{
		/* the slot was written before the round opened */
		chunk = SlotVectors(sh, sh->slot);
		EncodeRound(sh, round, &job, assigner, work);
	}
	TvListAssignerFree(assigner);
	pfree(work);
}

static Size
Carve(Size *total, Size bytes)
{
	Size		off = *total;

	*total += BUFFERALIGN(bytes);
	return off;
}

static SegmentPlan
PlanSegment(const TvCodec *codec, int lists, uint64 n, int chunk_vectors, int mem_kb,
			int slots)
{
	Size		vector_bytes = sizeof(float) * codec->dim;
	SegmentPlan plan;

	/* whole chunks per window, at least one */
	plan.capacity = Max(TvParallelWindowBytes(mem_kb) / vector_bytes / chunk_vectors, 1) *
		chunk_vectors;
	plan.capacity = Min(plan.capacity, n);
	plan.slots = slots;
	plan.total = 0;
	(void) Carve(&plan.total, sizeof(TvEncodeShared));
	plan.off_centroids = Carve(&plan.total, (Size) lists * vector_bytes);
	plan.off_cnorms = Carve(&plan.total, sizeof(float) * lists);
	plan.off_vectors = Carve(&plan.total, (Size) slots * plan.capacity * vector_bytes);
	plan.off_listof = Carve(&plan.total, sizeof(int) * plan.capacity);
	plan.off_codes = Carve(&plan.total, (Size) plan.capacity * codec->code_bytes);
	plan.off_factors = Carve(&plan.total, sizeof(TvFactors) * plan.capacity);
	return plan;
}

/*
 * The shared memory a parallel coding of n vectors (PG_UINT64_MAX: any
 * number) takes with maintenance_work_mem at mem_kb, with slots windows of
 * vectors (TvEncodeInput.fill_in_place: 2): the build keeps it out of the
 * spool's share of maintenance_work_mem.
 */
Size
TvParallelSegmentBytes(const TvCodec *codec, int lists, int chunk_vectors, int mem_kb,
					   uint64 n, int slots)
{
	return PlanSegment(codec, lists, n, chunk_vectors, mem_kb, slots).total;
}

/*
 * A parallel coding that stays open across windows (TvEncodeWindowsBegin).
 * The leader hands a window over (TvEncodeWindowsSubmit: copied into the
 * segment), may read the next one while the workers code it, then joins
 * them and takes the results (TvEncodeWindowsCollect) before it hands over
 * the next.  With TvEncodeInput.fill_in_place the segment has two slots of
 * vectors: the leader reads the next window straight into the one the
 * workers are not coding (TvEncodeWindowsBuffer), and nothing is copied
 * when it is handed over.
 */
struct TvEncodeWindows
{
	ParallelContext *pcxt;
	TvEncodeShared *sh;
	const TvCodec *codec;
	EncodeJob	job;			/* the leader's part of a round */
	float	   *chunk;
	TvListAssigner *assigner;
	float	   *work;
	int			launched;
	uint32		round;			/* the last round opened */
	uint64		pending;		/* vectors of it not yet collected (0: none) */
	int			fill;			/* the slot the next window goes in */
};

/*
 * Start parallel workers for coding windows of vectors under in's codec and
 * lists; in->n and in->chunk_vectors size a window (PlanSegment).  NULL
 * when no segment could be had (the caller then works alone).
 */
TvEncodeWindows *
TvEncodeWindowsBegin(const TvEncodeInput *in, int nworkers)
{
	const TvCodec *codec = in->codec;
	Size		vector_bytes = sizeof(float) * codec->dim;
	SegmentPlan plan = PlanSegment(codec, in->lists, in->n, in->chunk_vectors,
								   maintenance_work_mem, in->fill_in_place ? 2 : 1);
	TvEncodeWindows *ew;
	ParallelContext *pcxt;
	TvEncodeShared *sh;
	char	   *base;

	EnterParallelMode();
	pcxt = CreateParallelContext("turbovec", "TvParallelEncodeMain", nworkers);
	shm_toc_estimate_chunk(&pcxt->estimator, plan.total);
	shm_toc_estimate_keys(&pcxt->estimator, 1);
	InitializeParallelDSM(pcxt);
	if (pcxt->seg == NULL)
	{
		/* out of segments: no workers to be had */
		DestroyParallelContext(pcxt);
		ExitParallelMode();
		return NULL;
	}

	sh = shm_toc_allocate(pcxt->toc, plan.total);
	base = (char *) sh;
	sh->dim = codec->dim;
	sh->bits = codec->bits;
	sh->seed = codec->seed;
	sh->metric = (int) in->metric;
	sh->lists = in->lists;
	sh->residual = in->residual;
	sh->code_bytes = codec->code_bytes;
	sh->plan = plan;
	sh->slot = 0;
	RoundsInit(&sh->rounds);
	memcpy(base + plan.off_centroids, in->centroids, (Size) in->lists * vector_bytes);
	if (in->cnorms)
		memcpy(base + plan.off_cnorms, in->cnorms, sizeof(float) * in->lists);
	shm_toc_insert(pcxt->toc, TV_PARALLEL_KEY_SHARED, sh);

	/* the workers start while the leader copies the first window */
	LaunchParallelWorkers(pcxt);

	ew = palloc0(sizeof(TvEncodeWindows));
	ew->pcxt = pcxt;
	ew->sh = sh;
	ew->codec = codec;
	ew->launched = pcxt->nworkers_launched;
	ew->job = SharedJob(sh, codec, &ew->chunk);
	ew->job.progress = true;
	ew->assigner = JobAssigner(&ew->job);
	ew->work = palloc(sizeof(float) * TvEncodeWorkFloats(codec));
	return ew;
}

/* Vectors a window holds */
uint64
TvEncodeWindowsCapacity(TvEncodeWindows *ew)
{
	return ew->sh->plan.capacity;
}

/*
 * Where the caller may write the next window (capacity vectors) while the
 * workers code the last one; NULL unless the segment has two slots
 */
float *
TvEncodeWindowsBuffer(TvEncodeWindows *ew)
{
	if (ew->sh->plan.slots < 2)
		return NULL;
	return SlotVectors(ew->sh, ew->fill);
}

/*
 * Hand in's n vectors (at most the capacity; in->chunks as in
 * TvEncodeInput) to the workers as the next round; the previous round must
 * have been collected
 */
void
TvEncodeWindowsSubmit(TvEncodeWindows *ew, const TvEncodeInput *in)
{
	TvEncodeShared *sh = ew->sh;
	Size		vector_bytes = sizeof(float) * ew->codec->dim;
	uint64		n = in->n;
	float	   *slot = SlotVectors(sh, ew->fill);

	if (n == 0 || n > sh->plan.capacity || ew->pending != 0)
		elog(ERROR, "turbo build cannot hand over a window of " UINT64_FORMAT " vectors",
			 n);
	/* the window: one copy per chunk, unless it was written in place */
	if (in->chunks[0] != slot)
		for (uint64 k = 0; k < n; k += in->chunk_vectors)
		{
			uint64		m = Min((uint64) in->chunk_vectors, n - k);

			memcpy((char *) slot + (Size) k * vector_bytes,
				   in->chunks[k / in->chunk_vectors], (Size) m * vector_bytes);
		}
	ew->job.progress_base = in->progress_base;
	ew->chunk = slot;
	sh->slot = ew->fill;
	ew->fill = (ew->fill + 1) % sh->plan.slots;
	ew->round = RoundsOpen(&sh->rounds, (uint32) n);
	ew->pending = n;
	elog(DEBUG2, "turbo build round of " UINT64_FORMAT " vectors: %d parallel workers",
		 n, ew->launched);
}

/*
 * Join the workers on the round handed over last, wait for it to be done
 * and copy its results out: listof, codes and factors by position, as
 * RunEncodeJob would write them.  Returns the round's vectors.
 */
uint64
TvEncodeWindowsCollect(TvEncodeWindows *ew, int *listof, uint8 *codes, TvFactors *factors)
{
	TvEncodeShared *sh = ew->sh;
	char	   *base = (char *) sh;
	uint64		n = ew->pending;

	if (n == 0)
		return 0;
	EncodeRound(sh, ew->round, &ew->job, ew->assigner, ew->work);
	RoundsWait(&sh->rounds);
	ew->pending = 0;

	memcpy(listof, base + sh->plan.off_listof, sizeof(int) * n);
	memcpy(codes, base + sh->plan.off_codes, (Size) n * ew->codec->code_bytes);
	memcpy(factors, base + sh->plan.off_factors, sizeof(TvFactors) * n);
	return n;
}

/* Let the workers go (after the last round's collection); returns how many there were */
int
TvEncodeWindowsEnd(TvEncodeWindows *ew)
{
	int			launched = ew->launched;

	if (ew->pending != 0)
		elog(ERROR, "turbo build left a window of " UINT64_FORMAT " vectors uncollected",
			 ew->pending);
	RoundsEnd(&ew->sh->rounds);
	WaitForParallelWorkersToFinish(ew->pcxt);
	TvListAssignerFree(ew->assigner);
	pfree(ew->work);
	DestroyParallelContext(ew->pcxt);
	ExitParallelMode();
	pfree(ew);
	return launched;
}

/*
 * With workers: rounds of at most TvParallelWindowBytes of vectors.
 * Returns the number of workers launched, or -1 when no segment could be
 * had (the caller then works alone).
 */
static int
EncodeParallel(const TvEncodeInput *in, int nworkers, int *listof, uint8 *codes,
			   TvFactors *factors)
{
	TvEncodeWindows *ew = TvEncodeWindowsBegin(in, nworkers);
	uint64		capacity;

	if (ew == NULL)
		return -1;
	capacity = TvEncodeWindowsCapacity(ew);
	for (uint64 first = 0; first < in->n; first += capacity)
	{
		TvEncodeInput win = *in;

		/* whole chunks: a window starts at a chunk */
		win.n = Min(capacity, in->n - first);
		win.chunks = in->chunks + first / in->chunk_vectors;
		win.progress_base = in->progress_base + first;
		TvEncodeWindowsSubmit(ew, &win);
		(void) TvEncodeWindowsCollect(ew, listof + first,
									  codes + first * in->codec->code_bytes, factors + first);
	}
	return TvEncodeWindowsEnd(ew);
}

/*
 * Pick the list of, and code, every spooled vector: listof[k], the row code
 * at codes + k * code_bytes and factors[k] for spool position k.  nworkers
 * is how many parallel workers to ask for (0: none).  Returns how many were
 * launched.
 */
int
TvEncodeSpooled(const TvEncodeInput *in, int nworkers, int *listof, uint8 *codes,
				TvFactors *factors)
{
	EncodeJob	job;

	Assert(in->chunk_vectors % TV_ENCODE_BATCH == 0);
	if (nworkers > 0 && !IsInParallelMode())
	{
		int			launched = EncodeParallel(in, nworkers, listof, codes, factors);

		if (launched >= 0)
			return launched;
	}

	job.in = *in;
	job.listof = listof;
	job.codes = codes;
	job.factors = factors;
	job.progress_base = in->progress_base;
	job.progress = true;
	RunEncodeJob(&job);
	return 0;
}

/*
 * k-means assignment rounds with parallel workers.  The samples go into a
 * segment once; each Lloyd round copies the centroids in and opens a round
 * (TvRounds) whose items are the samples: every participant claims batches
 * of TV_ASSIGN_BATCH samples and writes their nearest lists by position.
 * Batches start at multiples of the batch size, as in the serial rounds
 * (tvivf.c), so the assigner groups the rows the same way and the
 * assignment is the same whoever computes it.  A second kind of round sums
 * the samples of each list for the new centroids: its items are slices of
 * TV_SUM_DIMS dimensions, each summed over every sample in sample order by
 * whoever claims it, so every sum is the serial loop's, bit for bit.
 */
#define TV_PARALLEL_KEY_KMEANS		UINT64CONST(0x7475726226FE0002)

#define TV_SUM_DIMS		64
/* how many samples ahead a round of sums prefetches its slice */
#define TV_SUM_PREFETCH	8

typedef struct TvKmeansShared
{
	int			dim;
	int			metric;
	int			lists;
	int			nsamples;
	bool		sums;			/* this round sums lists instead of assigning */
	bool		coarse;			/* this round's TvListAssignerSetCoarse */
	TvRounds	rounds;
	Size		off_centroids;
	Size		off_cnorms;
	Size		off_samples;
	Size		off_assign;
	Size		off_sums;		/* lists * dim doubles */
} TvKmeansShared;

struct TvKmeansParallel
{
	ParallelContext *pcxt;
	TvKmeansShared *sh;
};

PGDLLEXPORT void TvParallelKmeansMain(dsm_segment *seg, shm_toc *toc);

/* Take part in one round of sums: sums[j][d] over the samples of list j */
static void
SumsRound(TvKmeansShared *sh, uint32 round)
{
	char	   *base = (char *) sh;
	const float *samples = (const float *) (base + sh->off_samples);
	const int  *assign = (const int *) (base + sh->off_assign);
	double	   *sums = (double *) (base + sh->off_sums);
	int			dim = sh->dim;
	uint32		first;
	uint32		count;

	while (RoundsClaim(&sh->rounds, round, 1, &first, &count))
	{
		int			d0 = (int) first * TV_SUM_DIMS;
		int			len = Min(TV_SUM_DIMS, dim - d0);

		for (int j = 0; j < sh->lists; j++)
			memset(sums + (Size) j * dim + d0, 0, sizeof(double) * len);
		for (int i = 0; i < sh->nsamples; i++)
		{
			/*
			 * The slice of a sample some rows ahead: rows are a page or so
			 * apart, too far for the hardware's prefetcher
			 */
			if (i + TV_SUM_PREFETCH < sh->nsamples)
			{
				const char *next = (const char *) (samples + (Size) (i + TV_SUM_PREFETCH) * dim + d0);

				for (int off = 0; off < len * (int) sizeof(float); off += 64)
					__builtin_prefetch(next + off);
			}
			tv_accumulate(sums + (Size) assign[i] * dim + d0,
						  samples + (Size) i * dim + d0, len);
		}
		RoundsDone(&sh->rounds, count);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Take part in one assignment round, or one of sums */
static void
KmeansRound(TvKmeansShared *sh, uint32 round)
{
	char	   *base = (char *) sh;
	const float *samples = (const float *) (base + sh->off_samples);
	int		   *assign = (int *) (base + sh->off_assign);
	TvListAssigner *assigner = NULL;
	uint32		first;
	uint32		count;

	if (sh->sums)
	{
		SumsRound(sh, round);
		return;
	}
	while (RoundsClaim(&sh->rounds, round, TV_ASSIGN_BATCH, &first, &count))
	{
		/* the centroids are this round's once a claim of it succeeded */
		if (assigner == NULL)
		{
			assigner = TvListAssignerCreate((const float *) (base + sh->off_centroids),
											(const float *) (base + sh->off_cnorms),
											sh->lists, sh->dim, (TvMetric) sh->metric);
			TvListAssignerSetCoarse(assigner, sh->coarse);
		}
		TvAssignLists(assigner, samples + (Size) first * sh->dim, (int) count, assign + first);
		RoundsDone(&sh->rounds, count);
		CHECK_FOR_INTERRUPTS();
	}
	if (assigner)
		TvListAssignerFree(assigner);
}

/* Entry point of a parallel k-means worker: every round until the last */
void
TvParallelKmeansMain(dsm_segment *seg, shm_toc *toc)
{
	TvKmeansShared *sh = shm_toc_lookup(toc, TV_PARALLEL_KEY_KMEANS, false);
	uint32		round = 0;

	while ((round = RoundsNext(&sh->rounds, round)) != TV_ROUND_END)
		KmeansRound(sh, round);
}

/*
 * Set up parallel assignment of the samples to lists and start the
 * workers, or NULL when no segment can be had (the caller then works
 * alone).  The segment holds a copy of the samples, which the build counts
 * twice against maintenance_work_mem, and the lists' sums, which TvKmeans
 * then does not allocate.
 */
TvKmeansParallel *
TvKmeansParallelBegin(const float *samples, int nsamples, int dim, int lists,
					  TvMetric metric, int nworkers)
{
	TvKmeansParallel *kp;
	ParallelContext *pcxt;
	Size		total = 0;
	Size		off_centroids,
				off_cnorms,
				off_samples,
				off_assign,
				off_sums;
	TvKmeansShared *sh;

	if (nworkers <= 0 || IsInParallelMode())
		return NULL;
	(void) Carve(&total, sizeof(TvKmeansShared));
	off_centroids = Carve(&total, (Size) lists * dim * sizeof(float));
	off_cnorms = Carve(&total, (Size) lists * sizeof(float));
	off_samples = Carve(&total, (Size) nsamples * dim * sizeof(float));
	off_assign = Carve(&total, (Size) nsamples * sizeof(int));
	off_sums = Carve(&total, (Size) lists * dim * sizeof(double));

	EnterParallelMode();
	pcxt = CreateParallelContext("turbovec", "TvParallelKmeansMain", nworkers);
	shm_toc_estimate_chunk(&pcxt->estimator, total);
	shm_toc_estimate_keys(&pcxt->estimator, 1);
	InitializeParallelDSM(pcxt);
	if (pcxt->seg == NULL)
	{
		DestroyParallelContext(pcxt);
		ExitParallelMode();
		return NULL;
	}
	sh = shm_toc_allocate(pcxt->toc, total);
	sh->dim = dim;
	sh->metric = (int) metric;
	sh->lists = lists;
	sh->nsamples = nsamples;
	sh->off_centroids = off_centroids;
	sh->off_cnorms = off_cnorms;
	sh->off_samples = off_samples;
	sh->off_assign = off_assign;
	sh->off_sums = off_sums;
	sh->sums = false;
	RoundsInit(&sh->rounds);
	memcpy((char *) sh + off_samples, samples, (Size) nsamples * dim * sizeof(float));
	shm_toc_insert(pcxt->toc, TV_PARALLEL_KEY_KMEANS, sh);
	LaunchParallelWorkers(pcxt);

	kp = palloc0(sizeof(TvKmeansParallel));
	kp->pcxt = pcxt;
	kp->sh = sh;
	return kp;
}

/*
 * One assignment round: the nearest list of every sample into assign[],
 * coarsely or not (TvListAssignerSetCoarse)
 */
void
TvKmeansParallelAssign(TvKmeansParallel *kp, const float *centroids,
					   const float *cnorms, bool coarse, int *assign)
{
	TvKmeansShared *sh = kp->sh;
	char	   *base = (char *) sh;
	uint32		round;

	memcpy(base + sh->off_centroids, centroids, (Size) sh->lists * sh->dim * sizeof(float));
	memcpy(base + sh->off_cnorms, cnorms, (Size) sh->lists * sizeof(float));
	sh->sums = false;
	sh->coarse = coarse;
	round = RoundsOpen(&sh->rounds, (uint32) sh->nsamples);
	KmeansRound(sh, round);
	RoundsWait(&sh->rounds);
	memcpy(assign, base + sh->off_assign, (Size) sh->nsamples * sizeof(int));
}

/*
 * The sums of the samples of each list under assign[] (lists * dim
 * doubles, in the segment until the next round), as TvKmeans sums them
 * alone
 */
const double *
TvKmeansParallelSums(TvKmeansParallel *kp, const int *assign)
{
	TvKmeansShared *sh = kp->sh;
	char	   *base = (char *) sh;
	uint32		round;

	memcpy(base + sh->off_assign, assign, (Size) sh->nsamples * sizeof(int));
	sh->sums = true;
	round = RoundsOpen(&sh->rounds, (uint32) ((sh->dim + TV_SUM_DIMS - 1) / TV_SUM_DIMS));
	KmeansRound(sh, round);
	RoundsWait(&sh->rounds);
	return (const double *) (base + sh->off_sums);
}

void
TvKmeansParallelEnd(TvKmeansParallel *kp)
{
	RoundsEnd(&kp->sh->rounds);
	WaitForParallelWorkersToFinish(kp->pcxt);
	DestroyParallelContext(kp->pcxt);
	ExitParallelMode();
	pfree(kp);
}

/*
 * Parallel heap scans of a build.  The leader and the workers share one
 * parallel table scan (blocks handed out by the table AM); each worker
 * reads its rows, detoasts and checks the vectors, and sends them to the
 * leader through its own message queue.  In the sampling pass the records
 * are the vectors (the leader samples and spools them, as for its own
 * rows); in the encoding pass of a build whose vectors did not fit in
 * maintenance_work_mem the workers also pick each vector's list and code
 * it, and the records are the codes.  Which process read which row
 * changes only the order the leader receives them in: the leader lays
 * each list out in TID order (tvbuild.c), so the pages do not depend on
 * it.  A queue that is full blocks its worker until the leader, which
 * drains the queues between its own rows, catches up.
 */
#define TV_PARALLEL_KEY_SCAN		UINT64CONST(0x7475726226FE0003)
#define TV_PARALLEL_KEY_TABLESCAN	UINT64CONST(0x7475726226FE0004)

/*
 * Queue per worker: 2 MB, or a sixteenth of maintenance_work_mem when that
 * is less (at least 64 kB); a message carries up to TV_SCAN_MSG_BYTES of
 * records
 */
#define TvScanQueueBytes(mem_kb) \
	MAXALIGN(Min((Size) 2 * 1024 * 1024, Max((Size) 64 * 1024, (Size) (mem_kb) * 1024 / 16)))
#define TV_SCAN_MSG_BYTES			((Size) 64 * 1024)

typedef struct TvScanShared
{
	Oid			heaprelid;
	Oid			indexrelid;
	bool		isconcurrent;
	int			nqueues;
	Size		queue_bytes;
	Size		off_queues;

	/* the codec's and the sample's seed, in both passes */
	uint64		seed;

	/* encoding pass: the codec and the lists; lists < 0 in the sampling pass */
	int			dim;
	int			bits;
	int			metric;
	int			lists;
	bool		residual;
	Size		off_centroids;
	Size		off_cnorms;

	/*
	 * sampling pass: vectors whose sampling hash is at or above sample_tau
	 * (PG_UINT64_MAX: none) are counted, not sent, and read only under
	 * cosine, to leave zero vectors out (the encoding pass reads and checks
	 * every vector); the leader lowers it once it spools no more vectors
	 */
	pg_atomic_uint64 sample_tau;
	/* those counted so far, reported every TV_UNREAD_STEP a worker */
	pg_atomic_uint64 unread_now;

	/* what the workers report at the end */
	slock_t		mutex;
	double		reltuples;
	uint64		unread;			/* vectors counted, not sent */
	bool		brokenhotchain;
	int			finished;
} TvScanShared;

/* Message header; the records follow, each TvScanRecordBytes long */
typedef struct TvScanMsg
{
	int32		dim;
	int32		code_bytes;		/* encoding pass */
	int32		n;
} TvScanMsg;

struct TvParallelScan
{
	ParallelContext *pcxt;
	TvScanShared *sh;
	Snapshot	snapshot;
	bool		registered;
	TableScanDesc scan;
	int			nqueues;
	shm_mq_handle **mqh;		/* NULL once detached */
	int			live;			/* queues not yet detached */
};

PGDLLEXPORT void TvParallelScanMain(dsm_segment *seg, shm_toc *toc);

/* Bytes of one record: the TID, then the vector, or the list, factors and code */
static Size
TvScanRecordBytes(bool encode, int dim, int code_bytes)
{
	if (encode)
		return MAXALIGN(sizeof(ItemPointerData)) +
			MAXALIGN(sizeof(int32) + sizeof(TvFactors) + code_bytes);
	return MAXALIGN(sizeof(ItemPointerData)) + sizeof(float) * (Size) dim;
}

/* Unpack one message into records for the consumer */
static void
ConsumeMessage(TvParallelScan *ps, const char *data, Size nbytes,
			   TvScanConsumer consume, void *arg)
{
	TvScanMsg	hdr;
	bool		encode = (ps->sh->lists >= 0);
	Size		rbytes;
	TvScanRecord rec;

	if (nbytes < sizeof(TvScanMsg))
		elog(ERROR, "turbo build received a short message from a parallel worker");
	memcpy(&hdr, data, sizeof(TvScanMsg));
	/*
	 * Bounds before the sizes are used.  A record of a code is smaller than
	 * the dimension count in bytes, so a message of one or two codes is too:
	 * the dimension is bounded by the codec's limit, not by the message.
	 */
	if (hdr.dim <= 0 || hdr.dim > TV_CODEC_MAX_DIM || hdr.n <= 0 ||
		hdr.code_bytes < 0 || hdr.code_bytes > TV_CODEC_MAX_DIM ||
		(encode != (hdr.code_bytes > 0)))
		elog(ERROR, "turbo build received a bad message from a parallel worker");
	rbytes = TvScanRecordBytes(encode, hdr.dim, hdr.code_bytes);
	if (nbytes != sizeof(TvScanMsg) + rbytes * hdr.n)
		elog(ERROR, "turbo build received a message of %zu bytes from a parallel worker",
			 nbytes);
	data += sizeof(TvScanMsg);
	memset(&rec, 0, sizeof(rec));
	rec.dim = hdr.dim;
	rec.code_bytes = hdr.code_bytes;
	for (int i = 0; i < hdr.n; i++, data += rbytes)
	{
		const char *p = data + MAXALIGN(sizeof(ItemPointerData));

		memcpy(&rec.tid, data, sizeof(ItemPointerData));
		if (encode)
		{
			memcpy(&rec.list, p, sizeof(int32));
			memcpy(&rec.factors, p + sizeof(int32), sizeof(TvFactors));
			rec.code = (const uint8 *) (p + sizeof(int32) + sizeof(TvFactors));
			if (rec.list < 0 || rec.list >= Max(ps->sh->lists, 1))
				elog(ERROR, "turbo build received list %d from a parallel worker", rec.list);
		}
		else
			rec.vector = (const float *) p;
		consume(&rec, arg);
	}
}

/*
 * Take what the workers have sent so far; with wait, until every queue is
 * detached (its worker finished).  Returns whether any queue is still live.
 */
static bool
DrainQueues(TvParallelScan *ps, bool wait, TvScanConsumer consume, void *arg)
{
	for (;;)
	{
		bool		got = false;

		for (int i = 0; i < ps->nqueues; i++)
		{
			Size		nbytes;
			void	   *data;
			shm_mq_result res;

			if (ps->mqh[i] == NULL)
				continue;
			res = shm_mq_receive(ps->mqh[i], &nbytes, &data, true);
			if (res == SHM_MQ_SUCCESS)
			{
				ConsumeMessage(ps, data, nbytes, consume, arg);
				got = true;
			}
			else if (res == SHM_MQ_DETACHED)
			{
				shm_mq_detach(ps->mqh[i]);
				ps->mqh[i] = NULL;
				ps->live--;
			}
		}
		if (!wait || ps->live == 0)
			break;
		if (!got)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, 0,
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
		CHECK_FOR_INTERRUPTS();
	}
	return ps->live > 0;
}

/*
 * Start a parallel heap scan with up to nworkers workers.  encode NULL: the
 * sampling pass (workers send vectors); else the encoding pass with these
 * lists (workers send codes; encode->n and the chunks are not used).  A
 * flat build (lists 0) may not know its dimension yet: encode->codec NULL,
 * and each worker makes the codec (bits and seed given) from its first
 * vector, as the leader does.
 * Returns NULL when no worker could be started: the caller scans alone.
 */
TvParallelScan *
TvParallelScanBegin(Relation heap, Relation index, IndexInfo *indexInfo,
					int nworkers, const TvEncodeInput *encode, int bits, uint64 seed)
{
	ParallelContext *pcxt;
	Snapshot	snapshot;
	Size		pscan_bytes;
	Size		total = 0;
	Size		off_queues,
				off_centroids = 0,
				off_cnorms = 0;
	int			lists = encode ? Max(encode->lists, 0) : 0;
	int			dim = (encode && encode->codec) ? encode->codec->dim : 0;
	TvScanShared *sh;
	ParallelTableScanDesc pscan;
	TvParallelScan *ps;

	if (nworkers <= 0 || IsInParallelMode())
		return NULL;

	/* as index.c: every row for a plain build, an MVCC snapshot for CONCURRENTLY */
	if (!indexInfo->ii_Concurrent)
		snapshot = SnapshotAny;
	else
		snapshot = RegisterSnapshot(GetTransactionSnapshot());

	(void) Carve(&total, sizeof(TvScanShared));
	off_queues = Carve(&total, TvScanQueueBytes(maintenance_work_mem) * nworkers);
	if (encode)
	{
		off_centroids = Carve(&total, sizeof(float) * (Size) lists * dim);
		off_cnorms = Carve(&total, sizeof(float) * (Size) lists);
	}

	EnterParallelMode();
	pcxt = CreateParallelContext("turbovec", "TvParallelScanMain", nworkers);
	pscan_bytes = table_parallelscan_estimate(heap, snapshot);
	shm_toc_estimate_chunk(&pcxt->estimator, total);
	shm_toc_estimate_chunk(&pcxt->estimator, pscan_bytes);
	shm_toc_estimate_keys(&pcxt->estimator, 2);
	InitializeParallelDSM(pcxt);
	if (pcxt->seg == NULL)
	{
		DestroyParallelContext(pcxt);
		ExitParallelMode();
		if (indexInfo->ii_Concurrent)
			UnregisterSnapshot(snapshot);
		return NULL;
	}

	sh = shm_toc_allocate(pcxt->toc, total);
	memset(sh, 0, sizeof(TvScanShared));
	sh->heaprelid = RelationGetRelid(heap);
	sh->indexrelid = RelationGetRelid(index);
	sh->isconcurrent = indexInfo->ii_Concurrent;
	sh->nqueues = nworkers;
	sh->off_queues = off_queues;
	sh->queue_bytes = TvScanQueueBytes(maintenance_work_mem);
	sh->lists = -1;
	sh->seed = seed;
	pg_atomic_init_u64(&sh->sample_tau, PG_UINT64_MAX);
	pg_atomic_init_u64(&sh->unread_now, 0);
	if (encode)
	{
		Assert(lists == 0 || dim > 0);
		sh->dim = dim;
		sh->bits = bits;
		sh->metric = (int) encode->metric;
		sh->lists = lists;
		sh->residual = encode->residual && lists > 0;
		sh->off_centroids = off_centroids;
		sh->off_cnorms = off_cnorms;
		if (lists > 0)
			memcpy((char *) sh + off_centroids, encode->centroids,
				   sizeof(float) * (Size) lists * dim);
		if (lists > 0 && encode->cnorms)
			memcpy((char *) sh + off_cnorms, encode->cnorms, sizeof(float) * (Size) lists);
	}
	SpinLockInit(&sh->mutex);
	for (int i = 0; i < nworkers; i++)
	{
		shm_mq	   *mq = shm_mq_create((char *) sh + off_queues + sh->queue_bytes * i,
									   sh->queue_bytes);

		shm_mq_set_receiver(mq, MyProc);
	}
	shm_toc_insert(pcxt->toc, TV_PARALLEL_KEY_SCAN, sh);

	pscan = shm_toc_allocate(pcxt->toc, pscan_bytes);
	table_parallelscan_initialize(heap, pscan, snapshot);
	shm_toc_insert(pcxt->toc, TV_PARALLEL_KEY_TABLESCAN, pscan);

	LaunchParallelWorkers(pcxt);
	if (pcxt->nworkers_launched == 0)
	{
		DestroyParallelContext(pcxt);
		ExitParallelMode();
		if (indexInfo->ii_Concurrent)
			UnregisterSnapshot(snapshot);
		return NULL;
	}

	ps = palloc0(sizeof(TvParallelScan));
	ps->pcxt = pcxt;
	ps->sh = sh;
	ps->snapshot = snapshot;
	ps->registered = indexInfo->ii_Concurrent;
	ps->nqueues = pcxt->nworkers_launched;
	ps->mqh = palloc0(sizeof(shm_mq_handle *) * ps->nqueues);
	for (int i = 0; i < ps->nqueues; i++)
	{
		shm_mq	   *mq = (shm_mq *) ((char *) sh + off_queues + sh->queue_bytes * i);

		/* a worker that fails to start detaches its queue */
		ps->mqh[i] = shm_mq_attach(mq, pcxt->seg, pcxt->worker[i].bgwhandle);
	}
	ps->live = ps->nqueues;
	ps->scan = table_beginscan_parallel(heap, pscan);
	return ps;
}

/* The leader's share of the scan, for table_index_build_scan */
TableScanDesc
TvParallelScanDesc(TvParallelScan *ps)
{
	return ps->scan;
}

/* Workers that take part in the scan */
int
TvParallelScanWorkers(TvParallelScan *ps)
{
	return ps->pcxt->nworkers_launched;
}

/* Between the leader's own rows: take what the workers sent, without waiting */
void
TvParallelScanDrain(TvParallelScan *ps, TvScanConsumer consume, void *arg)
{
	(void) DrainQueues(ps, false, consume, arg);
}

/*
 * Sampling pass: from now on the workers send only the vectors whose
 * sampling hash is below sample_tau (the leader spools nothing, so it
 * keeps no other); they check and count the rest
 */
void
TvParallelScanFilter(TvParallelScan *ps, uint64 sample_tau)
{
	Assert(ps->sh->lists < 0);
	pg_atomic_write_u64(&ps->sh->sample_tau, sample_tau);
}

/* Sampling pass: about how many vectors the workers have counted, not sent */
uint64
TvParallelScanUnreadNow(TvParallelScan *ps)
{
	return pg_atomic_read_u64(&ps->sh->unread_now);
}

/*
 * After the leader's share of the scan: take the rest of the workers'
 * records, wait for them to finish, and end parallel mode.  Returns the
 * heap tuples the workers scanned, and in *unread the vectors of a
 * sampling pass they counted without sending; a broken HOT chain a worker
 * met is noted in indexInfo, as the leader's own scan does.
 */
double
TvParallelScanEnd(TvParallelScan *ps, IndexInfo *indexInfo, TvScanConsumer consume,
				  void *arg, uint64 *unread)
{
	double		reltuples;

	(void) DrainQueues(ps, true, consume, arg);
	WaitForParallelWorkersToFinish(ps->pcxt);
	if (ps->sh->finished != ps->pcxt->nworkers_launched)
		elog(ERROR, "turbo build: %d of %d parallel workers finished their scan",
			 ps->sh->finished, ps->pcxt->nworkers_launched);
	reltuples = ps->sh->reltuples;
	*unread = ps->sh->unread;
	if (ps->sh->brokenhotchain)
		indexInfo->ii_BrokenHotChain = true;
	DestroyParallelContext(ps->pcxt);
	ExitParallelMode();
	if (ps->registered)
		UnregisterSnapshot(ps->snapshot);
	pfree(ps->mqh);
	pfree(ps);
	return reltuples;
}

/* A worker's state while it scans */
typedef struct ScanWorker
{
	TvScanShared *sh;
	shm_mq_handle *mqh;
	Relation	index;
	FmgrInfo   *toarray;
	TvMetric	metric;
	MemoryContext tmpCtx;
	int			dim;			/* fixed by the first vector */

	/* the message being filled */
	char	   *msg;
	int			msg_n;
	int			msg_cap;		/* records */
	Size		rbytes;

	/* encoding pass: vectors waiting to be assigned, and the codec */
	TvCodec    *codec;
	float	   *work;
	float	   *batch;
	TvListAssigner *assigner;	/* IVF: assigns the batch to lists */
	ItemPointerData batch_tids[TV_ENCODE_BATCH];
	int			batch_n;
	int			nearest[TV_ENCODE_BATCH];

	uint64		unread;			/* sampling pass: vectors counted, not sent */
	uint64		unread_told;	/* of which added to sh->unread_now */
} ScanWorker;

/*
 * How often a worker adds to unread_now: the leader sizes the sample by
 * the rows seen so far under automatic lists (PlannedLists), and a count
 * that lagged by much would keep too small a sample
 */
#define TV_UNREAD_STEP	256

/* Count a vector of the sampling pass not sent to the leader */
static inline void
CountUnread(ScanWorker *w)
{
	if (++w->unread - w->unread_told >= TV_UNREAD_STEP)
	{
		pg_atomic_fetch_add_u64(&w->sh->unread_now, w->unread - w->unread_told);
		w->unread_told = w->unread;
	}
}

static void
SendMessage(ScanWorker *w)
{
	TvScanMsg	hdr;
	shm_mq_result res;

	if (w->msg_n == 0)
		return;
	hdr.dim = w->dim;
	hdr.code_bytes = w->codec ? w->codec->code_bytes : 0;
	hdr.n = w->msg_n;
	memcpy(w->msg, &hdr, sizeof(hdr));
	res = shm_mq_send(w->mqh, sizeof(TvScanMsg) + w->rbytes * w->msg_n, w->msg, false, true);
	if (res != SHM_MQ_SUCCESS)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("turbo build leader stopped receiving")));
	w->msg_n = 0;
}

/* The next record of the message, sent first when full */
static char *
NextRecord(ScanWorker *w, ItemPointer tid)
{
	char	   *rec;

	if (w->msg == NULL)
	{
		w->rbytes = TvScanRecordBytes(w->codec != NULL, w->dim,
									  w->codec ? w->codec->code_bytes : 0);
		w->msg_cap = (int) Max((TV_SCAN_MSG_BYTES - sizeof(TvScanMsg)) / w->rbytes, 1);
		if (tv_test_scan_message_rows > 0)
			w->msg_cap = Min(w->msg_cap, tv_test_scan_message_rows);
		w->msg = palloc(sizeof(TvScanMsg) + w->rbytes * w->msg_cap);
	}
	if (w->msg_n == w->msg_cap)
		SendMessage(w);
	rec = w->msg + sizeof(TvScanMsg) + w->rbytes * w->msg_n++;
	memcpy(rec, tid, sizeof(ItemPointerData));
	return rec + MAXALIGN(sizeof(ItemPointerData));
}

/* Encoding pass: assign the batch to lists, code it, and queue the codes */
static void
EncodeBatch(ScanWorker *w)
{
	TvScanShared *sh = w->sh;
	const float *centroids = (const float *) ((char *) sh + sh->off_centroids);

	if (w->batch_n == 0)
		return;
	if (sh->lists > 0)
		TvAssignLists(w->assigner, w->batch, w->batch_n, w->nearest);
	else
		memset(w->nearest, 0, sizeof(int) * w->batch_n);
	for (int i = 0; i < w->batch_n; i++)
	{
		char	   *p = NextRecord(w, &w->batch_tids[i]);
		int32		list = w->nearest[i];
		TvFactors	factors;
		const float *centroid = NULL;

		if (sh->residual)
			centroid = centroids + (Size) list * w->dim;
		if (!TvEncodeVector(w->codec, w->metric, centroid, w->batch + (Size) i * w->dim,
							(uint8 *) (p + sizeof(int32) + sizeof(TvFactors)), &factors,
							w->work))
			elog(ERROR, "turbo build met a vector it cannot index");
		memcpy(p, &list, sizeof(int32));
		memcpy(p + sizeof(int32), &factors, sizeof(TvFactors));
	}
	w->batch_n = 0;
}

/* Encoding pass: the codec, once the dimension is known */
static void
StartWorkerCodec(ScanWorker *w)
{
	w->codec = TvCreateCodec(w->dim, w->sh->bits, w->sh->seed, CurrentMemoryContext);
	w->work = palloc(sizeof(float) * TvEncodeWorkFloats(w->codec));
	w->batch = palloc(sizeof(float) * TV_ENCODE_BATCH * w->dim);
	if (w->sh->lists > 0)
		w->assigner = TvListAssignerCreate((const float *) ((char *) w->sh + w->sh->off_centroids),
										   (const float *) ((char *) w->sh + w->sh->off_cnorms),
										   w->sh->lists, w->dim, w->metric);
}

/* A worker's build callback: check the vector, then queue it or its code */
static void
ScanWorkerCallback(Relation index, ItemPointer tid, Datum *values, bool *isnull,
				   bool tupleIsAlive, void *state)
{
	ScanWorker *w = (ScanWorker *) state;
	MemoryContext oldCtx;
	float	   *x;
	int			dim;
	bool		past = false;

	if (isnull[0])
		return;
	/*
	 * the sampling pass, once the leader spools nothing: a vector past the
	 * sample is counted, not sent; and not even read (the encoding pass
	 * reads and checks it), as the leader's own rows are (SampleSkips),
	 * except under cosine, where zero vectors stay out of the count
	 */
	if (w->sh->lists < 0)
	{
		/* a tau read late is higher, never lower: the leader drops the rest */
		uint64		tau = pg_atomic_read_u64(&w->sh->sample_tau);

		past = (tau != PG_UINT64_MAX && TvSampleHash(w->sh->seed, tid) >= tau);
		if (past && w->metric != TV_METRIC_COSINE)
		{
			CountUnread(w);
			return;
		}
	}
	oldCtx = MemoryContextSwitchTo(w->tmpCtx);
	x = TvDatumGetFloats(w->toarray, values[0], &dim);
	MemoryContextSwitchTo(oldCtx);
	if (w->dim == 0)
		w->dim = dim;
	else
		TvCheckDimensions(index, w->dim, dim);
	TvCheckNorm(index, x, dim);
	if (w->sh->lists >= 0 && w->codec == NULL)
		StartWorkerCodec(w);
	/* zero vectors have no direction to index under cosine, as in the leader */
	if (!(w->metric == TV_METRIC_COSINE && TvMaxAbs(x, dim) == 0))
	{
		if (w->sh->lists < 0 && past)
			CountUnread(w);
		else if (w->sh->lists < 0)
			memcpy(NextRecord(w, tid), x, sizeof(float) * dim);
		else
		{
			memcpy(w->batch + (Size) w->batch_n * dim, x, sizeof(float) * dim);
			w->batch_tids[w->batch_n++] = *tid;
			if (w->batch_n == TV_ENCODE_BATCH)
				EncodeBatch(w);
		}
	}
	MemoryContextReset(w->tmpCtx);
}

/* Entry point of a parallel scan worker */
void
TvParallelScanMain(dsm_segment *seg, shm_toc *toc)
{
	TvScanShared *sh = shm_toc_lookup(toc, TV_PARALLEL_KEY_SCAN, false);
	ParallelTableScanDesc pscan = shm_toc_lookup(toc, TV_PARALLEL_KEY_TABLESCAN, false);
	LOCKMODE	heapLockmode;
	LOCKMODE	indexLockmode;
	Relation	heap;
	Relation	index;
	IndexInfo  *indexInfo;
	ScanWorker	w;
	shm_mq	   *mq;
	double		reltuples;

	/* the locks the leader holds (index.c), which the lock group shares */
	if (!sh->isconcurrent)
	{
		heapLockmode = ShareLock;
		indexLockmode = AccessExclusiveLock;
	}
	else
	{
		heapLockmode = ShareUpdateExclusiveLock;
		indexLockmode = RowExclusiveLock;
	}
	heap = table_open(sh->heaprelid, heapLockmode);
	index = index_open(sh->indexrelid, indexLockmode);
	indexInfo = BuildIndexInfo(index);
	indexInfo->ii_Concurrent = sh->isconcurrent;

	if (ParallelWorkerNumber < 0 || ParallelWorkerNumber >= sh->nqueues)
		elog(ERROR, "turbo build parallel worker %d has no queue", ParallelWorkerNumber);
	mq = (shm_mq *) ((char *) sh + sh->off_queues + sh->queue_bytes * ParallelWorkerNumber);
	shm_mq_set_sender(mq, MyProc);

	memset(&w, 0, sizeof(w));
	w.sh = sh;
	w.mqh = shm_mq_attach(mq, seg, NULL);
	w.index = index;
	w.toarray = TvGetToArrayProc(index, CurrentMemoryContext);
	w.metric = TvGetMetric(index);
	w.tmpCtx = AllocSetContextCreate(CurrentMemoryContext,
									 "turbovec parallel scan temporary context",
									 ALLOCSET_DEFAULT_SIZES);
	if (sh->lists >= 0 && sh->dim > 0)
	{
		w.dim = sh->dim;
		StartWorkerCodec(&w);
	}

	reltuples = table_index_build_scan(heap, index, indexInfo, true, false,
									   ScanWorkerCallback, &w,
									   table_beginscan_parallel(heap, pscan));
	if (w.codec)
		EncodeBatch(&w);
	SendMessage(&w);

	SpinLockAcquire(&sh->mutex);
	sh->reltuples += reltuples;
	sh->unread += w.unread;
	if (indexInfo->ii_BrokenHotChain)
		sh->brokenhotchain = true;
	sh->finished++;
	SpinLockRelease(&sh->mutex);

	shm_mq_detach(w.mqh);
	index_close(index, indexLockmode);
	table_close(heap, heapLockmode);
}

/*
 * Shared memory the queues of a parallel heap scan with nworkers workers
 * take, with maintenance_work_mem at mem_kb
 */
Size
TvParallelScanBytes(int nworkers, int mem_kb)
{
	return TvScanQueueBytes(mem_kb) * Max(nworkers, 0);
}
