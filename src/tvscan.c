/*
 * tvscan.c
 *	  ORDER BY distance scans of a turbo index: score every code, keep the
 *	  best candidates, re-rank them on exact distances from the table rows.
 *
 * A scan works in windows.  The first window is the turbovec.candidates
 * best lanes by estimated distance; they are fetched from the table under
 * the scan's snapshot, their exact distances computed with the opclass's
 * distance function, and returned in exact order.  If the executor asks for
 * more (a WHERE clause filtered rows out, or LIMIT exceeds the window), the
 * next window takes the best lanes not seen in an earlier window, twice as
 * many, until the index is exhausted or the scan has taken
 * turbovec.max_scan_tuples candidates.  Rows are thus in exact distance
 * order within each window; windows follow each other in estimated order,
 * so a later window can hold a row nearer than one already returned.
 * turbovec.iterative_scan = strict_order skips such a row and keeps the
 * output in distance order; relaxed_order returns it.  (The executor's
 * reorder queue cannot do this for us: it needs, with each row, a lower
 * bound on the distance of every row still to come, and estimates are no
 * bound.)
 *
 * In the IVF layout a window scores only the turbovec.probes lists whose
 * centroids are nearest the query.  When those lists run out of unseen
 * lanes the scan probes twice as many lists, so a filtered query keeps
 * finding rows.
 *
 * Candidates are remembered as (estimate, TID) and no buffer pin is held
 * between calls.  That is safe only under an MVCC snapshot: a TID that
 * VACUUM removes and the heap reuses belongs to a row our snapshot cannot
 * see, so the heap fetch skips it.  Other snapshots are refused.
 */
#include "postgres.h"

#include <float.h>

#include "access/relscan.h"
#include "catalog/pg_class.h"
#include "access/tableam.h"
#include "catalog/index.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/float.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "turbovec.h"
#include "tvresident.h"

/* How far ahead the resident scan prefetches */
#define TV_PREFETCH_BLOCKS		4

/*
 * Lists past the probed ones whose centroid distance is recomputed exactly.
 * 16 chose the same lists as 2 * probes + 32 did for every query of
 * embed768 (4,000 lists; probes 1, 3, 7, 24, 32 and 64) and Fashion-MNIST
 * (1,000 lists; probes 1, 3 and 8), with half the float centroids read.
 */
#define TV_EXACT_RANK_SPARE		16

/* Standard deviations of a refined estimate's error a batch allows for */
#define TV_REFINE_SIGMAS		6

typedef struct TvCandidate
{
	float		est;
	float		est4;			/* resident windows: est on the codes alone */
	ItemPointerData tid;
	uint64		slot;			/* block * 32 + lane */
} TvCandidate;

typedef struct TvResult
{
	double		dist;
	ItemPointerData tid;
	float		est;			/* the candidate's estimate on its codes */
} TvResult;

/* A list and its centroid's distance to the query, for ordering probes */
typedef struct ListRank
{
	float		dist;
	int			list;
} ListRank;

typedef struct TvScanOpaqueData
{
	MemoryContext scanCtx;		/* lives as long as the scan */
	MemoryContext queryCtx;		/* reset by each rescan */
	MemoryContext windowCtx;	/* reset for each window */
	TvIndexState *state;
	bool		started;
	bool		exhausted;

	/* the query */
	bool		nullquery;		/* ORDER BY col <op> NULL: no ordering */
	Datum		query;
	TvQueryLut *lut;
	float		qnorm2;			/* ||q||^2, for L2 */
	float	   *qfloats;		/* the query as given, for exact distances */

	/* windows: TIDs taken into an earlier window are not taken again */
	int			window;
	HTAB	   *seen;
	int64		taken;			/* candidates taken into windows so far */
	int64		max_taken;		/* turbovec.max_scan_tuples, or the first window */

	/* turbovec.iterative_scan = strict_order: the last distance returned */
	bool		strict;
	double		last_dist;

	/* IVF: lists in probing order, and how many are probed */
	const float *centroids;
	int		   *list_order;
	int			nordered;		/* leading entries of list_order in order */
	ListRank   *ranks;			/* the lists by distance, for list_order */
	int			nfront;			/* ranks[0..nfront) hold exact distances, */
	ListRank	front_bound;	/* and every later rank follows this one */
	int			nprobe;
	bool		residual;		/* codes of residuals: add <q, c> per list */
	const float *qlists;		/* the query the lists are ranked for */

	/* the current window, re-ranked; rows from nemit on wait for the next */
	TvResult   *results;
	int			nresults;
	int			nemit;
	int			next;

	/* the resident copy, when preloaded and ready (tvresident.c) */
	TvResidentEntry *resident;

	/*
	 * A resident window's candidates, ranked on their refinement codes and
	 * taken from the table in batches (ResidentWindow, NextWindow)
	 */
	float	   *qrot;			/* the query for tv_refine_block_ip */
	TvCandidate *pending;		/* by refined estimate, in queryCtx */
	int			npending;
	int			pendnext;		/* the next one to fetch */
	double		refine_margin;	/* TV_REFINE_SIGMAS of the window's worst error */
	float		pool_worst;		/* the window's worst estimate on the codes */
	bool		pool_full;		/* the window took as many as it could */
	bool		first_window;	/* the current window is the scan's first */

	/* fetching table rows to re-rank */
	IndexFetchTableData *fetch;
	TupleTableSlot *slot;
	IndexInfo  *indexInfo;
	EState	   *estate;
	BufferAccessStrategy bas;	/* NULL: normal buffer replacement */
	bool		bas_chosen;
} TvScanOpaqueData;

typedef TvScanOpaqueData *TvScanOpaque;

/* Total order on candidates: estimate, then TID */
static inline int
CandidateCmp(const TvCandidate *a, const TvCandidate *b)
{
	if (a->est < b->est)
		return -1;
	if (a->est > b->est)
		return 1;
	return ItemPointerCompare((ItemPointer) &a->tid, (ItemPointer) &b->tid);
}

/* Max-heap of the best candidates so far, worst at heap[0] */
typedef struct CandidateHeap
{
	TvCandidate *items;
	int			n;
	int			cap;
} CandidateHeap;

static void
HeapSiftDown(CandidateHeap *h, int i)
{
	for (;;)
	{
		int			l = 2 * i + 1;
		int			r = l + 1;
		int			m = i;
		TvCandidate tmp;

		if (l < h->n && CandidateCmp(&h->items[l], &h->items[m]) > 0)
			m = l;
		if (r < h->n && CandidateCmp(&h->items[r], &h->items[m]) > 0)
			m = r;
		if (m == i)
			return;
		tmp = h->items[i];
		h->items[i] = h->items[m];
		h->items[m] = tmp;
		i = m;
	}
}

static void
HeapOffer(CandidateHeap *h, const TvCandidate *c)
{
	if (h->n < h->cap)
	{
		int			i = h->n++;

		h->items[i] = *c;
		while (i > 0)
		{
			int			parent = (i - 1) / 2;
			TvCandidate tmp;

			if (CandidateCmp(&h->items[parent], &h->items[i]) >= 0)
				break;
			tmp = h->items[i];
			h->items[i] = h->items[parent];
			h->items[parent] = tmp;
			i = parent;
		}
	}
	else if (CandidateCmp(c, &h->items[0]) < 0)
	{
		h->items[0] = *c;
		HeapSiftDown(h, 0);
	}
}

/*
 * Offer the live lanes of one block, given its header (the bytes before its
 * codes) and the kernel's scores of its 32 lanes (unused for a NULL query).
 * The estimates of all 32 lanes are computed in one branch-free loop over
 * the block's factor arrays; only lanes that can enter the heap go further.
 * qc is <q, c> of the block's list when its codes are of residuals, else 0:
 * then <q, x> ~ qc + ipscale * score, and under cosine x is a unit vector.
 */
