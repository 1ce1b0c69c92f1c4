/*
 * tvbuild.c
 *	  CREATE INDEX for turbo indexes: encode every row and lay the blocks
 *	  end to end in the page stream.
 *
 * Flat layout: one pass fills 32-lane blocks in heap order.  IVF layout
 * (lists > 0, or lists not given: TvAutoLists decides after the first
 * pass): a first pass samples vectors (by a hash of their TIDs, so the
 * sample does not depend on scan order), k-means trains the centroids
 * (tvivf.c), and the encoding pass sends each vector to the block being
 * filled for its nearest list; a full block is appended to the stream and
 * linked to the previous block of its list.  The first pass also spools
 * the vectors while they fit in maintenance_work_mem (unless they lie in
 * their rows uncompressed, which are cheaper to read again: see
 * VectorsInRows), and then the encoding pass reads the spool instead of the
 * heap and writes the lists one after the other, each list's blocks
 * contiguous (parallel workers may do the coding, tvparallel.c).  When the
 * vectors are not spooled, the heap pass keeps the codes instead to lay
 * the lists out the same way (coding windows of vectors with parallel
 * workers), and only when those do not fit either are blocks appended as
 * they fill, lists interleaved.  The sampling pass, and the encoding
 * pass over TOASTed vectors, may be shared with parallel workers
 * (tvparallel.c), which send the leader their vectors or codes; vectors
 * that lie in their rows the leader reads again itself, and workers code
 * windows of them.  The lists are laid out in TID order, so the pages do
 * not depend on who read or coded which row.  Vectors are
 * assigned in batches, which lets the list assignment use the blocked
 * kernel.  The list area (directory and centroids) is reserved at the start
 * of the stream and written last.
 *
 * Pages are written through shared buffers, only marked dirty, and the
 * whole relation is WAL-logged once at the end (log_newpage_range), which
 * is far cheaper than a record per page; the metapage is written last, so a
 * build that errors out leaves nothing that claims to be valid.
 */
#include "postgres.h"

#include <math.h>
#include <sys/mman.h>
#include <unistd.h>

#include "access/table.h"
#include "access/tableam.h"
#include "access/xloginsert.h"
#include "catalog/index.h"
#include "commands/progress.h"
#include "miscadmin.h"
#include "optimizer/paths.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "turbovec.h"
#include "tvresident.h"

/* k-means: samples per list, and Lloyd iterations */
#define TV_SAMPLES_PER_LIST		32
#define TV_KMEANS_ITERATIONS	10

/*
 * Automatic lists (the lists reloption not given): a table with fewer
 * indexed vectors than this stays flat; see TvAutoLists
 */
#define TV_AUTO_MIN_ROWS		50000

/* vectors assigned to lists and encoded together */
#define TV_BUILD_BATCH			64

static bool VectorsInRows(Relation heap, IndexInfo *indexInfo);

/* vectors per chunk of the IVF spool */
#define TV_SPOOL_CHUNK			256

/* most bytes of vectors a heap pass hands its coding workers at a time */
#define TV_HEAP_WINDOW_BYTES	((Size) 4 * 1024 * 1024)

/* most bytes of one spool region (a chunk bigger than this gets its own) */
#define TV_SPOOL_REGION			((Size) 32 * 1024 * 1024)

/* Bytes a coded vector takes until the lists are laid out, sort included */
#define CodedBytes(bs) \
	(sizeof(int) + (bs)->codec->code_bytes + sizeof(TvFactors) + \
	 sizeof(ItemPointerData) + sizeof(uint64))

/*
 * The IVF spool: the vectors of the sampling pass, kept so the encoding
 * pass needs no second heap scan (and no second detoasting) when they fit
 * in maintenance_work_mem beside the sample.
 */
typedef struct SpoolChunk
{
	struct SpoolChunk *next;
	int			n;
	ItemPointerData tids[TV_SPOOL_CHUNK];
	float		vectors[FLEXIBLE_ARRAY_MEMBER];	/* TV_SPOOL_CHUNK * dim */
} SpoolChunk;

/*
 * Spool chunks are carved from regions of up to TV_SPOOL_REGION bytes that
 * ask for transparent huge pages.  The spool is fresh memory touched once:
 * allocated a chunk at a time, a fault per 4 kB page cost a third of a
 * Fashion-MNIST build's CPU on a 2-core VM (docs/PERFORMANCE.md).
 */
typedef struct SpoolRegion
{
	struct SpoolRegion *next;
} SpoolRegion;

/* A block being filled */
typedef struct FillBlock
{
	char	   *bytes;
	int			lanes;
} FillBlock;

typedef struct TvBuildState
{
	Relation	index;
	int			bits;
	TvMetric	metric;
	uint64		seed;
	FmgrInfo   *toarray;		/* column type to real[], NULL for real[] */

	/* set by the first vector */
	int			dim;
	TvCodec    *codec;
	int			block_bytes;
	uint8	   *code;
	float	   *work;

	/* IVF: centroids, directory and one block being filled per list */
	int			lists;
	bool		residual;		/* codes of the residual to the centroid */
	float	   *centroids;
	TvListEntry *entries;
	FillBlock  *fill;			/* lists entries, or one for the flat layout */

	/* the page being filled */
	PGAlignedBlock page;
	Size		page_fill;
	BlockNumber ndatapages;
	uint64		nblocks;		/* blocks appended */

	/*
	 * IVF sampling: the vectors whose hash is below sample_tau (lowered
	 * whenever more than SampleLimit are held), with their hashes
	 */
	bool		auto_lists;		/* lists not given: chosen after sampling */
	float	   *samples;
	uint64	   *sample_hash;
	int			nsamples;
	int			sample_cap;		/* allocated */
	uint64		sample_tau;
	uint64		filter_tau;		/* what the scan's workers last heard */
	uint64		seen;

	/*
	 * IVF spool; spool_off once it outgrew its memory, or from the start
	 * when the table's vectors lie in their rows (spool_declined)
	 */
	SpoolChunk *spool_head;
	SpoolChunk *spool_tail;
	SpoolRegion *spool_regions;	/* newest first */
	char	   *region_free;	/* unused room of the newest region */
	Size		region_left;
	Size		spool_bytes;	/* allocated, regions in whole */
	uint64		spooled;		/* vectors in the spool */
	bool		spool_off;
	bool		spool_declined;

	/*
	 * The heap pass of an IVF build whose vectors did not fit: codes kept
	 * (far smaller than vectors) so the lists can still be laid out one
	 * after the other; off once they outgrow their memory too.
	 */
	bool		coded_on;
	uint64		ncoded;
	uint64		coded_cap;
	int		   *coded_list;
	uint8	   *coded_codes;
	TvFactors  *coded_factors;
	ItemPointerData *coded_tids;

	/*
	 * Vectors of a heap pass waiting to be assigned and encoded: a batch of
	 * TV_BUILD_BATCH, or with parallel workers a window of whole spool
	 * chunks that they code together (HeapWindowVectors)
	 */
	float	   *batch;			/* batch_cap * dim */
	ItemPointerData *batch_tids;
	int			batch_n;
	int			batch_cap;
	TvEncodeWindows *windows;	/* the workers coding the windows, or NULL */
	bool		windows_failed; /* no segment for them: code alone */
	bool		windows_stay;	/* keep them for the whole pass */
	int			window_workers; /* how many were launched */
	uint64		windowed;		/* vectors they coded */
	int			coding_n;		/* vectors of the window they are coding */
	ItemPointerData *coding_tids;	/* its TIDs */
	int			pending_n;		/* vectors of the window collected from them */
	ItemPointerData *pending_tids;	/* its TIDs, and its results */
	int		   *pending_list;
	uint8	   *pending_codes;
	TvFactors  *pending_factors;
	float	   *cnorms;			/* ||c||^2 per list, for L2 assignment */
	TvListAssigner *assigner;	/* assigns vectors to the lists */

	/* a parallel heap scan in progress (tvparallel.c), or NULL */
	TvParallelScan *pscan;
	int			scan_workers;	/* workers of the last parallel heap scan */
	uint64		own_rows;		/* rows of the leader's own scan, for draining */

	uint64		encoded;		/* vectors coded by AddVectors */
	uint64		nslots;
	double		reltuples;
	double		indtuples;
	MemoryContext tmpCtx;
} TvBuildState;

/*
 * turbovec.test_build_delay: slow a build down where it reports progress,
 * so a test can watch every phase
 */
void
TvTestBuildDelay(void)
{
	if (tv_test_build_delay_ms > 0)
		pg_usleep(tv_test_build_delay_ms * 1000L);
}

/* Write the page being filled as the next data page */
static void
FlushPage(TvBuildState *bs)
{
	Buffer		buf = TvNewDataBuffer(bs->index, MAIN_FORKNUM);

	if (BufferGetBlockNumber(buf) != TV_FIRST_DATA_BLKNO + bs->ndatapages)
		elog(ERROR, "turbo build expected block %u, got %u",
			 TV_FIRST_DATA_BLKNO + bs->ndatapages, BufferGetBlockNumber(buf));
	memcpy(BufferGetPage(buf), bs->page.data, BLCKSZ);
	/* logged at the end of the build with log_newpage_range */
	MarkBufferDirty(buf);
	UnlockReleaseBuffer(buf);

	bs->ndatapages++;
	TvInitDataPage(bs->page.data);
	bs->page_fill = 0;
}

/* Append bytes to the stream */
static void
StreamWrite(TvBuildState *bs, const char *src, Size len)
{
	while (len > 0)
	{
		Size		n = Min(len, TV_PAGE_PAYLOAD - bs->page_fill);

		if (src)
			memcpy(TvPagePayload(bs->page.data) + bs->page_fill, src, n);
		bs->page_fill += n;
		if (src)
			src += n;
		len -= n;
		if (bs->page_fill == TV_PAGE_PAYLOAD)
			FlushPage(bs);
	}
}

