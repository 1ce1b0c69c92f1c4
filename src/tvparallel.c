/*
 * tvparallel.c
 *	  Assigning and encoding the spooled vectors of an IVF build, shared
 *	  with parallel workers when max_parallel_maintenance_workers allows.
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
 * larger spool goes through in rounds, relaunching the workers on the same
 * segment.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "commands/progress.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/shm_toc.h"

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

/* Where the arrays go in the segment (after the header), and the window */
typedef struct SegmentPlan
{
	uint64		capacity;		/* vectors per round */
	Size		total;
	Size		off_centroids;
	Size		off_cnorms;
	Size		off_vectors;
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

	/* this round's window of vectors: spool positions [first, first + n) */
	uint64		first;
	uint64		n;
	pg_atomic_uint64 next;		/* next unclaimed window position */

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

/* Claim batches until none is left; every output slot is written once */
static void
RunEncodeJob(const EncodeJob *job, pg_atomic_uint64 *next)
{
	const TvEncodeInput *in = &job->in;
	int			dim = in->codec->dim;
	int			code_bytes = in->codec->code_bytes;
	float	   *work = palloc(sizeof(float) * TvEncodeWorkFloats(in->codec));

	for (;;)
	{
		uint64		k0 = pg_atomic_fetch_add_u64(next, TV_ENCODE_BATCH);
		int			m;
		const float *xs;

		if (k0 >= in->n)
			break;
		if (job->progress && k0 % 1024 == 0)
		{
			pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
										 (int64) (job->progress_base + k0));
			TvTestBuildDelay();
		}
		m = (int) Min((uint64) TV_ENCODE_BATCH, in->n - k0);
		xs = in->chunks[k0 / in->chunk_vectors] +
			(Size) (k0 % in->chunk_vectors) * dim;
		TvNearestLists(in->centroids, in->cnorms, in->lists, dim, in->metric,
					   xs, m, job->listof + k0);
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
		CHECK_FOR_INTERRUPTS();
	}
	pfree(work);
}

/* A job over the segment's window, with the window as one chunk */
static EncodeJob
SharedJob(TvEncodeShared *sh, const TvCodec *codec, float **chunk)
{
	char	   *base = (char *) sh;
	EncodeJob	job;

	*chunk = (float *) (base + sh->plan.off_vectors);
	job.in.codec = codec;
	job.in.metric = (TvMetric) sh->metric;
	job.in.lists = sh->lists;
	job.in.residual = sh->residual;
	job.in.centroids = (const float *) (base + sh->plan.off_centroids);
	job.in.cnorms = (const float *) (base + sh->plan.off_cnorms);
	job.in.n = sh->n;
	job.in.chunk_vectors = (int) Max(sh->plan.capacity, 1);
	job.in.chunks = chunk;
	job.listof = (int *) (base + sh->plan.off_listof);
	job.codes = (uint8 *) (base + sh->plan.off_codes);
	job.factors = (TvFactors *) (base + sh->plan.off_factors);
	job.progress_base = sh->first;
	job.progress = false;
	return job;
}

/* Entry point of a parallel worker (CreateParallelContext names it) */
void
TvParallelEncodeMain(dsm_segment *seg, shm_toc *toc)
{
	TvEncodeShared *sh = shm_toc_lookup(toc, TV_PARALLEL_KEY_SHARED, false);
	TvCodec    *codec = TvCreateCodec(sh->dim, sh->bits, sh->seed, CurrentMemoryContext);
	float	   *chunk;
	EncodeJob	job = SharedJob(sh, codec, &chunk);

	RunEncodeJob(&job, &sh->next);
}

static Size
Carve(Size *total, Size bytes)
{
	Size		off = *total;

	*total += BUFFERALIGN(bytes);
	return off;
}

static SegmentPlan
PlanSegment(const TvCodec *codec, int lists, uint64 n, int chunk_vectors, int mem_kb)
{
	Size		vector_bytes = sizeof(float) * codec->dim;
	SegmentPlan plan;

	/* whole chunks per window, at least one */
	plan.capacity = Max(TvParallelWindowBytes(mem_kb) / vector_bytes / chunk_vectors, 1) *
		chunk_vectors;
	plan.capacity = Min(plan.capacity, n);
	plan.total = 0;
	(void) Carve(&plan.total, sizeof(TvEncodeShared));
	plan.off_centroids = Carve(&plan.total, (Size) lists * vector_bytes);
	plan.off_cnorms = Carve(&plan.total, sizeof(float) * lists);
	plan.off_vectors = Carve(&plan.total, (Size) plan.capacity * vector_bytes);
	plan.off_listof = Carve(&plan.total, sizeof(int) * plan.capacity);
	plan.off_codes = Carve(&plan.total, (Size) plan.capacity * codec->code_bytes);
	plan.off_factors = Carve(&plan.total, sizeof(TvFactors) * plan.capacity);
	return plan;
}

