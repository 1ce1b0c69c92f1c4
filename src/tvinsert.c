/*
 * tvinsert.c
 *	  INSERT/UPDATE/COPY into a turbo index: encode, take a slot, write it.
 *
 * Inserters serialize on the metapage's exclusive lock: it hands out slots
 * (a free lane left by VACUUM first, else the next one at the tail), and is
 * held while the lane is written so that two inserters never share a block
 * image.  Lock order is always the metapage, then data pages in ascending
 * block order; scans and VACUUM never hold a data page while they wait for
 * the metapage.
 *
 * A block may span several pages, and a generic WAL record covers at most
 * MAX_GENERIC_XLOG_PAGES pages.  The pages holding only codes are logged
 * first; the record that sets the lane's live bit (with the block header
 * pages and the metapage) comes last.  A crash in between leaves codes in a
 * lane that is not live, which nothing reads.
 */
#include "postgres.h"

#include "access/generic_xlog.h"
#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "turbovec.h"
#include "tvresident.h"

/* Fix the dimension of an empty index from its first vector */
static void
SetDimension(Relation index, int dim)
{
	Buffer		metabuf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	GenericXLogState *xlog;
	Page		page;
	TvMetaPage	meta;

	LockBuffer(metabuf, BUFFER_LOCK_EXCLUSIVE);
	TvCheckMetaPage(index, BufferGetPage(metabuf));
	if (TvPageGetMeta(BufferGetPage(metabuf))->dim != 0)
	{
		/* someone else got there first */
		UnlockReleaseBuffer(metabuf);
		return;
	}

	xlog = GenericXLogStart(index);
	page = GenericXLogRegisterBuffer(xlog, metabuf, 0);
	meta = TvPageGetMeta(page);
	{
		TvCodec    *codec = TvCreateCodec(dim, meta->bits, meta->seed,
										  CurrentMemoryContext);

		meta->block_bytes = TvBlockBytes(codec);
		pfree(codec);
	}
	meta->dim = dim;
	meta->change_count++;
	TvCommitBuffer(metabuf, xlog);
}

/*
 * Find a free slot (allocated, not live) at or after the free hint.  Returns
 * false if there is none; *hint is then where the next search may start.
 */
static bool
FindFreeSlot(Relation index, const TvMetaPageData *meta, uint64 *slot, uint64 *hint)
{
	uint64		nblocks = (meta->nslots + TV_LANES - 1) / TV_LANES;

	for (uint64 b = meta->free_hint; b < nblocks; b++)
	{
		uint32		live;
		uint32		allocated;
		uint64		lanes = Min(meta->nslots - b * TV_LANES, (uint64) TV_LANES);

		TvReadStream(index, TvBlockOffset(meta, b) + TV_BLOCK_LIVE_OFFSET,
					 sizeof(uint32), (char *) &live, NULL);
		allocated = (lanes == TV_LANES) ? ~(uint32) 0 : (((uint32) 1 << lanes) - 1);
		if (allocated & ~live)
		{
			*slot = b * TV_LANES + pg_rightmost_one_pos32(allocated & ~live);
			*hint = b;
			return true;
		}
	}
	*hint = nblocks;
	return false;
}

/*
 * Return data page blkno exclusively locked.  Pages past ndatapages are
 * either new or left over from a crash after an extension: both get a fresh
 * empty image, logged whole.
 */
static Buffer
GetDataPage(Relation index, BlockNumber blkno, uint32 ndatapages)
{
	Buffer		buf;
	GenericXLogState *xlog;
	Page		page;

	if (blkno < TV_FIRST_DATA_BLKNO + ndatapages ||
		blkno < RelationGetNumberOfBlocks(index))
	{
		buf = ReadBuffer(index, blkno);
		LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
		if (blkno < TV_FIRST_DATA_BLKNO + ndatapages)
			return buf;
	}
	else
	{
		buf = TvNewDataBuffer(index, MAIN_FORKNUM);
		if (BufferGetBlockNumber(buf) != blkno)
			elog(ERROR, "turbo index \"%s\" extended to block %u, expected %u",
				 RelationGetRelationName(index), BufferGetBlockNumber(buf), blkno);
	}

	xlog = GenericXLogStart(index);
	page = GenericXLogRegisterBuffer(xlog, buf, GENERIC_XLOG_FULL_IMAGE);
	TvInitDataPage(page);
	GenericXLogFinish(xlog);
	return buf;
}

