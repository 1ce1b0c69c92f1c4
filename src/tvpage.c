/*
 * tvpage.c
 *	  Page format of the turbo index: metapage, data pages carrying the
 *	  block stream, the per-index cache, and buffer/WAL helpers.
 *
 * Invariants: block 0 is the metapage; blocks 1..ndatapages carry stream
 * bytes [(blkno - 1) * TV_PAGE_PAYLOAD, blkno * TV_PAGE_PAYLOAD).  Every data
 * page has pd_lower == pd_upper (its payload is below pd_lower), so generic
 * WAL, which skips the hole between them, loses nothing.  The metapage keeps
 * pd_lower at the end of TvMetaPageData for the same reason.
 */
#include "postgres.h"

#include "access/generic_xlog.h"
#include "catalog/index.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "turbovec.h"

/* Size of one block of the stream for this codec; a multiple of 8 */
int
TvBlockBytes(const TvCodec *codec)
{
	return (int) TYPEALIGN(8, TV_BLOCK_CODES_OFFSET + codec->block_code_bytes);
}

/* Build a codec in the given memory context */
TvCodec *
TvCreateCodec(int dim, int bits, uint64 seed, MemoryContext cxt)
{
	TvCodec    *codec = MemoryContextAllocHuge(cxt, tv_codec_size(dim));

	tv_codec_init(codec, dim, bits, seed);
	return codec;
}

/* The bits reloption of an index (the default when unset) */
int
TvGetBits(Relation index)
{
	TvOptions  *opts = (TvOptions *) index->rd_options;

	return opts ? opts->bits : TV_DEFAULT_BITS;
}

/* The lists reloption of an index (0, the flat layout, when unset) */
int
TvGetLists(Relation index)
{
	TvOptions  *opts = (TvOptions *) index->rd_options;

	return opts ? opts->lists : TV_DEFAULT_LISTS;
}

bool
TvGetResidual(Relation index)
{
	TvOptions  *opts = (TvOptions *) index->rd_options;

	return opts ? opts->residual : TV_DEFAULT_RESIDUAL;
}

/* Ask the opclass which metric its distance is */
TvMetric
TvGetMetric(Relation index)
{
	FmgrInfo   *proc = index_getprocinfo(index, 1, TV_METRIC_PROC);
	int32		metric = DatumGetInt32(FunctionCall1(proc, (Datum) 0));

	if (metric < TV_METRIC_L2 || metric > TV_METRIC_COSINE)
		elog(ERROR, "turbo metric support function returned %d", metric);
	return (TvMetric) metric;
}

void
TvInitMetaPage(Page page, int bits, TvMetric metric, uint64 seed)
{
	TvMetaPage	meta;
	TvPageOpaque opaque;

	PageInit(page, BLCKSZ, sizeof(TvPageOpaqueData));
	opaque = TvPageGetOpaque(page);
	opaque->flags = TV_PAGE_META;
	opaque->page_id = TV_PAGE_ID;

	meta = TvPageGetMeta(page);
	MemSet(meta, 0, sizeof(TvMetaPageData));
	meta->magic = TV_MAGIC_NUMBER;
	meta->version = TV_VERSION;
	meta->dim = 0;
	meta->bits = bits;
	meta->metric = metric;
	meta->seed = seed;
	meta->block_bytes = 0;
	meta->page_payload = TV_PAGE_PAYLOAD;
	meta->flags = 0;

	((PageHeader) page)->pd_lower =
		((char *) meta + sizeof(TvMetaPageData)) - (char *) page;
}

void
TvInitDataPage(Page page)
{
	TvPageOpaque opaque;

	PageInit(page, BLCKSZ, sizeof(TvPageOpaqueData));
	opaque = TvPageGetOpaque(page);
	opaque->flags = TV_PAGE_DATA;
	opaque->page_id = TV_PAGE_ID;
	/* the whole payload is data: no hole for generic WAL to skip */
	((PageHeader) page)->pd_lower = ((PageHeader) page)->pd_upper;
}