/* Append a block to the stream and start it afresh; returns its number */
static uint64
FlushBlock(TvBuildState *bs, FillBlock *fb)
{
	uint64		blkno = bs->nblocks++;

	StreamWrite(bs, fb->bytes, bs->block_bytes);
	memset(fb->bytes, 0, bs->block_bytes);
	fb->lanes = 0;
	return blkno;
}

/* Append the block of list j, linked after the list's previous block */
static void
FlushListBlock(TvBuildState *bs, int j)
{
	FillBlock  *fb = &bs->fill[j];
	uint32		prev = bs->entries[j].tail;
	uint32		list = (uint32) j;
	uint64		blkno;

	memcpy(fb->bytes + TV_BLOCK_PREV_OFFSET, &prev, sizeof(uint32));
	memcpy(fb->bytes + TV_BLOCK_LIST_OFFSET, &list, sizeof(uint32));
	blkno = FlushBlock(bs, fb);
	bs->entries[j].tail = (uint32) (blkno + 1);
	bs->entries[j].nblocks++;
}

/*
 * Lists for `rows` vectors of `dim` dimensions when the lists reloption is
 * not given: flat below TV_AUTO_MIN_ROWS, where scoring every code costs
 * about a millisecond or less; above, about sqrt(rows) lists up to 128
 * dimensions, half that from 512, and in between a factor falling with
 * log2(dim) (GloVe-100, 340k x 100: 584; Fashion-MNIST, 60k x 784: 122;
 * 1M x 768: 500), as measured in bench/README.md: at high dimension
 * k-means and the assignment cost more per list, and a probed list is
 * cheap to scan next to the lists' centroids.
 */
int
TvAutoLists(double rows, int dim)
{
	double		factor;

	if (rows < TV_AUTO_MIN_ROWS)
		return 0;
	if (dim <= 128)
		factor = 1.0;
	else if (dim >= 512)
		factor = 0.5;
	else
		factor = 1.0 - 0.25 * log2((double) dim / 128);
	return (int) Min(rint(sqrt(rows) * factor), (double) TV_MAX_LISTS);
}

/*
 * Lists the build plans for while it samples: the reloption, or for
 * automatic lists what TvAutoLists gives the vectors seen so far, as if
 * the table were at least big enough for lists
 */
static int
PlannedLists(TvBuildState *bs)
{
	double		seen = (double) bs->seen;

	if (!bs->auto_lists)
		return bs->lists;
	/*
	 * during a parallel sampling pass, with the vectors the workers counted
	 * so far without sending them (added to seen when the pass ends)
	 */
	if (bs->pscan != NULL)
		seen += (double) TvParallelScanUnreadNow(bs->pscan);
	return TvAutoLists(Max(seen, TV_AUTO_MIN_ROWS), bs->dim);
}

/* The first vector fixes the dimension of the index */
static void
StartCodec(TvBuildState *bs, int dim)
{
	bs->dim = dim;
	bs->codec = TvCreateCodec(dim, bs->bits, bs->seed, CurrentMemoryContext);
	bs->block_bytes = TvBlockBytes(bs->codec);
	bs->code = palloc0(bs->codec->code_bytes);
	bs->work = palloc(sizeof(float) * TvEncodeWorkFloats(bs->codec));
}

/* One block being filled per list (one when flat), once lists are known */
static void
StartFill(TvBuildState *bs)
{
	int			nfill = Max(bs->lists, 1);

	if ((double) nfill * bs->block_bytes > (double) maintenance_work_mem * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("turbo index build needs %.0f kB for its %d lists of %d dimensions",
						(double) nfill * bs->block_bytes / 1024, nfill, bs->dim),
				 errhint("Increase maintenance_work_mem or use fewer lists.")));
	bs->fill = palloc0(sizeof(FillBlock) * nfill);
	for (int j = 0; j < nfill; j++)
		bs->fill[j].bytes = palloc0(bs->block_bytes);
}

/* Read and check one vector of the build scan; NULL when not indexed */
static float *
BuildVector(TvBuildState *bs, Relation index, Datum value, int *dim)
{
	float	   *x;
	MemoryContext oldCtx = MemoryContextSwitchTo(bs->tmpCtx);

	x = TvDatumGetFloats(bs->toarray, value, dim);
	MemoryContextSwitchTo(oldCtx);
	if (bs->dim == 0)
		bs->dim = *dim;
	else
		TvCheckDimensions(index, bs->dim, *dim);
	TvCheckNorm(index, x, *dim);
	/* zero vectors have no direction to index under cosine */
	if (bs->metric == TV_METRIC_COSINE && TvMaxAbs(x, *dim) == 0)
		return NULL;
	return x;
}

/*
 * Bytes an IVF build holds beside its spool or codes: a training sample of
 * `samples` vectors, one block being filled per list, and the assigner's
 * copy of the centroids when there are thousands of lists
 */
static double
FixedBuildBytes(TvBuildState *bs, double samples)
{
	int			lists = PlannedLists(bs);

	return samples * bs->dim * sizeof(float) + (double) lists * bs->block_bytes +
		TvListAssignerBytes(lists, bs->dim, bs->metric);
}

/* Rows the sample holds beyond those it keeps: an eighth, at least 64 */
static inline double
SampleSlack(double keep)
{
	return Max(keep / 8, 64);
}

/*
 * The training sample: the `keep` rows of smallest sampling hash that
 * k-means trains on (32 a list), at most `limit` held at once.  Holding
 * an eighth more than it keeps lets the pass drop rows in batches; the
 * memory it touches is what it holds (fresh memory cost this VM 2.5 ms a
 * 2 MB page), so the slack is small.  Both fit in half of
 * maintenance_work_mem, where the sample gets smaller.
 */
static void
SampleBounds(TvBuildState *bs, int *keep, int *limit)
{
	double		fit = (double) maintenance_work_mem * 1024 / 2 /
		(sizeof(float) * bs->dim + sizeof(uint64));
	double		want = (double) TV_SAMPLES_PER_LIST * Max(PlannedLists(bs), 1);
	double		k = want;
	double		held = want + SampleSlack(want);

	if (held > fit)
	{
		held = fit;
		k = fit * 8 / 9;
	}
	*keep = (int) Max(Min(k, PG_INT32_MAX / 2), 1);
	*limit = (int) Max(Min(held, PG_INT32_MAX / 2), *keep);
}

/* Most vectors the sampling pass holds at once */
static int
SampleLimit(TvBuildState *bs)
{
	int			keep,
				limit;

	SampleBounds(bs, &keep, &limit);
	return limit;
}

/*
 * maintenance_work_mem (MB, rounded up) an IVF build of bs->seen vectors
 * would need to keep per_vector bytes of each, beside the training sample,
 * the blocks being filled and extra
 */
static double
MemoryNeedMB(TvBuildState *bs, double per_vector, double extra)
{
	/* the whole sample: with more memory the build samples more */
	double		want = (double) bs->lists * TV_SAMPLES_PER_LIST;
	double		fixed = FixedBuildBytes(bs, Min(want + SampleSlack(want),
												(double) bs->seen));

	return ceil((fixed + extra + (double) bs->seen * per_vector) / (1024.0 * 1024.0));
}

/* Free the spool's regions (its chunks with them) */
static void
FreeSpool(TvBuildState *bs)
{
	for (SpoolRegion *r = bs->spool_regions; r != NULL;)
	{
		SpoolRegion *next = r->next;

		pfree(r);
		r = next;
	}
	bs->spool_regions = NULL;
	bs->region_free = NULL;
	bs->region_left = 0;
	bs->spool_head = bs->spool_tail = NULL;
}

/*
 * The build's large arrays are fresh memory written once: from 4 MB on, the
 * pages inside ask for transparent huge pages (a fault per 2 MB instead of
 * per 4 kB; a fault costs 10-20 us on some virtual machines).  Only advice:
 * where the kernel has none, or THP is off, this is ordinary memory.
 */
static void
AdviseHugePages(void *p, Size size)
{
#ifdef MADV_HUGEPAGE
	if (size >= (Size) 4 * 1024 * 1024)
	{
		uintptr_t	page = (uintptr_t) sysconf(_SC_PAGESIZE);
		uintptr_t	start = TYPEALIGN(page, (uintptr_t) p);
		uintptr_t	end = ((uintptr_t) p + size) & ~(page - 1);

		if (end > start)
			(void) madvise((void *) start, end - start, MADV_HUGEPAGE);
	}
#endif
}

/* palloc of a large build array (AdviseHugePages) */
static void *
AllocBuildArray(Size size)
{
	void	   *p = palloc_extended(size, MCXT_ALLOC_HUGE);

	AdviseHugePages(p, size);
	return p;
}

/* repalloc of a large build array: a moved array is fresh memory again */
static void *
GrowBuildArray(void *p, Size size)
{
	p = repalloc_huge(p, size);
	AdviseHugePages(p, size);
	return p;
}

/* A new spool region with room for `chunks` chunks of chunk_bytes */
static void
NewSpoolRegion(TvBuildState *bs, Size chunk_bytes, int chunks)
{
	Size		header = MAXALIGN(sizeof(SpoolRegion));
	Size		size = header + chunk_bytes * chunks;
	SpoolRegion *r = AllocBuildArray(size);

	r->next = bs->spool_regions;
	bs->spool_regions = r;
	bs->region_free = (char *) r + header;
	bs->region_left = chunk_bytes * chunks;
	bs->spool_bytes += size;
}

