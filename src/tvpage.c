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

#include <math.h>

#include "access/generic_xlog.h"
#include "catalog/index.h"
#include "executor/executor.h"
#include "executor/instrument.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "turbovec.h"
#include "tvresident.h"

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

/* The lists reloption of an index: TV_DEFAULT_LISTS (-1) when not given, so
 * the build chooses (TvAutoLists); 0 asks for the flat layout */
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

/* Block size the stream must use for (dim, bits); 0 while dim is 0 */
static uint32
ExpectedBlockBytes(uint32 dim, uint32 bits)
{
	int			code_bytes;

	if (dim == 0)
		return 0;
	code_bytes = tv_codec_block_code_bytes((int) dim, (int) bits);
	Assert(code_bytes > 0);
	return (uint32) TYPEALIGN(8, TV_BLOCK_CODES_OFFSET + code_bytes);
}

#define MetaCorrupted(index, ...) \
	ereport(ERROR, \
			(errcode(ERRCODE_INDEX_CORRUPTED), \
			 errmsg("turbo index \"%s\" has a corrupted metapage", \
					RelationGetRelationName(index)), \
			 errdetail(__VA_ARGS__), \
			 errhint("REINDEX the index.")))

/*
 * Refuse a metapage with any field we cannot trust, before anything is
 * sized from it: identity, the codec's shape, the list area and the slot
 * count against the pages the metapage and the relation hold.  The caller
 * holds a lock on the metapage buffer.
 *
 * The relation may have more pages than ndatapages (an insert that
 * extended it and crashed before its final record), never fewer: data pages
 * are extended and logged before the metapage record that counts them.
 *
 * When this backend has cached the index's state with a dimension, the
 * fields fixed for the life of the relfilenode must also still match the
 * cache, since callers mix the page's sizes with the cached codec and
 * centroids.
 */
void
TvCheckMetaPage(Relation index, Page page)
{
	TvMetaPage	meta = TvPageGetMeta(page);
	TvIndexState *cached = (TvIndexState *) index->rd_amcache;
	BlockNumber nblocks;
	uint32		expect_bytes;
	uint64		needed;

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
	if (meta->dim > TV_CODEC_MAX_DIM)
		MetaCorrupted(index, "dim is %u, at most %d is possible.",
					  meta->dim, TV_CODEC_MAX_DIM);
	if (meta->bits < TV_MIN_BITS || meta->bits > TV_MAX_BITS)
		MetaCorrupted(index, "bits is %u, expected %d to %d.",
					  meta->bits, TV_MIN_BITS, TV_MAX_BITS);
	if (meta->metric < TV_METRIC_L2 || meta->metric > TV_METRIC_COSINE)
		MetaCorrupted(index, "metric is %u, expected %d to %d.",
					  meta->metric, TV_METRIC_L2, TV_METRIC_COSINE);
	if (meta->page_payload != TV_PAGE_PAYLOAD)
		MetaCorrupted(index, "page_payload is %u, expected %d.",
					  meta->page_payload, (int) TV_PAGE_PAYLOAD);
	expect_bytes = ExpectedBlockBytes(meta->dim, meta->bits);
	if (meta->block_bytes != expect_bytes)
		MetaCorrupted(index, "block_bytes is %u, expected %u for dim %u at %u bits.",
					  meta->block_bytes, expect_bytes, meta->dim, meta->bits);
	if (meta->lists > TV_MAX_LISTS || (meta->dim == 0 && meta->lists != 0))
		MetaCorrupted(index, "lists is %u with dim %u, at most %d lists are possible.",
					  meta->lists, meta->dim, TV_MAX_LISTS);
	if (meta->list_area != (meta->lists > 0 ? TvListAreaBytes(meta->lists, meta->dim) : 0))
		MetaCorrupted(index, "list_area is %u, expected %u for %u lists of dim %u.",
					  meta->list_area,
					  meta->lists > 0 ? TvListAreaBytes(meta->lists, meta->dim) : 0,
					  meta->lists, meta->dim);
	if ((meta->flags & ~TV_META_RESIDUAL) != 0 ||
		(TvMetaResidual(meta) && meta->lists == 0))
		MetaCorrupted(index, "flags is 0x%X with %u lists.", meta->flags, meta->lists);
	if ((meta->dim == 0 && meta->nslots != 0) ||
		(meta->lists > 0 && meta->nslots % TV_LANES != 0))
		MetaCorrupted(index, "nslots is " UINT64_FORMAT " with dim %u and %u lists.",
					  meta->nslots, meta->dim, meta->lists);

	/* a slot takes more than a byte, so this bounds nslots before any product */
	nblocks = RelationGetNumberOfBlocks(index);
	if ((uint64) meta->ndatapages + TV_FIRST_DATA_BLKNO > nblocks)
		MetaCorrupted(index, "ndatapages is %u, but the index has %u pages.",
					  meta->ndatapages, nblocks);
	if (meta->nslots > (uint64) meta->ndatapages * TV_PAGE_PAYLOAD)
		MetaCorrupted(index, "nslots is " UINT64_FORMAT ", more than %u data pages can hold.",
					  meta->nslots, meta->ndatapages);
	needed = TvStreamPages(meta, TvBlockCount(meta));
	if (needed > meta->ndatapages)
		MetaCorrupted(index, "nslots is " UINT64_FORMAT " and list_area %u, which need " UINT64_FORMAT " data pages, but ndatapages is %u.",
					  meta->nslots, meta->list_area, needed, meta->ndatapages);
	if (meta->free_hint > TvBlockCount(meta))
		MetaCorrupted(index, "free_hint is " UINT64_FORMAT ", past block " UINT64_FORMAT ".",
					  meta->free_hint, TvBlockCount(meta));

	if (cached != NULL && cached->meta.dim != 0 &&
		(meta->dim != cached->meta.dim || meta->bits != cached->meta.bits ||
		 meta->seed != cached->meta.seed || meta->lists != cached->meta.lists ||
		 meta->flags != cached->meta.flags))
		MetaCorrupted(index, "dim %u, bits %u, %u lists and flags 0x%X differ from dim %u, bits %u, %u lists and flags 0x%X read before.",
					  meta->dim, meta->bits, meta->lists, meta->flags,
					  cached->meta.dim, cached->meta.bits, cached->meta.lists,
					  cached->meta.flags);
}

