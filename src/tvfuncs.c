/*
 * tvfuncs.c
 *	  SQL-callable functions: the encoder and decoder that make codes
 *	  inspectable, turbo_index_info and the structural check turbo_verify.
 *
 * turbo_verify reads pages as untrusted bytes: every count and offset is
 * checked before it is used, and damage is reported as rows, not errors.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xlog.h"
#include "catalog/index.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/pg_bitutils.h"
#include "storage/bufmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "turbovec.h"
#include "tvresident.h"


static const char *const metric_names[] = {NULL, "l2", "ip", "cosine"};

/* Longest wait turbo_wait_ready() accepts: 10 minutes */
#define TV_MAX_WAIT_READY_MS	(10 * 60 * 1000)

static void
CheckBits(int bits)
{
	if (bits < TV_MIN_BITS || bits > TV_MAX_BITS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bits must be between %d and %d, not %d",
						TV_MIN_BITS, TV_MAX_BITS, bits)));
}

/* turbo_encode(vector real[], bits int, seed bigint) returns bytea */
PG_FUNCTION_INFO_V1(turbo_encode);
Datum
turbo_encode(PG_FUNCTION_ARGS)
{
	int			dim;
	float	   *x = TvArrayGetFloats(PG_GETARG_ARRAYTYPE_P(0), &dim);
	int			bits = PG_GETARG_INT32(1);
	uint64		seed = (uint64) PG_GETARG_INT64(2);
	TvCodec    *codec;
	bytea	   *result;
	float	   *work;
	TvFactors	factors;

	CheckBits(bits);
	codec = TvCreateCodec(dim, bits, seed, CurrentMemoryContext);
	work = palloc(sizeof(float) * tv_codec_work_floats(codec));
	result = palloc0(VARHDRSZ + codec->code_bytes);
	SET_VARSIZE(result, VARHDRSZ + codec->code_bytes);
	tv_codec_encode(codec, x, (uint8 *) VARDATA(result), &factors, work);
	PG_RETURN_BYTEA_P(result);
}

/* turbo_decode(code bytea, dim int, bits int, seed bigint) returns real[] */
PG_FUNCTION_INFO_V1(turbo_decode);
Datum
turbo_decode(PG_FUNCTION_ARGS)
{
	bytea	   *code = PG_GETARG_BYTEA_PP(0);
	int			dim = PG_GETARG_INT32(1);
	int			bits = PG_GETARG_INT32(2);
	uint64		seed = (uint64) PG_GETARG_INT64(3);
	TvCodec    *codec;
	float	   *out;
	float	   *work;
	Datum	   *elems;

	if (dim < TV_CODEC_MIN_DIM || dim > TV_CODEC_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dimension must be between %d and %d, not %d",
						TV_CODEC_MIN_DIM, TV_CODEC_MAX_DIM, dim)));
	CheckBits(bits);
	codec = TvCreateCodec(dim, bits, seed, CurrentMemoryContext);
	if (VARSIZE_ANY_EXHDR(code) != (Size) codec->code_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("code of %d dimensions at %d bits must be %d bytes, not %zu",
						dim, bits, codec->code_bytes, VARSIZE_ANY_EXHDR(code))));

	out = palloc(sizeof(float) * dim);
	work = palloc(sizeof(float) * tv_codec_work_floats(codec));
	tv_codec_decode(codec, (const uint8 *) VARDATA_ANY(code), 1.0f, out, work);

	elems = palloc(sizeof(Datum) * dim);
	for (int i = 0; i < dim; i++)
		elems[i] = Float4GetDatum(out[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, dim, FLOAT4OID, sizeof(float4),
										  true, TYPALIGN_INT));
}

/* turbo_kernel() returns the scoring kernel this CPU uses */
PG_FUNCTION_INFO_V1(turbo_kernel);
Datum
turbo_kernel(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(tv_kernels_name()));
}

/* The table of an index, without locking anything; ERROR if not an index */
static Oid
IndexTable(Oid indexoid)
{
	Oid			heapoid = IndexGetRelation(indexoid, true);
	char	   *name;

	if (OidIsValid(heapoid))
		return heapoid;
	name = get_rel_name(indexoid);
	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", indexoid)));
	ereport(ERROR,
			(errcode(ERRCODE_WRONG_OBJECT_TYPE),
			 errmsg("\"%s\" is not an index", name)));
	return InvalidOid;			/* keep the compiler quiet */
}