/*
 * The most shared memory a parallel coding of this index's spool takes,
 * whatever the number of vectors, with maintenance_work_mem at mem_kb: the
 * build keeps it out of the spool's share of maintenance_work_mem.
 */
Size
TvParallelSegmentBytes(const TvCodec *codec, int lists, int chunk_vectors, int mem_kb)
{
	return PlanSegment(codec, lists, PG_UINT64_MAX, chunk_vectors, mem_kb).total;
}

/*
 * With workers: rounds of at most TvParallelWindowBytes of vectors.
 * Returns the number of workers that took part in the first round, or -1
 * when no segment could be had (the caller then works alone).
 */
static int
EncodeParallel(const TvEncodeInput *in, int nworkers, int *listof, uint8 *codes,
			   TvFactors *factors)
{
	const TvCodec *codec = in->codec;
	Size		vector_bytes = sizeof(float) * codec->dim;
	SegmentPlan plan = PlanSegment(codec, in->lists, in->n, in->chunk_vectors,
								   maintenance_work_mem);
	uint64		capacity = plan.capacity;
	ParallelContext *pcxt;
	TvEncodeShared *sh;
	int			launched = -1;

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
		return -1;
	}

	sh = shm_toc_allocate(pcxt->toc, plan.total);
	sh->dim = codec->dim;
	sh->bits = codec->bits;
	sh->seed = codec->seed;
	sh->metric = (int) in->metric;
	sh->lists = in->lists;
	sh->residual = in->residual;
	sh->code_bytes = codec->code_bytes;
	sh->plan = plan;
	pg_atomic_init_u64(&sh->next, 0);
	memcpy((char *) sh + plan.off_centroids, in->centroids, (Size) in->lists * vector_bytes);
	if (in->cnorms)
		memcpy((char *) sh + plan.off_cnorms, in->cnorms, sizeof(float) * in->lists);
	shm_toc_insert(pcxt->toc, TV_PARALLEL_KEY_SHARED, sh);

	for (uint64 first = 0; first < in->n; first += capacity)
	{
		uint64		n = Min(capacity, in->n - first);
		char	   *base = (char *) sh;
		float	   *chunk;
		EncodeJob	job;

		/* the window: whole spool chunks, so one copy per chunk */
		for (uint64 k = 0; k < n; k += in->chunk_vectors)
		{
			uint64		m = Min((uint64) in->chunk_vectors, n - k);

			memcpy(base + plan.off_vectors + (Size) k * vector_bytes,
				   in->chunks[(first + k) / in->chunk_vectors], (Size) m * vector_bytes);
		}
		sh->first = first;
		sh->n = n;
		pg_atomic_write_u64(&sh->next, 0);

		if (first > 0)
			ReinitializeParallelDSM(pcxt);
		LaunchParallelWorkers(pcxt);
		if (first == 0)
			launched = pcxt->nworkers_launched;
		elog(DEBUG2, "turbo build round at vector " UINT64_FORMAT ": %d parallel workers",
			 first, pcxt->nworkers_launched);

		/* the leader takes part too */
		job = SharedJob(sh, codec, &chunk);
		job.progress_base += in->progress_base;
		job.progress = true;
		RunEncodeJob(&job, &sh->next);
		WaitForParallelWorkersToFinish(pcxt);

		memcpy(listof + first, base + plan.off_listof, sizeof(int) * n);
		memcpy(codes + first * codec->code_bytes, base + plan.off_codes,
			   (Size) n * codec->code_bytes);
		memcpy(factors + first, base + plan.off_factors, sizeof(TvFactors) * n);
	}

	DestroyParallelContext(pcxt);
	ExitParallelMode();
	return launched;
}

/*
 * Pick the list of, and code, every spooled vector: listof[k], the row code
 * at codes + k * code_bytes and factors[k] for spool position k.  nworkers
 * is how many parallel workers to ask for (0: none).  Returns how many took
 * part.
 */
int
TvEncodeSpooled(const TvEncodeInput *in, int nworkers, int *listof, uint8 *codes,
				TvFactors *factors)
{
	EncodeJob	job;
	pg_atomic_uint64 next;

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
	pg_atomic_init_u64(&next, 0);
	RunEncodeJob(&job, &next);
	return 0;
}