/* Copy the metapage out under a share lock, validated */
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
 * The memory behind the cached state of an index.  The relcache pfrees
 * rd_amcache on every invalidation of an open index but keeps rd_indexcxt,
 * so the codec, centroids and conversion function, which a scan may still
 * point at, live in a child context of rd_indexcxt that is found again
 * through a backend-local table and reused while the relfilenode stays the
 * same: a flush then costs nothing, however often it comes.  The context
 * goes with rd_indexcxt, or when the index gets a new relfilenode (REINDEX,
 * TRUNCATE: no scan of ours can be open then).
 */
typedef struct TvIndexCache
{
	Oid			indexoid;		/* hash key */
	MemoryContext cxt;			/* holds all of this */
	MemoryContext parent;		/* the rd_indexcxt it belongs to */
	Oid			relfilenode;
	/* the metapage's shape the codec and centroids were made for */
	uint64		seed;
	uint32		dim;			/* 0 until the codec exists */
	uint32		bits;
	uint32		lists;
	uint32		flags;
	TvCodec    *codec;
	float	   *centroids;
	float	   *cnorms;
	uint8	   *rank_codes;		/* TvCachedRankCentroids */
	float	   *rank_scales;
	FmgrInfo   *toarray;
	bool		have_toarray;
	Buffer	   *hints;			/* TvBufferHints */
	BlockNumber nhints;
} TvIndexCache;

typedef struct TvIndexCacheRef
{
	Oid			indexoid;
	TvIndexCache *cache;
} TvIndexCacheRef;

static HTAB *tv_index_caches = NULL;

/* Reset callback of a cache context: forget it */
static void
ForgetIndexCache(void *arg)
{
	TvIndexCache *cache = (TvIndexCache *) arg;
	TvIndexCacheRef *ref;

	ref = hash_search(tv_index_caches, &cache->indexoid, HASH_FIND, NULL);
	if (ref != NULL && ref->cache == cache)
		hash_search(tv_index_caches, &cache->indexoid, HASH_REMOVE, NULL);
}

/*
 * Stop finding a cache whose metapage shape no longer holds: the index was
 * rebuilt in place (TRUNCATE of a table created in the same transaction
 * keeps the relfilenode).  Its context stays until rd_indexcxt goes, in case
 * anything still points into it.
 */
static void
AbandonIndexCache(TvIndexCache *cache)
{
	TvIndexCacheRef *ref;

	ref = hash_search(tv_index_caches, &cache->indexoid, HASH_FIND, NULL);
	if (ref != NULL && ref->cache == cache)
		hash_search(tv_index_caches, &cache->indexoid, HASH_REMOVE, NULL);
}