/*
 * May the current user read the index's table?  Asked before any lock is
 * taken, so that a role without the right cannot queue behind or hold up
 * DDL on the table.
 */
static bool
CanReadIndexTable(Oid indexoid)
{
	return pg_class_aclcheck(IndexTable(indexoid), GetUserId(), ACL_SELECT) == ACLCHECK_OK;
}

/* ERROR unless the current user may read the index's table; takes no lock */
static void
CheckReadPrivilege(Oid indexoid)
{
	Oid			heapoid = IndexTable(indexoid);
	AclResult	aclresult = pg_class_aclcheck(heapoid, GetUserId(), ACL_SELECT);

	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_TABLE, get_rel_name(heapoid));
}

/* ERROR unless the current user owns the index or is superuser; takes no lock */
static void
CheckOwnership(Oid indexoid)
{
	(void) IndexTable(indexoid);
	if (!TvOwnerCheck(indexoid) && !superuser())
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_INDEX, get_rel_name(indexoid));
}

/*
 * Open a turbo index for inspection; the caller must close it.  The caller
 * checked its privileges first; the index may have been dropped since.
 */
static Relation
OpenTurboIndex(Oid indexoid, LOCKMODE heaplock, Relation *heap)
{
	Oid			heapoid = IndexTable(indexoid);
	Relation	index;
	/* table before index, as everywhere else */
	*heap = table_open(heapoid, heaplock);
	index = index_open(indexoid, AccessShareLock);
	if (index->rd_indam->ambuild != tvbuild)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a turbo index", RelationGetRelationName(index))));
	return index;
}

/*
 * turbo_index_info(index regclass): the metapage and live count.  Needs
 * SELECT on the table, like reading the rows.
 */