/*
 * k-means assignment rounds with parallel workers.  The samples go into a
 * segment once; each Lloyd round copies the centroids in, and every
 * participant claims batches of TV_ASSIGN_BATCH samples and writes their
 * nearest lists by position.  Batches start at multiples of the batch
 * size, as in the serial rounds (tvivf.c), so TvNearestLists groups the
 * rows the same way and the assignment is the same whoever computes it.
 */
#define TV_PARALLEL_KEY_KMEANS		UINT64CONST(0x7475726226FE0002)

typedef struct TvKmeansShared
{
	int			dim;
	int			metric;
	int			lists;
	int			nsamples;
	pg_atomic_uint64 next;
	Size		off_centroids;
	Size		off_cnorms;
	Size		off_samples;
	Size		off_assign;
} TvKmeansShared;

struct TvKmeansParallel
{
	ParallelContext *pcxt;
	TvKmeansShared *sh;
	int			rounds;
};

PGDLLEXPORT void TvParallelKmeansMain(dsm_segment *seg, shm_toc *toc);

static void
RunKmeansJob(TvKmeansShared *sh)
{
	char	   *base = (char *) sh;
	const float *samples = (const float *) (base + sh->off_samples);
	int		   *assign = (int *) (base + sh->off_assign);

	for (;;)
	{
		uint64		k0 = pg_atomic_fetch_add_u64(&sh->next, TV_ASSIGN_BATCH);
		int			m;

		if (k0 >= (uint64) sh->nsamples)
			break;
		m = (int) Min((uint64) TV_ASSIGN_BATCH, (uint64) sh->nsamples - k0);
		TvNearestLists((const float *) (base + sh->off_centroids),
					   (const float *) (base + sh->off_cnorms), sh->lists, sh->dim,
					   (TvMetric) sh->metric, samples + (Size) k0 * sh->dim, m,
					   assign + k0);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Entry point of a parallel k-means worker */
void
TvParallelKmeansMain(dsm_segment *seg, shm_toc *toc)
{
	RunKmeansJob(shm_toc_lookup(toc, TV_PARALLEL_KEY_KMEANS, false));
}

/*
 * Set up parallel assignment of the samples to lists, or NULL when no
 * segment can be had (the caller then works alone).  The segment holds a
 * copy of the samples: the build counts them twice against
 * maintenance_work_mem.
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
				off_assign;
	TvKmeansShared *sh;

	if (nworkers <= 0 || IsInParallelMode())
		return NULL;
	(void) Carve(&total, sizeof(TvKmeansShared));
	off_centroids = Carve(&total, (Size) lists * dim * sizeof(float));
	off_cnorms = Carve(&total, (Size) lists * sizeof(float));
	off_samples = Carve(&total, (Size) nsamples * dim * sizeof(float));
	off_assign = Carve(&total, (Size) nsamples * sizeof(int));

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
	pg_atomic_init_u64(&sh->next, 0);
	memcpy((char *) sh + off_samples, samples, (Size) nsamples * dim * sizeof(float));
	shm_toc_insert(pcxt->toc, TV_PARALLEL_KEY_KMEANS, sh);

	kp = palloc0(sizeof(TvKmeansParallel));
	kp->pcxt = pcxt;
	kp->sh = sh;
	return kp;
}

/* One assignment round: the nearest list of every sample into assign[] */
void
TvKmeansParallelAssign(TvKmeansParallel *kp, const float *centroids,
					   const float *cnorms, int *assign)
{
	TvKmeansShared *sh = kp->sh;
	char	   *base = (char *) sh;

	memcpy(base + sh->off_centroids, centroids, (Size) sh->lists * sh->dim * sizeof(float));
	memcpy(base + sh->off_cnorms, cnorms, (Size) sh->lists * sizeof(float));
	pg_atomic_write_u64(&sh->next, 0);
	if (kp->rounds++ > 0)
		ReinitializeParallelDSM(kp->pcxt);
	LaunchParallelWorkers(kp->pcxt);
	RunKmeansJob(sh);
	WaitForParallelWorkersToFinish(kp->pcxt);
	memcpy(assign, base + sh->off_assign, (Size) sh->nsamples * sizeof(int));
}

void
TvKmeansParallelEnd(TvKmeansParallel *kp)
{
	DestroyParallelContext(kp->pcxt);
	ExitParallelMode();
	pfree(kp);
}