/* Keep one vector of the sampling pass in the spool, while it fits */
static void
SpoolVector(TvBuildState *bs, ItemPointer tid, const float *x)
{
	SpoolChunk *chunk = bs->spool_tail;

	if (bs->spool_off)
		return;
	if (chunk == NULL || chunk->n == TV_SPOOL_CHUNK)
	{
		Size		bytes = MAXALIGN(offsetof(SpoolChunk, vectors) +
									 sizeof(float) * TV_SPOOL_CHUNK * bs->dim);
		/* the sample and the blocks being filled have their share */
		double		limit = (double) maintenance_work_mem * 1024 -
			FixedBuildBytes(bs, SampleLimit(bs));

		/* and each spooled vector its list, code, factors, TID and place */
		double		per_chunk_out = (double) TV_SPOOL_CHUNK * CodedBytes(bs);
		double		outputs = (double) (bs->spooled + TV_SPOOL_CHUNK) * CodedBytes(bs);
		double		room;

		/* and parallel workers a shared segment */
		if (max_parallel_maintenance_workers > 0)
			limit -= (double) TvParallelSegmentBytes(bs->codec, Max(PlannedLists(bs), 1),
													 TV_SPOOL_CHUNK, maintenance_work_mem,
													 PG_UINT64_MAX, 1);
		/* and a parallel scan its queues */
		if (bs->pscan != NULL)
			limit -= (double) TvParallelScanBytes(bs->scan_workers, maintenance_work_mem);

		/* room left for new regions, once this chunk's outputs are counted */
		room = limit - (double) bs->spool_bytes - outputs;
		if (room < (bs->region_left >= bytes ? 0 : (double) bytes))
		{
			/* too big: the encoding pass will read the heap again (tvbuild says so) */
			FreeSpool(bs);
			bs->spool_off = true;
			return;
		}
		if (bs->region_left < bytes)
		{
			/* as many chunks as fit beside their outputs, up to a region */
			double		fit = floor((room + per_chunk_out) / ((double) bytes + per_chunk_out));
			int			chunks = (int) Max(Min(fit, (double) (TV_SPOOL_REGION / bytes)), 1);

			NewSpoolRegion(bs, bytes, chunks);
		}
		chunk = (SpoolChunk *) bs->region_free;
		bs->region_free += bytes;
		bs->region_left -= bytes;
		chunk->next = NULL;
		chunk->n = 0;
		if (bs->spool_tail)
			bs->spool_tail->next = chunk;
		else
			bs->spool_head = chunk;
		bs->spool_tail = chunk;
	}
	bs->spooled++;
	chunk->tids[chunk->n] = *tid;
	memcpy(chunk->vectors + (Size) chunk->n * bs->dim, x, sizeof(float) * bs->dim);
	chunk->n++;
}

/*
 * The k-th smallest (from 0) of a[0..n-1], k < n, reordering a: Hoare's
 * selection.  The hashes are pseudo-random, so the middle element is as
 * good a pivot as any.
 */
static uint64
KthSmallestHash(uint64 *a, int n, int k)
{
	int			lo = 0,
				hi = n - 1;

	while (lo < hi)
	{
		uint64		pivot = a[lo + (hi - lo) / 2];
		int			i = lo,
					j = hi;

		while (i <= j)
		{
			while (a[i] < pivot)
				i++;
			while (a[j] > pivot)
				j--;
			if (i <= j)
			{
				uint64		t = a[i];

				a[i++] = a[j];
				a[j--] = t;
			}
		}
		if (k <= j)
			hi = j;
		else if (k >= i)
			lo = i;
		else
			break;
	}
	return a[k];
}

/*
 * Drop the held rows whose hash is not below the `keep`-th smallest: that
 * hash becomes sample_tau.  The rows left move into the holes from the
 * end, so at most the dropped ones move.
 */
static void
ShrinkSample(TvBuildState *bs, int keep)
{
	int			n = bs->nsamples;
	uint64	   *hashes = palloc(sizeof(uint64) * n);
	uint64		tau;
	int			lo = 0,
				hi = n;

	memcpy(hashes, bs->sample_hash, sizeof(uint64) * n);
	tau = KthSmallestHash(hashes, n, keep);
	pfree(hashes);
	/* [0, lo) are kept, [hi, n) dropped */
	for (;;)
	{
		while (lo < hi && bs->sample_hash[lo] < tau)
			lo++;
		while (lo < hi && bs->sample_hash[hi - 1] >= tau)
			hi--;
		if (lo >= hi)
			break;
		bs->sample_hash[lo] = bs->sample_hash[hi - 1];
		memcpy(bs->samples + (Size) lo * bs->dim,
			   bs->samples + (Size) (hi - 1) * bs->dim, sizeof(float) * bs->dim);
		lo++;
		hi--;
	}
	bs->nsamples = lo;
	bs->sample_tau = tau;
}

/*
 * Keep a vector in the training sample when its hash is below sample_tau;
 * past SampleLimit, lower sample_tau to keep the rows of smallest hash.
 * The sample is then every row whose hash is below the final sample_tau
 * (a row dropped had a hash at or above a sample_tau, which only falls),
 * and k-means trains on the `want` of smallest hash among them: when there
 * are that many, a uniform sample that depends on the seed and the TIDs
 * alone, not on the order of the scan.
 */
static void
SampleVector(TvBuildState *bs, ItemPointer tid, const float *x)
{
	uint64		h = TvSampleHash(bs->seed, tid);
	int			keep,
				limit;

	if (h >= bs->sample_tau)
		return;
	SampleBounds(bs, &keep, &limit);
	if (bs->nsamples == bs->sample_cap)
	{
		/*
		 * Room for the whole limit at once: only the pages filled are ever
		 * touched, and growing by doubling copied the sample and touched
		 * twice its memory (a tenth of a second of a backend's first build
		 * at 60,000 x 784).  The limit only grows under automatic lists.
		 */
		int			cap = (bs->samples == NULL) ? limit + 1 :
			Min(bs->sample_cap * 2, limit + 1);

		cap = Max(cap, 64);

		if (bs->samples == NULL)
		{
			bs->samples = AllocBuildArray((Size) cap * bs->dim * sizeof(float));
			bs->sample_hash = AllocBuildArray((Size) cap * sizeof(uint64));
		}
		else
		{
			bs->samples = GrowBuildArray(bs->samples, (Size) cap * bs->dim * sizeof(float));
			bs->sample_hash = GrowBuildArray(bs->sample_hash, (Size) cap * sizeof(uint64));
		}
		bs->sample_cap = cap;
	}
	memcpy(bs->samples + (Size) bs->nsamples * bs->dim, x, sizeof(float) * bs->dim);
	bs->sample_hash[bs->nsamples++] = h;

	/*
	 * Keep half the slack too.  Under automatic lists `keep` grows with the
	 * rows seen, and the rows dropped are gone: were the sample to end with
	 * fewer rows than k-means takes, which rows it holds would depend on
	 * when it last shrank, so on the order of the scan.  The margin (a
	 * sixteenth) is many times what the rows after the last shrink vary by.
	 */
	if (bs->nsamples > limit)
		ShrinkSample(bs, keep + (limit - keep) / 2);
}

/* qsort_arg: positions k by their TIDs in arg */
static int
CompareTidOrder(const void *a, const void *b, void *arg)
{
	const ItemPointerData *tids = (const ItemPointerData *) arg;

	return ItemPointerCompare((ItemPointer) &tids[*(const uint64 *) a],
							  (ItemPointer) &tids[*(const uint64 *) b]);
}

/* Put positions first..last-1 of order in TID order, unless they are already */
static void
SortByTid(uint64 *order, uint64 n, const ItemPointerData *tids)
{
	for (uint64 i = 1; i < n; i++)
	{
		if (ItemPointerCompare((ItemPointer) &tids[order[i - 1]],
							   (ItemPointer) &tids[order[i]]) > 0)
		{
			qsort_arg(order, n, sizeof(uint64), CompareTidOrder, (void *) tids);
			return;
		}
	}
}

static int
CompareHashOrder(const void *a, const void *b, void *arg)
{
	const uint64 *hash = (const uint64 *) arg;
	uint64		ha = hash[*(const int *) a];
	uint64		hb = hash[*(const int *) b];

	return (ha > hb) - (ha < hb);
}

/*
 * Put the sample in hash order, which is random, and keep the first `want`
 * vectors: a uniform subsample, the first of which seed k-means.  In place,
 * following the cycles of the permutation.
 */
static void
FinishSample(TvBuildState *bs, int want)
{
	int			n = bs->nsamples;
	int		   *order = palloc(sizeof(int) * Max(n, 1));
	bool	   *placed = palloc0(sizeof(bool) * Max(n, 1));
	float	   *tmp = palloc(sizeof(float) * bs->dim);
	Size		vbytes = sizeof(float) * bs->dim;

	for (int i = 0; i < n; i++)
		order[i] = i;
	qsort_arg(order, n, sizeof(int), CompareHashOrder, bs->sample_hash);
	/* position i takes the vector at order[i] */
	for (int i = 0; i < n; i++)
	{
		int			j = i;

		if (placed[i])
			continue;
		memcpy(tmp, bs->samples + (Size) i * bs->dim, vbytes);
		while (order[j] != i)
		{
			memcpy(bs->samples + (Size) j * bs->dim,
				   bs->samples + (Size) order[j] * bs->dim, vbytes);
			placed[j] = true;
			j = order[j];
		}
		memcpy(bs->samples + (Size) j * bs->dim, tmp, vbytes);
		placed[j] = true;
	}
	pfree(order);
	pfree(placed);
	pfree(tmp);
	pfree(bs->sample_hash);
	bs->sample_hash = NULL;
	bs->nsamples = Min(n, want);
	/* k-means may copy the sample for parallel workers: free the rest first */
	if (bs->nsamples > 0 && bs->nsamples < bs->sample_cap)
	{
		bs->samples = repalloc_huge(bs->samples, (Size) bs->nsamples * vbytes);
		bs->sample_cap = bs->nsamples;
	}
}

/* Count one vector of the first IVF pass */
static void
CountVector(TvBuildState *bs)
{
	bs->seen++;
	if ((bs->seen & 1023) == 0)
	{
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
									 (int64) bs->seen);
		TvTestBuildDelay();
	}
}