PG_FUNCTION_INFO_V1(turbo_index_info);
Datum
turbo_index_info(PG_FUNCTION_ARGS)
{
	Oid			indexoid = PG_GETARG_OID(0);
	Relation	heap;
	Relation	index;
	TupleDesc	tupdesc;
	TvMetaPageData meta;
	Datum		values[11];
	bool		nulls[11] = {false};
	uint64		live;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	CheckReadPrivilege(indexoid);
	index = OpenTurboIndex(indexoid, AccessShareLock, &heap);

	TvReadMeta(index, &meta);
	live = TvCountLive(index, NULL);

	values[0] = Int32GetDatum(meta.dim);
	values[1] = Int32GetDatum(meta.bits);
	values[2] = CStringGetTextDatum(metric_names[meta.metric]);
	values[3] = Int64GetDatum((int64) live);
	values[4] = Int64GetDatum((int64) meta.nslots);
	values[5] = Int64GetDatum((int64) ((meta.nslots + TV_LANES - 1) / TV_LANES));
	values[6] = Int64GetDatum((int64) RelationGetNumberOfBlocks(index));
	values[7] = Int64GetDatum((int64) meta.change_count);
	values[8] = Int64GetDatum((int64) meta.seed);
	values[9] = Int32GetDatum((int32) meta.lists);
	/* what the index was built with, whatever ALTER INDEX SET said since */
	values[10] = BoolGetDatum(TvMetaResidual(&meta));

	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

typedef struct VerifyState
{
	Tuplestorestate *store;
	TupleDesc	desc;
	int			nproblems;
	/* the heap page last looked at, to check TIDs against */
	Relation	heap;
	BlockNumber heap_nblocks;
	BlockNumber heap_blkno;
	OffsetNumber heap_maxoff;
	bool		heap_page_new;
	PGAlignedBlock heap_page;
} VerifyState;

static void Problem(VerifyState *vs, const char *fmt,...) pg_attribute_printf(2, 3);

static void
Problem(VerifyState *vs, const char *fmt,...)
{
	va_list		args;
	char		buf[512];
	Datum		value;
	bool		isnull = false;

	va_start(args, fmt);
	vsnprintf(buf, sizeof(buf), fmt, args);
	va_end(args);
	value = CStringGetTextDatum(buf);
	tuplestore_putvalues(vs->store, vs->desc, &value, &isnull);
	vs->nproblems++;
}

/* Does a TID point at a used line pointer of the table? */
static const char *
CheckHeapTid(VerifyState *vs, ItemPointer tid)
{
	BlockNumber blkno = ItemPointerGetBlockNumberNoCheck(tid);
	OffsetNumber off = ItemPointerGetOffsetNumberNoCheck(tid);

	if (off == InvalidOffsetNumber || off > MaxHeapTuplesPerPage)
		return "has an impossible offset";
	if (blkno >= vs->heap_nblocks)
		return "points past the end of the table";
	if (blkno != vs->heap_blkno)
	{
		Buffer		buf = ReadBuffer(vs->heap, blkno);

		LockBuffer(buf, BUFFER_LOCK_SHARE);
		memcpy(vs->heap_page.data, BufferGetPage(buf), BLCKSZ);
		UnlockReleaseBuffer(buf);
		vs->heap_blkno = blkno;
		vs->heap_page_new = PageIsNew(vs->heap_page.data);
		vs->heap_maxoff = vs->heap_page_new ? 0 : PageGetMaxOffsetNumber(vs->heap_page.data);
	}
	if (off > vs->heap_maxoff)
		return "points past the last line pointer of its table page";
	if (!ItemIdIsUsed(PageGetItemId(vs->heap_page.data, off)))
		return "points at an unused line pointer";
	return NULL;
}

/* Check the metapage as raw bytes; false if nothing else can be trusted */
static bool
VerifyMeta(VerifyState *vs, Relation index, TvMetaPageData *meta, BlockNumber nblocks)
{
	Buffer		buf;
	Page		page;
	bool		ok = true;

	if (nblocks == 0)
	{
		Problem(vs, "index has no metapage");
		return false;
	}
	buf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	if (PageIsNew(page) || ((PageHeader) page)->pd_special != BLCKSZ - MAXALIGN(sizeof(TvPageOpaqueData)))
	{
		UnlockReleaseBuffer(buf);
		Problem(vs, "metapage is not initialized");
		return false;
	}
	memcpy(meta, TvPageGetMeta(page), sizeof(TvMetaPageData));
	if (TvPageGetOpaque(page)->page_id != TV_PAGE_ID ||
		!(TvPageGetOpaque(page)->flags & TV_PAGE_META))
		Problem(vs, "metapage has page id 0x%04X and flags 0x%04X",
				TvPageGetOpaque(page)->page_id, TvPageGetOpaque(page)->flags);
	UnlockReleaseBuffer(buf);

	if (meta->magic != TV_MAGIC_NUMBER)
	{
		Problem(vs, "metapage has bad magic number 0x%08X", meta->magic);
		return false;
	}
	if (meta->version != TV_VERSION)
	{
		Problem(vs, "metapage has format version %u, expected %d", meta->version, TV_VERSION);
		return false;
	}
	if (meta->dim > TV_CODEC_MAX_DIM)
		Problem(vs, "metapage has impossible dimension %u", meta->dim), ok = false;
	if (meta->bits < TV_MIN_BITS || meta->bits > TV_MAX_BITS)
		Problem(vs, "metapage has impossible bits %u", meta->bits), ok = false;
	if (meta->metric < TV_METRIC_L2 || meta->metric > TV_METRIC_COSINE)
		Problem(vs, "metapage has unknown metric %u", meta->metric), ok = false;
	else if (meta->metric != (uint16) TvGetMetric(index))
		Problem(vs, "metapage metric %s differs from the operator class's %s",
				metric_names[meta->metric], metric_names[TvGetMetric(index)]);
	if (meta->seed != TV_CODEC_DEFAULT_SEED)
		Problem(vs, "metapage has codec seed " UINT64_FORMAT ", expected " UINT64_FORMAT,
				meta->seed, TV_CODEC_DEFAULT_SEED);
	if (meta->page_payload != TV_PAGE_PAYLOAD)
		Problem(vs, "metapage has page payload %u, expected %d",
				meta->page_payload, (int) TV_PAGE_PAYLOAD), ok = false;
	if (!ok)
		return false;

	if (meta->dim == 0)
	{
		if (meta->nslots != 0)
		{
			Problem(vs, "metapage has " UINT64_FORMAT " slots but no dimension", meta->nslots);
			return false;
		}
	}
	else
	{
		TvCodec    *codec = TvCreateCodec(meta->dim, meta->bits, meta->seed, CurrentMemoryContext);
		uint64		needed;

		if (meta->block_bytes != (uint32) TvBlockBytes(codec))
		{
			Problem(vs, "metapage has block size %u, expected %d for %u dimensions at %u bits",
					meta->block_bytes, TvBlockBytes(codec), meta->dim, meta->bits);
			return false;
		}
		if (meta->lists > TV_MAX_LISTS ||
			(meta->lists > 0 && meta->list_area != TvListAreaBytes(meta->lists, meta->dim)) ||
			(meta->lists == 0 && meta->list_area != 0))
		{
			Problem(vs, "metapage has %u lists with a list area of %u bytes", meta->lists,
					meta->list_area);
			return false;
		}
		if (meta->lists > 0 && meta->nslots % TV_LANES != 0)
			Problem(vs, "IVF metapage has " UINT64_FORMAT " slots, not whole blocks", meta->nslots);
		needed = TvStreamPages(meta, TvBlockCount(meta));
		if (needed > meta->ndatapages)
		{
			Problem(vs, "metapage has " UINT64_FORMAT " slots, which need " UINT64_FORMAT " data pages, but only %u are recorded",
					meta->nslots, needed, meta->ndatapages);
			return false;
		}
	}
	/* on a standby replay may have extended the index since nblocks was read */
	if ((uint64) meta->ndatapages + TV_FIRST_DATA_BLKNO > nblocks &&
		RecoveryInProgress())
		nblocks = RelationGetNumberOfBlocks(index);
	if ((uint64) meta->ndatapages + TV_FIRST_DATA_BLKNO > nblocks)
	{
		Problem(vs, "metapage records %u data pages but the index has only %u pages",
				meta->ndatapages, nblocks);
		return false;
	}
	if (meta->free_hint > (meta->nslots + TV_LANES - 1) / TV_LANES)
		Problem(vs, "metapage free hint " UINT64_FORMAT " is past the last block", meta->free_hint);
	return true;
}

/*
 * On a hot standby replay goes on while we check: a heap line pointer may
 * have been freed after we read the lane that pointed at it.  Replay clears
 * the lane before it frees the line pointer, so re-reading the heap page and
 * then the lane tells a race from damage.
 */
static bool
StillBad(VerifyState *vs, Relation index, uint64 offset, int lane, ItemPointer tid)
{
	char		header[TV_BLOCK_NORM_OFFSET];
	uint32		live;
	ItemPointerData now;

	vs->heap_blkno = InvalidBlockNumber;
	vs->heap_nblocks = RelationGetNumberOfBlocks(vs->heap);
	if (CheckHeapTid(vs, tid) == NULL)
		return false;
	TvReadStream(index, offset, sizeof(header), header, NULL);
	memcpy(&live, header + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
	memcpy(&now, header + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData), sizeof(now));
	return (live & ((uint32) 1 << lane)) != 0 && ItemPointerEquals(&now, tid);
}

/* Check one block's header: live bits, TIDs and factors */
static void
VerifyBlock(VerifyState *vs, Relation index, const TvMetaPageData *meta, uint64 b,
			const char *blk)
{
	uint32		live;
	uint64		lanes = Min(meta->nslots - b * TV_LANES, (uint64) TV_LANES);
	uint32		allocated = (lanes == TV_LANES) ? ~(uint32) 0 : (((uint32) 1 << lanes) - 1);

	memcpy(&live, blk + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
	if ((live & ~allocated) && RecoveryInProgress())
	{
		/* replay may have taken lanes since we read the metapage */
		TvMetaPageData now;

		TvReadMeta(index, &now);
		if (now.nslots > meta->nslots)
		{
			lanes = Min(now.nslots - b * TV_LANES, (uint64) TV_LANES);
			allocated = (lanes == TV_LANES) ? ~(uint32) 0 : (((uint32) 1 << lanes) - 1);
		}
	}
	if (live & ~allocated)
		Problem(vs, "block " UINT64_FORMAT " has live lanes beyond the last slot (live word 0x%08X)",
				b, live);
	live &= allocated;
	while (live != 0)
	{
		int			lane = pg_rightmost_one_pos32(live);
		ItemPointerData tid;
		float		norm;
		float		ipscale;
		const char *why;

		live &= live - 1;
		memcpy(&tid, blk + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData), sizeof(tid));
		memcpy(&norm, blk + TV_BLOCK_NORM_OFFSET + lane * sizeof(float), sizeof(float));
		memcpy(&ipscale, blk + TV_BLOCK_IPSCALE_OFFSET + lane * sizeof(float), sizeof(float));
		why = CheckHeapTid(vs, &tid);
		if (why && RecoveryInProgress() &&
			!StillBad(vs, index, TvBlockOffset(meta, b), lane, &tid))
			why = NULL;
		if (why)
			Problem(vs, "block " UINT64_FORMAT " lane %d: heap TID (%u,%u) %s",
					b, lane, ItemPointerGetBlockNumberNoCheck(&tid),
					ItemPointerGetOffsetNumberNoCheck(&tid), why);
		if (!isfinite(norm) || norm < 0 || !isfinite(ipscale))
			Problem(vs, "block " UINT64_FORMAT " lane %d: impossible factors (norm %g, ipscale %g)",
					b, lane, norm, ipscale);
	}
}

/*
 * IVF: every list's chain stays in range, has no cycle, holds only blocks
 * that name the list, and has the length its directory entry records; and
 * every block is on exactly one chain.
 *
 * On a hot standby replay appends blocks while we check.  The directory
 * changes only under the metapage's exclusive lock, so it is read under a
 * share lock on the metapage together with the block count it goes with;
 * blocks never change list or links, so the chains need no lock after.
 */
static void
VerifyLists(VerifyState *vs, Relation index, const TvMetaPageData *meta)
{
	uint64		nblocks;
	TvListEntry *entries = palloc(sizeof(TvListEntry) * meta->lists);
	uint8	   *owned;
	uint64		onchains = 0;
	char		header[TV_BLOCK_TIDS_OFFSET];
	Buffer		metabuf;

	/* lock order: the metapage, then data pages */
	metabuf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	LockBuffer(metabuf, BUFFER_LOCK_SHARE);
	nblocks = TvBlockCount(TvPageGetMeta(BufferGetPage(metabuf)));
	TvReadStream(index, 0, sizeof(TvListEntry) * meta->lists, (char *) entries, NULL);
	UnlockReleaseBuffer(metabuf);
	owned = palloc0(Max(nblocks, 1));

	for (uint32 j = 0; j < meta->lists; j++)
	{
		uint32		next = entries[j].tail;
		uint32		count = 0;

		if (entries[j].free_hint > nblocks)
			Problem(vs, "list %u has free hint %u past the last block", j, entries[j].free_hint);
		while (next != 0)
		{
			uint32		list;

			if (next > nblocks)
			{
				Problem(vs, "list %u links to block %u past the last block", j, next - 1);
				break;
			}
			if (owned[next - 1])
			{
				Problem(vs, "list %u reaches block %u a second time", j, next - 1);
				break;
			}
			owned[next - 1] = 1;
			onchains++;
			count++;
			TvReadStream(index, TvBlockOffset(meta, next - 1), sizeof(header), header, NULL);
			memcpy(&list, header + TV_BLOCK_LIST_OFFSET, sizeof(uint32));
			if (list != j)
				Problem(vs, "block %u on the chain of list %u names list %u", next - 1, j, list);
			memcpy(&next, header + TV_BLOCK_PREV_OFFSET, sizeof(uint32));
			CHECK_FOR_INTERRUPTS();
		}
		if (count != entries[j].nblocks)
			Problem(vs, "list %u has %u blocks on its chain, its directory says %u",
					j, count, entries[j].nblocks);
	}
	if (onchains != nblocks)
		Problem(vs, UINT64_FORMAT " of " UINT64_FORMAT " blocks are on no list", nblocks - onchains,
				nblocks);
	pfree(entries);
	pfree(owned);
}

/*
 * With the resident index: a ready copy whose counter equals the
 * metapage's must hold the extent's bytes.  Its live words may only lack
 * lanes (a rebuild drops lanes whose rows are gone), and IVF directory
 * entries may differ in their free-lane hints, which only inserts read.
 * The caller's share lock on the table keeps writers out.
 */
static void
VerifyResident(VerifyState *vs, Relation index, const TvMetaPageData *meta, char *blk)
{
	TvResidentEntry *e;
	TvResidentCopy *copy;
	const char *stream;
	int			reported = 0;
	List	   *diffs = NIL;
	ListCell   *lc;
	TvMetaPageData now;

	if (tv_shared == NULL)
		return;
	e = TvResidentLookup(MyDatabaseId, RelationGetRelid(index), false);
	if (e == NULL)
		return;
	LWLockAcquire(e->lock, LW_SHARED);
	copy = TvResidentGetCopy(e);
	if (e->state != TV_RES_READY || copy == NULL || e->change_count != meta->change_count ||
		e->relfilenode != TvRelFileNumber(index))
	{
		LWLockRelease(e->lock);
		return;
	}
	stream = TvResidentStream(copy);
	if (copy->nslots != meta->nslots || copy->block_bytes != meta->block_bytes ||
		copy->list_area != meta->list_area)
		Problem(vs, "resident copy has " UINT64_FORMAT " slots of %u-byte blocks, the index " UINT64_FORMAT " of %u",
				copy->nslots, copy->block_bytes, meta->nslots, meta->block_bytes);
	else
	{
		for (uint32 j = 0; j < meta->lists; j++)
		{
			TvListEntry mine;
			TvListEntry theirs;

			TvReadStream(index, (uint64) j * sizeof(TvListEntry), sizeof(mine), (char *) &mine, NULL);
			memcpy(&theirs, stream + (uint64) j * sizeof(TvListEntry), sizeof(theirs));
			if ((mine.tail != theirs.tail || mine.nblocks != theirs.nblocks) && reported++ < 10)
				diffs = lappend(diffs, psprintf("resident copy's list %u differs from the index's", j));
		}
		for (uint64 b = 0; b < TvBlockCount(meta); b++)
		{
			const char *res = stream + TvBlockOffset(meta, b);
			uint32		live;
			uint32		res_live;

			TvReadStream(index, TvBlockOffset(meta, b), meta->block_bytes, blk, NULL);
			memcpy(&live, blk + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
			memcpy(&res_live, res + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
			if (((res_live & ~live) != 0 ||
				 memcmp(blk + TV_BLOCK_PREV_OFFSET, res + TV_BLOCK_PREV_OFFSET,
						meta->block_bytes - TV_BLOCK_PREV_OFFSET) != 0) &&
				reported++ < 10)
				diffs = lappend(diffs, psprintf("resident copy differs from the index at block " UINT64_FORMAT, b));
		}
	}
	LWLockRelease(e->lock);

	/*
	 * On a standby replay may have changed pages while we compared: what
	 * differs then is no damage.  Every change bumps the counter.
	 */
	if (diffs != NIL && RecoveryInProgress())
	{
		TvReadMeta(index, &now);
		if (now.change_count != meta->change_count)
			diffs = NIL;
	}
	foreach(lc, diffs)
		Problem(vs, "%s", (char *) lfirst(lc));
}

/*
 * turbo_verify(index regclass) returns setof text: one row per problem, no
 * rows for a healthy index.
 */
PG_FUNCTION_INFO_V1(turbo_verify);
Datum
turbo_verify(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			indexoid = PG_GETARG_OID(0);
	Relation	heap;
	Relation	index;
	VerifyState *vs;
	TvMetaPageData meta;
	BlockNumber nblocks;
	LOCKMODE	lockmode;

	CheckOwnership(indexoid);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	vs = palloc0(sizeof(VerifyState));
	vs->store = rsinfo->setResult;
	vs->desc = rsinfo->setDesc;

	/*
	 * A share lock on the table keeps writers and VACUUM out while we check
	 * TIDs against it.  A standby cannot take it; there StillBad() sorts
	 * replay races from damage.
	 */
	lockmode = RecoveryInProgress() ? AccessShareLock : ShareLock;
	index = OpenTurboIndex(indexoid, lockmode, &heap);
	vs->heap = heap;
	vs->heap_nblocks = RelationGetNumberOfBlocks(heap);
	vs->heap_blkno = InvalidBlockNumber;
	nblocks = RelationGetNumberOfBlocks(index);

	if (VerifyMeta(vs, index, &meta, nblocks))
	{
		uint64		nblk = (meta.nslots + TV_LANES - 1) / TV_LANES;
		char	   *blk = palloc(Max(meta.block_bytes, 1));

		for (BlockNumber p = TV_FIRST_DATA_BLKNO; p < nblocks; p++)
		{
			Buffer		buf = ReadBuffer(index, p);
			Page		page;
			PageHeader	ph;

			LockBuffer(buf, BUFFER_LOCK_SHARE);
			page = BufferGetPage(buf);
			ph = (PageHeader) page;
			if (PageIsNew(page))
			{
				if (p < TV_FIRST_DATA_BLKNO + meta.ndatapages)
					Problem(vs, "data page %u is not initialized", p);
			}
			else if (ph->pd_special != BLCKSZ - MAXALIGN(sizeof(TvPageOpaqueData)) ||
					 TvPageGetOpaque(page)->page_id != TV_PAGE_ID ||
					 !(TvPageGetOpaque(page)->flags & TV_PAGE_DATA))
				Problem(vs, "page %u is not a turbo data page", p);
			else if (ph->pd_lower != ph->pd_upper ||
					 ph->pd_lower != TV_PAGE_PAYLOAD_OFFSET + TV_PAGE_PAYLOAD)
				Problem(vs, "data page %u has pd_lower %u and pd_upper %u", p,
						ph->pd_lower, ph->pd_upper);
			UnlockReleaseBuffer(buf);
			CHECK_FOR_INTERRUPTS();
		}

		if (meta.lists > 0)
			VerifyLists(vs, index, &meta);
		for (uint64 b = 0; b < nblk; b++)
		{
			TvReadStream(index, TvBlockOffset(&meta, b), meta.block_bytes, blk, NULL);
			VerifyBlock(vs, index, &meta, b, blk);
			CHECK_FOR_INTERRUPTS();
		}
		VerifyResident(vs, index, &meta, blk);
	}

	index_close(index, AccessShareLock);
	table_close(heap, lockmode);
	return (Datum) 0;
}

/*
 * Resident index functions.  Without shared_preload_libraries there is no
 * resident index: every turbo index is served from its pages and is ready.
 */

static const char *const state_names[] = {
	"free", "not loaded", "building", "ready", "behind", "too big", "failed"
};

/* Open an index the caller owns (or superuser), for the functions that act on it */
static Relation
OpenOwnedTurboIndex(Oid indexoid, Relation *heap)
{
	CheckOwnership(indexoid);
	return OpenTurboIndex(indexoid, AccessShareLock, heap);
}

/* turbo_preloaded(): is turbovec in shared_preload_libraries? */
PG_FUNCTION_INFO_V1(turbo_preloaded);
Datum
turbo_preloaded(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(tv_shared != NULL);
}

/*
 * turbo_wait_ready(index regclass, timeout_ms int): wait until the index's
 * resident copy is ready; false on timeout.  True at once when not preloaded.
 * Needs SELECT on the table.  The wait holds the table's AccessShareLock, so
 * it is capped at TV_MAX_WAIT_READY_MS, and it ends on a cancel or
 * statement_timeout like any query.
 */
PG_FUNCTION_INFO_V1(turbo_wait_ready);
Datum
turbo_wait_ready(PG_FUNCTION_ARGS)
{
	Oid			indexoid = PG_GETARG_OID(0);
	int			timeout = PG_GETARG_INT32(1);
	Relation	heap;
	Relation	index;
	bool		ready;

	if (timeout < 0 || timeout > TV_MAX_WAIT_READY_MS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must be between 0 and %d, not %d",
						TV_MAX_WAIT_READY_MS, timeout)));
	CheckReadPrivilege(indexoid);
	index = OpenTurboIndex(indexoid, AccessShareLock, &heap);
	if (tv_shared == NULL || index->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ready = true;
	else
		ready = TvResidentWaitReady(index, timeout, NULL, NULL) != NULL;
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	PG_RETURN_BOOL(ready);
}

/* turbo_rebuild(index regclass): rebuild the resident copy now, in this backend */
PG_FUNCTION_INFO_V1(turbo_rebuild);
Datum
turbo_rebuild(PG_FUNCTION_ARGS)
{
	Oid			indexoid = PG_GETARG_OID(0);
	Relation	heap;
	Relation	index;
	TvResidentEntry *e;
	bool		done;

	index = OpenOwnedTurboIndex(indexoid, &heap);
	if (tv_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("turbovec is not in shared_preload_libraries"),
				 errdetail("Without it there is no resident index to rebuild."),
				 errhint("Add turbovec to shared_preload_libraries and restart the server.")));
	if (index->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("temporary turbo indexes have no resident copy")));
	e = TvResidentLookup(MyDatabaseId, indexoid, true);
	if (e == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("no room for another resident turbo index (at most %d)",
						tv_shared->max_resident),
				 errhint("Raise turbovec.max_resident_indexes (needs a restart).")));
	done = TvResidentRebuild(heap, index, e, false, true, false);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	PG_RETURN_BOOL(done);
}