/* The index's cache for its current relfilenode, made when missing */
static TvIndexCache *
GetIndexCache(Relation index)
{
	Oid			indexoid = RelationGetRelid(index);
	TvIndexCacheRef *ref;
	TvIndexCache *cache;
	MemoryContextCallback *cb;
	bool		found;

	if (tv_index_caches == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(TvIndexCacheRef);
		tv_index_caches = hash_create("turbovec index caches", 64, &ctl,
									  HASH_ELEM | HASH_BLOBS);
	}
	ref = hash_search(tv_index_caches, &indexoid, HASH_FIND, NULL);
	if (ref != NULL)
	{
		cache = ref->cache;
		if (cache->parent == index->rd_indexcxt &&
			cache->relfilenode == TvRelFileNumber(index))
			return cache;
		/*
		 * A new relfilenode comes with an invalidation that freed rd_amcache,
		 * and no scan of ours can be open across it (REINDEX and TRUNCATE
		 * refuse an index in use): nothing still points into the old
		 * context.  Should rd_amcache still be set, keep the context.
		 */
		if (index->rd_amcache == NULL)
			MemoryContextDelete(cache->cxt);
		else
			AbandonIndexCache(cache);
	}

	cache = NULL;
	{
		MemoryContext cxt = AllocSetContextCreate(index->rd_indexcxt,
												  "turbovec index cache",
												  ALLOCSET_SMALL_SIZES);

		MemoryContextCopyAndSetIdentifier(cxt, RelationGetRelationName(index));
		cache = MemoryContextAllocZero(cxt, sizeof(TvIndexCache));
		cache->indexoid = indexoid;
		cache->cxt = cxt;
		cache->parent = index->rd_indexcxt;
		cache->relfilenode = TvRelFileNumber(index);
		cb = MemoryContextAlloc(cxt, sizeof(MemoryContextCallback));
		cb->func = ForgetIndexCache;
		cb->arg = cache;
		MemoryContextRegisterResetCallback(cxt, cb);
	}
	ref = hash_search(tv_index_caches, &indexoid, HASH_ENTER, &found);
	ref->cache = cache;
	return cache;
}

/*
 * The index's immutable parameters and codec, cached in rd_amcache.  Only
 * dim changes, once, from 0 when the first vector arrives, so a cached state
 * with dim 0 is re-read.  Counters in state->meta are stale by design:
 * whoever needs nslots reads the metapage.  Everything cached comes from a
 * metapage TvReadMeta has validated.
 */
TvIndexState *
TvGetIndexState(Relation index)
{
	TvIndexState *state = (TvIndexState *) index->rd_amcache;
	TvIndexCache *cache;
	TvMetaPageData meta;

	if (state != NULL && state->meta.dim != 0)
		return state;

	TvReadMeta(index, &meta);
	cache = GetIndexCache(index);
	state = (TvIndexState *) index->rd_amcache;
	if (cache->codec != NULL &&
		(meta.dim != cache->dim || meta.bits != cache->bits || meta.seed != cache->seed ||
		 meta.lists != cache->lists || meta.flags != cache->flags))
	{
		/* a state still cached lives in the abandoned context: start afresh */
		index->rd_amcache = NULL;
		state = NULL;
		AbandonIndexCache(cache);
		cache = GetIndexCache(index);
	}
	if (meta.dim > 0 && cache->codec == NULL)
	{
		cache->codec = TvCreateCodec(meta.dim, meta.bits, meta.seed, cache->cxt);
		cache->dim = meta.dim;
		cache->bits = meta.bits;
		cache->seed = meta.seed;
		cache->lists = meta.lists;
		cache->flags = meta.flags;
	}
	if (!cache->have_toarray)
	{
		cache->toarray = TvGetToArrayProc(index, cache->cxt);
		cache->have_toarray = true;
	}
	if (state == NULL)
	{
		/* the relcache pfrees this chunk; its context keeps the rest */
		state = MemoryContextAllocZero(cache->cxt, sizeof(TvIndexState));
		state->metric = TvGetMetric(index);
		fmgr_info_copy(&state->distance,
					   index_getprocinfo(index, 1, TV_DISTANCE_PROC),
					   cache->cxt);
		state->collation = index->rd_indcollation[0];
		state->toarray = cache->toarray;
		index->rd_amcache = state;
	}
	state->meta = meta;
	state->codec = cache->codec;
	state->centroids = cache->centroids;
	state->cnorms = cache->cnorms;
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
 * TvNearestLists), read once per relfilenode.  They never change after the
 * build (a rebuild is a new relfilenode), and they live in the index's
 * cache context, which outlives relcache flushes while the index is open:
 * a scan may keep the pointer.
 */