/* Sample and spool one vector of the first IVF pass */
static void
SampleOne(TvBuildState *bs, ItemPointer tid, const float *x, int dim)
{
	if (bs->codec == NULL)
		StartCodec(bs, dim);
	/* counted first: under automatic lists the sample's limit follows the count */
	CountVector(bs);
	SampleVector(bs, tid, x);
	SpoolVector(bs, tid, x);
}

/*
 * Whether the first pass may count a row's vector without reading it: the
 * vectors are read again by the encoding pass (nothing is spooled), which
 * checks every one, and this row's sampling hash puts it past the sample
 * (sample_tau only falls), so the sample is the same either way.  Reading
 * and checking a wide row's vector was most of the pass (3 KB a row at 784
 * dimensions).  Not under cosine, where `seen` must leave out zero
 * vectors (they are not indexed), which takes reading them.
 */
static bool
SampleSkips(TvBuildState *bs, ItemPointer tid)
{
	return bs->spool_off && bs->metric != TV_METRIC_COSINE && bs->codec != NULL &&
		bs->sample_tau != PG_UINT64_MAX && TvSampleHash(bs->seed, tid) >= bs->sample_tau;
}

/* The first worker record fixes the dimension; later ones must match it */
static void
RecordDimension(TvBuildState *bs, const TvScanRecord *rec)
{
	if (bs->dim == 0)
		bs->dim = rec->dim;
	else
		TvCheckDimensions(bs->index, bs->dim, rec->dim);
}

/* A vector a parallel worker read in the first pass (BuildVector checked it) */
static void
SampleRecord(const TvScanRecord *rec, void *arg)
{
	TvBuildState *bs = (TvBuildState *) arg;

	RecordDimension(bs, rec);
	SampleOne(bs, (ItemPointer) &rec->tid, rec->vector, rec->dim);
}

/*
 * Between the leader's own rows of a parallel heap scan: every few rows,
 * take in what the workers sent, so that they do not wait on full queues
 */
#define TV_DRAIN_EVERY		8

static void
DrainWorkers(TvBuildState *bs, TvScanConsumer consume)
{
	if (bs->pscan != NULL && (++bs->own_rows % TV_DRAIN_EVERY) == 0)
	{
		/* once nothing is spooled, the workers send only what may be sampled */
		if (bs->spool_off && bs->codec != NULL && bs->sample_tau != bs->filter_tau)
		{
			TvParallelScanFilter(bs->pscan, bs->sample_tau);
			bs->filter_tau = bs->sample_tau;
		}
		TvParallelScanDrain(bs->pscan, consume, bs);
	}
}

/* First IVF pass: sample the vectors k-means trains on, and spool them */
static void
SampleCallback(Relation index, ItemPointer tid, Datum *values, bool *isnull,
			   bool tupleIsAlive, void *state)
{
	TvBuildState *bs = (TvBuildState *) state;
	float	   *x;
	int			dim;

	if (!isnull[0] && SampleSkips(bs, tid))
		CountVector(bs);
	else if (!isnull[0])
	{
		x = BuildVector(bs, index, values[0], &dim);
		if (x != NULL)
			SampleOne(bs, tid, x, dim);
		MemoryContextReset(bs->tmpCtx);
	}
	DrainWorkers(bs, SampleRecord);
}

/* Put one coded vector in the block being filled for list j (0 when flat) */
static void
PutCoded(TvBuildState *bs, int j, const uint8 *code, const TvFactors *factors,
		 const ItemPointerData *tid)
{
	FillBlock  *fb = &bs->fill[j];
	int			lane = fb->lanes;

	tv_block_put_code(bs->codec, (uint8 *) fb->bytes + TV_BLOCK_CODES_OFFSET,
					  lane, code);
	memcpy(fb->bytes + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
		   tid, sizeof(ItemPointerData));
	memcpy(fb->bytes + TV_BLOCK_NORM_OFFSET + lane * sizeof(float),
		   &factors->norm, sizeof(float));
	memcpy(fb->bytes + TV_BLOCK_IPSCALE_OFFSET + lane * sizeof(float),
		   &factors->ipscale, sizeof(float));
	((uint32 *) fb->bytes)[0] |= (uint32) 1 << lane;

	fb->lanes++;
	bs->indtuples++;
	if (bs->lists == 0)
		bs->nslots++;
	if (fb->lanes == TV_LANES)
	{
		if (bs->lists > 0)
			FlushListBlock(bs, j);
		else
			FlushBlock(bs, fb);
	}
}

/*
 * Fill the empty block of list j (0 when flat) with the 32 coded vectors
 * order[0..32) of codes, factors and tids, and append it: PutCoded 32
 * times, with the codes moved into their lanes together
 */
static void
PutCodedBlock(TvBuildState *bs, int j, const uint64 *order, const uint8 *codes,
			  const TvFactors *factors, const ItemPointerData *tids)
{
	FillBlock  *fb = &bs->fill[j];
	int			code_bytes = bs->codec->code_bytes;
	const uint8 *rows[TV_LANES];

	Assert(fb->lanes == 0);
	for (int lane = 0; lane < TV_LANES; lane++)
	{
		uint64		k = order[lane];

		rows[lane] = codes + k * code_bytes;
		memcpy(fb->bytes + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
			   &tids[k], sizeof(ItemPointerData));
		memcpy(fb->bytes + TV_BLOCK_NORM_OFFSET + lane * sizeof(float),
			   &factors[k].norm, sizeof(float));
		memcpy(fb->bytes + TV_BLOCK_IPSCALE_OFFSET + lane * sizeof(float),
			   &factors[k].ipscale, sizeof(float));
	}
	tv_block_put_codes(bs->codec, (uint8 *) fb->bytes + TV_BLOCK_CODES_OFFSET,
					   rows, TV_LANES);
	((uint32 *) fb->bytes)[0] = PG_UINT32_MAX;
	fb->lanes = TV_LANES;
	bs->indtuples += TV_LANES;
	if (bs->lists > 0)
		FlushListBlock(bs, j);
	else
	{
		bs->nslots += TV_LANES;
		FlushBlock(bs, fb);
	}
}

/*
 * Ask the caches for the kept codes, factors and TIDs of the m vectors
 * order[0..m), the next block LayOutCoded lays out.  A list's vectors lie
 * scattered over the kept codes (in heap order), so without this, moving
 * them into their lanes waited on memory for most of each code's cache
 * lines: 44 ms of a Fashion-MNIST build's 60 ms layout.
 */
static void
PrefetchCoded(const uint64 *order, uint64 m, const uint8 *codes, int code_bytes,
			  const TvFactors *factors, const ItemPointerData *tids)
{
	for (uint64 k = 0; k < m; k++)
	{
		const uint8 *code = codes + order[k] * code_bytes;

		for (int off = 0; off < code_bytes; off += 64)
			__builtin_prefetch(code + off);
		__builtin_prefetch(code + code_bytes - 1);
		__builtin_prefetch(&factors[order[k]]);
		__builtin_prefetch(&tids[order[k]]);
	}
}

/*
 * Write n coded vectors list after list, each list in TID order, so the
 * blocks of a list are contiguous in the stream and a scan reads a probed
 * list from a few consecutive pages.  TID order, not the order the vectors
 * came in, because a parallel heap scan (or a synchronized one) hands them
 * over in an order that changes from build to build; this way the pages
 * do not.  Each list's last block is appended partly filled.
 */
static void
LayOutCoded(TvBuildState *bs, uint64 n, const int *listof, const uint8 *codes,
			const TvFactors *factors, const ItemPointerData *tids)
{
	int			code_bytes = bs->codec->code_bytes;
	int			nlists = Max(bs->lists, 1);	/* flat: one */
	uint64	   *start = palloc0(sizeof(uint64) * (nlists + 1));
	uint64	   *order = palloc_extended(sizeof(uint64) * Max(n, 1), MCXT_ALLOC_HUGE);
	uint64	   *pos = palloc(sizeof(uint64) * nlists);
	int64		laid = 0;
	const int	progress_index[] = {
		PROGRESS_CREATEIDX_SUBPHASE,
		PROGRESS_CREATEIDX_TUPLES_TOTAL,
		PROGRESS_CREATEIDX_TUPLES_DONE
	};
	int64		progress_value[] = {TV_PHASE_LAYOUT, (int64) n, 0};

	pgstat_progress_update_multi_param(3, progress_index, progress_value);

	/* counting sort by list, stable */
	for (uint64 k = 0; k < n; k++)
		start[listof[k] + 1]++;
	for (int j = 0; j < nlists; j++)
		start[j + 1] += start[j];
	memcpy(pos, start, sizeof(uint64) * nlists);
	for (uint64 k = 0; k < n; k++)
		order[pos[listof[k]]++] = k;
	pfree(pos);
	for (int j = 0; j < nlists; j++)
		SortByTid(order + start[j], start[j + 1] - start[j], tids);

	for (int j = 0; j < nlists; j++)
	{
		uint64		i = start[j];

		while (i < start[j + 1])
		{
			int64		before = laid;

			/* whole blocks at once; a flat build may have one begun */
			if (bs->fill[j].lanes == 0 && start[j + 1] - i >= TV_LANES)
			{
				PrefetchCoded(order + i + TV_LANES, Min(n - (i + TV_LANES), TV_LANES),
							  codes, code_bytes, factors, tids);
				PutCodedBlock(bs, j, order + i, codes, factors, tids);
				i += TV_LANES;
				laid += TV_LANES;
			}
			else
			{
				uint64		k = order[i++];

				PutCoded(bs, j, codes + k * code_bytes, &factors[k], &tids[k]);
				laid++;
			}
			if ((laid >> 10) != (before >> 10))
			{
				pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, laid);
				TvTestBuildDelay();
				CHECK_FOR_INTERRUPTS();
			}
		}
		/* a flat build's last block is flushed at the end of the build */
		if (bs->lists > 0 && bs->fill[j].lanes > 0)
			FlushListBlock(bs, j);
	}
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, laid);
	pfree(order);
	pfree(start);
}