static void
OfferLanes(TvScanOpaque so, const char *hdr, const float *scores, uint64 block,
		   float qc, CandidateHeap *heap)
{
	uint32		live;
	float		norm[TV_LANES];
	float		ipscale[TV_LANES];
	float		est[TV_LANES];
	float		limit;
	TvMetric	metric = so->state->metric;

	memcpy(&live, hdr + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
	if (live == 0)
		return;

	if (so->nullquery)
		memset(est, 0, sizeof(est));
	else
	{
		memcpy(norm, hdr + TV_BLOCK_NORM_OFFSET, sizeof(norm));
		memcpy(ipscale, hdr + TV_BLOCK_IPSCALE_OFFSET, sizeof(ipscale));
		if (metric == TV_METRIC_L2)
		{
			for (int l = 0; l < TV_LANES; l++)
				est[l] = so->qnorm2 + norm[l] * norm[l] - 2 * (qc + ipscale[l] * scores[l]);
		}
		else if (metric == TV_METRIC_IP || so->residual)
		{
			for (int l = 0; l < TV_LANES; l++)
				est[l] = -(qc + ipscale[l] * scores[l]);
		}
		else
		{
			/* norm > 0 for every live cosine lane: zero vectors are not indexed */
			for (int l = 0; l < TV_LANES; l++)
				est[l] = -ipscale[l] * scores[l] / Max(norm[l], FLT_MIN);
		}
	}

	/* ties on the estimate are settled by TID, so keep equal estimates */
	limit = (heap->n < heap->cap) ? get_float4_infinity() : heap->items[0].est;
	while (live != 0)
	{
		int			lane = pg_rightmost_one_pos32(live);
		TvCandidate c;

		live &= live - 1;
		if (est[lane] > limit)
			continue;
		c.est = est[lane];
		c.slot = block * TV_LANES + lane;
		memcpy(&c.tid, hdr + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
			   sizeof(ItemPointerData));
		if (so->seen && hash_search(so->seen, &c.tid, HASH_FIND, NULL) != NULL)
			continue;
		HeapOffer(heap, &c);
		limit = (heap->n < heap->cap) ? get_float4_infinity() : heap->items[0].est;
	}
}

/* Offer the live lanes of one block whose bytes are contiguous at blk */
static void
ScoreBlock(TvScanOpaque so, const char *blk, uint64 block, float qc,
		   CandidateHeap *heap)
{
	uint32		live;
	float		scores[TV_LANES];

	memcpy(&live, blk + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
	if (live == 0)
		return;
	if (!so->nullquery)
		tv_score_block(so->lut, (const uint8 *) blk + TV_BLOCK_CODES_OFFSET, scores);
	OfferLanes(so, blk, scores, block, qc, heap);
}

/*
 * A block that crosses page boundaries, scored from the pieces each page
 * holds, so its codes are never copied out.  The kernel sums the code groups
 * lying wholly on a page where they lie; only the header (the bytes before
 * the codes) and the groups a page boundary cuts in two are copied.  Stream
 * offsets of blocks and page payloads are multiples of 8 and a group is 12
 * or 16 bytes (CODEC.md), so a boundary can fall inside a group; each
 * boundary cuts at most one.  The integer sums do not depend on how the
 * groups are split or in which order the pages come, so the scores are
 * bit for bit those of the whole block (tv_finish_sums).
 */
typedef struct SplitGroup
{
	int			group;			/* group number in the block */
	int			filled;			/* bytes of it copied so far */
	uint8		bytes[16];
} SplitGroup;

typedef struct SplitBlock
{
	uint64		off;			/* stream offset of the block */
	Size		size;			/* its bytes, the metapage's block_bytes */
	Size		left;			/* bytes of it not seen yet */
	bool		copy_header;	/* false: the caller reads it in place */
	uint32		sums[TV_LANES];
	char		header[TV_BLOCK_CODES_OFFSET];
	int			ngroups;		/* cut groups waiting for their other part */
	int			maxgroups;
	SplitGroup *groups;
} SplitBlock;

static void
SplitBlockInit(SplitBlock *sb, Size S)
{
	/* a block of S bytes crosses at most S / P + 1 page boundaries */
	sb->maxgroups = (int) (S / TV_PAGE_PAYLOAD) + 2;
	sb->groups = palloc(sizeof(SplitGroup) * sb->maxgroups);
	sb->left = 0;
}

static void
SplitBlockBegin(SplitBlock *sb, uint64 off, Size S, bool copy_header)
{
	sb->off = off;
	sb->copy_header = copy_header;
	sb->size = S;
	sb->left = S;
	sb->ngroups = 0;
	memset(sb->sums, 0, sizeof(sb->sums));
}

/* Copy part of a cut group; sum it once it is whole */
static void
SplitGroupAdd(TvScanOpaque so, SplitBlock *sb, int group, Size at,
			  const char *src, Size n)
{
	int			gb = so->state->codec->group_bytes;
	int			i;
	SplitGroup *g;

	for (i = 0; i < sb->ngroups; i++)
		if (sb->groups[i].group == group)
			break;
	if (i == sb->ngroups)
	{
		if (sb->ngroups >= sb->maxgroups)
			elog(ERROR, "turbo scan: too many cut groups in one block");
		g = &sb->groups[sb->ngroups++];
		g->group = group;
		g->filled = 0;
	}
	g = &sb->groups[i];
	Assert(at + n <= (Size) gb);
	memcpy(g->bytes + at, src, n);
	g->filled += (int) n;
	if (g->filled == gb)
	{
		tv_sum_groups(so->lut, g->bytes, group, 1, sb->sums);
		sb->groups[i] = sb->groups[--sb->ngroups];
	}
}

/*
 * Take in the part of the block that lies on the data page whose payload
 * carries stream bytes [page_start, page_start + P).  True once every byte
 * of the block has been seen.
 */
static bool
SplitBlockAdd(TvScanOpaque so, SplitBlock *sb, const char *payload,
			  uint64 page_start)
{
	uint64		lo = Max(page_start, sb->off);
	uint64		hi = Min(page_start + TV_PAGE_PAYLOAD, sb->off + sb->size);
	Size		rlo = lo - sb->off;
	Size		rhi = hi - sb->off;

	Assert(lo < hi && hi - lo <= sb->left);
	/* the header */
	if (rlo < TV_BLOCK_CODES_OFFSET && sb->copy_header)
		memcpy(sb->header + rlo, payload + (lo - page_start),
			   Min(rhi, TV_BLOCK_CODES_OFFSET) - rlo);
	/* the codes on this page, [clo, chi) counted from the first code byte */
	if (!so->nullquery && rhi > TV_BLOCK_CODES_OFFSET &&
		rlo < TV_BLOCK_CODES_OFFSET + (Size) so->state->codec->block_code_bytes)
	{
		Size		gb = so->state->codec->group_bytes;
		Size		code_bytes = so->state->codec->block_code_bytes;
		Size		clo = Max(rlo, TV_BLOCK_CODES_OFFSET) - TV_BLOCK_CODES_OFFSET;
		Size		chi = Min(rhi, TV_BLOCK_CODES_OFFSET + code_bytes) - TV_BLOCK_CODES_OFFSET;
		Size		gfirst = (clo + gb - 1) / gb;	/* first whole group */
		Size		gend = chi / gb;	/* past the last whole group */

#define CodeAt(c) (payload + (sb->off + TV_BLOCK_CODES_OFFSET + (c) - page_start))
		if (gfirst < gend)
			tv_sum_groups(so->lut, (const uint8 *) CodeAt(gfirst * gb),
						  (int) gfirst, (int) (gend - gfirst), sb->sums);
		if (clo % gb != 0)
		{
			/* the group the page starts inside */
			Size		g = clo / gb;
			Size		end = Min(chi, (g + 1) * gb);

			SplitGroupAdd(so, sb, (int) g, clo - g * gb, CodeAt(clo), end - clo);
		}
		if (chi % gb != 0 && (clo % gb == 0 || chi / gb != clo / gb))
		{
			/* the group the page ends inside, if not the one above */
			Size		g = chi / gb;
			Size		start = Max(clo, g * gb);

			SplitGroupAdd(so, sb, (int) g, start - g * gb, CodeAt(start), chi - start);
		}
#undef CodeAt
	}
	sb->left -= hi - lo;
	return sb->left == 0;
}

/*
 * Offer the lanes of a split block once all of it has been seen; hdr is
 * its header, sb->header or in place.
 */
static void
SplitBlockFinish(TvScanOpaque so, SplitBlock *sb, const char *hdr,
				 uint64 block, float qc, CandidateHeap *heap)
{
	float		scores[TV_LANES];

	Assert(sb->left == 0 && sb->ngroups == 0);
	if (!so->nullquery)
		tv_finish_sums(so->lut, sb->sums, scores);
	OfferLanes(so, hdr, scores, block, qc, heap);
}

/* What ScoreBlock adds for a list: <q, c> for residual codes, else 0 */
static float
ListOffset(TvScanOpaque so, const TvMetaPageData *meta, int list)
{
	if (!so->residual || so->nullquery)
		return 0;
	return TvCentroidDot(so->centroids, meta->dim, list, so->qlists);
}

/* The stream must fit in the data pages the metapage and the relation have */
static void
CheckStreamPages(Relation index, const TvMetaPageData *meta, uint64 nblocks)
{
	uint64		npages = TvStreamPages(meta, nblocks);

	if (npages > meta->ndatapages ||
		TV_FIRST_DATA_BLKNO + npages > RelationGetNumberOfBlocks(index))
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("turbo index \"%s\" holds " UINT64_FORMAT " slots but only %u data pages",
						RelationGetRelationName(index), meta->nslots, meta->ndatapages),
				 errhint("REINDEX the index.")));
}