/* turbo_snapshot_now(index regclass): dump the resident copy now; file bytes */
PG_FUNCTION_INFO_V1(turbo_snapshot_now);
Datum
turbo_snapshot_now(PG_FUNCTION_ARGS)
{
	Oid			indexoid = PG_GETARG_OID(0);
	Relation	heap;
	Relation	index;
	TvResidentEntry *e;

	index = OpenOwnedTurboIndex(indexoid, &heap);
	e = tv_shared ? TvResidentLookup(MyDatabaseId, indexoid, false) : NULL;
	if (e == NULL || e->state != TV_RES_READY)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("turbo index \"%s\" has no ready resident copy to dump",
						RelationGetRelationName(index)),
				 errhint("Snapshots need turbovec in shared_preload_libraries and a ready index (turbo_wait_ready()).")));
	TvResidentDump(e);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	PG_RETURN_INT64(e->snap_bytes);
}

/* turbo_resident_status(): the live state of this database's resident copies */
PG_FUNCTION_INFO_V1(turbo_resident_status);
Datum
turbo_resident_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (tv_shared == NULL)
		return (Datum) 0;
	for (int i = 0; i < tv_shared->max_resident; i++)
	{
		TvResidentEntry *e = &tv_shared->entries[i];
		Datum		values[11];
		bool		nulls[11] = {false};

		LWLockAcquire(tv_shared->registry_lock, LW_SHARED);
		if (e->state == TV_RES_FREE || e->dbid != MyDatabaseId)
		{
			LWLockRelease(tv_shared->registry_lock);
			continue;
		}
		values[0] = ObjectIdGetDatum(e->indexid);
		values[1] = CStringGetTextDatum(state_names[e->state]);
		values[2] = Int64GetDatum((int64) e->rows_done);
		values[3] = Int64GetDatum((int64) e->rows_total);
		values[4] = Int64GetDatum((int64) e->bytes);
		values[5] = TimestampTzGetDatum(e->ready_since);
		nulls[5] = (e->state != TV_RES_READY);
		values[6] = Int64GetDatum((int64) e->change_count);
		values[7] = BoolGetDatum(e->from_snapshot);
		values[8] = LSNGetDatum(e->snap_lsn);
		nulls[8] = (e->snap_bytes == 0);
		values[9] = TimestampTzGetDatum(e->snap_time);
		nulls[9] = (e->snap_time == 0);
		values[10] = Int64GetDatum(e->snap_bytes);
		nulls[10] = (e->snap_bytes == 0);
		LWLockRelease(tv_shared->registry_lock);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * turbo_index_layout(index regclass): the metapage's shape, without counting
 * rows.  NULL, without taking any lock, for a role that cannot read the
 * table: the turbo_indexes view calls it for every turbo index of the
 * database, and must neither fail nor wait on tables the role cannot read.
 */
PG_FUNCTION_INFO_V1(turbo_index_layout);
Datum
turbo_index_layout(PG_FUNCTION_ARGS)
{
	Oid			indexoid = PG_GETARG_OID(0);
	Relation	heap;
	Relation	index;
	TupleDesc	tupdesc;
	TvMetaPageData meta;
	Datum		values[5];
	bool		nulls[5] = {false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (!CanReadIndexTable(indexoid))
		PG_RETURN_NULL();
	index = OpenTurboIndex(indexoid, AccessShareLock, &heap);
	TvReadMeta(index, &meta);
	values[0] = Int32GetDatum(meta.dim);
	values[1] = Int32GetDatum(meta.bits);
	values[2] = CStringGetTextDatum(metric_names[meta.metric]);
	values[3] = CStringGetTextDatum(meta.lists > 0 ? "ivf" : "flat");
	values[4] = Int32GetDatum((int32) meta.lists);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * turbo_resident_needed(index regclass): bytes of shared memory a resident
 * copy of the index would take now (TvResidentCopyBytes: its stream, a
 * refinement code per slot and room for inserts), whether or not the
 * server is preloaded.  NULL for a role that cannot read the table, as
 * turbo_index_layout, since the turbo_indexes view calls both.
 */
PG_FUNCTION_INFO_V1(turbo_resident_needed);
Datum
turbo_resident_needed(PG_FUNCTION_ARGS)
{
	Oid			indexoid = PG_GETARG_OID(0);
	Relation	heap;
	Relation	index;
	TvMetaPageData meta;
	uint64		cap_slots;
	uint64		stream_cap;
	uint64		bytes;

	if (!CanReadIndexTable(indexoid))
		PG_RETURN_NULL();
	index = OpenTurboIndex(indexoid, AccessShareLock, &heap);
	TvReadMeta(index, &meta);
	bytes = TvResidentCopyBytes(&meta, &cap_slots, &stream_cap);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	PG_RETURN_INT64((int64) Min(bytes, (uint64) PG_INT64_MAX));
}