/* Lay out what the heap pass kept, and free it */
static void
FlushCoded(TvBuildState *bs)
{
	if (bs->ncoded > 0)
		LayOutCoded(bs, bs->ncoded, bs->coded_list, bs->coded_codes,
					bs->coded_factors, bs->coded_tids);
	if (bs->coded_cap > 0)
	{
		pfree(bs->coded_list);
		pfree(bs->coded_codes);
		pfree(bs->coded_factors);
		pfree(bs->coded_tids);
	}
	bs->ncoded = bs->coded_cap = 0;
}

/*
 * Parallel workers for coding the spool: max_parallel_maintenance_workers,
 * once the vectors are at least min_parallel_table_scan_size (below that,
 * starting workers costs more than they save).
 */
static int
SpoolWorkers(TvBuildState *bs, uint64 n)
{
	double		bytes = (double) n * bs->dim * sizeof(float);

	if (bytes < (double) min_parallel_table_scan_size * BLCKSZ)
		return 0;
	return max_parallel_maintenance_workers;
}

/*
 * Slots of vectors in the segment of a heap pass's workers: with workers
 * that stay, the leader reads each window into the slot they are not
 * coding (EncodeWindow)
 */
static int
WindowSlots(TvBuildState *bs)
{
	return bs->windows_stay ? 2 : 1;
}

/*
 * Vectors a heap pass collects for parallel workers to code together, a
 * window at a time with the same workers (TvEncodeWindowsBegin): whole
 * spool chunks, at most an eighth of maintenance_work_mem, when there are
 * enough for workers to pay (SpoolWorkers); otherwise one batch, coded
 * serially.  An IVF pass knows its vectors from the sampling pass, and
 * takes windows of TV_HEAP_WINDOW_BYTES with workers that stay; a flat
 * build does not know them, and an index with an expression or predicate
 * starts workers for each window (tvbuild: windows_stay): those take
 * windows of up to 128 MB, each of which must pay by itself (FlushBatch).
 * With the workers' segment (at most a quarter of maintenance_work_mem,
 * tvparallel.c) that leaves the kept codes at least half.
 */
static int
HeapWindowVectors(TvBuildState *bs)
{
	bool		small = (bs->seen > 0 && bs->windows_stay);
	double		bytes = Min(small ? (double) TV_HEAP_WINDOW_BYTES : 128.0 * 1024 * 1024,
							(double) maintenance_work_mem * 1024 / 8);

	/*
	 * a vector, its TID and its coding's outputs (which outweigh a vector
	 * of few dimensions), and no more than the sampling pass counted
	 */
	double		per_vector = sizeof(float) * bs->dim + sizeof(ItemPointerData) + CodedBytes(bs);
	double		vectors = bytes / per_vector;
	int			chunks;

	if (bs->seen > 0)
		vectors = Min(vectors, (double) bs->seen + TV_SPOOL_CHUNK);
	chunks = (int) (vectors / TV_SPOOL_CHUNK);

	/* with a parallel scan, the workers code their own rows */
	if (max_parallel_maintenance_workers <= 0 || chunks < 1 || bs->pscan != NULL ||
		SpoolWorkers(bs, small ? bs->seen : (uint64) chunks * TV_SPOOL_CHUNK) == 0)
		return TV_BUILD_BATCH;
	return chunks * TV_SPOOL_CHUNK;
}

/*
 * Memory a heap pass holds beside the codes it keeps: a window for workers
 * and their shared segment (a serial batch is too small to count), or the
 * queues of a parallel scan
 */
static double
HeapWindowBytes(TvBuildState *bs)
{
	int			n = HeapWindowVectors(bs);

	/* a parallel scan's queues */
	if (bs->pscan != NULL)
		return (double) TvParallelScanBytes(bs->scan_workers, maintenance_work_mem);
	if (n == TV_BUILD_BATCH)
		return 0;
	return (double) n * (sizeof(float) * bs->dim + sizeof(ItemPointerData) + CodedBytes(bs)) +
		(double) TvParallelSegmentBytes(bs->codec, Max(bs->lists, 1), TV_SPOOL_CHUNK,
										maintenance_work_mem, n, WindowSlots(bs));
}

/*
 * Keep one coded vector of the heap pass.  False when there is no room in
 * maintenance_work_mem beside the sample and the blocks being filled: then
 * what was kept is laid out and the rest of the pass writes its blocks as
 * they fill, the lists' blocks interleaved.
 */
static bool
KeepCoded(TvBuildState *bs, int j, const TvFactors *factors, const ItemPointerData *tid)
{
	if (!bs->coded_on)
		return false;
	if (bs->ncoded == bs->coded_cap)
	{
		double		budget = (double) maintenance_work_mem * 1024 -
			FixedBuildBytes(bs, bs->nsamples) - HeapWindowBytes(bs);
		uint64		cap = Max(bs->coded_cap * 2, 1024);

		/* the sampling pass counted them: room for all at once */
		if (bs->coded_cap == 0 && bs->seen > 0)
			cap = Max(cap, bs->seen + TV_SPOOL_CHUNK);
		if (budget < (double) cap * CodedBytes(bs))
			cap = (uint64) Max(budget / CodedBytes(bs), 0);
		if (cap <= bs->coded_cap && bs->lists == 0)
		{
			/* flat: the rest goes in blocks in the order it comes */
			FlushCoded(bs);
			bs->coded_on = false;
			return false;
		}
		if (cap <= bs->coded_cap)
		{
			/* the sampling pass counted the vectors: say what would have fit */
			double		need = MemoryNeedMB(bs, CodedBytes(bs), 0);

			/* with workers, their window (an eighth) and segment come on top */
			if (HeapWindowVectors(bs) > TV_BUILD_BATCH)
			{
				double		base = need;

				for (int i = 0; i < 4; i++)
					need = ceil((base + TvParallelSegmentBytes(bs->codec, Max(bs->lists, 1),
															   TV_SPOOL_CHUNK,
															   (int) Min(need * 1024, MAX_KILOBYTES),
															   bs->seen + TV_SPOOL_CHUNK,
															   WindowSlots(bs)) /
								 (1024.0 * 1024.0)) * 8 / 7);
			}
			else if (bs->pscan != NULL)
				need += ceil((double) TvParallelScanBytes(bs->scan_workers,
														  (int) Min(need * 1024, MAX_KILOBYTES)) /
							 (1024.0 * 1024.0));

			ereport(NOTICE,
					(errmsg("turbo index \"%s\" interleaves the blocks of its lists after " UINT64_FORMAT " vectors",
							RelationGetRelationName(bs->index), bs->ncoded),
					 errdetail("Not even the codes of its " UINT64_FORMAT " vectors fit in maintenance_work_mem (%d kB), so list scans read more pages.",
							   bs->seen, maintenance_work_mem),
					 errhint("Set maintenance_work_mem to %.0f MB or more and REINDEX.", need)));
			FlushCoded(bs);
			bs->coded_on = false;
			return false;
		}
		if (bs->coded_cap == 0)
		{
			bs->coded_list = AllocBuildArray(sizeof(int) * cap);
			bs->coded_codes = AllocBuildArray((Size) cap * bs->codec->code_bytes);
			bs->coded_factors = AllocBuildArray(sizeof(TvFactors) * cap);
			bs->coded_tids = AllocBuildArray(sizeof(ItemPointerData) * cap);
		}
		else
		{
			bs->coded_list = GrowBuildArray(bs->coded_list, sizeof(int) * cap);
			bs->coded_codes = GrowBuildArray(bs->coded_codes, (Size) cap * bs->codec->code_bytes);
			bs->coded_factors = GrowBuildArray(bs->coded_factors, sizeof(TvFactors) * cap);
			bs->coded_tids = GrowBuildArray(bs->coded_tids, sizeof(ItemPointerData) * cap);
		}
		bs->coded_cap = cap;
	}
	bs->coded_list[bs->ncoded] = j;
	memcpy(bs->coded_codes + bs->ncoded * bs->codec->code_bytes, bs->code,
		   bs->codec->code_bytes);
	bs->coded_factors[bs->ncoded] = *factors;
	bs->coded_tids[bs->ncoded] = *tid;
	bs->ncoded++;
	return true;
}

/*
 * Encode one vector for list j (0 when flat) and put it in j's block, or
 * keep it to lay the lists out at the end of the pass
 */
static void
PutVector(TvBuildState *bs, int j, const float *x, const ItemPointerData *tid)
{
	TvFactors	factors;
	const float *centroid = NULL;

	if (bs->lists > 0 && bs->residual)
		centroid = bs->centroids + (Size) j * bs->dim;
	/* BuildVector left out what cannot be indexed */
	if (!TvEncodeVector(bs->codec, bs->metric, centroid, x, bs->code, &factors, bs->work))
		elog(ERROR, "turbo build met a vector it cannot index");
	if (!KeepCoded(bs, j, &factors, tid))
		PutCoded(bs, j, bs->code, &factors, tid);
}

/*
 * Assign n vectors (n * dim floats) to their lists, encode them and put
 * them in the blocks being filled.
 */
static void
AddVectors(TvBuildState *bs, const float *xs, const ItemPointerData *tids, int n)
{
	int			nearest[TV_BUILD_BATCH];

	Assert(n <= TV_BUILD_BATCH);
	if (bs->codec == NULL)
		StartCodec(bs, bs->dim);
	if (bs->fill == NULL)
		StartFill(bs);
	if (bs->lists > 0)
		TvAssignLists(bs->assigner, xs, n, nearest);
	else
		memset(nearest, 0, sizeof(int) * n);

	for (int i = 0; i < n; i++)
		PutVector(bs, nearest[i], xs + (Size) i * bs->dim, &tids[i]);
	/* coded, whether put in blocks or kept to lay out later */
	bs->encoded += n;
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
								 (int64) bs->encoded);
	/* crossed a multiple of 1024 */
	if ((bs->encoded >> 10) != ((bs->encoded - n) >> 10))
		TvTestBuildDelay();
}