pg_noreturn static void BrokenChain(Relation index, int list);
static void OrderProbes(TvScanOpaque so, int n);

static void
BrokenChain(Relation index, int list)
{
	ereport(ERROR,
			(errcode(ERRCODE_INDEX_CORRUPTED),
			 errmsg("turbo index \"%s\" has a broken chain in list %d",
					RelationGetRelationName(index), list),
			 errhint("REINDEX the index.")));
}

/*
 * One pinned, share-locked data page at a time, for walking list chains.
 * Pages are pinned through the backend's buffer hints (TvPinPage), so a
 * page found where it was last time costs no buffer mapping lookup.  When a
 * page has to be read in, the cursor reads ahead: it prefetches the pages
 * below it that the rest of a laid-out list occupies, [ra_floor, page),
 * at most TV_READAHEAD_PAGES at a time.
 */
#define TV_READAHEAD_PAGES		32

/* Pages below the current one whose payload a list walk asks the caches for */
#define TV_PREFETCH_PAGES		2

typedef struct PageCursor
{
	Relation	index;
	BufferAccessStrategy bas;
	Buffer		buf;
	BlockNumber blkno;
	Buffer	   *hints;
	BlockNumber nhints;
	BlockNumber ra_floor;		/* lowest page the list is expected on */
	BlockNumber ra_low;			/* pages from here up were prefetched */
} PageCursor;

static void
CursorInit(PageCursor *pc, TvScanOpaque so, Relation index, BlockNumber npages)
{
	pc->index = index;
	pc->bas = so->bas;
	pc->buf = InvalidBuffer;
	pc->blkno = InvalidBlockNumber;
	pc->hints = TvBufferHints(index, npages, &pc->nhints);
	pc->ra_floor = InvalidBlockNumber;
	pc->ra_low = InvalidBlockNumber;
}

/* Expect the list to continue down to page floor (InvalidBlockNumber: no guess) */
static void
CursorExpect(PageCursor *pc, BlockNumber floor)
{
	pc->ra_floor = floor;
	pc->ra_low = InvalidBlockNumber;
}

/* A page had to be read: prefetch the next pages down the list */
static void
CursorReadAhead(PageCursor *pc, BlockNumber blkno)
{
	BlockNumber from = Min(blkno, pc->ra_low);
	BlockNumber stop;

	if (pc->ra_floor == InvalidBlockNumber || effective_io_concurrency <= 0)
		return;
	stop = blkno > pc->ra_floor + TV_READAHEAD_PAGES ? blkno - TV_READAHEAD_PAGES : pc->ra_floor;
	for (BlockNumber pg = from; pg > stop;)
	{
		PrefetchBufferResult r;

		pg--;
		r = PrefetchBuffer(pc->index, MAIN_FORKNUM, pg);
		if (BufferIsValid(r.recent_buffer) && pg < pc->nhints)
			pc->hints[pg] = r.recent_buffer;
	}
	pc->ra_low = Min(from, stop);
}

/* Ask the caches for every line of a page's payload */
static inline void
PrefetchPayload(Page page)
{
	const char *payload = TvPagePayload(page);

	for (uint32 off = 0; off < TV_PAGE_PAYLOAD; off += 64)
		__builtin_prefetch(payload + off);
}

static const char *
CursorPayload(PageCursor *pc, BlockNumber blkno)
{
	if (pc->blkno != blkno)
	{
		bool		read;

		if (BufferIsValid(pc->buf))
			UnlockReleaseBuffer(pc->buf);
		pc->buf = TvPinPage(pc->index, blkno, pc->bas, pc->hints, pc->nhints, &read);
		LockBuffer(pc->buf, BUFFER_LOCK_SHARE);
		pc->blkno = blkno;
		if (read)
			CursorReadAhead(pc, blkno);

		/*
		 * A block is scored right after its page is pinned, and the hardware
		 * prefetchers stop at 4 kB pages: have the whole payload pulled at
		 * once, and those of the pages below that the list goes on to, when
		 * the hints know their buffers.  Only hints: a buffer that no longer
		 * holds its page costs a wasted prefetch, never a wrong read (nothing
		 * is read through it).
		 */
		PrefetchPayload(BufferGetPage(pc->buf));
		if (pc->ra_floor != InvalidBlockNumber)
		{
			for (BlockNumber i = 1; i <= TV_PREFETCH_PAGES && blkno >= pc->ra_floor + i; i++)
			{
				BlockNumber pg = blkno - i;

				if (pg < pc->nhints && pc->hints[pg] > 0)
					PrefetchPayload(BufferGetPage(pc->hints[pg]));
			}
		}
	}
	return TvPagePayload(BufferGetPage(pc->buf));
}

static void
CursorRelease(PageCursor *pc)
{
	if (BufferIsValid(pc->buf))
		UnlockReleaseBuffer(pc->buf);
	pc->buf = InvalidBuffer;
	pc->blkno = InvalidBlockNumber;
}

/*
 * The directory entries of the first n lists in list_order, entries[k] for
 * list_order[k].  Only those: the directory takes 16 bytes a list, and
 * copying all of it every window (64 kB at 4,000 lists) took 5 % of a
 * query's time.  An entry lies on one page (turbovec.h); pages past the
 * end read as zeros, as TvReadStream's do.
 */
static void
ReadProbedEntries(TvScanOpaque so, Relation index, int n, TvListEntry *entries)
{
	BlockNumber npages = RelationGetNumberOfBlocks(index);
	BlockNumber nhints;
	Buffer	   *hints = TvBufferHints(index, npages, &nhints);
	Buffer		buf = InvalidBuffer;

	for (int k = 0; k < n; k++)
	{
		uint64		offset = (uint64) so->list_order[k] * sizeof(TvListEntry);
		BlockNumber blkno = TV_FIRST_DATA_BLKNO + offset / TV_PAGE_PAYLOAD;

		if (BufferIsValid(buf) && BufferGetBlockNumber(buf) != blkno)
		{
			UnlockReleaseBuffer(buf);
			buf = InvalidBuffer;
		}
		if (blkno >= npages)
		{
			memset(&entries[k], 0, sizeof(TvListEntry));
			continue;
		}
		if (!BufferIsValid(buf))
		{
			bool		read;

			buf = TvPinPage(index, blkno, so->bas, hints, nhints, &read);
			LockBuffer(buf, BUFFER_LOCK_SHARE);
		}
		memcpy(&entries[k], TvPagePayload(BufferGetPage(buf)) + offset % TV_PAGE_PAYLOAD,
			   sizeof(TvListEntry));
	}
	if (BufferIsValid(buf))
		UnlockReleaseBuffer(buf);
}

/*
 * IVF: score the blocks of the probed lists, following each list's chain
 * from its tail.  The directory is read afresh, so blocks appended since
 * the last window are seen.  A build lays each list's blocks out
 * contiguously, so the chain walks down consecutive pages: the current page
 * stays pinned while the chain is on it, a block inside it is scored in
 * place, and a block across pages is assembled from the last page down, so
 * the page the previous block ends on is the one left pinned.  Only one page
 * is ever locked at a time.
 *
 * Inserts append blocks while we walk.  An insert publishes a list's new
 * tail in the same WAL record, under the same page locks, as the metapage
 * that counts the block, and releases the metapage last (replay on a
 * standby likewise).  So the metapage read after the directory counts
 * every block the directory can reach: with that count, a link past the
 * end, a chain longer than the index or a block of another list is real
 * damage, never a race.  Blocks never move to another list or change
 * their links, so a chain read this way stays valid while it is walked.
 */