/* Write the new image of stream bytes held by bufs[i] into its page copy */
static bool
CopyBack(Page page, uint64 page_start, uint64 off, Size len, const char *image)
{
	uint64		lo = Max(page_start, off);
	uint64		hi = Min(page_start + TV_PAGE_PAYLOAD, off + len);
	char	   *dst = TvPagePayload(page) + (lo - page_start);
	const char *src = image + (lo - off);

	if (memcmp(dst, src, hi - lo) == 0)
		return false;
	memcpy(dst, src, hi - lo);
	return true;
}

/* Does block b have a free lane?  Sets *slot to the first one. */
static bool
BlockFreeLane(Relation index, const TvMetaPageData *meta, uint64 b, uint64 *slot)
{
	uint32		live;

	TvReadStream(index, TvBlockOffset(meta, b) + TV_BLOCK_LIVE_OFFSET,
				 sizeof(uint32), (char *) &live, NULL);
	if (live == ~(uint32) 0)
		return false;
	*slot = b * TV_LANES + pg_rightmost_one_pos32(~live);
	return true;
}

/*
 * Where an IVF insert goes: a free lane in the block VACUUM last freed lanes
 * in, else in the list's tail block, else a new block linked after the
 * tail.  Updates *entry for the final WAL record.
 */
static bool
ChooseListSlot(Relation index, const TvMetaPageData *meta, TvListEntry *entry,
			   uint64 *slot)
{
	if (entry->free_hint != 0 &&
		BlockFreeLane(index, meta, entry->free_hint - 1, slot))
		return true;
	entry->free_hint = 0;
	if (entry->tail != 0 && BlockFreeLane(index, meta, entry->tail - 1, slot))
		return true;
	return false;
}

/*
 * Put one encoded vector into a slot of the flat layout or of IVF list
 * `list` (chosen, and coded for, by the caller) and make it live
 */