/*
 * Take the results of the window the workers were given last (waiting for
 * them): its TIDs become the pending window's
 */
static void
CollectWindow(TvBuildState *bs)
{
	ItemPointerData *tids = bs->pending_tids;

	Assert(bs->pending_n == 0);
	if (bs->coding_n == 0)
		return;
	(void) TvEncodeWindowsCollect(bs->windows, bs->pending_list, bs->pending_codes,
								  bs->pending_factors);
	bs->pending_tids = bs->coding_tids;
	bs->coding_tids = tids;
	bs->pending_n = bs->coding_n;
	bs->coding_n = 0;
}

/*
 * Put or keep each vector of the pending window in heap order, exactly as
 * AddVectors would have
 */
static void
PutWindow(TvBuildState *bs)
{
	int			code_bytes = bs->codec->code_bytes;
	int			n = bs->pending_n;

	for (int k = 0; k < n; k++)
	{
		memcpy(bs->code, bs->pending_codes + (Size) k * code_bytes, code_bytes);
		if (!KeepCoded(bs, bs->pending_list[k], &bs->pending_factors[k],
					   &bs->pending_tids[k]))
			PutCoded(bs, bs->pending_list[k], bs->code, &bs->pending_factors[k],
					 &bs->pending_tids[k]);
	}
	bs->pending_n = 0;
	bs->encoded += n;
	bs->windowed += n;
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, (int64) bs->encoded);
}

/*
 * What coding a vector takes: the codec and the lists (residuals only
 * under lists); the caller says which vectors
 */
static void
CodingInput(TvBuildState *bs, TvEncodeInput *in)
{
	memset(in, 0, sizeof(*in));
	in->codec = bs->codec;
	in->metric = bs->metric;
	in->lists = bs->lists;
	in->residual = bs->residual && bs->lists > 0;
	in->centroids = bs->centroids;
	in->cnorms = bs->cnorms;
}

/*
 * Hand the batch, a window, to parallel workers (tvparallel.c), started
 * for the first window and kept for the rest of the pass.  The results of
 * the window before it are taken first, and put in the blocks once this
 * one is handed over, so that the workers do not wait for that.  With
 * workers that stay, the leader then reads the next window straight into
 * the segment's other slot (TvEncodeWindowsBuffer); this one's results are
 * taken once it has.
 */
static void
EncodeWindow(TvBuildState *bs)
{
	int			n = bs->batch_n;
	TvEncodeInput in;

	CodingInput(bs, &in);
	in.n = bs->batch_cap;
	in.chunk_vectors = bs->batch_cap;
	in.chunks = &bs->batch;
	in.progress_base = bs->encoded;
	in.fill_in_place = bs->windows_stay;
	if (bs->windows == NULL && !bs->windows_failed)
	{
		bs->windows = TvEncodeWindowsBegin(&in, max_parallel_maintenance_workers);
		bs->windows_failed = (bs->windows == NULL);
		if (bs->windows != NULL && bs->pending_tids == NULL)
		{
			bs->coding_tids = palloc(sizeof(ItemPointerData) * bs->batch_cap);
			bs->pending_tids = palloc(sizeof(ItemPointerData) * bs->batch_cap);
			bs->pending_list = palloc(sizeof(int) * bs->batch_cap);
			bs->pending_codes = palloc_extended((Size) bs->codec->code_bytes * bs->batch_cap,
												MCXT_ALLOC_HUGE);
			bs->pending_factors = palloc(sizeof(TvFactors) * bs->batch_cap);
		}
	}
	if (bs->windows == NULL)
	{
		for (int i = 0; i < n; i += TV_BUILD_BATCH)
			AddVectors(bs, bs->batch + (Size) i * bs->dim, &bs->batch_tids[i],
					   Min(TV_BUILD_BATCH, n - i));
		return;
	}

	CollectWindow(bs);
	in.n = n;
	in.progress_base = bs->encoded + bs->pending_n;
	TvEncodeWindowsSubmit(bs->windows, &in);
	memcpy(bs->coding_tids, bs->batch_tids, sizeof(ItemPointerData) * n);
	bs->coding_n = n;
	PutWindow(bs);
	if (!bs->windows_stay)
	{
		int			launched;

		CollectWindow(bs);
		PutWindow(bs);
		launched = TvEncodeWindowsEnd(bs->windows);
		bs->windows = NULL;
		bs->window_workers = Max(bs->window_workers, launched);
	}
	else if (TvEncodeWindowsBuffer(bs->windows) != NULL &&
			 TvEncodeWindowsCapacity(bs->windows) >= (uint64) bs->batch_cap)
	{
		/* the next window goes in the slot the workers are not coding */
		bs->batch = TvEncodeWindowsBuffer(bs->windows);
	}
}

/* The end of a heap pass: the last window's results, and the workers go */
static void
EndWindows(TvBuildState *bs)
{
	if (bs->windows != NULL)
	{
		int			launched;

		CollectWindow(bs);
		PutWindow(bs);
		launched = TvEncodeWindowsEnd(bs->windows);
		bs->windows = NULL;
		bs->window_workers = Max(bs->window_workers, launched);
		/* it may have been a slot of their segment, which is gone */
		bs->batch = NULL;
		bs->batch_n = 0;
	}
	if (bs->windowed > 0)
		elog(DEBUG1, "turbo index \"%s\": " UINT64_FORMAT " vectors coded with %d parallel workers",
			 RelationGetRelationName(bs->index), bs->windowed, bs->window_workers);
}

static void
FlushBatch(TvBuildState *bs)
{
	if (bs->batch_n == 0)
		return;
	if (bs->fill == NULL)
		StartFill(bs);
	/*
	 * a window for workers (once they are started, or when the pass has
	 * enough vectors for them); else batches as always
	 */
	if (bs->batch_cap > TV_BUILD_BATCH &&
		(bs->windows != NULL ||
		 SpoolWorkers(bs, (bs->seen > 0 && bs->windows_stay) ? bs->seen : (uint64) bs->batch_n) > 0))
		EncodeWindow(bs);
	else
	{
		for (int i = 0; i < bs->batch_n; i += TV_BUILD_BATCH)
			AddVectors(bs, bs->batch + (Size) i * bs->dim, &bs->batch_tids[i],
					   Min(TV_BUILD_BATCH, bs->batch_n - i));
	}
	bs->batch_n = 0;
}

/* A vector a parallel worker coded in the encoding pass */
static void
CodedRecord(const TvScanRecord *rec, void *arg)
{
	TvBuildState *bs = (TvBuildState *) arg;

	RecordDimension(bs, rec);
	if (bs->codec == NULL)
		StartCodec(bs, rec->dim);
	if (rec->code_bytes != bs->codec->code_bytes)
		elog(ERROR, "turbo build received codes of %d bytes from a parallel worker",
			 rec->code_bytes);
	if (bs->fill == NULL)
		StartFill(bs);
	memcpy(bs->code, rec->code, rec->code_bytes);
	if (!KeepCoded(bs, rec->list, &rec->factors, &rec->tid))
		PutCoded(bs, rec->list, bs->code, &rec->factors, &rec->tid);
	bs->encoded++;
	if ((bs->encoded & 1023) == 0)
	{
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, (int64) bs->encoded);
		TvTestBuildDelay();
	}
}

/* Encoding pass over the heap: vectors go through the batch */
static void
BuildCallback(Relation index, ItemPointer tid, Datum *values, bool *isnull,
			  bool tupleIsAlive, void *state)
{
	TvBuildState *bs = (TvBuildState *) state;
	float	   *x;
	int			dim;

	DrainWorkers(bs, CodedRecord);
	if (isnull[0])
		return;

	x = BuildVector(bs, index, values[0], &dim);
	if (x != NULL)
	{
		if (bs->batch == NULL)
		{
			if (bs->codec == NULL)
				StartCodec(bs, dim);
			bs->batch_cap = HeapWindowVectors(bs);
			bs->batch = palloc_extended(sizeof(float) * bs->batch_cap * dim, MCXT_ALLOC_HUGE);
			bs->batch_tids = palloc(sizeof(ItemPointerData) * bs->batch_cap);
		}
		memcpy(bs->batch + (Size) bs->batch_n * dim, x, sizeof(float) * dim);
		bs->batch_tids[bs->batch_n++] = *tid;
		if (bs->batch_n == bs->batch_cap)
			FlushBatch(bs);
	}
	MemoryContextReset(bs->tmpCtx);
}

/*
 * Encoding from the spool: pick every vector's list and code it (with
 * parallel workers when it pays, tvparallel.c), then lay the lists out.
 */
static void
EncodeSpool(TvBuildState *bs)
{
	int			nchunks = 0;
	SpoolChunk **chunks;
	float	  **vectors;
	uint64		n = 0;
	int		   *listof;
	uint8	   *codes;
	TvFactors  *factors;
	ItemPointerData *tids;
	TvEncodeInput in;
	int			launched;
	int			code_bytes = bs->codec->code_bytes;

	for (SpoolChunk *c = bs->spool_head; c != NULL; c = c->next)
		nchunks++;
	chunks = palloc(sizeof(SpoolChunk *) * Max(nchunks, 1));
	vectors = palloc(sizeof(float *) * Max(nchunks, 1));
	nchunks = 0;
	for (SpoolChunk *c = bs->spool_head; c != NULL; c = c->next)
	{
		/* every chunk but the last is full, so vector k is in chunk k / CHUNK */
		Assert(c->next == NULL || c->n == TV_SPOOL_CHUNK);
		vectors[nchunks] = c->vectors;
		chunks[nchunks++] = c;
		n += c->n;
	}

	listof = AllocBuildArray(sizeof(int) * Max(n, 1));
	codes = AllocBuildArray((Size) code_bytes * Max(n, 1));
	factors = AllocBuildArray(sizeof(TvFactors) * Max(n, 1));
	CodingInput(bs, &in);
	in.n = n;
	in.chunk_vectors = TV_SPOOL_CHUNK;
	in.chunks = vectors;
	in.progress_base = 0;
	launched = TvEncodeSpooled(&in, SpoolWorkers(bs, n), listof, codes, factors);
	elog(DEBUG1, "turbo index \"%s\": " UINT64_FORMAT " vectors coded with %d parallel workers",
		 RelationGetRelationName(bs->index), n, launched);

	tids = AllocBuildArray(sizeof(ItemPointerData) * Max(n, 1));
	for (uint64 k = 0; k < n; k++)
		tids[k] = chunks[k / TV_SPOOL_CHUNK]->tids[k % TV_SPOOL_CHUNK];
	LayOutCoded(bs, n, listof, codes, factors, tids);

	pfree(listof);
	pfree(tids);
	pfree(codes);
	pfree(factors);
	FreeSpool(bs);
	pfree(chunks);
	pfree(vectors);
}

