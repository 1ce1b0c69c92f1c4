/*
 * tvbuild.c
 *	  CREATE INDEX for turbo indexes: encode every row and lay the blocks
 *	  end to end in the page stream.
 *
 * The build fills 32-lane blocks in heap order and copies them into data
 * pages that it writes through shared buffers, only marking them dirty.
 * The whole relation is WAL-logged once at the end (log_newpage_range),
 * which is far cheaper than a record per page; the metapage is written last,
 * so a build that errors out leaves nothing that claims to be valid.
 */
#include "postgres.h"

#include "access/tableam.h"
#include "access/xloginsert.h"
#include "catalog/index.h"
#include "commands/progress.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "turbovec.h"

typedef struct TvBuildState
{
	Relation	index;
	int			bits;
	TvMetric	metric;
	uint64		seed;

	/* set by the first vector */
	int			dim;
	TvCodec    *codec;
	int			block_bytes;
	uint8	   *code;
	float	   *work;

	/* the block being filled and the page being filled */
	char	   *block;
	int			lanes;
	PGAlignedBlock page;
	Size		page_fill;
	BlockNumber ndatapages;

	uint64		nslots;
	double		reltuples;
	double		indtuples;
	MemoryContext tmpCtx;
} TvBuildState;

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

/* Append the current block to the stream */
static void
FlushBlock(TvBuildState *bs)
{
	const char *src = bs->block;
	Size		left = bs->block_bytes;

	while (left > 0)
	{
		Size		n = Min(left, TV_PAGE_PAYLOAD - bs->page_fill);

		memcpy(TvPagePayload(bs->page.data) + bs->page_fill, src, n);
		bs->page_fill += n;
		src += n;
		left -= n;
		if (bs->page_fill == TV_PAGE_PAYLOAD)
			FlushPage(bs);
	}
	memset(bs->block, 0, bs->block_bytes);
	bs->lanes = 0;
}

/* The first vector fixes the dimension of the index */
static void
StartCodec(TvBuildState *bs, int dim)
{
	bs->dim = dim;
	bs->codec = TvCreateCodec(dim, bs->bits, bs->seed, CurrentMemoryContext);
	bs->block_bytes = TvBlockBytes(bs->codec);
	bs->block = palloc0(bs->block_bytes);
	bs->code = palloc0(bs->codec->code_bytes);
	bs->work = palloc(sizeof(float) * tv_codec_work_floats(bs->codec));
}

static void
BuildCallback(Relation index, ItemPointer tid, Datum *values, bool *isnull,
			  bool tupleIsAlive, void *state)
{
	TvBuildState *bs = (TvBuildState *) state;
	MemoryContext oldCtx;
	float	   *x;
	int			dim;
	TvFactors	factors;
	bool		index_it;

	bs->reltuples++;
	if (isnull[0])
		return;

	oldCtx = MemoryContextSwitchTo(bs->tmpCtx);
	x = TvArrayGetFloats(DatumGetArrayTypeP(values[0]), &dim);
	MemoryContextSwitchTo(oldCtx);

	if (bs->codec == NULL)
		StartCodec(bs, dim);
	else
		TvCheckDimensions(index, bs->dim, dim);

	index_it = tv_codec_encode(bs->codec, x, bs->code, &factors, bs->work) ||
		bs->metric != TV_METRIC_COSINE;
	if (index_it)
	{
		int			lane = bs->lanes;

		tv_block_put_code(bs->codec, (uint8 *) bs->block + TV_BLOCK_CODES_OFFSET,
						  lane, bs->code);
		memcpy(bs->block + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
			   tid, sizeof(ItemPointerData));
		memcpy(bs->block + TV_BLOCK_NORM_OFFSET + lane * sizeof(float),
			   &factors.norm, sizeof(float));
		memcpy(bs->block + TV_BLOCK_IPSCALE_OFFSET + lane * sizeof(float),
			   &factors.ipscale, sizeof(float));
		((uint32 *) bs->block)[0] |= (uint32) 1 << lane;

		bs->lanes++;
		bs->nslots++;
		bs->indtuples++;
		if (bs->lanes == TV_LANES)
			FlushBlock(bs);
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
									 (int64) bs->indtuples);
	}

	MemoryContextReset(bs->tmpCtx);
}

/* Write the metapage into an already allocated, locked buffer */
static void
WriteMetaPage(Buffer metabuf, TvBuildState *bs)
{
	Page		page = BufferGetPage(metabuf);
	TvMetaPage	meta;

	TvInitMetaPage(page, bs->bits, bs->metric, bs->seed);
	meta = TvPageGetMeta(page);
	meta->dim = bs->dim;
	meta->block_bytes = bs->block_bytes;
	meta->nslots = bs->nslots;
	meta->free_hint = bs->nslots / TV_LANES;
	meta->change_count = 1;
	meta->ndatapages = bs->ndatapages;
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
	bs.metric = TvGetMetric(index);
	bs.seed = TV_CODEC_DEFAULT_SEED;
	bs.tmpCtx = AllocSetContextCreate(CurrentMemoryContext,
									  "turbovec build temporary context",
									  ALLOCSET_DEFAULT_SIZES);
	TvInitDataPage(bs.page.data);

	/* block 0 is the metapage; it gets its contents at the end */
	metabuf = TvNewDataBuffer(index, MAIN_FORKNUM);
	Assert(BufferGetBlockNumber(metabuf) == TV_METAPAGE_BLKNO);
	LockBuffer(metabuf, BUFFER_LOCK_UNLOCK);

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE, TV_PHASE_ENCODE);
	/* the planner's row estimate: the best total known before the scan */
	if (heap->rd_rel->reltuples > 0)
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_TOTAL,
									 (int64) heap->rd_rel->reltuples);
	bs.reltuples = table_index_build_scan(heap, index, indexInfo, true, true,
										  BuildCallback, &bs, NULL);

	if (bs.lanes > 0)
		FlushBlock(&bs);
	if (bs.page_fill > 0)
		FlushPage(&bs);

	LockBuffer(metabuf, BUFFER_LOCK_EXCLUSIVE);
	WriteMetaPage(metabuf, &bs);
	UnlockReleaseBuffer(metabuf);

	if (RelationNeedsWAL(index))
		log_newpage_range(index, MAIN_FORKNUM, 0,
						  RelationGetNumberOfBlocks(index), true);

	MemoryContextDelete(bs.tmpCtx);

	result = (IndexBuildResult *) palloc(sizeof(IndexBuildResult));
	result->heap_tuples = bs.reltuples;
	result->index_tuples = bs.indtuples;
	return result;
}

/* The init fork of an unlogged index: a metapage with no vectors */
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