static void
InsertVector(Relation index, TvIndexState *state, const float *x, int list,
			 const uint8 *code, const TvFactors *factors, ItemPointer tid)
{
	Buffer		metabuf;
	TvMetaPageData meta;
	uint64		slot;
	uint64		hint = 0;
	bool		reuse;
	uint64		block;
	int			lane;
	uint64		off;
	Size		S;
	BlockNumber first;
	BlockNumber last;
	BlockNumber hdr_last;
	int			nbufs;
	Buffer	   *bufs;
	char	   *image;
	GenericXLogState *xlog;
	int			nreg;
	TvMetaPage	newmeta;
	TvMetaPageData after;
	TvListEntry entry;
	uint64		entry_off = 0;
	Buffer		dirbuf = InvalidBuffer;
	BlockNumber dirblk = InvalidBlockNumber;
	uint8	   *refine = NULL;

	/* the resident copy's refinement code, made before any lock is taken */
	if (tv_shared != NULL)
	{
		const float *centroid = NULL;

		if (state->meta.lists > 0 && TvMetaResidual(&state->meta))
			centroid = TvCachedCentroids(index, NULL) + (Size) list * state->meta.dim;
		refine = palloc(tv_refine_bytes(state->meta.dim));
		TvResidentEncodeRefine(state->codec, state->metric, centroid, x, refine);
	}

	metabuf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	LockBuffer(metabuf, BUFFER_LOCK_EXCLUSIVE);
	TvCheckMetaPage(index, BufferGetPage(metabuf));
	memcpy(&meta, TvPageGetMeta(BufferGetPage(metabuf)), sizeof(meta));

	/* lists and flags are fixed at build; a new build is a new relfilenode */
	if (meta.lists != state->meta.lists || meta.flags != state->meta.flags ||
		(meta.lists > 0) != (list >= 0))
		elog(ERROR, "turbo index \"%s\" changed its lists under an insert",
			 RelationGetRelationName(index));
	/* the block image below is sized by the page, the code by the codec */
	if (meta.dim != state->meta.dim ||
		meta.block_bytes != (uint32) TvBlockBytes(state->codec))
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("turbo index \"%s\" has a corrupted metapage",
						RelationGetRelationName(index)),
				 errdetail("block_bytes %u and dim %u differ from %d and %u read before.",
						   meta.block_bytes, meta.dim, TvBlockBytes(state->codec),
						   state->meta.dim),
				 errhint("REINDEX the index.")));

	if (meta.lists > 0)
	{
		/* the directory only changes under the metapage lock we hold */
		entry_off = (uint64) list * sizeof(TvListEntry);
		TvReadStream(index, entry_off, sizeof(entry), (char *) &entry, NULL);
		reuse = ChooseListSlot(index, &meta, &entry, &slot);
		if (!reuse)
		{
			/* IVF blocks are handed out whole */
			slot = meta.nslots;
		}
		dirblk = TV_FIRST_DATA_BLKNO + entry_off / TV_PAGE_PAYLOAD;
	}
	else
	{
		reuse = FindFreeSlot(index, &meta, &slot, &hint);
		if (!reuse)
			slot = meta.nslots;
	}

	S = meta.block_bytes;
	block = slot / TV_LANES;
	lane = slot % TV_LANES;
	off = TvBlockOffset(&meta, block);
	first = TV_FIRST_DATA_BLKNO + off / TV_PAGE_PAYLOAD;
	last = TV_FIRST_DATA_BLKNO + (off + S - 1) / TV_PAGE_PAYLOAD;
	hdr_last = TV_FIRST_DATA_BLKNO + (off + TV_BLOCK_CODES_OFFSET - 1) / TV_PAGE_PAYLOAD;
	nbufs = last - first + 1;

	/* the directory page precedes every block page: lock it first */
	if (meta.lists > 0 && dirblk < first)
	{
		dirbuf = ReadBuffer(index, dirblk);
		LockBuffer(dirbuf, BUFFER_LOCK_EXCLUSIVE);
	}

	/* lock every page of the block, ascending, and assemble its image */
	bufs = palloc(sizeof(Buffer) * nbufs);
	image = palloc(S);
	for (int i = 0; i < nbufs; i++)
	{
		uint64		page_start = (uint64) (first + i - TV_FIRST_DATA_BLKNO) * TV_PAGE_PAYLOAD;
		uint64		lo = Max(page_start, off);
		uint64		hi = Min(page_start + TV_PAGE_PAYLOAD, off + S);

		bufs[i] = GetDataPage(index, first + i, meta.ndatapages);
		if (first + i == dirblk)
			dirbuf = bufs[i];
		memcpy(image + (lo - off),
			   TvPagePayload(BufferGetPage(bufs[i])) + (lo - page_start), hi - lo);
	}

	if (slot % TV_LANES == 0 && slot == meta.nslots)
	{
		/* a new block: whatever a crashed insert left there is not ours */
		memset(image, 0, S);
	}
	if (meta.lists > 0 && !reuse)
	{
		uint32		prev = entry.tail;
		uint32		l = (uint32) list;

		memcpy(image + TV_BLOCK_PREV_OFFSET, &prev, sizeof(uint32));
		memcpy(image + TV_BLOCK_LIST_OFFSET, &l, sizeof(uint32));
		entry.tail = (uint32) (block + 1);
		entry.nblocks++;
	}

	if (((uint32 *) image)[0] & ((uint32) 1 << lane))
		elog(ERROR, "turbo index \"%s\" slot " UINT64_FORMAT " is already live",
			 RelationGetRelationName(index), slot);

	tv_block_put_code(state->codec, (uint8 *) image + TV_BLOCK_CODES_OFFSET, lane, code);
	memcpy(image + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
		   tid, sizeof(ItemPointerData));
	memcpy(image + TV_BLOCK_NORM_OFFSET + lane * sizeof(float),
		   &factors->norm, sizeof(float));
	memcpy(image + TV_BLOCK_IPSCALE_OFFSET + lane * sizeof(float),
		   &factors->ipscale, sizeof(float));

	/* code-only pages first, at most MAX_GENERIC_XLOG_PAGES per record */
	xlog = NULL;
	nreg = 0;
	for (BlockNumber blkno = hdr_last + 1; blkno <= last; blkno++)
	{
		Buffer		buf = bufs[blkno - first];
		uint64		page_start = (uint64) (blkno - TV_FIRST_DATA_BLKNO) * TV_PAGE_PAYLOAD;
		Page		page;

		if (xlog == NULL)
			xlog = GenericXLogStart(index);
		page = GenericXLogRegisterBuffer(xlog, buf, 0);
		CopyBack(page, page_start, off, S, image);
		if (++nreg == MAX_GENERIC_XLOG_PAGES)
		{
			GenericXLogFinish(xlog);
			xlog = NULL;
			nreg = 0;
		}
	}
	if (xlog != NULL)
		GenericXLogFinish(xlog);

	/*
	 * Then the live bit, the header, the list's directory entry and the
	 * metapage, atomically: at most 4 pages.
	 */
	((uint32 *) image)[0] |= (uint32) 1 << lane;
	xlog = GenericXLogStart(index);
	newmeta = TvPageGetMeta(GenericXLogRegisterBuffer(xlog, metabuf, 0));
	for (BlockNumber blkno = first; blkno <= hdr_last; blkno++)
	{
		uint64		page_start = (uint64) (blkno - TV_FIRST_DATA_BLKNO) * TV_PAGE_PAYLOAD;
		Page		page = GenericXLogRegisterBuffer(xlog, bufs[blkno - first], 0);

		CopyBack(page, page_start, off, S, image);
	}
	if (meta.lists > 0)
	{
		/* registering a buffer twice hands back the same page copy */
		Page		page = GenericXLogRegisterBuffer(xlog, dirbuf, 0);

		memcpy(TvPagePayload(page) + entry_off % TV_PAGE_PAYLOAD, &entry, sizeof(entry));
		if (!reuse)
			newmeta->nslots = meta.nslots + TV_LANES;
	}
	else
	{
		if (!reuse)
			newmeta->nslots = meta.nslots + 1;
		newmeta->free_hint = hint;
	}
	newmeta->ndatapages = Max(meta.ndatapages, last - TV_FIRST_DATA_BLKNO + 1);
	newmeta->change_count++;
	after = *newmeta;
	GenericXLogFinish(xlog);

	/* the resident copy follows while the metapage is still ours */
	TvResidentApplyInsert(index, &after, meta.change_count, slot, image, refine,
						  entry_off, meta.lists > 0 ? &entry : NULL);

	for (int i = 0; i < nbufs; i++)
		UnlockReleaseBuffer(bufs[i]);
	if (BufferIsValid(dirbuf) && dirblk < first)
		UnlockReleaseBuffer(dirbuf);
	UnlockReleaseBuffer(metabuf);
}