/* Refuse a metapage we do not understand before trusting any field */
void
TvCheckMetaPage(Relation index, Page page)
{
	TvMetaPage	meta = TvPageGetMeta(page);

	if (PageIsNew(page) ||
		TvPageGetOpaque(page)->page_id != TV_PAGE_ID ||
		meta->magic != TV_MAGIC_NUMBER)
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("turbo index \"%s\" has a bad metapage",
						RelationGetRelationName(index)),
				 errhint("REINDEX the index.")));
	if (meta->version != TV_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("turbo index \"%s\" has format version %u, expected %d",
						RelationGetRelationName(index), meta->version, TV_VERSION),
				 errhint("REINDEX the index.")));
	if (meta->dim > TV_CODEC_MAX_DIM ||
		meta->bits < TV_MIN_BITS || meta->bits > TV_MAX_BITS ||
		meta->metric < TV_METRIC_L2 || meta->metric > TV_METRIC_COSINE ||
		meta->page_payload != TV_PAGE_PAYLOAD)
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("turbo index \"%s\" has an impossible metapage",
						RelationGetRelationName(index)),
				 errdetail("dim %u, bits %u, metric %u, page payload %u.",
						   meta->dim, meta->bits, meta->metric, meta->page_payload),
				 errhint("REINDEX the index.")));
}

/* Copy the metapage out under a share lock */
void
TvReadMeta(Relation index, TvMetaPageData *meta)
{
	Buffer		buf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	Page		page;

	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	TvCheckMetaPage(index, page);
	memcpy(meta, TvPageGetMeta(page), sizeof(TvMetaPageData));
	UnlockReleaseBuffer(buf);
}

/*
 * The index's immutable parameters and codec, cached in rd_amcache.  Only
 * dim changes, once, from 0 when the first vector arrives, so a cached state
 * with dim 0 is re-read.  Counters in state->meta are stale by design:
 * whoever needs nslots reads the metapage.
 */
TvIndexState *
TvGetIndexState(Relation index)
{
	TvIndexState *state = (TvIndexState *) index->rd_amcache;

	if (state == NULL || state->meta.dim == 0)
	{
		TvMetaPageData meta;

		TvReadMeta(index, &meta);
		if (state == NULL)
		{
			state = MemoryContextAllocZero(index->rd_indexcxt, sizeof(TvIndexState));
			state->metric = TvGetMetric(index);
			fmgr_info_copy(&state->distance,
						   index_getprocinfo(index, 1, TV_DISTANCE_PROC),
						   index->rd_indexcxt);
			state->collation = index->rd_indcollation[0];
			state->toarray = TvGetToArrayProc(index, index->rd_indexcxt);
			index->rd_amcache = state;
		}
		state->meta = meta;
		if (meta.dim > 0 && state->codec == NULL)
		{
			state->codec = TvCreateCodec(meta.dim, meta.bits, meta.seed,
										 index->rd_indexcxt);
			if (meta.block_bytes != (uint32) TvBlockBytes(state->codec))
				ereport(ERROR,
						(errcode(ERRCODE_INDEX_CORRUPTED),
						 errmsg("turbo index \"%s\" has block size %u, expected %d",
								RelationGetRelationName(index), meta.block_bytes,
								TvBlockBytes(state->codec)),
						 errhint("REINDEX the index.")));
		}
	}
	return state;
}

/*
 * A private copy of the state for callers that keep it across calls:
 * rd_amcache is freed on every relcache invalidation.
 */
TvIndexState *
TvCopyIndexState(const TvIndexState *src, MemoryContext cxt)
{
	TvIndexState *dst = MemoryContextAlloc(cxt, sizeof(TvIndexState));

	memcpy(dst, src, sizeof(TvIndexState));
	dst->centroids = NULL;
	dst->cnorms = NULL;
	fmgr_info_copy(&dst->distance, unconstify(FmgrInfo *, &src->distance), cxt);
	if (src->toarray)
	{
		dst->toarray = MemoryContextAlloc(cxt, sizeof(FmgrInfo));
		fmgr_info_copy(dst->toarray, src->toarray, cxt);
	}
	if (src->codec)
	{
		Size		size = tv_codec_size(src->codec->dim);

		dst->codec = MemoryContextAllocHuge(cxt, size);
		memcpy(dst->codec, src->codec, size);
	}
	return dst;
}

/*
 * The centroids of an IVF index and their squared norms (for
 * TvNearestLists), read once per relcache entry.  They never
 * change after the build (a rebuild holds an exclusive lock and invalidates
 * this cache), and they live in rd_indexcxt, which stays while the index is
 * open even when a relcache flush frees rd_amcache: a scan may keep the
 * pointer.
 */
const float *
TvCachedCentroids(Relation index, const float **cnorms)
{
	TvIndexState *state = TvGetIndexState(index);

	Assert(state->meta.lists > 0);
	if (state->centroids == NULL)
	{
		MemoryContext oldCtx = MemoryContextSwitchTo(index->rd_indexcxt);

		state->centroids = TvReadCentroids(index, &state->meta, NULL, index->rd_indexcxt);
		state->cnorms = TvCentroidNorms(state->centroids, state->meta.lists, state->meta.dim);
		MemoryContextSwitchTo(oldCtx);
	}
	if (cnorms)
		*cnorms = state->cnorms;
	return state->centroids;
}