const float *
TvCachedCentroids(Relation index, const float **cnorms)
{
	TvIndexState *state = TvGetIndexState(index);

	Assert(state->meta.lists > 0);
	if (state->centroids == NULL)
	{
		TvIndexCache *cache = GetIndexCache(index);

		if (cache->centroids == NULL)
		{
			MemoryContext oldCtx = MemoryContextSwitchTo(cache->cxt);
			float	   *centroids;

			centroids = TvReadCentroids(index, &state->meta, NULL, cache->cxt);
			cache->cnorms = TvCentroidNorms(centroids, state->meta.lists, state->meta.dim);
			cache->centroids = centroids;
			MemoryContextSwitchTo(oldCtx);
		}
		state->centroids = cache->centroids;
		state->cnorms = cache->cnorms;
	}
	if (cnorms)
		*cnorms = state->cnorms;
	return state->centroids;
}

/*
 * The centroids as 8-bit codes for ranking lists (TvQuantizeCentroids),
 * with their scales and squared norms, made once per relfilenode beside
 * TvCachedCentroids.
 */
const uint8 *
TvCachedRankCentroids(Relation index, const float **scales, const float **cnorms)
{
	TvIndexState *state = TvGetIndexState(index);
	const float *centroids = TvCachedCentroids(index, cnorms);
	TvIndexCache *cache = GetIndexCache(index);

	if (cache->rank_codes == NULL)
	{
		uint8	   *codes = MemoryContextAllocHuge(cache->cxt,
												   (Size) state->meta.lists * state->meta.dim);
		float	   *s = MemoryContextAlloc(cache->cxt, sizeof(float) * state->meta.lists);

		TvQuantizeCentroids(centroids, state->meta.lists, state->meta.dim, codes, s);
		cache->rank_scales = s;
		cache->rank_codes = codes;
	}
	*scales = cache->rank_scales;
	return cache->rank_codes;
}

/*
 * The buffer this backend last found each page of the index in, indexed by
 * block number, for ReadRecentBuffer (TvPinPage): a scan that pins a page
 * through it skips the buffer mapping table.  A hint is never trusted:
 * ReadRecentBuffer checks that the buffer still holds the page, and a wrong
 * hint costs only the normal lookup.  Sized for npages pages, at most
 * TV_MAX_BUFFER_HINTS (pages past that get no hint); *nhints says how many.
 * The array lives in the index's cache context, so it outlasts scans and
 * relcache flushes, and goes with the relfilenode.
 */
#define TV_MAX_BUFFER_HINTS		(1 << 22)	/* 32 GB of index, 16 MB of hints */

Buffer *
TvBufferHints(Relation index, BlockNumber npages, BlockNumber *nhints)
{
	TvIndexCache *cache;

	if (RelationUsesLocalBuffers(index))
	{
		*nhints = 0;
		return NULL;
	}
	cache = GetIndexCache(index);
	npages = Min(npages, TV_MAX_BUFFER_HINTS);
	if (npages > cache->nhints)
	{
		/* grow by half again at least, so appends do not copy every time */
		BlockNumber n = Max(npages, Min(cache->nhints + cache->nhints / 2,
										TV_MAX_BUFFER_HINTS));
		Buffer	   *hints = MemoryContextAllocHuge(cache->cxt, sizeof(Buffer) * n);

		if (cache->hints)
		{
			memcpy(hints, cache->hints, sizeof(Buffer) * cache->nhints);
			pfree(cache->hints);
		}
		for (BlockNumber i = cache->nhints; i < n; i++)
			hints[i] = InvalidBuffer;
		cache->hints = hints;
		cache->nhints = n;
	}
	*nhints = cache->nhints;
	return cache->hints;
}

/*
 * Pin page blkno of the index, through its hint when the hint still holds
 * (no buffer mapping lookup), else with ReadBufferExtended, and remember
 * where it was found.  *read is set when the page had to be read in.
 */
Buffer
TvPinPage(Relation index, BlockNumber blkno, BufferAccessStrategy strategy,
		  Buffer *hints, BlockNumber nhints, bool *read)
{
	Buffer		buf;
	int64		reads;

	*read = false;
	if (blkno < nhints && BufferIsValid(hints[blkno]) &&
		TvReadRecentBuffer(index, MAIN_FORKNUM, blkno, hints[blkno]))
	{
		/* counted in pg_statio_*_indexes as ReadBuffer would count it */
		pgstat_count_buffer_read(index);
		pgstat_count_buffer_hit(index);
		return hints[blkno];
	}
	reads = pgBufferUsage.shared_blks_read + pgBufferUsage.local_blks_read;
	buf = ReadBufferExtended(index, MAIN_FORKNUM, blkno, RBM_NORMAL, strategy);
	*read = (pgBufferUsage.shared_blks_read + pgBufferUsage.local_blks_read != reads);
	if (blkno < nhints)
		hints[blkno] = buf;
	return buf;
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

	/* the encoder's sum, which the resident refinement repeats */
	norm = sqrt(tv_sum_squares(x, dim));
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