bool
tvinsert(Relation index, Datum *values, bool *isnull, ItemPointer heap_tid,
		 Relation heap, IndexUniqueCheck checkUnique TV_AMINSERT_UNCHANGED_ARG,
		 IndexInfo *indexInfo)
{
	MemoryContext insertCtx;
	MemoryContext oldCtx;
	TvIndexState *state;
	float	   *x;
	int			dim;
	uint8	   *code;
	float	   *work;
	TvFactors	factors;
	int			list = -1;
	const float *centroid = NULL;

	/* NULL vectors are not indexed */
	if (isnull[0])
		return false;

	insertCtx = AllocSetContextCreate(CurrentMemoryContext,
									  "turbovec insert temporary context",
									  ALLOCSET_DEFAULT_SIZES);
	oldCtx = MemoryContextSwitchTo(insertCtx);

	state = TvGetIndexState(index);
	x = TvDatumGetFloats(state->toarray, values[0], &dim);
	/* detoasting takes locks, which may have flushed rd_amcache */
	state = TvGetIndexState(index);
	if (state->meta.dim == 0)
	{
		SetDimension(index, dim);
		state = TvGetIndexState(index);
	}
	TvCheckDimensions(index, state->meta.dim, dim);
	TvCheckNorm(index, x, dim);

	code = palloc0(state->codec->code_bytes);
	work = palloc(sizeof(float) * TvEncodeWorkFloats(state->codec));
	if (state->meta.lists > 0)
	{
		/* centroids never change after the build: no lock needed to choose */
		const float *cnorms;
		const float *centroids = TvCachedCentroids(index, &cnorms);

		TvNearestLists(centroids, cnorms, state->meta.lists, state->meta.dim,
					   state->metric, x, 1, &list);
		if (TvMetaResidual(&state->meta))
			centroid = centroids + (Size) list * state->meta.dim;
	}
	if (TvEncodeVector(state->codec, state->metric, centroid, x, code, &factors, work))
		InsertVector(index, state, x, list, code, &factors, heap_tid);

	MemoryContextSwitchTo(oldCtx);
	MemoryContextDelete(insertCtx);

	return false;
}