/* Scratch floats TvEncodeVector needs: the codec's, then the residual */
size_t
TvEncodeWorkFloats(const TvCodec *codec)
{
	return tv_codec_work_floats(codec) + codec->dim;
}

/*
 * Encode one vector for the index.  centroid is NULL for the flat layout and
 * for IVF indexes that code the vector itself; otherwise the code is of the
 * residual r = x - c (x/||x|| - c under cosine, whose centroids are unit
 * vectors) and the norm factor is still ||x||, so a scan estimates
 * <q, x> as <q, c> + ipscale * <q, rhat> (docs/FORMAT.md).  A residual of
 * zero gets the zero code and ipscale 0: its estimate is exact.
 *
 * Returns false when the vector cannot be indexed: a zero vector under
 * cosine has no direction (like pgvector, such rows are left out of the
 * index, as NULLs are).
 */
bool
TvEncodeVector(const TvCodec *codec, TvMetric metric, const float *centroid,
			   const float *x, uint8 *code, TvFactors *factors, float *work)
{
	int			dim = codec->dim;
	float	   *r = work + tv_codec_work_floats(codec);
	double		norm;

	if (centroid == NULL)
	{
		bool		nonzero = tv_codec_encode(codec, x, code, factors, work);

		return nonzero || metric != TV_METRIC_COSINE;
	}

	norm = TvNorm(x, dim);
	if (metric == TV_METRIC_COSINE)
	{
		if (norm == 0)
			return false;
		for (int i = 0; i < dim; i++)
			r[i] = (float) (x[i] / norm) - centroid[i];
	}
	else
	{
		for (int i = 0; i < dim; i++)
			r[i] = x[i] - centroid[i];
	}
	tv_codec_encode(codec, r, code, factors, work);
	factors->norm = (float) norm;
	return true;
}

/*
 * Add one page to the relation.  Returns it exclusively locked and not
 * initialized.  Callers serialize on the metapage lock already; the
 * extension lock keeps us correct against anything else that extends.
 */
Buffer
TvNewDataBuffer(Relation index, ForkNumber forknum)
{
	Buffer		buf;

	LockRelationForExtension(index, ExclusiveLock);
	buf = ReadBufferExtended(index, forknum, P_NEW, RBM_NORMAL, NULL);
	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	UnlockRelationForExtension(index, ExclusiveLock);
	return buf;
}

/* Finish a generic WAL record and release its buffer */
void
TvCommitBuffer(Buffer buf, GenericXLogState *state)
{
	GenericXLogFinish(state);
	UnlockReleaseBuffer(buf);
}

/*
 * Copy stream bytes [offset, offset + len) out of the data pages, one page
 * share-locked at a time.  Pages past the end read as zeros.
 */
void
TvReadStream(Relation index, uint64 offset, Size len, char *out,
			 BufferAccessStrategy strategy)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(index);

	while (len > 0)
	{
		BlockNumber blkno = TV_FIRST_DATA_BLKNO + offset / TV_PAGE_PAYLOAD;
		Size		start = offset % TV_PAGE_PAYLOAD;
		Size		n = Min(len, TV_PAGE_PAYLOAD - start);

		if (blkno < nblocks)
		{
			Buffer		buf = ReadBufferExtended(index, MAIN_FORKNUM, blkno,
												 RBM_NORMAL, strategy);

			LockBuffer(buf, BUFFER_LOCK_SHARE);
			memcpy(out, TvPagePayload(BufferGetPage(buf)) + start, n);
			UnlockReleaseBuffer(buf);
		}
		else
			memset(out, 0, n);
		out += n;
		offset += n;
		len -= n;
	}
}

/*
 * The value the index holds for the table row in slot: the column, or the
 * index expression evaluated on the row (estate needed only then).  False
 * when it is NULL.
 */
bool
TvIndexValue(IndexInfo *indexInfo, EState *estate, TupleTableSlot *slot, Datum *value)
{
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];

	if (indexInfo->ii_Expressions != NIL)
	{
		ExprContext *econtext = GetPerTupleExprContext(estate);

		ResetExprContext(econtext);
		econtext->ecxt_scantuple = slot;
		FormIndexDatum(indexInfo, slot, estate, values, isnull);
	}
	else
		values[0] = slot_getattr(slot, indexInfo->ii_IndexAttrNumbers[0], &isnull[0]);
	*value = values[0];
	return !isnull[0];
}