static void
CollectListCandidates(IndexScanDesc scan, const TvMetaPageData *meta, CandidateHeap *heap)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;
	Relation	index = scan->indexRelation;
	TvMetaPageData now;
	uint64		nblocks;
	Size		S = meta->block_bytes;
	TvListEntry *entries = palloc(sizeof(TvListEntry) * so->nprobe);
	SplitBlock	sb;
	PageCursor	pc;

	ReadProbedEntries(so, index, so->nprobe, entries);
	/* no data page is locked here: the metapage comes first in lock order */
	TvReadMeta(index, &now);
	if (now.lists != meta->lists || now.list_area != meta->list_area ||
		now.block_bytes != meta->block_bytes)
		elog(ERROR, "turbo index \"%s\" changed its layout under a scan",
			 RelationGetRelationName(index));
	meta = &now;
	nblocks = TvBlockCount(meta);
	CheckStreamPages(index, meta, nblocks);
	SplitBlockInit(&sb, S);
	CursorInit(&pc, so, index, TV_FIRST_DATA_BLKNO + meta->ndatapages);
	for (int k = 0; k < so->nprobe; k++)
	{
		int			list = so->list_order[k];
		uint32		next = entries[k].tail;
		uint32		len = entries[k].nblocks;
		uint64		steps = 0;
		float		qc = ListOffset(so, meta, list);

		/* a laid-out list is the run of blocks [tail - nblocks, tail) */
		if (next != 0 && len != 0 && len <= next && next <= nblocks)
			CursorExpect(&pc, TV_FIRST_DATA_BLKNO +
						 TvBlockOffset(meta, next - len) / TV_PAGE_PAYLOAD);
		else
			CursorExpect(&pc, InvalidBlockNumber);

		while (next != 0)
		{
			uint64		off;
			BlockNumber first;
			BlockNumber last;
			const char *p;
			uint32		owner;

			if (next > nblocks || ++steps > nblocks)
				BrokenChain(index, list);
			off = TvBlockOffset(meta, next - 1);
			first = TV_FIRST_DATA_BLKNO + off / TV_PAGE_PAYLOAD;
			last = TV_FIRST_DATA_BLKNO + (off + S - 1) / TV_PAGE_PAYLOAD;
			if (first == last)
				p = CursorPayload(&pc, first) + off % TV_PAGE_PAYLOAD;
			else
			{
				/*
				 * From the last page down, so the page this block starts on,
				 * where the previous block of a laid-out list ends, stays
				 * pinned, and so does a header that lies on it whole.
				 */
				bool		header_whole = (off % TV_PAGE_PAYLOAD + TV_BLOCK_CODES_OFFSET <= TV_PAGE_PAYLOAD);

				SplitBlockBegin(&sb, off, S, !header_whole);
				for (BlockNumber pg = last;; pg--)
				{
					uint64		page_start = (uint64) (pg - TV_FIRST_DATA_BLKNO) * TV_PAGE_PAYLOAD;

					SplitBlockAdd(so, &sb, CursorPayload(&pc, pg), page_start);
					if (pg == first)
						break;
				}
				p = header_whole ? CursorPayload(&pc, first) + off % TV_PAGE_PAYLOAD : sb.header;
			}
			memcpy(&owner, p + TV_BLOCK_LIST_OFFSET, sizeof(uint32));
			if (owner != (uint32) list)
				BrokenChain(index, list);
			if (first == last)
				ScoreBlock(so, p, next - 1, qc, heap);
			else
				SplitBlockFinish(so, &sb, p, next - 1, qc, heap);
			{
				uint32		here = next;

				memcpy(&next, p + TV_BLOCK_PREV_OFFSET, sizeof(uint32));
				/* the list is not laid out after all: stop reading ahead */
				if (next != 0 && next != here - 1)
					CursorExpect(&pc, InvalidBlockNumber);
			}
			/* a long list: let go of the page now and then to take interrupts */
			if ((steps & 255) == 0)
			{
				CursorRelease(&pc);
				CHECK_FOR_INTERRUPTS();
			}
		}
		/* no buffer lock held across lists */
		CursorRelease(&pc);
		CHECK_FOR_INTERRUPTS();
	}
	pfree(entries);
	pfree(sb.groups);
}

/*
 * Read the whole block stream once and collect the window's candidates.
 * Blocks that lie inside one page are scored in place; a block that
 * straddles pages is scored from its pieces on each page (SplitBlock).
 */
static void
CollectCandidates(IndexScanDesc scan, CandidateHeap *heap)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;
	Relation	index = scan->indexRelation;
	TvMetaPageData meta;
	uint64		nblocks;
	uint64		npages;
	uint64		block = 0;
	Size		S;
	SplitBlock	sb;
	Buffer	   *hints;
	BlockNumber nhints;

	TvReadMeta(index, &meta);
	S = meta.block_bytes;
	nblocks = TvBlockCount(&meta);
	if (nblocks == 0)
		return;
	if (meta.lists > 0)
	{
		CollectListCandidates(scan, &meta, heap);
		return;
	}
	CheckStreamPages(index, &meta, nblocks);
	npages = TvStreamPages(&meta, nblocks);

	SplitBlockInit(&sb, S);
	hints = TvBufferHints(index, TV_FIRST_DATA_BLKNO + npages, &nhints);
	for (uint64 p = 0; p < npages && block < nblocks; p++)
	{
		Buffer		buf;
		const char *payload;
		uint64		page_start = p * TV_PAGE_PAYLOAD;
		Size		pos = 0;
		bool		read;

		buf = TvPinPage(index, TV_FIRST_DATA_BLKNO + p, so->bas, hints, nhints, &read);
		LockBuffer(buf, BUFFER_LOCK_SHARE);
		payload = TvPagePayload(BufferGetPage(buf));

		/* the rest of a block begun on an earlier page */
		if (sb.left > 0)
		{
			if (SplitBlockAdd(so, &sb, payload, page_start))
			{
				SplitBlockFinish(so, &sb, sb.header, block, 0, heap);
				block++;
				pos = sb.off + S - page_start;
			}
			else
				pos = TV_PAGE_PAYLOAD;
		}
		while (pos < TV_PAGE_PAYLOAD && block < nblocks)
		{
			if (pos + S <= TV_PAGE_PAYLOAD)
			{
				ScoreBlock(so, payload + pos, block, 0, heap);
				pos += S;
				block++;
			}
			else
			{
				SplitBlockBegin(&sb, page_start + pos, S, true);
				SplitBlockAdd(so, &sb, payload, page_start);
				pos = TV_PAGE_PAYLOAD;
			}
		}
		UnlockReleaseBuffer(buf);
		/* no buffer lock held here */
		CHECK_FOR_INTERRUPTS();
	}
	pfree(sb.groups);
}

static int
ResultCmp(const void *a, const void *b)
{
	const TvResult *ra = a;
	const TvResult *rb = b;

	if (ra->dist < rb->dist)
		return -1;
	if (ra->dist > rb->dist)
		return 1;
	return ItemPointerCompare((ItemPointer) &ra->tid, (ItemPointer) &rb->tid);
}

/*
 * Exact distance of the row a candidate points at, if our snapshot sees it.
 * Rows the snapshot cannot see are dropped here: the executor would drop
 * them too, and they must not take a place in the window.
 */
static bool
ExactDistance(IndexScanDesc scan, ItemPointer tid, double *dist)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;
	ItemPointerData fetchtid = *tid;
	bool		call_again = false;
	bool		all_dead = false;
	Datum		value;

	if (!table_index_fetch_tuple(so->fetch, &fetchtid, scan->xs_snapshot,
								 so->slot, &call_again, &all_dead))
		return false;

	if (so->nullquery)
	{
		*dist = 0;
		return true;
	}

	if (!TvIndexValue(so->indexInfo, so->estate, so->slot, &value))
		return false;
	*dist = DatumGetFloat8(FunctionCall2Coll(&so->state->distance, so->state->collation,
											 value, so->query));
	return true;
}