/*
 * The flat layout from the spool, when automatic lists chose it after the
 * sampling pass: the same blocks in the same (TID) order as a serial heap
 * pass, whatever order a parallel scan spooled the vectors in
 */
static void
EncodeSpoolFlat(TvBuildState *bs)
{
	uint64		n = bs->spooled;
	SpoolChunk **chunks = palloc_extended(sizeof(SpoolChunk *) * Max(n / TV_SPOOL_CHUNK + 1, 1),
										  MCXT_ALLOC_HUGE);
	ItemPointerData *tids = palloc_extended(sizeof(ItemPointerData) * Max(n, 1), MCXT_ALLOC_HUGE);
	uint64	   *order = palloc_extended(sizeof(uint64) * Max(n, 1), MCXT_ALLOC_HUGE);
	float	   *batch = palloc(sizeof(float) * TV_BUILD_BATCH * bs->dim);
	ItemPointerData btids[TV_BUILD_BATCH];
	int			nchunks = 0;
	uint64		k = 0;

	for (SpoolChunk *c = bs->spool_head; c != NULL; c = c->next)
	{
		/* every chunk but the last is full, so vector k is in chunk k / CHUNK */
		Assert(c->next == NULL || c->n == TV_SPOOL_CHUNK);
		chunks[nchunks++] = c;
		for (int i = 0; i < c->n; i++, k++)
		{
			tids[k] = c->tids[i];
			order[k] = k;
		}
	}
	Assert(k == n);
	SortByTid(order, n, tids);

	for (uint64 i = 0; i < n; i += TV_BUILD_BATCH)
	{
		int			m = (int) Min((uint64) TV_BUILD_BATCH, n - i);

		for (int b = 0; b < m; b++)
		{
			uint64		v = order[i + b];

			memcpy(batch + (Size) b * bs->dim,
				   chunks[v / TV_SPOOL_CHUNK]->vectors + (Size) (v % TV_SPOOL_CHUNK) * bs->dim,
				   sizeof(float) * bs->dim);
			btids[b] = tids[v];
		}
		AddVectors(bs, batch, btids, m);
		CHECK_FOR_INTERRUPTS();
	}
	FreeSpool(bs);
	pfree(chunks);
	pfree(tids);
	pfree(order);
	pfree(batch);
}

/*
 * Parallel workers for a heap scan of the build: max_parallel_maintenance_workers
 * when the table, TOAST included (vectors are mostly out of line), has at
 * least min_parallel_table_scan_size pages.  None for temporary tables,
 * which workers cannot read, and for indexes on expressions or partial
 * indexes, whose expressions the build does not check for parallel safety.
 */
static int
ScanWorkers(Relation heap, IndexInfo *indexInfo)
{
	double		pages;

	if (max_parallel_maintenance_workers <= 0 || IsInParallelMode() ||
		RelationUsesLocalBuffers(heap) ||
		indexInfo->ii_Expressions != NIL || indexInfo->ii_Predicate != NIL)
		return 0;
	pages = RelationGetNumberOfBlocks(heap);
	if (OidIsValid(heap->rd_rel->reltoastrelid))
	{
		Relation	toast = table_open(heap->rd_rel->reltoastrelid, AccessShareLock);

		pages += RelationGetNumberOfBlocks(toast);
		table_close(toast, AccessShareLock);
	}
	if (pages < (double) min_parallel_table_scan_size)
		return 0;
	return max_parallel_maintenance_workers;
}

/*
 * table_index_build_scan, shared with parallel workers when the table is
 * big enough (ScanWorkers); the leader takes part.  The workers send
 * consume their vectors (the sampling pass) or, with encode, their codes
 * under the build's lists.
 */
static double
BuildScan(TvBuildState *bs, Relation heap, Relation index, IndexInfo *indexInfo,
		  IndexBuildCallback callback, TvScanConsumer consume, bool encode)
{
	double		reltuples;
	TvEncodeInput in;
	uint64		unread;
	int			workers;

	CodingInput(bs, &in);
	/*
	 * The encoding pass over vectors that lie in their rows: the leader
	 * reads them, which costs little beside coding them, and workers code
	 * windows of them (EncodeWindow).  Workers that read the heap would
	 * first have to touch every page of shared buffers they read, which on
	 * some virtual machines costs more than the coding.
	 */
	if (encode && bs->spool_declined && bs->lists > 0)
		workers = 0;
	else
		workers = ScanWorkers(heap, indexInfo);
	bs->pscan = TvParallelScanBegin(heap, index, indexInfo, workers,
									encode ? &in : NULL, bs->bits, bs->seed);
	if (bs->pscan == NULL)
	{
		bs->scan_workers = 0;
		return table_index_build_scan(heap, index, indexInfo, true, true,
									  callback, bs, NULL);
	}
	bs->scan_workers = TvParallelScanWorkers(bs->pscan);
	bs->own_rows = 0;
	bs->filter_tau = PG_UINT64_MAX;
	if (encode)
		bs->coded_on = true;
	reltuples = table_index_build_scan(heap, index, indexInfo, true, true,
									   callback, bs, TvParallelScanDesc(bs->pscan));
	reltuples += TvParallelScanEnd(bs->pscan, indexInfo, consume, bs, &unread);
	/* the vectors the workers counted without sending them */
	bs->seen += unread;
	bs->pscan = NULL;
	elog(DEBUG1, "turbo index \"%s\": table scanned by the leader and %d parallel workers",
		 RelationGetRelationName(index), bs->scan_workers);
	return reltuples;
}

/*
 * Sampling pass and training; afterwards bs->lists is what the index will
 * have (automatic lists: from the vectors the pass counted)
 */
static void
TrainLists(TvBuildState *bs, Relation heap, Relation index, IndexInfo *indexInfo)
{
	TvKmeansInput in;
	int			want;

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE, TV_PHASE_SAMPLE);
	if (VectorsInRows(heap, indexInfo))
	{
		bs->spool_off = true;
		bs->spool_declined = true;
		elog(DEBUG1, "turbo index \"%s\": the vectors lie in their rows, so the build reads them twice",
			 RelationGetRelationName(index));
	}
	bs->sample_tau = PG_UINT64_MAX;
	bs->reltuples = BuildScan(bs, heap, index, indexInfo, SampleCallback,
							  SampleRecord, false);

	if (bs->auto_lists)
	{
		/* as many as fit beside the blocks being filled, should memory be tiny */
		bs->lists = TvAutoLists((double) bs->seen, bs->dim);
		if (bs->lists > 0)
			bs->lists = (int) Min((double) bs->lists,
								  (double) maintenance_work_mem * 1024 / 2 / bs->block_bytes);
		elog(DEBUG1, "turbo index \"%s\": %d lists for " UINT64_FORMAT " vectors of %d dimensions",
			 RelationGetRelationName(index), bs->lists, bs->seen, bs->dim);
	}
	if (bs->lists > 0 && bs->nsamples < bs->lists)
	{
		if (bs->seen < (uint64) bs->lists)
			ereport(NOTICE,
					(errmsg("turbo index \"%s\" has %d lists instead of %d",
							RelationGetRelationName(index), bs->nsamples, bs->lists),
					 errdetail("The table has only %d vectors to train lists on.", bs->nsamples),
					 errhint("REINDEX the index once the table holds its data.")));
		else
			ereport(NOTICE,
					(errmsg("turbo index \"%s\" has %d lists instead of %d",
							RelationGetRelationName(index), bs->nsamples, bs->lists),
					 errdetail("maintenance_work_mem (%d kB) holds only %d vectors to train lists on.",
							   maintenance_work_mem, bs->nsamples),
					 errhint("Increase maintenance_work_mem or use fewer lists.")));
		bs->lists = bs->nsamples;
	}
	if (bs->lists == 0)
	{
		if (bs->samples)
			pfree(bs->samples);
		if (bs->sample_hash)
			pfree(bs->sample_hash);
		bs->samples = NULL;
		bs->sample_hash = NULL;
		return;
	}

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE, TV_PHASE_KMEANS);
	want = (int) Min((double) bs->lists * TV_SAMPLES_PER_LIST, (double) PG_INT32_MAX);
	FinishSample(bs, want);
	in.dim = bs->dim;
	in.nsamples = bs->nsamples;
	in.samples = bs->samples;
	in.metric = bs->metric;
	in.seed = bs->seed;
	in.progress = true;
	in.nworkers = max_parallel_maintenance_workers;
	bs->centroids = TvKmeans(&in, bs->lists, TV_KMEANS_ITERATIONS);
	bs->cnorms = TvCentroidNorms(bs->centroids, bs->lists, bs->dim);
	bs->assigner = TvListAssignerCreate(bs->centroids, bs->cnorms, bs->lists, bs->dim,
										bs->metric);
	pfree(bs->samples);
	bs->samples = NULL;

	bs->entries = palloc0(sizeof(TvListEntry) * bs->lists);
	/* the list area comes first; it is filled in at the end */
	StreamWrite(bs, NULL, TvListAreaBytes(bs->lists, bs->dim));
}

/*
 * Whether the table's vectors lie in their rows uncompressed (pgvector's
 * vector stored plain, or inline below the TOAST threshold; short real[]
 * arrays), judged from the first row with a value.  An IVF build then
 * reads the table twice instead of spooling the vectors: reading a row
 * again costs less than the first touches of a spool as big as the table,
 * which some machines (VMs) make slow.  TOASTed vectors, out of line or
 * compressed, are spooled while they fit: fetching them twice costs more.
 */
static bool
VectorsInRows(Relation heap, IndexInfo *indexInfo)
{
	AttrNumber	attnum = indexInfo->ii_IndexAttrNumbers[0];
	TableScanDesc scan;
	TupleTableSlot *slot;
	bool		inrow = false;

	/* an expression's value is computed, not read from the row */
	if (attnum <= 0 || TupleDescAttr(RelationGetDescr(heap), attnum - 1)->attlen != -1)
		return false;
	slot = table_slot_create(heap, NULL);
	scan = table_beginscan_strat(heap, SnapshotAny, 0, NULL, true, false);
	for (int rows = 0; rows < 64 && table_scan_getnextslot(scan, ForwardScanDirection, slot); rows++)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, attnum, &isnull);

		if (!isnull)
		{
			struct varlena *v = (struct varlena *) DatumGetPointer(value);

			inrow = !VARATT_IS_EXTERNAL(v) && !VARATT_IS_COMPRESSED(v);
			break;
		}
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return inrow;
}

/* Write the IVF list area into the pages that already hold its bytes */
static void
WriteListArea(TvBuildState *bs)
{
	Size		len = TvListAreaBytes(bs->lists, bs->dim);
	char	   *area = palloc0(len);
	Size		done = 0;

	memcpy(area, bs->entries, sizeof(TvListEntry) * bs->lists);
	memcpy(area + TvCentroidsOffset(bs->lists), bs->centroids,
		   sizeof(float) * bs->lists * bs->dim);
	while (done < len)
	{
		BlockNumber blkno = TV_FIRST_DATA_BLKNO + done / TV_PAGE_PAYLOAD;
		Size		n = Min(len - done, TV_PAGE_PAYLOAD);
		Buffer		buf = ReadBuffer(bs->index, blkno);

		LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
		memcpy(TvPagePayload(BufferGetPage(buf)), area + done, n);
		MarkBufferDirty(buf);
		UnlockReleaseBuffer(buf);
		done += n;
	}
	pfree(area);
}

/* Write the metapage into an already allocated, locked buffer */
static void
WriteMetaPage(Buffer metabuf, TvBuildState *bs)
{
	Page		page = BufferGetPage(metabuf);
	TvMetaPage	meta;

	TvInitMetaPage(page, bs->bits, bs->metric, bs->seed);
	meta = TvPageGetMeta(page);
	/* rows that were all NULL or zero under cosine fixed no dimension */
	meta->dim = bs->codec ? bs->dim : 0;
	meta->block_bytes = bs->block_bytes;
	meta->nslots = bs->nslots;
	meta->free_hint = bs->nslots / TV_LANES;
	meta->change_count = 1;
	meta->ndatapages = bs->ndatapages;
	meta->lists = bs->lists;
	meta->list_area = bs->lists > 0 ? TvListAreaBytes(bs->lists, bs->dim) : 0;
	meta->flags = (bs->lists > 0 && bs->residual) ? TV_META_RESIDUAL : 0;
	MarkBufferDirty(metabuf);
}

IndexBuildResult *
tvbuild(Relation heap, Relation index, IndexInfo *indexInfo)
{
	IndexBuildResult *result;
	TvBuildState bs;
	Buffer		metabuf;

	if (RelationGetNumberOfBlocks(index) != 0)
		elog(ERROR, "index \"%s\" already contains data",
			 RelationGetRelationName(index));

	MemSet(&bs, 0, sizeof(bs));
	bs.index = index;
	bs.bits = TvGetBits(index);
	bs.lists = TvGetLists(index);
	bs.auto_lists = (bs.lists < 0);
	bs.residual = TvGetResidual(index);
	bs.metric = TvGetMetric(index);
	bs.seed = TV_CODEC_DEFAULT_SEED;
	bs.toarray = TvGetToArrayProc(index, CurrentMemoryContext);

	/*
	 * Workers that code a heap pass's windows keep the leader in parallel
	 * mode, in which an index expression or predicate (user code, which may
	 * for one call set_config) could fail: with those, each window has its
	 * own workers
	 */
	bs.windows_stay = (indexInfo->ii_Expressions == NIL &&
					   indexInfo->ii_Predicate == NIL);
	bs.tmpCtx = AllocSetContextCreate(CurrentMemoryContext,
									  "turbovec build temporary context",
									  ALLOCSET_DEFAULT_SIZES);
	TvInitDataPage(bs.page.data);

	/* block 0 is the metapage; it gets its contents at the end */
	metabuf = TvNewDataBuffer(index, MAIN_FORKNUM);
	Assert(BufferGetBlockNumber(metabuf) == TV_METAPAGE_BLKNO);
	LockBuffer(metabuf, BUFFER_LOCK_UNLOCK);

	if (bs.lists != 0)
		TrainLists(&bs, heap, index, indexInfo);
	if (bs.codec != NULL && bs.fill == NULL)
		StartFill(&bs);

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE, TV_PHASE_ENCODE);
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, 0);
	if (bs.lists > 0 && bs.spool_off && !bs.spool_declined)
	{
		/* whole spool chunks, the codes, and the parallel segment */
		double		per_vector = sizeof(float) * bs.dim + sizeof(ItemPointerData) + CodedBytes(&bs);
		double		base = MemoryNeedMB(&bs, per_vector, (double) TV_SPOOL_CHUNK * per_vector);
		double		need = base;

		/* the segment grows with maintenance_work_mem: settle on a size */
		for (int i = 0; i < 4 && max_parallel_maintenance_workers > 0; i++)
			need = base + ceil(((double) TvParallelSegmentBytes(bs.codec, bs.lists, TV_SPOOL_CHUNK,
																(int) Min(need * 1024, MAX_KILOBYTES),
																bs.seen, 1) +
								(double) TvParallelScanBytes(bs.scan_workers,
															 (int) Min(need * 1024, MAX_KILOBYTES))) /
							   (1024.0 * 1024.0));
		ereport(NOTICE,
				(errmsg("turbo index \"%s\" reads its table twice", RelationGetRelationName(index)),
				 errdetail("Its " UINT64_FORMAT " vectors do not fit in maintenance_work_mem (%d kB), so the build reads them again.",
						   bs.seen, maintenance_work_mem),
				 errhint("With maintenance_work_mem at %.0f MB or more the build reads the table once.",
						 need)));
	}
	if (bs.lists > 0 && !bs.spool_off)
	{
		/* every vector of the sampling pass is in the spool */
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_TOTAL,
									 (int64) bs.seen);
		EncodeSpool(&bs);
	}
	else if (bs.auto_lists && bs.spool_head != NULL)
	{
		/* automatic lists chose the flat layout: code the spool in heap order */
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_TOTAL,
									 (int64) bs.seen);
		EncodeSpoolFlat(&bs);
	}
	else
	{
		/* the planner's row estimate: the best total known before the scan */
		if (heap->rd_rel->reltuples > 0)
			pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_TOTAL,
										 (int64) heap->rd_rel->reltuples);
		/*
		 * IVF: keep the codes to lay the lists out in order, while they fit;
		 * flat, with parallel workers, to put the rows in TID order
		 */
		bs.coded_on = (bs.lists > 0);
		bs.reltuples = BuildScan(&bs, heap, index, indexInfo, BuildCallback,
								 CodedRecord, true);
		FlushBatch(&bs);
		EndWindows(&bs);
		FlushCoded(&bs);
	}

	if (bs.lists > 0)
	{
		for (int j = 0; j < bs.lists; j++)
			if (bs.fill[j].lanes > 0)
				FlushListBlock(&bs, j);
		bs.nslots = bs.nblocks * TV_LANES;
	}
	else if (bs.fill && bs.fill[0].lanes > 0)
		FlushBlock(&bs, &bs.fill[0]);
	if (bs.page_fill > 0)
		FlushPage(&bs);
	if (bs.lists > 0)
		WriteListArea(&bs);

	LockBuffer(metabuf, BUFFER_LOCK_EXCLUSIVE);
	WriteMetaPage(metabuf, &bs);
	UnlockReleaseBuffer(metabuf);

	if (RelationNeedsWAL(index))
		log_newpage_range(index, MAIN_FORKNUM, 0,
						  RelationGetNumberOfBlocks(index), true);

	MemoryContextDelete(bs.tmpCtx);

	/* the worker makes the resident copy once this index is committed */
	TvResidentWakeWorker(MyDatabaseId);

	result = (IndexBuildResult *) palloc(sizeof(IndexBuildResult));
	result->heap_tuples = bs.reltuples;
	result->index_tuples = bs.indtuples;
	return result;
}

/*
 * The init fork of an unlogged index: a metapage with no vectors.  An IVF
 * index starts flat: there is nothing to train lists on.
 */
void
tvbuildempty(Relation index)
{
	int			bits = TvGetBits(index);
	TvMetric	metric = TvGetMetric(index);
	Buffer		metabuf = TvNewDataBuffer(index, INIT_FORKNUM);

	START_CRIT_SECTION();
	TvInitMetaPage(BufferGetPage(metabuf), bits, metric, TV_CODEC_DEFAULT_SEED);
	MarkBufferDirty(metabuf);
	log_newpage_buffer(metabuf, true);
	END_CRIT_SECTION();
	UnlockReleaseBuffer(metabuf);
}