/*
 * turbovec.test_scan_delay: hold the copy pinned for a while, as a slow
 * scan of a large copy would, so tests can show that writers and other
 * scans do not wait for it.  Cancellable: an abort gives the pin back.
 */
static void
TestScanDelay(void)
{
	TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  tv_test_scan_delay_ms);
	long		left;

	while ((left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), end)) > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Refined estimates of a resident window's candidates: from each lane's
 * code in its block and its refinement code (tv_refine_block_ip), on the
 * scale of ScoreBlock's estimates.  The copy is pinned.
 */
static void
RefineCandidates(TvScanOpaque so, const TvMetaPageData *meta, TvResidentCopy *copy,
				 CandidateHeap *heap)
{
	const TvCodec *codec = so->state->codec;
	const char *stream = TvResidentStream(copy);
	TvMetric	metric = so->state->metric;
	double		worst_sd = 0;

	/* PrepareQuery made it for every query that gets here (not a NULL one) */
	Assert(so->qrot != NULL);
	for (int i = 0; i < heap->n; i++)
	{
		TvCandidate *c = &heap->items[i];
		const char *blk = stream + TvBlockOffset(meta, c->slot / TV_LANES);
		int			lane = c->slot % TV_LANES;
		float		norm;
		float		qc = 0;
		float		ip;
		float		sd;

		if (so->residual)
		{
			uint32		list;

			memcpy(&list, blk + TV_BLOCK_LIST_OFFSET, sizeof(uint32));
			/* a block torn by a writer: a wasted candidate, never a fault */
			if (list < meta->lists)
				qc = ListOffset(so, meta, list);
		}
		memcpy(&norm, blk + TV_BLOCK_NORM_OFFSET + lane * sizeof(float), sizeof(float));
		ip = qc + tv_refine_block_ip(codec, (const uint8 *) blk + TV_BLOCK_CODES_OFFSET, lane,
									 TvResidentRefine(copy, c->slot), so->qrot, &sd);
		c->est4 = c->est;
		if (metric == TV_METRIC_L2)
		{
			c->est = so->qnorm2 + norm * norm - 2 * ip;
			sd *= 2;
		}
		else if (metric == TV_METRIC_IP || so->residual)
			c->est = -ip;
		else
		{
			c->est = -ip / Max(norm, FLT_MIN);
			sd /= Max(norm, FLT_MIN);
		}
		worst_sd = Max(worst_sd, sd);
		if ((i & 255) == 255)
			CHECK_FOR_INTERRUPTS();
	}
	so->refine_margin = TV_REFINE_SIGMAS * worst_sd;
}

/* Ask the caches for every line of a block of the resident copy */
static inline void
PrefetchBlock(const char *blk, uint32 bytes)
{
	for (uint32 off = 0; off < bytes; off += 64)
		__builtin_prefetch(blk + off);
}

/*
 * Collect a window from the resident copy: its candidates on the codes,
 * then their estimates refined in memory (*refined), so that NextWindow
 * fetches from the table, in batches, only the rows it returns.  False
 * when the copy is not current: the caller reads the extent instead.
 */
static bool
ResidentWindow(IndexScanDesc scan, CandidateHeap *heap, bool *refined)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;
	TvResidentEntry *e = so->resident;
	TvMetaPageData meta;
	TvResidentCopy *copy;
	char	   *stream;
	uint64		nblocks;
	uint64		cap_blocks;
	int			pin;

	TvReadMeta(scan->indexRelation, &meta);
	LWLockAcquire(e->lock, LW_SHARED);
	copy = TvResidentGetCopy(e);
	if (e->state != TV_RES_READY || copy == NULL || e->change_count != meta.change_count ||
		e->relfilenode != TvRelFileNumber(scan->indexRelation) ||
		copy->dim != meta.dim || copy->refine_bytes != tv_refine_bytes(meta.dim))
	{
		LWLockRelease(e->lock);
		TvResidentWakeWorker(MyDatabaseId);
		return false;
	}
	/* score without the lock: writers mirror into the copy meanwhile */
	pin = TvResidentPin(e);
	LWLockRelease(e->lock);
	if (tv_test_scan_delay_ms > 0)
		TestScanDelay();

	stream = TvResidentStream(copy);
	nblocks = TvBlockCount(&meta);
	cap_blocks = copy->capacity_slots / TV_LANES;
	if (meta.lists == 0)
	{
		for (uint64 b = 0; b < nblocks; b++)
		{
			/* pull a block a few ahead into the caches while this one is scored */
			if (b + TV_PREFETCH_BLOCKS < nblocks)
				PrefetchBlock(stream + TvBlockOffset(&meta, b + TV_PREFETCH_BLOCKS),
							  meta.block_bytes);
			ScoreBlock(so, stream + TvBlockOffset(&meta, b), b, 0, heap);
		}
	}
	else
	{
		const TvListEntry *entries = (const TvListEntry *) stream;

		for (int k = 0; k < so->nprobe; k++)
		{
			uint32		next = entries[so->list_order[k]].tail;
			uint64		steps = 0;
			float		qc = ListOffset(so, &meta, so->list_order[k]);

			/* an insert may have linked a block past meta's count since */
			pg_read_barrier();
			while (next != 0 && next <= cap_blocks && ++steps <= cap_blocks)
			{
				const char *blk = stream + TvBlockOffset(&meta, next - 1);
				uint64		block = next - 1;

				/*
				 * The chain names the next block before this one is scored:
				 * have it pulled from memory meanwhile.  The hardware
				 * prefetchers stop at 4 kB pages and a 768-d block is 12 kB;
				 * a walk over 1 GB of such blocks ran 16-20 % faster so.
				 */
				memcpy(&next, blk + TV_BLOCK_PREV_OFFSET, sizeof(uint32));
				if (next != 0 && next <= cap_blocks)
					PrefetchBlock(stream + TvBlockOffset(&meta, next - 1), meta.block_bytes);
				ScoreBlock(so, blk, block, qc, heap);
			}
		}
	}

	*refined = !so->nullquery;
	if (*refined)
	{
		/* a max-heap: items[0] is the worst on the codes */
		so->pool_worst = heap->n > 0 ? heap->items[0].est : 0;
		RefineCandidates(so, &meta, copy, heap);
	}
	TvResidentUnpin(e, pin);
	return true;
}

static int
CandidateSortCmp(const void *a, const void *b)
{
	return CandidateCmp((const TvCandidate *) a, (const TvCandidate *) b);
}

/*
 * The next batch of a refined resident window: the best candidate not yet
 * fetched.  One row at a time, because a table row costs far more than the
 * bookkeeping (a 768-d real[] is a TOAST fetch of ~20 us) and the executor
 * may want only a few: NextWindow returns a fetched row as soon as no
 * pending candidate, allowing for the refinement's error, can precede it,
 * so a LIMIT k query reads k rows plus those whose refined estimates are
 * within the margin of the k-th.  The heap is only read from now on
 * (sorted, not a heap).
 */
static void
TakeBatch(TvScanOpaque so, CandidateHeap *heap)
{
	int			n = Min(1, so->npending - so->pendnext);

	heap->items = so->pending + so->pendnext;
	heap->n = heap->cap = n;
	so->pendnext += n;
}

/*
 * An exact distance on the scale of the estimates: squared under L2, and
 * -cos (what the estimate approximates) under cosine.  Monotone.
 */
static inline double
EstimateScale(TvMetric metric, double dist)
{
	if (metric == TV_METRIC_L2)
		return dist * dist;
	if (metric == TV_METRIC_COSINE)
		return dist - 1;
	return dist;
}

/*
 * strict_order: how many of the window's sorted rows to return before the
 * next window.  worst is the window's worst estimate, full says whether it
 * took all it could, last whether no row is left for a later window.  Rows
 * the next window takes have estimates no better than this window's worst,
 * and their exact distances lie above their estimates by about what this
 * window's did, at worst the most negative error seen.  Rows nearer than
 * that bound are returned; the rest wait and are merged
 * into the next window, so the rows a later window finds nearer than one
 * returned (which strict_order must leave out) are few.
 *
 * The first window is returned whole all the same: most queries want no
 * more (LIMIT k within turbovec.candidates), and holding its last rows back
 * would cost them a second pass over the index.  Its farthest rows thus
 * decide what the second window may return.  When an IVF scan goes on to
 * more lists no bound is known (a list's rows can lie anywhere around its
 * centroid): every row waits for the window of the wider probe, and rows of
 * lists probed later that are nearer than one returned are left out.
 *
 * For a resident window this decides only after its last batch, with the
 * window's estimates on the codes (TvResult.est, pool_worst): the batches
 * before it are ordered among themselves by NextWindow.
 */
static int
StrictEmitCount(TvScanOpaque so, float worst, bool full, bool last)
{
	TvMetric	metric = so->state->metric;
	double		lowest = get_float8_infinity();
	double		bound;
	int			n = 0;

	if (last || so->nullquery)
		return so->nresults;
	/* IVF ran out of probed lists: rows of the next ones may be nearer */
	if (!full)
		return 0;
	for (int i = 0; i < so->nresults; i++)
		lowest = Min(lowest, EstimateScale(metric, so->results[i].dist) - so->results[i].est);
	bound = worst + Min(lowest, 0);
	while (n < so->nresults && EstimateScale(metric, so->results[n].dist) <= bound)
		n++;
	return n;
}

/*
 * Collect the candidates of the next window into *heap: from the resident
 * copy, refined (*refined: heap then holds its first batch, the rest wait
 * in so->pending), or from the pages.  Every candidate is marked seen.
 */
static void
ScanWindow(IndexScanDesc scan, CandidateHeap *heap, bool *refined)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;

	*refined = false;
	so->first_window = (so->taken == 0);
	heap->cap = (int) Min((int64) so->window, so->max_taken - so->taken);
	heap->n = 0;
	heap->items = palloc(sizeof(TvCandidate) * heap->cap);
	if (so->resident == NULL || !ResidentWindow(scan, heap, refined))
	{
		heap->n = 0;
		*refined = false;
		CollectCandidates(scan, heap);
	}
	so->pool_full = (heap->n == heap->cap);

	if (heap->n < heap->cap)
	{
		/* what was probed is used up: probe more lists, or stop */
		if (so->list_order != NULL && so->nprobe < so->state->meta.lists)
		{
			so->nprobe = Min((int64) so->nprobe * 2, (int64) so->state->meta.lists);
			OrderProbes(so, so->nprobe);
		}
		else
			so->exhausted = true;
	}
	so->taken += heap->n;
	if (!so->exhausted && so->taken >= so->max_taken)
	{
		/* the bound on a scan's candidates: stop, as if the index ended */
		so->exhausted = true;
		elog(DEBUG1, "turbo scan of \"%s\" stops after " INT64_FORMAT " candidates (turbovec.max_scan_tuples)",
			 RelationGetRelationName(scan->indexRelation), so->taken);
	}
	if (!so->exhausted && so->seen == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(ItemPointerData);
		ctl.entrysize = sizeof(ItemPointerData);
		ctl.hcxt = so->queryCtx;
		so->seen = hash_create("turbovec seen TIDs", Max(heap->n, 16), &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	/* every candidate of the window is taken, fetched now or in a batch */
	for (int i = 0; i < heap->n && so->seen; i++)
		hash_search(so->seen, &heap->items[i].tid, HASH_ENTER, NULL);

	if (*refined)
	{
		/* the best refined estimates first; fetch a batch of them */
		qsort(heap->items, heap->n, sizeof(TvCandidate), CandidateSortCmp);
		if (so->pending)
			pfree(so->pending);
		so->pending = MemoryContextAlloc(so->queryCtx, sizeof(TvCandidate) * Max(heap->n, 1));
		memcpy(so->pending, heap->items, sizeof(TvCandidate) * heap->n);
		so->npending = heap->n;
		so->pendnext = 0;
		TakeBatch(so, heap);
	}

	/* double the window, up to what one allocation holds */
	so->window = (int) Min((int64) so->window * 2,
						   (int64) (MaxAllocSize / sizeof(TvCandidate)));
}

/* Collect, re-rank and sort the next window (or batch) */
static void
NextWindow(IndexScanDesc scan)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;
	MemoryContext oldCtx;
	CandidateHeap heap;
	bool		refined;
	TvResult   *carry = NULL;
	int			ncarry = so->nresults - so->next;
	bool		more;

	/* strict_order: rows held back from the last window join this one */
	if (ncarry > 0)
	{
		carry = MemoryContextAlloc(so->queryCtx, sizeof(TvResult) * ncarry);
		memcpy(carry, so->results + so->next, sizeof(TvResult) * ncarry);
	}
	MemoryContextReset(so->windowCtx);
	oldCtx = MemoryContextSwitchTo(so->windowCtx);

	if (so->pendnext < so->npending)
	{
		/* the next batch of a resident window: no scan */
		TakeBatch(so, &heap);
		refined = true;
	}
	else
		ScanWindow(scan, &heap, &refined);

	so->next = 0;
	so->results = palloc(sizeof(TvResult) * Max(heap.n, 1));
	so->nresults = 0;
	for (int i = 0; i < heap.n; i++)
	{
		TvCandidate *c = &heap.items[i];
		double		dist;

		if (ExactDistance(scan, &c->tid, &dist))
		{
			so->results[so->nresults].dist = dist;
			so->results[so->nresults].tid = c->tid;
			so->results[so->nresults].est = refined ? c->est4 : c->est;
			so->nresults++;
		}
		if ((i & 63) == 63)
			CHECK_FOR_INTERRUPTS();
	}
	if (ncarry > 0)
	{
		TvResult   *all = palloc(sizeof(TvResult) * (so->nresults + ncarry));

		memcpy(all, so->results, sizeof(TvResult) * so->nresults);
		memcpy(all + so->nresults, carry, sizeof(TvResult) * ncarry);
		so->results = all;
		so->nresults += ncarry;
		pfree(carry);
	}
	qsort(so->results, so->nresults, sizeof(TvResult), ResultCmp);
	more = refined && so->pendnext < so->npending;
	if (more)
	{
		/*
		 * Rows of this window wait in later batches, their refined
		 * estimates no better than the next one's: return only rows that
		 * none of them can precede, allowing for the refinement's error.
		 * The rest join the next batch, so a window comes out in exact order
		 * (in both iterative_scan modes) as when it was fetched whole.
		 */
		double		bound = so->pending[so->pendnext].est - so->refine_margin;
		int			n = 0;

		while (n < so->nresults &&
			   EstimateScale(so->state->metric, so->results[n].dist) <= bound)
			n++;
		so->nemit = n;
	}
	else if (so->strict && !so->first_window)
		so->nemit = StrictEmitCount(so,
									refined ? so->pool_worst : (heap.n > 0 ? heap.items[0].est : 0),
									so->pool_full, so->exhausted);
	else
		so->nemit = so->nresults;
	elog(DEBUG2, "turbo scan of \"%s\": %s of %d rows read from the table, %d to return",
		 RelationGetRelationName(scan->indexRelation), refined ? "batch" : "window",
		 heap.n, so->nemit);
	MemoryContextSwitchTo(oldCtx);
}

/* nearer first; ties by list number, so the order is deterministic */
static inline int
ListRankCmp(const ListRank *a, const ListRank *b)
{
	if (a->dist < b->dist)
		return -1;
	if (a->dist > b->dist)
		return 1;
	return (a->list > b->list) - (a->list < b->list);
}

/* an inlined sort: qsort's indirect comparisons cost ~4% of a GloVe query */
#define ST_SORT sort_list_ranks
#define ST_ELEMENT_TYPE ListRank
#define ST_COMPARE(a, b) ListRankCmp(a, b)
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

/* Restore the max-heap order of h[0..n) below position i (the root is the farthest) */
static inline void
SiftDownListRank(ListRank *h, int n, int i)
{
	ListRank	x = h[i];

	for (;;)
	{
		int			c = 2 * i + 1;

		if (c >= n)
			break;
		if (c + 1 < n && ListRankCmp(&h[c + 1], &h[c]) > 0)
			c++;
		if (ListRankCmp(&h[c], &x) <= 0)
			break;
		h[i] = h[c];
		i = c;
	}
	h[i] = x;
}

/*
 * Move the n nearest of lists ranks to the front, as a max-heap: the
 * farthest of them ends at r[0].  Every rank past the front is compared
 * with that one (a quickselect's partitions mispredicted about every other
 * comparison and cost 6 % of a 4,000-list query).  Ranks are distinct, ties
 * being settled by list number, so the set chosen is the same whatever the
 * method.
 */
static void
SelectNearestListsByHeap(ListRank *r, int lists, int n)
{
	if (n <= 0 || n > lists)
		return;
	for (int i = n / 2 - 1; i >= 0; i--)
		SiftDownListRank(r, n, i);
	for (int j = n; j < lists; j++)
	{
		if (ListRankCmp(&r[j], &r[0]) < 0)
		{
			ListRank	t = r[0];

			r[0] = r[j];
			r[j] = t;
			SiftDownListRank(r, n, 0);
		}
	}
}

/*
 * The heap's cost is its insertions: over ranks in no particular order the
 * n nearest so far change about n ln(lists / n) times (some 120 for 23 of
 * 4,000 lists), each a sift of mispredicted branches.  So take a bound
 * from every TV_SELECT_STRIDE-th rank first, the sample's k-th nearest with
 * k chosen so that about twice n ranks precede it; move the ranks that
 * precede it to the front in one pass whose branch is rarely taken, and
 * select among those.  When fewer than n precede the bound (the sample
 * misled), false: the caller selects from all of them.
 */
#define TV_SELECT_STRIDE	8

static bool
SelectNearestListsBelowBound(ListRank *r, int lists, int n)
{
	int			m = lists / TV_SELECT_STRIDE;
	int			k = (2 * n + TV_SELECT_STRIDE - 1) / TV_SELECT_STRIDE + 1;
	ListRank   *sample;
	ListRank	bound;
	int			below = 0;

	if (k >= m)
		return false;
	sample = palloc(sizeof(ListRank) * m);
	for (int i = 0; i < m; i++)
		sample[i] = r[(Size) i * TV_SELECT_STRIDE];
	SelectNearestListsByHeap(sample, m, k);
	bound = sample[0];
	pfree(sample);

	for (int j = 0; j < lists; j++)
	{
		if (ListRankCmp(&r[j], &bound) < 0)
		{
			ListRank	t = r[below];

			r[below++] = r[j];
			r[j] = t;
		}
	}
	if (below < n)
		return false;
	/* the n nearest of all precede the bound, as n ranks do */
	SelectNearestListsByHeap(r, below, n);
	return true;
}

/*
 * The n nearest of lists ranks to the front, the farthest of them at r[0]
 * (OrderLists keeps it as the bound every rank past the front follows)
 */
static void
SelectNearestLists(ListRank *r, int lists, int n)
{
	if (n <= 0 || n > lists)
		return;
	if (lists >= 16 * n && SelectNearestListsBelowBound(r, lists, n))
		return;
	SelectNearestListsByHeap(r, lists, n);
}

/*
 * Make the first n entries of list_order the n nearest lists in order.  A
 * scan probes turbovec.probes lists and rarely more, so only those are
 * sorted at first (sorting all 1,000 lists of a 1M-row index cost 3-4 % of
 * a query); a scan that widens sorts the rest once.
 */
static void
OrderProbes(TvScanOpaque so, int n)
{
	int			lists = so->state->meta.lists;

	if (n <= so->nordered || so->ranks == NULL)
		return;
	if (so->nordered == 0 && n >= 1 && n < lists / 4)
	{
		/*
		 * The nearest n of the exactly ranked front are the nearest of all
		 * when the farthest of them precedes the rank every list past the
		 * front follows: then the other lists need no second look.
		 */
		bool		all = true;

		if (so->nfront > n)
		{
			SelectNearestLists(so->ranks, so->nfront, n);
			all = ListRankCmp(&so->ranks[0], &so->front_bound) >= 0;
		}
		if (all)
			SelectNearestLists(so->ranks, lists, n);
		sort_list_ranks(so->ranks, n);
	}
	else
	{
		sort_list_ranks(so->ranks + so->nordered, lists - so->nordered);
		n = lists;
	}
	for (int j = so->nordered; j < n; j++)
		so->list_order[j] = so->ranks[j].list;
	so->nordered = n;
}

/*
 * IVF: order the lists by their centroid's distance to the query (no query:
 * every list, in list order) and start with turbovec.probes of them.
 */
static void
OrderLists(IndexScanDesc scan, const float *q)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;
	const TvMetaPageData *meta = &so->state->meta;
	int			lists = meta->lists;

	so->list_order = palloc(sizeof(int) * lists);
	if (q == NULL)
	{
		for (int j = 0; j < lists; j++)
			so->list_order[j] = j;
		so->nordered = lists;
		so->nprobe = lists;
		return;
	}
	{
		float	   *dist = palloc(sizeof(float) * lists);
		int			exact;

		so->nprobe = TvProbes(lists);
		elog(DEBUG1, "turbo scan of \"%s\" probes %d of %d lists first",
			 RelationGetRelationName(scan->indexRelation), so->nprobe, lists);
		so->ranks = palloc(sizeof(ListRank) * lists);
		so->centroids = TvCachedCentroids(scan->indexRelation, NULL);
		so->residual = TvMetaResidual(meta);
		so->qlists = q;

		/*
		 * Rank on the 8-bit centroids, then recompute the nearest lists, the
		 * probed ones and TV_EXACT_RANK_SPARE more, exactly: a list past
		 * them would need an error larger than the gap to win a place, and a
		 * scan that widens can take the rest in approximate order.
		 */
		exact = (int) Min((int64) lists, (int64) so->nprobe + TV_EXACT_RANK_SPARE);
		if (exact < lists)
		{
			const float *scales;
			const float *cnorms;
			const uint8 *codes = TvCachedRankCentroids(scan->indexRelation, &scales, &cnorms);

			TvApproxListDistances(codes, scales, cnorms, lists, meta->dim,
								  so->state->metric, q, dist);
		}
		else
			TvListDistances(so->centroids, lists, meta->dim, so->state->metric, q, dist);
		for (int j = 0; j < lists; j++)
		{
			so->ranks[j].dist = dist[j];
			so->ranks[j].list = j;
		}
		pfree(dist);
		if (exact < lists)
		{
			SelectNearestLists(so->ranks, lists, exact);
			/* the farthest of the front, which every later rank follows */
			so->nfront = exact;
			so->front_bound = so->ranks[0];
			for (int j = 0; j < exact; j++)
				so->ranks[j].dist = TvListDistance(so->centroids, meta->dim, so->state->metric,
												   q, so->ranks[j].list);
		}
	}
	OrderProbes(so, so->nprobe);
}

/* Validate the query and prepare its lookup tables */
static void
PrepareQuery(IndexScanDesc scan)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;
	ScanKey		key = &scan->orderByData[0];
	MemoryContext oldCtx = MemoryContextSwitchTo(so->queryCtx);
	float	   *q;
	int			dim;
	float	   *work;

	so->state = TvCopyIndexState(TvGetIndexState(scan->indexRelation), so->queryCtx);

	if (key->sk_flags & SK_ISNULL)
	{
		so->nullquery = true;
		if (so->state->meta.lists > 0)
			OrderLists(scan, NULL);
		MemoryContextSwitchTo(oldCtx);
		return;
	}

	/* the distance function gets the query as the column's type */
	so->query = PointerGetDatum(PG_DETOAST_DATUM_COPY(key->sk_argument));
	q = TvDatumGetFloats(so->state->toarray, so->query, &dim);

	if (so->state->meta.dim == 0)
	{
		/* nothing was ever indexed */
		so->exhausted = true;
		MemoryContextSwitchTo(oldCtx);
		return;
	}
	TvCheckDimensions(scan->indexRelation, so->state->meta.dim, dim);
	TvCheckNorm(scan->indexRelation, q, dim);
	so->qfloats = q;

	so->qnorm2 = (float) (TvNorm(q, dim) * TvNorm(q, dim));
	if (so->state->metric == TV_METRIC_COSINE)
	{
		double		norm = TvNorm(q, dim);
		float	   *unit = palloc(sizeof(float) * dim);

		if (norm == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("cannot order by cosine distance to a zero vector"),
					 errdetail("The cosine distance to a zero vector is undefined.")));
		for (int i = 0; i < dim; i++)
			unit[i] = (float) (q[i] / norm);
		q = unit;
	}

	work = palloc(sizeof(float) * tv_codec_work_floats(so->state->codec));
	so->lut = palloc(tv_query_lut_size(so->state->codec));
	tv_query_prepare(so->state->codec, q, so->lut, work);
	/* the refinement's query, from the rotation just done */
	so->qrot = palloc(sizeof(float) * dim);
	tv_refine_scale(so->state->codec, work, so->qrot);
	pfree(work);

	if (so->state->meta.lists > 0)
		OrderLists(scan, q);

	MemoryContextSwitchTo(oldCtx);
}

IndexScanDesc
tvbeginscan(Relation index, int nkeys, int norderbys)
{
	IndexScanDesc scan = RelationGetIndexScan(index, nkeys, norderbys);
	TvScanOpaque so = palloc0(sizeof(TvScanOpaqueData));

	so->scanCtx = AllocSetContextCreate(CurrentMemoryContext,
										"turbovec scan context",
										ALLOCSET_DEFAULT_SIZES);
	so->queryCtx = AllocSetContextCreate(so->scanCtx,
										 "turbovec scan query context",
										 ALLOCSET_DEFAULT_SIZES);
	so->windowCtx = AllocSetContextCreate(so->scanCtx,
										  "turbovec scan temporary context",
										  ALLOCSET_DEFAULT_SIZES);
	scan->opaque = so;
	return scan;
}

void
tvrescan(IndexScanDesc scan, ScanKey keys, int nkeys, ScanKey orderbys, int norderbys)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;

	if (keys && scan->numberOfKeys > 0)
		memmove(scan->keyData, keys, scan->numberOfKeys * sizeof(ScanKeyData));
	if (orderbys && scan->numberOfOrderBys > 0)
		memmove(scan->orderByData, orderbys, scan->numberOfOrderBys * sizeof(ScanKeyData));

	so->started = false;
	so->exhausted = false;
	so->nullquery = false;
	so->seen = NULL;
	so->centroids = NULL;
	so->list_order = NULL;
	so->nordered = 0;
	so->ranks = NULL;
	so->nfront = 0;
	so->residual = false;
	so->qlists = NULL;
	so->results = NULL;
	so->nresults = 0;
	so->nemit = 0;
	so->next = 0;
	so->lut = NULL;
	so->state = NULL;
	so->qrot = NULL;
	so->pending = NULL;
	so->npending = 0;
	so->pendnext = 0;
	so->refine_margin = 0;
	so->pool_worst = 0;
	so->pool_full = false;
	so->first_window = false;
	MemoryContextReset(so->windowCtx);
	MemoryContextReset(so->queryCtx);
}

/*
 * With the resident index: the entry of a ready copy, or NULL to read the
 * extent.  With turbovec.not_ready = extent a scan never waits, since the
 * pages answer as fast as a wait could end: it reads them and pokes the
 * worker, and later scans use the copy once it is ready.  With error it
 * waits up to turbovec.ready_timeout for a copy that is on its way, then
 * raises "not ready".  A copy that can never come on its own (too big,
 * failed, no registry entry or worker) is not waited for: the pages serve.
 * A copy that is ready but behind the extent is not waited for either: its
 * windows fall back to the extent while the worker catches up.
 */
static TvResidentEntry *
WaitResident(Relation index)
{
	TvResidentEntry *e;
	TvResidentEntry *ready;
	bool		coming;

	if (tv_shared == NULL || !tv_use_resident ||
		index->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		return NULL;
	e = TvResidentLookup(MyDatabaseId, RelationGetRelid(index), false);
	if (e != NULL && e->state == TV_RES_TOO_BIG)
		return NULL;			/* served from its pages, and reported so */

	ready = TvResidentWaitReady(index,
								tv_not_ready == TV_NOT_READY_ERROR ? tv_ready_timeout_ms : 0,
								&e, &coming);
	if (ready != NULL)
		return ready;
	if (tv_not_ready == TV_NOT_READY_ERROR && coming)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("turbo index \"%s\" is not ready", RelationGetRelationName(index)),
				 e && e->state == TV_RES_BUILDING ?
				 errdetail("Its resident copy is being built: " UINT64_FORMAT " of " UINT64_FORMAT " rows done.",
						   e->rows_done, e->rows_total) :
				 errdetail("Its resident copy has not been started yet."),
				 errhint("Retry, wait with turbo_wait_ready(), or SET turbovec.not_ready = 'extent' to read the index pages meanwhile.")));
	return NULL;
}

/*
 * How a scan's page reads replace buffers.  A flat scan reads every page
 * of the index, so past a quarter of shared_buffers it goes through a
 * small ring, as a sequential scan of a table that size does, rather than
 * push out everything else.  An IVF scan reads the few lists nearest each
 * query, like any index scan: a ring there would evict the pages of the
 * hot lists as soon as they were read, and the page path would stay cold
 * long after a restart.
 */
static BufferAccessStrategy
ChooseAccessStrategy(Relation index, const TvMetaPageData *meta)
{
	if (meta->lists == 0 && !RelationUsesLocalBuffers(index) &&
		RelationGetNumberOfBlocks(index) > (BlockNumber) (NBuffers / 4))
		return GetAccessStrategy(BAS_BULKREAD);
	return NULL;
}

/* Things the first call of a scan sets up */
static void
StartScan(IndexScanDesc scan)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;
	MemoryContext oldCtx;

	if (scan->numberOfOrderBys != 1)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot scan turbo index without order"),
				 errhint("Use ORDER BY column <-> query, <#> or <=> with a turbo index.")));
	if (!IsMVCCSnapshot(scan->xs_snapshot))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("non-MVCC snapshots are not supported with turbo indexes")));

	pgstat_count_index_scan(scan->indexRelation);
	PrepareQuery(scan);
	if (!so->bas_chosen)
	{
		so->bas = ChooseAccessStrategy(scan->indexRelation, &so->state->meta);
		so->bas_chosen = true;
	}
	so->resident = WaitResident(scan->indexRelation);
	so->window = tv_candidates;
	so->taken = 0;
	so->max_taken = Max(tv_max_scan_tuples, tv_candidates);
	so->strict = (tv_iterative_scan == TV_ITERATIVE_STRICT);
	so->last_dist = -get_float8_infinity();

	if (so->fetch == NULL)
	{
		oldCtx = MemoryContextSwitchTo(so->scanCtx);
		so->fetch = table_index_fetch_begin(scan->heapRelation);
		so->slot = table_slot_create(scan->heapRelation, NULL);
		so->indexInfo = BuildIndexInfo(scan->indexRelation);
		if (so->indexInfo->ii_Expressions != NIL)
			so->estate = CreateExecutorState();
		MemoryContextSwitchTo(oldCtx);
	}
	so->started = true;
}

bool
tvgettuple(IndexScanDesc scan, ScanDirection dir)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;

	if (!so->started)
		StartScan(scan);

	for (;;)
	{
		TvResult   *r;

		while (so->next >= so->nemit)
		{
			if (so->exhausted && so->pendnext >= so->npending)
				return false;
			NextWindow(scan);
		}
		r = &so->results[so->next++];

		/*
		 * A window is in exact order, but a later window can hold rows
		 * nearer than some already returned.  strict_order skips them, so
		 * the output is in distance order; relaxed_order returns them.
		 */
		if (so->strict && r->dist < so->last_dist)
			continue;
		so->last_dist = r->dist;
		scan->xs_heaptid = r->tid;
		break;
	}
	scan->xs_recheck = false;
	scan->xs_recheckorderby = false;
	return true;
}

void
tvendscan(IndexScanDesc scan)
{
	TvScanOpaque so = (TvScanOpaque) scan->opaque;

	if (so->fetch)
		table_index_fetch_end(so->fetch);
	if (so->slot)
		ExecDropSingleTupleTableSlot(so->slot);
	if (so->estate)
		FreeExecutorState(so->estate);
	FreeAccessStrategy(so->bas);
	MemoryContextDelete(so->scanCtx);
	pfree(so);
	scan->opaque = NULL;
}
