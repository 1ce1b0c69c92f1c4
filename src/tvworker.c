/*
 * tvworker.c
 *	  The turbovec background workers: a launcher with no database, and one
 *	  worker per database that builds and refreshes the resident copies of
 *	  that database's turbo indexes and dumps their snapshots.
 *
 * The launcher starts a database worker for every connectable database at
 * start-up and whenever a backend asks for one (CREATE INDEX, a scan that
 * found no current copy).  A database worker with no turbo index exits.
 * Both run on hot standbys too (BgWorkerStart_ConsistentState), where WAL
 * redo changes the extent behind the copies: the worker sees the metapage
 * counter move and rebuilds.
 *
 * A rebuild (TvResidentRebuild) never holds an index lock across table
 * access: it reads the table without index locks, then catches up with the
 * changes made meanwhile by comparing its copy with the pages under the
 * metapage's share lock, and fetches the few vectors that changed after it
 * has released the lock, while writers mirror into the copy.
 *
 * A worker's rebuild also gives way to DDL: its share locks on the table and
 * the index are all a DROP or ALTER TABLE waits for, and every later query
 * of the table queues behind such a waiter.  So between batches of rows it
 * looks for a waiting lock request (LockWanted), and if there is one it
 * drops its unfinished copy, lets go of its locks and copies again later.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/index.h"
#include "catalog/pg_class.h"
#include "catalog/pg_database.h"
#include "catalog/pg_index.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procsignal.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "turbovec.h"
#include "tvresident.h"
#include "tvsnapshot.h"

#define TV_REBUILD_ATTEMPTS		4
#define TV_WORKER_LINGER_MS		2000	/* idle time before a database worker exits */
#define TV_LAUNCHER_CLEANUP_ROUNDS 30	/* launcher rounds between dropped-database sweeps */

static bool SyncIndexGuarded(Oid indexoid, bool boot);
static void RebuildCleanup(int code, Datum arg);

/*
 * The copy this process is building and has not published yet, and its
 * entry.  A rebuild that ends in an ERROR or FATAL (a cancel, a
 * statement_timeout, an expression that fails) frees it and gives the entry
 * a state other than "building" (RebuildCleanup), or the area would leak
 * one copy per failed attempt and the entry would look busy forever.
 */
static dsa_pointer tv_unpublished = InvalidDsaPointer;
static TvResidentEntry *tv_rebuilding = NULL;

/* Register the launcher; from _PG_init under shared_preload_libraries */
void
TvWorkerInit(void)
{
	BackgroundWorker worker;

	MemSet(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "turbovec", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "tv_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "turbovec launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "turbovec launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * Does a process wait for AccessExclusiveLock on a relation of this
 * database, the one mode that conflicts with the rebuild's AccessShareLock
 * (DROP, TRUNCATE, most of ALTER TABLE, REINDEX of the index)?
 * LockHasWaitersRelation cannot tell: it reads the caller's own entry in the
 * shared lock table, and a weak lock taken through the fast path has none.
 * So look at what the sleeping processes wait for, under the lock table
 * partition of the relation's lock, where a waiter on it sets and clears
 * its waitLock.  A few hundred PGPROCs, read every 1,024 rows.
 */
static bool
RelationLockWanted(Oid relid)
{
	LOCKTAG		tag;
	LWLock	   *partition;
	bool		wanted = false;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	partition = LockHashPartitionLock(LockTagHashCode(&tag));
	LWLockAcquire(partition, LW_SHARED);
	for (uint32 i = 0; i < ProcGlobal->allProcCount && !wanted; i++)
	{
		PGPROC	   *proc = &ProcGlobal->allProcs[i];
		LOCK	   *lock = proc->waitLock;

		wanted = lock != NULL && memcmp(&lock->tag, &tag, sizeof(LOCKTAG)) == 0 &&
			proc->waitLockMode == AccessExclusiveLock;
	}
	LWLockRelease(partition);
	return wanted;
}

/* Does DDL wait for the rebuild's locks on the table or the index? */
static bool
LockWanted(Relation heap, Relation index)
{
	return RelationLockWanted(RelationGetRelid(heap)) ||
		RelationLockWanted(RelationGetRelid(index));
}

/* The relations a snapshot load holds, for SnapshotReadStop */
typedef struct TvLoadLocks
{
	Relation	heap;
	Relation	index;
} TvLoadLocks;

/* TvSnapshotRead's stop: between pieces of the file, as between rows */
static bool
SnapshotReadStop(void *arg)
{
	TvLoadLocks *locks = (TvLoadLocks *) arg;

	if (tv_test_build_delay_ms > 0)
		pg_usleep(tv_test_build_delay_ms * 1000L);
	CHECK_FOR_INTERRUPTS();
	return LockWanted(locks->heap, locks->index);
}

/* The value an index holds for a heap tuple, as floats of dim; false if none */
static bool
FetchVector(Relation heap, Relation index, TvIndexState *state, IndexFetchTableData *fetch,
			TupleTableSlot *slot, IndexInfo *indexInfo, EState *estate,
			ItemPointer tid, float *out)
{
	ItemPointerData fetchtid = *tid;
	bool		call_again = false;
	bool		all_dead = false;
	Datum		value;
	float	   *x;
	int			dim;

	/* any version of the chain holds the indexed value */
	if (!table_index_fetch_tuple(fetch, &fetchtid, SnapshotAny, slot, &call_again, &all_dead))
		return false;
	if (!TvIndexValue(indexInfo, estate, slot, &value))
		return false;
	x = TvDatumGetFloats(state->toarray, value, &dim);
	if (dim != (int) state->meta.dim)
		return false;
	memcpy(out, x, sizeof(float) * dim);
	return true;
}

/* The centroids refinement codes are relative to, or NULL (no lock held) */
static const float *
ResidualCentroids(Relation index, const TvMetaPageData *meta)
{
	if (meta->lists == 0 || !TvMetaResidual(meta))
		return NULL;
	return TvCachedCentroids(index, NULL);
}

/* Bytes of a copy's allocation */
#define CopyBytes(copy) \
	(MAXALIGN(sizeof(TvResidentCopy)) + (copy)->stream_capacity + \
	 (copy)->capacity_slots * (copy)->refine_bytes)

/*
 * A new copy sized for the metapage plus room to grow, its stream zeroed
 * from zero_from on.  Returns InvalidDsaPointer when it does not fit.
 */
static dsa_pointer
AllocCopy(const TvMetaPageData *meta, uint64 zero_from)
{
	dsa_area   *area = TvResidentArea();
	uint64		cap_slots;
	uint64		stream_cap;
	Size		bytes = (Size) TvResidentCopyBytes(meta, &cap_slots, &stream_cap);
	dsa_pointer dp;
	TvResidentCopy *copy;

	dp = dsa_allocate_extended(area, bytes, DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(dp))
		return InvalidDsaPointer;
	/* GrowCopy frees the copy it replaces right after */
	tv_unpublished = dp;
	copy = dsa_get_address(area, dp);
	copy->dim = meta->dim;
	copy->bits = meta->bits;
	copy->metric = meta->metric;
	copy->lists = meta->lists;
	copy->list_area = meta->list_area;
	copy->block_bytes = meta->block_bytes;
	copy->nslots = meta->nslots;
	copy->capacity_slots = cap_slots;
	copy->stream_capacity = stream_cap;
	copy->refine_bytes = tv_refine_bytes(meta->dim);
	memset(TvResidentStream(copy) + zero_from, 0, stream_cap - zero_from);
	return dp;
}

/*
 * Copy the stream into a new allocation sized for the metapage plus room to
 * grow.  Returns InvalidDsaPointer when it does not fit, and also, with
 * *gave_way set, when give_way is set and a lock request came to wait for
 * ours (the unfinished copy is left in tv_unpublished: the caller gives
 * way, and RebuildCleanup frees it).  Under the metapage share lock the
 * copy is the extent's; without it, each page is copied whole but the
 * stream may be caught mid-change (RefreshStream repairs it).
 */
static dsa_pointer
CopyStream(Relation heap, Relation index, const TvMetaPageData *meta, bool give_way,
		   bool *gave_way)
{
	uint64		used = TvBlockOffset(meta, TvBlockCount(meta));
	dsa_pointer dp = AllocCopy(meta, used);
	char	   *stream;

	*gave_way = false;
	if (!DsaPointerIsValid(dp))
		return InvalidDsaPointer;
	stream = TvResidentStream((TvResidentCopy *) dsa_get_address(TvResidentArea(), dp));
	for (uint64 off = 0; off < used; off += TV_PAGE_PAYLOAD)
	{
		Buffer		buf = ReadBufferExtended(index, MAIN_FORKNUM,
											 TV_FIRST_DATA_BLKNO + off / TV_PAGE_PAYLOAD,
											 RBM_NORMAL, NULL);

		LockBuffer(buf, BUFFER_LOCK_SHARE);
		memcpy(stream + off, TvPagePayload(BufferGetPage(buf)),
			   Min((uint64) TV_PAGE_PAYLOAD, used - off));
		UnlockReleaseBuffer(buf);
		/* a page read from disk takes a while: look every 8 MB */
		if ((off / TV_PAGE_PAYLOAD) % 1024 == 1023)
		{
			CHECK_FOR_INTERRUPTS();
			if (give_way && LockWanted(heap, index))
			{
				/* the copy stays in tv_unpublished for GiveWay to free */
				*gave_way = true;
				return InvalidDsaPointer;
			}
		}
	}
	return dp;
}

/*
 * Fill the refinement codes of every live lane from the table's vectors;
 * lanes whose row is gone are cleared.  Returns false, with the copy half
 * filled, when give_way is set and a lock request came to wait for ours.
 */
static bool
FillVectors(Relation heap, Relation index, TvIndexState *state, TvResidentEntry *e,
			TvResidentCopy *copy, bool give_way)
{
	bool		filled = true;
	IndexFetchTableData *fetch = table_index_fetch_begin(heap);
	TupleTableSlot *slot = table_slot_create(heap, NULL);
	IndexInfo  *indexInfo;
	EState	   *estate = CreateExecutorState();
	MemoryContext tmp = AllocSetContextCreate(CurrentMemoryContext,
											  "turbovec rebuild temporary context",
											  ALLOCSET_DEFAULT_SIZES);
	TvMetaPageData meta = state->meta;
	char	   *stream = TvResidentStream(copy);
	uint64		nblocks;
	TvUserContext owner;
	float	   *x = palloc(sizeof(float) * Max(copy->dim, 1));
	const float *centroids = ResidualCentroids(index, &state->meta);

	meta.list_area = copy->list_area;
	meta.block_bytes = copy->block_bytes;
	meta.nslots = copy->nslots;
	nblocks = TvBlockCount(&meta);
	e->rows_total = copy->nslots;
	e->rows_done = 0;

	/* index expressions are the owner's code: never run them as the caller */
	TvSwitchToTableOwner(heap, &owner);
	/* building it may fold constant calls of the owner's functions */
	indexInfo = BuildIndexInfo(index);
	for (uint64 b = 0; b < nblocks; b++)
	{
		char	   *blk = stream + TvBlockOffset(&meta, b);
		uint32		live;
		uint32		gone = 0;
		uint32		l;

		memcpy(&live, blk + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
		l = live;
		while (l != 0)
		{
			int			lane = pg_rightmost_one_pos32(l);
			ItemPointerData tid;
			MemoryContext old = MemoryContextSwitchTo(tmp);

			l &= l - 1;
			memcpy(&tid, blk + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
				   sizeof(tid));
			if (!FetchVector(heap, index, state, fetch, slot, indexInfo, estate, &tid, x))
				gone |= (uint32) 1 << lane;
			else
				TvResidentEncodeRefine(state->codec, state->metric,
									   TvResidentCentroid(centroids, &meta, blk), x,
									   TvResidentRefine(copy, b * TV_LANES + lane));
			MemoryContextSwitchTo(old);
			MemoryContextReset(tmp);
		}
		/* a row that no longer exists is dead to every snapshot */
		live &= ~gone;
		memcpy(blk + TV_BLOCK_LIVE_OFFSET, &live, sizeof(uint32));

		e->rows_done = Min((b + 1) * TV_LANES, copy->nslots);
		if ((b & 31) == 31)
		{
			if (tv_test_build_delay_ms > 0)
				pg_usleep(tv_test_build_delay_ms * 1000L);
			CHECK_FOR_INTERRUPTS();
			if (give_way && LockWanted(heap, index))
			{
				filled = false;
				break;
			}
		}
	}
	TvRestoreUser(&owner);
	ExecDropSingleTupleTableSlot(slot);
	table_index_fetch_end(fetch);
	FreeExecutorState(estate);
	MemoryContextDelete(tmp);
	pfree(x);
	return filled;
}

/*
 * Put a copy in place of the entry's; caller holds the metapage share lock.
 * With filling, some of its vectors are still to be fetched (FillLanes):
 * the state stays BUILDING, but writers mirror their changes into it from
 * now on, as into a ready copy.
 */
static void
SwapIn(Relation index, TvResidentEntry *e, dsa_pointer dp, Size bytes,
	   const TvMetaPageData *meta, XLogRecPtr lsn, bool from_snapshot, bool filling)
{
	dsa_pointer old;
	int			retired;

	LWLockAcquire(e->lock, LW_EXCLUSIVE);
	old = e->data;
	e->data = dp;
	tv_unpublished = InvalidDsaPointer;
	e->bytes = bytes;
	e->change_count = meta->change_count;
	e->lsn = lsn;
	e->relfilenode = TvRelFileNumber(index);
	e->filling = filling;
	retired = TvResidentRetire(e);
	LWLockRelease(e->lock);
	e->unlogged = index->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT;
	e->rows_done = e->rows_total = meta->nslots;
	e->from_snapshot = from_snapshot;
	if (!from_snapshot)
	{
		/* a new copy (after REINDEX, say) needs its own dump */
		e->snap_change_count = 0;
		e->snap_bytes = 0;
	}
	if (DsaPointerIsValid(old))
	{
		TvResidentWaitUnpinned(e, retired);
		dsa_free(TvResidentArea(), old);
	}
}

/* Swap a finished copy in; caller holds the metapage share lock */
static void
Publish(Relation index, TvResidentEntry *e, dsa_pointer dp, Size bytes,
		const TvMetaPageData *meta, XLogRecPtr lsn, bool from_snapshot)
{
	SwapIn(index, e, dp, bytes, meta, lsn, from_snapshot, false);
	TvResidentSetState(e, TV_RES_READY);
}

/* Read the metapage and its LSN under a share lock the caller keeps */
static Buffer
LockMeta(Relation index, TvMetaPageData *meta, XLogRecPtr *lsn)
{
	Buffer		metabuf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	Page		page;

	LockBuffer(metabuf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(metabuf);
	TvCheckMetaPage(index, page);
	memcpy(meta, TvPageGetMeta(page), sizeof(TvMetaPageData));
	*lsn = PageGetLSN(page);
	return metabuf;
}

/*
 * Does a snapshot's stream hold what the index's pages hold?  The counter
 * alone does not prove it: after WAL lost in a crash the counter can climb
 * back to the same value with other contents.  The copy may lack lanes whose
 * row was gone when it was built, and VACUUM's list hints are not copied;
 * everything else a scan reads must be equal: the IVF directory's tails and
 * lengths and the centroids, every block's list links, and each lane the
 * snapshot calls live (TID, factors, code).  Returns NULL, or the first
 * difference.
 */
static const char *
SnapshotStreamDiffers(const TvMetaPageData *meta, const TvCodec *codec,
					  const char *snap, const char *pages)
{
	uint64		nblocks = TvBlockCount(meta);
	uint8	   *code_s = palloc(codec->code_bytes);
	uint8	   *code_p = palloc(codec->code_bytes);
	const char *why = NULL;

	for (uint32 j = 0; j < meta->lists && why == NULL; j++)
	{
		const TvListEntry *es = (const TvListEntry *) (snap + (Size) j * sizeof(TvListEntry));
		const TvListEntry *ep = (const TvListEntry *) (pages + (Size) j * sizeof(TvListEntry));

		if (es->tail != ep->tail || es->nblocks != ep->nblocks)
			why = psprintf("list %u differs", j);
	}
	if (why == NULL && meta->lists > 0 &&
		memcmp(snap + TvCentroidsOffset(meta->lists), pages + TvCentroidsOffset(meta->lists),
			   (Size) meta->lists * meta->dim * sizeof(float)) != 0)
		why = "centroids differ";

	for (uint64 b = 0; b < nblocks && why == NULL; b++)
	{
		const char *bs = snap + TvBlockOffset(meta, b);
		const char *bp = pages + TvBlockOffset(meta, b);
		uint32		live_s;
		uint32		live_p;

		if (memcmp(bs, bp, meta->block_bytes) == 0)
			continue;
		memcpy(&live_s, bs + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
		memcpy(&live_p, bp + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
		if ((live_s & ~live_p) != 0 ||
			memcmp(bs + TV_BLOCK_PREV_OFFSET, bp + TV_BLOCK_PREV_OFFSET, 2 * sizeof(uint32)) != 0)
		{
			why = psprintf("block " UINT64_FORMAT " differs", b);
			break;
		}
		for (uint32 l = live_s; l != 0 && why == NULL; l &= l - 1)
		{
			int			lane = pg_rightmost_one_pos32(l);
			Size		tid = TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData);
			Size		norm = TV_BLOCK_NORM_OFFSET + lane * sizeof(float);
			Size		ipscale = TV_BLOCK_IPSCALE_OFFSET + lane * sizeof(float);

			tv_block_get_code(codec, (const uint8 *) bs + TV_BLOCK_CODES_OFFSET, lane, code_s);
			tv_block_get_code(codec, (const uint8 *) bp + TV_BLOCK_CODES_OFFSET, lane, code_p);
			if (memcmp(bs + tid, bp + tid, sizeof(ItemPointerData)) != 0 ||
				memcmp(bs + norm, bp + norm, sizeof(float)) != 0 ||
				memcmp(bs + ipscale, bp + ipscale, sizeof(float)) != 0 ||
				memcmp(code_s, code_p, codec->code_bytes) != 0)
				why = psprintf("slot " UINT64_FORMAT " differs", b * TV_LANES + lane);
		}
	}
	pfree(code_s);
	pfree(code_p);
	return why;
}

/*
 * Try the index's snapshot; true if it was whole and current and is now
 * published.  Current means: same relfilenode and change counter, an LSN
 * no older than the metapage's, and a stream equal to the pages'.  Unlogged
 * indexes are never snapshotted: a crash resets them from the init fork,
 * after which the counter can reach the snapshot's again.  With give_way,
 * the file read and the stream copy look for DDL waiting for our locks
 * between pieces; false with *gave_way set when they let it through.
 */
static bool
LoadSnapshot(Relation heap, Relation index, TvResidentEntry *e, bool give_way,
			 bool *gave_way)
{
	TvLoadLocks locks = {heap, index};
	TvSnapshotExpect expect;
	TvSnapshotHeader hdr;
	char	   *stream;
	char	   *refines;
	const char *why = NULL;
	TvMetaPageData meta;
	XLogRecPtr	lsn;
	Buffer		metabuf;
	dsa_pointer dp;
	TvResidentCopy *copy;
	char		path[MAXPGPATH];

	*gave_way = false;
	if (index->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT)
	{
		/* one left by an older release, or from before SET UNLOGGED */
		TvSnapshotRemove(MyDatabaseId, RelationGetRelid(index));
		return false;
	}
	metabuf = LockMeta(index, &meta, &lsn);
	UnlockReleaseBuffer(metabuf);
	if (meta.dim == 0)
		return false;

	MemSet(&expect, 0, sizeof(expect));
	expect.dboid = MyDatabaseId;
	expect.indexoid = RelationGetRelid(index);
	expect.relfilenode = TvRelFileNumber(index);
	expect.dim = meta.dim;
	expect.bits = meta.bits;
	expect.metric = meta.metric;
	expect.seed = meta.seed;
	expect.change_count = meta.change_count;
	/* the dump saw the record that set this counter, so its LSN is no older */
	expect.min_lsn = lsn;
	if (!TvSnapshotRead(&expect, &hdr, &stream, &refines, &why,
						give_way ? SnapshotReadStop : NULL, &locks, gave_way))
	{
		if (why != NULL)
		{
			TvSnapshotPath(MyDatabaseId, RelationGetRelid(index), path);
			ereport(WARNING,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("turbovec snapshot \"%s\" not used: %s", path, why),
					 errdetail("The resident copy of index \"%s\" is rebuilt from the index and its table.",
							   RelationGetRelationName(index))));
		}
		return false;
	}
	if (hdr.lists != meta.lists || hdr.list_area != meta.list_area ||
		hdr.block_bytes != meta.block_bytes || hdr.nslots != meta.nslots)
	{
		TvSnapshotPath(MyDatabaseId, RelationGetRelid(index), path);
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("turbovec snapshot \"%s\" not used: its layout differs from the index's",
						path)));
		return false;
	}

	metabuf = LockMeta(index, &meta, &lsn);
	if (meta.change_count != hdr.change_count)
	{
		/* the index moved while we read the file: rebuild instead */
		UnlockReleaseBuffer(metabuf);
		return false;
	}
	/* writers wait for the metapage meanwhile; DDL need not */
	dp = CopyStream(heap, index, &meta, give_way, gave_way);
	if (*gave_way)
	{
		UnlockReleaseBuffer(metabuf);
		pfree(stream);
		pfree(refines);
		return false;
	}
	if (!DsaPointerIsValid(dp))
	{
		UnlockReleaseBuffer(metabuf);
		TvResidentSetState(e, TV_RES_TOO_BIG);
		return true;			/* nothing more to try */
	}
	copy = dsa_get_address(TvResidentArea(), dp);
	why = SnapshotStreamDiffers(&meta, TvGetIndexState(index)->codec, stream,
								TvResidentStream(copy));
	if (why != NULL)
	{
		UnlockReleaseBuffer(metabuf);
		dsa_free(TvResidentArea(), dp);
		tv_unpublished = InvalidDsaPointer;
		TvSnapshotPath(MyDatabaseId, RelationGetRelid(index), path);
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("turbovec snapshot \"%s\" not used: its stream differs from the index's (%s)",
						path, why),
				 errdetail("The resident copy of index \"%s\" is rebuilt from the index and its table.",
						   RelationGetRelationName(index))));
		pfree(stream);
		pfree(refines);
		return false;
	}
	/* the file's stream is the extent's at this counter; use its refinements */
	memcpy(TvResidentStream(copy), stream, hdr.stream_bytes);
	memcpy(TvResidentRefines(copy), refines, hdr.refine_bytes);
	Publish(index, e, dp, CopyBytes(copy), &meta, lsn, true);
	/* the file on disk is this state: nothing to dump until it changes */
	e->snap_change_count = hdr.change_count;
	e->snap_lsn = hdr.lsn;
	e->snap_bytes = TV_SNAPSHOT_HEADER_BYTES + hdr.stream_bytes + hdr.refine_bytes;
	e->snap_time = GetCurrentTimestamp();
	UnlockReleaseBuffer(metabuf);
	TvSnapshotPath(MyDatabaseId, RelationGetRelid(index), path);
	ereport(LOG,
			(errmsg("turbovec loaded snapshot \"%s\" for index \"%s\" (" UINT64_FORMAT " slots)",
					path, RelationGetRelationName(index), hdr.nslots)));
	pfree(stream);
	pfree(refines);
	return true;
}

/* A lane whose vector a catch-up must fetch */
typedef struct TvLaneFetch
{
	uint64		slot;
	ItemPointerData tid;
} TvLaneFetch;

/* The metapage fields that place a copy's blocks */
static void
CopyGeometry(const TvResidentCopy *copy, TvMetaPageData *m)
{
	MemSet(m, 0, sizeof(*m));
	m->list_area = copy->list_area;
	m->block_bytes = copy->block_bytes;
	m->nslots = copy->nslots;
	m->lists = copy->lists;
	m->dim = copy->dim;
}

/*
 * Bring the stream of a private copy to the extent's bytes, comparing page
 * by page and copying only what differs; no heap access.  A block whose
 * codes, TIDs or links changed needs the vectors of its live lanes again:
 * they are listed in *fetch.  A block whose only change is lanes VACUUM
 * cleared just loses them, and lanes the copy dropped because their row is
 * gone stay dropped.  Caller holds the metapage share lock, so the extent
 * does not move: the copy equals it afterwards, but for the listed vectors.
 */
static void
RefreshStream(Relation index, const TvMetaPageData *meta, TvResidentCopy *copy,
			  TvLaneFetch **fetch, uint64 *nfetch)
{
	char	   *stream = TvResidentStream(copy);
	TvMetaPageData old;
	uint64		nblocks = TvBlockCount(meta);
	uint64		old_blocks;
	uint64		used = TvBlockOffset(meta, nblocks);
	uint64		bb = meta->block_bytes;
	uint32	   *page_live = palloc_extended(sizeof(uint32) * Max(nblocks, 1), MCXT_ALLOC_HUGE);
	bool	   *dirty = palloc_extended(Max(nblocks, 1), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	uint64		cap = 64;

	CopyGeometry(copy, &old);
	old_blocks = Min(TvBlockCount(&old), nblocks);
	for (uint64 b = 0; b < nblocks; b++)
	{
		if (b < old_blocks)
			memcpy(&page_live[b], stream + TvBlockOffset(meta, b) + TV_BLOCK_LIVE_OFFSET,
				   sizeof(uint32));
		else
			page_live[b] = 0;
	}

	for (uint64 off = 0; off < used; off += TV_PAGE_PAYLOAD)
	{
		uint64		end = Min(off + TV_PAGE_PAYLOAD, used);
		Buffer		buf = ReadBufferExtended(index, MAIN_FORKNUM,
											 TV_FIRST_DATA_BLKNO + off / TV_PAGE_PAYLOAD,
											 RBM_NORMAL, NULL);
		const char *src;

		LockBuffer(buf, BUFFER_LOCK_SHARE);
		src = TvPagePayload(BufferGetPage(buf)) - off;	/* indexed by stream offset */
		if (memcmp(stream + off, src + off, end - off) != 0)
		{
			uint64		pos = off;

			/* the list directory: bytes only */
			if (pos < meta->list_area)
			{
				uint64		hi = Min(end, (uint64) meta->list_area);

				memcpy(stream + pos, src + pos, hi - pos);
				pos = hi;
			}
			while (pos < end)
			{
				uint64		b = (pos - meta->list_area) / bb;
				uint64		boff = TvBlockOffset(meta, b);
				uint64		hi = Min(end, boff + bb);
				uint64		live_end = boff + TV_BLOCK_LIVE_OFFSET + sizeof(uint32);

				/* the live word's bytes on this page: merged below */
				for (; pos < Min(hi, live_end); pos++)
					((char *) &page_live[b])[pos - boff - TV_BLOCK_LIVE_OFFSET] = src[pos];
				if (pos < hi && memcmp(stream + pos, src + pos, hi - pos) != 0)
				{
					memcpy(stream + pos, src + pos, hi - pos);
					dirty[b] = true;
				}
				pos = hi;
			}
		}
		UnlockReleaseBuffer(buf);
	}

	*nfetch = 0;
	*fetch = palloc(sizeof(TvLaneFetch) * cap);
	for (uint64 b = 0; b < nblocks; b++)
	{
		char	   *blk = stream + TvBlockOffset(meta, b);
		uint32		live;

		memcpy(&live, blk + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
		if (!dirty[b])
			live &= page_live[b];	/* VACUUM's clears; dropped lanes stay dropped */
		else
		{
			uint32		l;

			live = page_live[b];
			for (l = live; l != 0; l &= l - 1)
			{
				int			lane = pg_rightmost_one_pos32(l);

				if (*nfetch == cap)
				{
					cap *= 2;
					*fetch = repalloc_huge(*fetch, sizeof(TvLaneFetch) * cap);
				}
				(*fetch)[*nfetch].slot = b * TV_LANES + lane;
				memcpy(&(*fetch)[*nfetch].tid,
					   blk + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
					   sizeof(ItemPointerData));
				(*nfetch)++;
			}
		}
		memcpy(blk + TV_BLOCK_LIVE_OFFSET, &live, sizeof(uint32));
	}
	copy->nslots = meta->nslots;
	pfree(page_live);
	pfree(dirty);
}

/*
 * Fetch the listed vectors into a copy that is in place and filling, with
 * no index lock held: writers mirror into the copy meanwhile, so each lane
 * is written under the entry lock, and only while it still holds the TID
 * it was fetched for.  A lane whose row is gone is dropped, as in
 * FillVectors.  Returns false, with lanes still to fetch, when give_way is
 * set and a lock request came to wait for ours.
 */
static bool
FillLanes(Relation heap, Relation index, TvIndexState *state, TvResidentEntry *e,
		  dsa_pointer dp, const TvLaneFetch *fetch, uint64 nfetch, bool give_way)
{
	bool		filled = true;
	IndexFetchTableData *scan;
	TupleTableSlot *slot;
	IndexInfo  *indexInfo;
	EState	   *estate;
	MemoryContext tmp;
	float	   *x;
	TvUserContext owner;
	const float *centroids;

	if (nfetch == 0)
		return true;
	centroids = ResidualCentroids(index, &state->meta);
	scan = table_index_fetch_begin(heap);
	slot = table_slot_create(heap, NULL);
	/* index expressions are the owner's code, as in FillVectors */
	TvSwitchToTableOwner(heap, &owner);
	indexInfo = BuildIndexInfo(index);
	estate = CreateExecutorState();
	tmp = AllocSetContextCreate(CurrentMemoryContext,
								"turbovec catch-up temporary context",
								ALLOCSET_DEFAULT_SIZES);
	x = palloc(sizeof(float) * Max(state->meta.dim, 1));
	for (uint64 i = 0; i < nfetch; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(tmp);
		ItemPointerData tid = fetch[i].tid;
		bool		found;

		found = FetchVector(heap, index, state, scan, slot, indexInfo, estate, &tid, x);
		MemoryContextSwitchTo(old);
		MemoryContextReset(tmp);

		LWLockAcquire(e->lock, LW_EXCLUSIVE);
		if (e->data == dp && e->filling)
		{
			TvResidentCopy *copy = dsa_get_address(TvResidentArea(), dp);
			TvMetaPageData m;
			char	   *blk;
			int			lane = fetch[i].slot % TV_LANES;
			ItemPointerData now;
			uint32		live;

			CopyGeometry(copy, &m);
			blk = TvResidentStream(copy) + TvBlockOffset(&m, fetch[i].slot / TV_LANES);
			memcpy(&now, blk + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
				   sizeof(now));
			memcpy(&live, blk + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
			if ((live & ((uint32) 1 << lane)) != 0 && ItemPointerEquals(&now, &tid))
			{
				if (found && copy->dim == state->meta.dim)
					TvResidentEncodeRefine(state->codec, state->metric,
										   TvResidentCentroid(centroids, &m, blk), x,
										   TvResidentRefine(copy, fetch[i].slot));
				else
				{
					/* a row that no longer exists is dead to every snapshot */
					live &= ~((uint32) 1 << lane);
					memcpy(blk + TV_BLOCK_LIVE_OFFSET, &live, sizeof(uint32));
				}
			}
		}
		LWLockRelease(e->lock);
		if ((i & 1023) == 1023)
		{
			CHECK_FOR_INTERRUPTS();
			if (give_way && LockWanted(heap, index))
			{
				filled = false;
				break;
			}
		}
	}
	TvRestoreUser(&owner);
	ExecDropSingleTupleTableSlot(slot);
	table_index_fetch_end(scan);
	FreeExecutorState(estate);
	MemoryContextDelete(tmp);
	pfree(x);
	return filled;
}

/* A bigger home for a private copy that inserts outgrew; frees the old one */
static dsa_pointer
GrowCopy(dsa_pointer dp, const TvMetaPageData *meta)
{
	TvResidentCopy *copy = dsa_get_address(TvResidentArea(), dp);
	TvMetaPageData m;
	uint64		used;
	dsa_pointer grown;
	TvResidentCopy *bigger;

	CopyGeometry(copy, &m);
	used = TvBlockOffset(&m, TvBlockCount(&m));
	grown = AllocCopy(meta, used);
	if (DsaPointerIsValid(grown))
	{
		bigger = dsa_get_address(TvResidentArea(), grown);
		memcpy(TvResidentStream(bigger), TvResidentStream(copy), used);
		memcpy(TvResidentRefines(bigger), TvResidentRefines(copy),
			   copy->nslots * copy->refine_bytes);
		bigger->nslots = copy->nslots;
	}
	dsa_free(TvResidentArea(), dp);
	/* the freed copy must not be freed again after an error */
	if (!DsaPointerIsValid(grown))
		tv_unpublished = InvalidDsaPointer;
	return grown;
}

/*
 * The entry's copy, taken away from it for a catch-up, if it is a copy of
 * this relfilenode.  The entry is BUILDING, so once the scans that pinned
 * it are done no one reads it and no writer mirrors into it: it is ours.
 */
static dsa_pointer
DetachCopy(Relation index, TvResidentEntry *e)
{
	dsa_pointer dp = InvalidDsaPointer;
	int			retired = -1;

	LWLockAcquire(e->lock, LW_EXCLUSIVE);
	if (DsaPointerIsValid(e->data) && e->relfilenode == TvRelFileNumber(index))
	{
		dp = e->data;
		e->data = InvalidDsaPointer;
		e->bytes = 0;
		retired = TvResidentRetire(e);
	}
	LWLockRelease(e->lock);
	if (retired >= 0)
		TvResidentWaitUnpinned(e, retired);
	return dp;
}

/*
 * A worker's rebuild lets a waiting lock request through: its unfinished
 * copy goes (RebuildCleanup, which also asks the worker to come back), and
 * the worker lets go of its locks on return.  Once the lock is released, the
 * worker's next round copies again.  Returns false, as an unfinished rebuild
 * does.
 */
static bool
GiveWay(Relation index)
{
	ereport(LOG,
			(errmsg("turbovec: the resident copy of index \"%s\" gives way to a waiting lock request",
					RelationGetRelationName(index)),
			 errdetail("The copy is made again once the lock is released.")));
	RebuildCleanup(0, (Datum) 0);
	return false;
}

/*
 * Make the resident copy of an index current (or load its snapshot), for
 * TvResidentRebuild, which cleans up after an error.  Returns true when a
 * ready copy was published.
 *
 * No step holds an index lock across heap access, so writers (and WAL
 * replay on a standby) wait at most for a pass over the stream in memory:
 *
 *  1. Start from the entry's own copy when it is of this relfilenode (a
 *     copy that fell behind, or a standby's copy that replay moved past);
 *     else copy the stream page by page, without the metapage lock, and
 *     fetch every live lane's vector from the table without any index lock
 *     (FillVectors).
 *  2. Under the metapage share lock, compare the copy with the pages and
 *     take what changed since (RefreshStream), put the copy in place with
 *     the metapage's counter, and let go of the metapage.  From then on
 *     writers mirror into it as into a ready copy.
 *  3. Without any index lock, fetch the vectors of the lanes that changed
 *     (FillLanes): a number bounded by the changes, not the index's size.
 *     Then the copy is ready.
 *
 * With from_scratch, step 1 always copies the stream and reads the table.
 * With give_way, the snapshot load and steps 1 and 3 look for a waiting
 * lock request between pieces and batches of rows and give way to it
 * (GiveWay).
 */
static bool
RebuildCopy(Relation heap, Relation index, TvResidentEntry *e, bool try_snapshot,
			bool from_scratch, bool give_way)
{
	dsa_pointer dp = InvalidDsaPointer;

	if (try_snapshot && tv_snapshots)
	{
		bool		gave_way;

		if (LoadSnapshot(heap, index, e, give_way, &gave_way))
			return e->state == TV_RES_READY;
		if (gave_way)
		{
			/* the file is still the fastest way back: try it again */
			e->retry_snapshot = true;
			return GiveWay(index);
		}
	}
	if (!from_scratch)
		dp = tv_unpublished = DetachCopy(index, e);

	for (int attempt = 1; attempt <= TV_REBUILD_ATTEMPTS; attempt++)
	{
		TvMetaPageData meta;
		XLogRecPtr	lsn;
		Buffer		metabuf = LockMeta(index, &meta, &lsn);
		TvResidentCopy *copy;
		TvLaneFetch *fetch;
		uint64		nfetch;
		bool		ok;

		if (DsaPointerIsValid(dp))
		{
			copy = dsa_get_address(TvResidentArea(), dp);
			if (copy->dim != meta.dim || copy->bits != meta.bits ||
				copy->metric != meta.metric || copy->lists != meta.lists ||
				copy->list_area != meta.list_area || copy->block_bytes != meta.block_bytes)
			{
				/* the first vector fixed the dimension: start over */
				dsa_free(TvResidentArea(), dp);
				dp = tv_unpublished = InvalidDsaPointer;
			}
			else if (meta.nslots > copy->capacity_slots)
			{
				UnlockReleaseBuffer(metabuf);
				dp = GrowCopy(dp, &meta);
				if (!DsaPointerIsValid(dp))
					break;
				continue;
			}
		}
		if (!DsaPointerIsValid(dp))
		{
			bool		gave_way;

			/* no need to keep writers out: step 2 compares every byte */
			UnlockReleaseBuffer(metabuf);
			dp = CopyStream(heap, index, &meta, give_way, &gave_way);
			if (gave_way)
				return GiveWay(index);
			if (!DsaPointerIsValid(dp))
				break;
			copy = dsa_get_address(TvResidentArea(), dp);
			if (meta.dim > 0 &&
				!FillVectors(heap, index, TvGetIndexState(index), e, copy, give_way))
				return GiveWay(index);
			continue;			/* catch up with what changed meanwhile */
		}

		RefreshStream(index, &meta, copy, &fetch, &nfetch);
		SwapIn(index, e, dp, CopyBytes(copy), &meta, lsn, false, true);
		UnlockReleaseBuffer(metabuf);

		ok = FillLanes(heap, index, TvGetIndexState(index), e, dp, fetch, nfetch, give_way);
		pfree(fetch);
		if (!ok)
			return GiveWay(index);

		/* ready, unless a writer could not mirror into it meanwhile */
		LWLockAcquire(e->lock, LW_EXCLUSIVE);
		ok = (e->data == dp && e->filling);
		TvResidentSetState(e, ok ? TV_RES_READY : TV_RES_STALE);
		e->filling = false;
		LWLockRelease(e->lock);
		if (!ok)
			TvResidentWakeWorker(MyDatabaseId);
		return ok;
	}

	if (DsaPointerIsValid(dp))
	{
		/* the index kept changing its layout: the worker tries again */
		dsa_free(TvResidentArea(), dp);
		tv_unpublished = InvalidDsaPointer;
		TvResidentSetState(e, TV_RES_STALE);
		return false;
	}
	TvResidentSetState(e, TV_RES_TOO_BIG);
	{
		TvMetaPageData meta;
		uint64		cap_slots;
		uint64		stream_cap;

		TvReadMeta(index, &meta);
		ereport(LOG,
				(errmsg("turbovec: index \"%s\" does not fit turbovec.resident_memory; it is served from its pages",
						RelationGetRelationName(index)),
				 errdetail("Its resident copy needs " UINT64_FORMAT " MB; turbovec.resident_memory is %d MB, shared by all copies.",
						   (TvResidentCopyBytes(&meta, &cap_slots, &stream_cap) + 1024 * 1024 - 1) / (1024 * 1024),
						   tv_resident_memory_mb),
				 errhint("turbo_indexes.resident_bytes_needed shows what each index needs.")));
	}
	return false;
}

/*
 * A rebuild failed or gave way: free its unpublished copy and let scans and
 * the worker see the entry as behind (it keeps its previous copy, if any) or
 * not loaded.  The worker then tries again, and marks the entry failed if
 * its own attempt fails too.  From the rebuild's PG_CATCH, from GiveWay, and
 * before shared memory is detached when the process exits on a FATAL.
 */
static void
RebuildCleanup(int code, Datum arg)
{
	TvResidentEntry *e = tv_rebuilding;
	bool		has_copy;
	dsa_pointer filling = InvalidDsaPointer;
	int			retired = -1;

	if (DsaPointerIsValid(tv_unpublished))
	{
		dsa_free(TvResidentArea(), tv_unpublished);
		tv_unpublished = InvalidDsaPointer;
	}
	tv_rebuilding = NULL;
	if (e == NULL)
		return;
	LWLockAcquire(e->lock, LW_EXCLUSIVE);
	if (DsaPointerIsValid(e->data) && e->filling)
	{
		/*
		 * In place but with vectors still to fetch: a catch-up would take
		 * its stream for current and never fetch them, so it goes.
		 */
		filling = e->data;
		e->data = InvalidDsaPointer;
		e->bytes = 0;
		e->filling = false;
		retired = TvResidentRetire(e);
	}
	has_copy = DsaPointerIsValid(e->data);
	LWLockRelease(e->lock);
	if (DsaPointerIsValid(filling))
	{
		TvResidentWaitUnpinned(e, retired);
		dsa_free(TvResidentArea(), filling);
	}
	TvResidentSetState(e, has_copy ? TV_RES_STALE : TV_RES_EMPTY);
	TvResidentWakeWorker(MyDatabaseId);
}

/*
 * Make a fresh resident copy of an index (or load its snapshot).  Returns
 * true when a copy was published.  On an error the entry does not stay
 * "building" and no shared memory stays allocated (RebuildCleanup).  With
 * give_way, for the worker, the rebuild lets DDL that waits for its locks
 * through and is done again later (GiveWay); a user's own call
 * (turbo_rebuild) holds its locks to the end, as any other query does.
 */
bool
TvResidentRebuild(Relation heap, Relation index, TvResidentEntry *e, bool try_snapshot,
				  bool from_scratch, bool give_way)
{
	static bool exit_hook = false;
	bool		done;

	if (!exit_hook)
	{
		/* once per process: a FATAL exit skips PG_CATCH */
		before_shmem_exit(RebuildCleanup, (Datum) 0);
		exit_hook = true;
	}
	Assert(tv_rebuilding == NULL);
	TvResidentSetState(e, TV_RES_BUILDING);
	tv_rebuilding = e;
	tv_unpublished = InvalidDsaPointer;
	PG_TRY();
	{
		done = RebuildCopy(heap, index, e, try_snapshot, from_scratch, give_way);
	}
	PG_CATCH();
	{
		RebuildCleanup(0, (Datum) 0);
		PG_RE_THROW();
	}
	PG_END_TRY();
	tv_rebuilding = NULL;
	/* every copy this rebuild made is published or freed by now */
	tv_unpublished = InvalidDsaPointer;
	return done;
}

/* Write the copy of an entry to its snapshot file; the caller owns the dump */
static void
DumpCopy(TvResidentEntry *e)
{
	TvSnapshotHeader hdr;
	TvResidentCopy *copy;
	char	   *stream;
	char	   *refines;
	Size		size;
	uint64		stream_bytes;
	uint64		refine_bytes;
	TvMetaPageData meta;

	LWLockAcquire(e->lock, LW_SHARED);
	copy = TvResidentGetCopy(e);
	if (copy == NULL || e->state != TV_RES_READY || e->unlogged)
	{
		LWLockRelease(e->lock);
		return;
	}
	MemSet(&meta, 0, sizeof(meta));
	meta.list_area = copy->list_area;
	meta.block_bytes = copy->block_bytes;
	meta.nslots = copy->nslots;
	stream_bytes = TvBlockOffset(&meta, TvBlockCount(&meta));
	refine_bytes = copy->nslots * copy->refine_bytes;
	MemSet(&hdr, 0, sizeof(hdr));
	hdr.dboid = e->dbid;
	hdr.indexoid = e->indexid;
	hdr.relfilenode = e->relfilenode;
	hdr.dim = copy->dim;
	hdr.bits = copy->bits;
	hdr.metric = copy->metric;
	hdr.lists = copy->lists;
	hdr.list_area = copy->list_area;
	hdr.block_bytes = copy->block_bytes;
	hdr.seed = TV_CODEC_DEFAULT_SEED;
	hdr.lsn = e->lsn;
	hdr.change_count = e->change_count;
	hdr.nslots = copy->nslots;
	stream = palloc_extended(Max(stream_bytes, 1), MCXT_ALLOC_HUGE);
	refines = palloc_extended(Max(refine_bytes, 1), MCXT_ALLOC_HUGE);
	memcpy(stream, TvResidentStream(copy), stream_bytes);
	memcpy(refines, TvResidentRefines(copy), refine_bytes);
	LWLockRelease(e->lock);

	/* no lock held while writing: the copy we write is our own */
	{
		TvMetaPageData m;
		uint64		live = 0;

		m = meta;
		for (uint64 b = 0; b < TvBlockCount(&m); b++)
		{
			uint32		w;

			memcpy(&w, stream + TvBlockOffset(&m, b), sizeof(uint32));
			live += pg_popcount32(w);
		}
		hdr.live = live;
	}
	/*
	 * The file must never describe WAL a crash could still lose, or the
	 * counter could climb back to its value with other contents.
	 */
	if (!RecoveryInProgress())
		XLogFlush(hdr.lsn);
	if (TvSnapshotWrite(&hdr, stream, refines, &size))
	{
		e->snap_change_count = hdr.change_count;
		e->snap_lsn = hdr.lsn;
		e->snap_time = GetCurrentTimestamp();
		e->snap_bytes = (int64) size;
	}
	pfree(stream);
	pfree(refines);
}

/*
 * Dump the copy of an entry to its snapshot file.  At most one dump per
 * index is in flight: a second caller waits for the first, then returns.
 */
void
TvResidentDump(TvResidentEntry *e)
{
	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	if (e->dumping)
	{
		LWLockRelease(tv_shared->registry_lock);
		/* the other dump writes the same state or a newer one */
		while (e->dumping)
			ConditionVariableTimedSleep(&e->cv, 100, PG_WAIT_EXTENSION);
		ConditionVariableCancelSleep();
		return;
	}
	e->dumping = true;
	LWLockRelease(tv_shared->registry_lock);

	PG_TRY();
	{
		DumpCopy(e);
	}
	PG_FINALLY();
	{
		e->dumping = false;
		ConditionVariableBroadcast(&e->cv);
	}
	PG_END_TRY();
}

/*
 * The turbo indexes of this database, as OIDs, from a scan of pg_class
 * rather than a query: extensions that filter catalog queries (Citus hides
 * its shard relations from other processes' queries) must not hide indexes
 * from the worker.  Caller is in a transaction.
 */
static List *
TurboIndexes(void)
{
	List	   *result = NIL;
	Oid			amoid = get_index_am_oid("turbo", true);
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	if (!OidIsValid(amoid))
		return NIL;				/* the extension is not in this database */
	rel = table_open(RelationRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_class cls = (Form_pg_class) GETSTRUCT(tup);
		HeapTuple	itup;

		if (cls->relam != amoid || cls->relkind != RELKIND_INDEX ||
			cls->relpersistence == RELPERSISTENCE_TEMP)
			continue;
		itup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(cls->oid));
		if (!HeapTupleIsValid(itup))
			continue;
		if (((Form_pg_index) GETSTRUCT(itup))->indisvalid &&
			((Form_pg_index) GETSTRUCT(itup))->indisready)
			result = lappend_oid(result, cls->oid);
		ReleaseSysCache(itup);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return result;
}

/* A timestamptz as SQL, independent of DateStyle */
static char *
SqlTimestamp(TimestampTz t)
{
	return psprintf("pg_catalog.to_timestamp(%.6f)",
					(double) t / USECS_PER_SEC +
					(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * (double) SECS_PER_DAY);
}

/*
 * Write the live state of this database's copies into the persisted shadow
 * table, and forget rows of indexes that are gone.  At boot every row first
 * says not ready, so the shadow never claims more than the live state.
 *
 * Like all of the worker's SQL this runs under the search_path pinned at
 * start-up, with functions, operators and types named by schema, so that no
 * user object can capture it; IS DISTINCT FROM, which cannot be qualified,
 * finds its "=" in pg_catalog through that search_path.
 */
static void
UpdateShadow(List *indexes, bool boot)
{
	const char *nsp;
	StringInfoData sql;

	if (RecoveryInProgress())
		return;
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	/* no shadow table: the extension is not (or not yet) in this database */
	if (SPI_execute("SELECT n.nspname FROM pg_catalog.pg_extension e "
					"JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace "
					"JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid "
					"AND c.relname OPERATOR(pg_catalog.=) 'turbovec_index_state' "
					"WHERE e.extname OPERATOR(pg_catalog.=) 'turbovec'", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		goto done;
	nsp = quote_identifier(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	initStringInfo(&sql);
	if (boot)
	{
		appendStringInfo(&sql, "UPDATE %s.turbovec_index_state SET ready = false, updated = pg_catalog.now()", nsp);
		SPI_execute(sql.data, false, 0);
		resetStringInfo(&sql);
	}
	appendStringInfo(&sql, "DELETE FROM %s.turbovec_index_state "
					 "WHERE NOT indexrelid OPERATOR(pg_catalog.=) ANY ('{", nsp);
	{
		ListCell   *lc;
		bool		first = true;

		foreach(lc, indexes)
		{
			appendStringInfo(&sql, "%s%u", first ? "" : ",", lfirst_oid(lc));
			first = false;
		}
	}
	appendStringInfoString(&sql, "}'::pg_catalog.oid[])");
	SPI_execute(sql.data, false, 0);

	for (int i = 0; i < tv_shared->max_resident; i++)
	{
		TvResidentEntry *e = &tv_shared->entries[i];
		char		path[MAXPGPATH];
		bool		ready;

		if (e->state == TV_RES_FREE || e->dbid != MyDatabaseId)
			continue;
		ready = (e->state == TV_RES_READY);
		TvSnapshotPath(MyDatabaseId, e->indexid, path);
		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "INSERT INTO %s.turbovec_index_state AS s (indexrelid, ready, ready_since, rows, "
						 "resident_bytes, snapshot_lsn, snapshot_time, snapshot_bytes, snapshot_path) "
						 "VALUES (%u, %s, %s, " INT64_FORMAT ", " INT64_FORMAT ", %s, %s, %s, %s) "
						 "ON CONFLICT (indexrelid) DO UPDATE SET ready = EXCLUDED.ready, "
						 "ready_since = EXCLUDED.ready_since, rows = EXCLUDED.rows, "
						 "resident_bytes = EXCLUDED.resident_bytes, "
						 "snapshot_lsn = coalesce(EXCLUDED.snapshot_lsn, s.snapshot_lsn), "
						 "snapshot_time = coalesce(EXCLUDED.snapshot_time, s.snapshot_time), "
						 "snapshot_bytes = coalesce(EXCLUDED.snapshot_bytes, s.snapshot_bytes), "
						 "snapshot_path = coalesce(EXCLUDED.snapshot_path, s.snapshot_path), "
						 "updated = pg_catalog.now() "
						 "WHERE (s.ready, s.rows, s.resident_bytes, s.snapshot_lsn) IS DISTINCT FROM "
						 "(EXCLUDED.ready, EXCLUDED.rows, EXCLUDED.resident_bytes, "
						 "coalesce(EXCLUDED.snapshot_lsn, s.snapshot_lsn))",
						 nsp, e->indexid, ready ? "true" : "false",
						 ready ? SqlTimestamp(e->ready_since) : "NULL",
						 (int64) e->rows_total, (int64) e->bytes,
						 e->snap_bytes > 0 ? psprintf("'%X/%X'::pg_catalog.pg_lsn", LSN_FORMAT_ARGS(e->snap_lsn)) : "NULL",
						 e->snap_time > 0 ? SqlTimestamp(e->snap_time) : "NULL",
						 e->snap_bytes > 0 ? psprintf(INT64_FORMAT, e->snap_bytes) : "NULL",
						 e->snap_bytes > 0 ? quote_literal_cstr(path) : "NULL");
		SPI_execute(sql.data, false, 0);
	}
done:
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
}

/*
 * Bring the copy of one index up to date; in its own transaction.  An error
 * (a damaged index, say) is logged and marks the copy failed until the
 * index is rebuilt, instead of taking the worker down.
 */
static bool
SyncIndex(Oid indexoid, bool boot)
{
	MemoryContext cxt = CurrentMemoryContext;
	bool		worked = false;

	PG_TRY();
	{
		worked = SyncIndexGuarded(indexoid, boot);
	}
	PG_CATCH();
	{
		TvResidentEntry *e;

		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		e = TvResidentLookup(MyDatabaseId, indexoid, false);
		if (e != NULL)
			TvResidentSetState(e, TV_RES_FAILED);
	}
	PG_END_TRY();
	return worked;
}

/*
 * Is the copy of an index due for a rebuild the worker could not start?
 * One that gave way to DDL (GiveWay) is empty or stale.
 */
static bool
CopyDue(Oid indexoid)
{
	TvResidentEntry *e = TvResidentLookup(MyDatabaseId, indexoid, false);

	return e != NULL && (e->state == TV_RES_EMPTY || e->state == TV_RES_STALE);
}

/*
 * Returns true if it rebuilt something, or if a copy is due and DDL holds
 * the table: the worker then stays to try again once the lock is free,
 * rather than leave the copy for the next scan to ask for.
 */
static bool
SyncIndexGuarded(Oid indexoid, bool boot)
{
	bool		worked = false;

	Relation	index;
	Relation	heap;
	Oid			heapoid;
	TvResidentEntry *e;
	TvMetaPageData meta;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	heapoid = IndexGetRelation(indexoid, true);
	if (!OidIsValid(heapoid))
		goto done;
	if (!ConditionalLockRelationOid(heapoid, AccessShareLock))
	{
		worked = CopyDue(indexoid);
		goto done;
	}
	heap = try_relation_open(heapoid, NoLock);
	if (heap == NULL)
		goto done;
	index = try_relation_open(indexoid, AccessShareLock);
	if (index == NULL)
	{
		relation_close(heap, AccessShareLock);
		goto done;
	}

	e = TvResidentLookup(MyDatabaseId, indexoid, true);
	/* a copy left BUILDING by a worker that died is redone at boot */
	if (e != NULL && (e->state != TV_RES_BUILDING || boot))
	{
		TvReadMeta(index, &meta);
		if (e->state != TV_RES_READY || e->change_count != meta.change_count ||
			e->relfilenode != TvRelFileNumber(index))
		{
			/* a copy that failed or did not fit is retried once the index changes */
			bool		retry = boot || e->tried_relfilenode != TvRelFileNumber(index) ||
				(e->state != TV_RES_TOO_BIG && e->state != TV_RES_FAILED);

			e->tried_relfilenode = TvRelFileNumber(index);
			if (retry)
			{
				/*
				 * a fresh entry at server start may have a snapshot, and so
				 * may one whose load gave way to DDL
				 */
				bool		try_snapshot = (boot || e->retry_snapshot) &&
					e->state == TV_RES_EMPTY;

				e->retry_snapshot = false;
				TvResidentRebuild(heap, index, e, try_snapshot, false, true);
				worked = true;
			}
		}
	}
	relation_close(index, AccessShareLock);
	relation_close(heap, AccessShareLock);
done:
	PopActiveSnapshot();
	CommitTransactionCommand();
	return worked;
}

/* Free the entries of this database whose index is gone */
static void
ForgetDropped(List *live)
{
	for (int i = 0; i < tv_shared->max_resident; i++)
	{
		TvResidentEntry *e = &tv_shared->entries[i];

		if (e->state != TV_RES_FREE && e->dbid == MyDatabaseId &&
			!list_member_oid(live, e->indexid))
		{
			TvResidentRelease(e);
			TvSnapshotRemove(MyDatabaseId, e->indexid);
		}
	}
}

static TvWorkerSlot *
MySlot(void)
{
	for (int i = 0; i < tv_shared->max_databases; i++)
		if (tv_shared->dbs[i].dbid == MyDatabaseId)
			return &tv_shared->dbs[i];
	return NULL;
}

static void
DatabaseWorkerExit(int code, Datum arg)
{
	TvWorkerSlot *slot;

	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	slot = MySlot();
	if (slot != NULL)
	{
		slot->pid = 0;
		slot->latch = NULL;
		/* a poke after our last look is not lost: the launcher starts another */
		if (slot->poke)
			slot->wanted = true;
		if (!slot->wanted)
			slot->dbid = InvalidOid;
		else if (tv_shared->launcher_latch)
			SetLatch(tv_shared->launcher_latch);
	}
	LWLockRelease(tv_shared->registry_lock);
}

/* Dump the copies of this database that changed since their last dump */
static bool
DumpChanged(void)
{
	bool		any = false;

	for (int i = 0; i < tv_shared->max_resident; i++)
	{
		TvResidentEntry *e = &tv_shared->entries[i];

		if (e->dbid == MyDatabaseId && e->state == TV_RES_READY && !e->unlogged &&
			(e->snap_change_count != e->change_count || e->snap_bytes == 0))
		{
			TvResidentDump(e);
			any = true;
		}
	}
	return any;
}

/* Did the launcher ask for a dump (a checkpoint happened)?  Clears the request. */
static bool
TakeDumpRequest(void)
{
	TvWorkerSlot *slot;
	bool		dump;

	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	slot = MySlot();
	dump = slot && slot->dump;
	if (slot)
		slot->dump = false;
	LWLockRelease(tv_shared->registry_lock);
	return dump;
}

/* Is a copy of this database not ready, or has a backend asked us to look? */
static bool
WorkPending(void)
{
	TvWorkerSlot *slot;
	bool		pending;

	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	slot = MySlot();
	pending = slot && slot->poke;
	if (slot)
		slot->poke = false;
	LWLockRelease(tv_shared->registry_lock);
	return pending;
}

/*
 * A database worker: sync every turbo index of its database, dump the
 * snapshots a checkpoint asked for, and exit once it has been idle for
 * TV_WORKER_LINGER_MS, so it never holds up DROP DATABASE for long (which
 * waits 5 seconds for other sessions).  The launcher starts it again when
 * there is work.
 */
void
tv_database_main(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	bool		boot = true;
	int			idle_ms = 0;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	/* take part in ProcSignalBarriers, or DROP DATABASE waits for us forever */
	pqsignal(SIGUSR1, procsignal_sigusr1_handler);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	/* over ALTER DATABASE ... SET search_path: our SQL must not find user objects */
	SetConfigOption("search_path", TV_SAFE_SEARCH_PATH, PGC_SUSET, PGC_S_OVERRIDE);

	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	{
		TvWorkerSlot *slot = MySlot();

		if (slot == NULL || (slot->pid != 0 && slot->pid != MyProcPid))
		{
			LWLockRelease(tv_shared->registry_lock);
			proc_exit(0);		/* another worker serves this database */
		}
		slot->pid = MyProcPid;
		slot->latch = MyLatch;
		slot->wanted = false;
		slot->poke = false;
	}
	LWLockRelease(tv_shared->registry_lock);
	before_shmem_exit(DatabaseWorkerExit, (Datum) 0);
	pgstat_report_appname("turbovec worker");

	while (!ShutdownRequestPending)
	{
		List	   *indexes;
		ListCell   *lc;
		bool		worked = false;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		StartTransactionCommand();
		indexes = TurboIndexes();
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			indexes = list_copy(indexes);
			MemoryContextSwitchTo(old);
		}
		CommitTransactionCommand();

		ForgetDropped(indexes);
		/* files of dropped indexes, of a crashed dump, or all of them when off */
		if (boot)
			TvSnapshotSweep(MyDatabaseId, indexes, tv_snapshots);
		foreach(lc, indexes)
		{
			worked |= SyncIndex(lfirst_oid(lc), boot);
			if (ShutdownRequestPending)
				break;
		}

		/* the launcher woke us after a checkpoint: dump what changed */
		if (tv_snapshots && TakeDumpRequest())
			worked |= DumpChanged();
		UpdateShadow(indexes, boot);
		boot = false;

		if (indexes == NIL)
		{
			list_free(indexes);
			break;
		}
		list_free(indexes);

		if (WorkPending())
			worked = true;
		idle_ms = worked ? 0 : idle_ms + tv_worker_naptime_ms;
		if (idle_ms >= TV_WORKER_LINGER_MS)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(tv_worker_naptime_ms, TV_WORKER_LINGER_MS), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	/* a shutdown lets the dump in flight finish, and dumps what changed */
	if (tv_snapshots)
		DumpChanged();
	proc_exit(0);
}

/* Start the worker of one database; false if no slot is free */
static bool
StartDatabaseWorker(Oid dbid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	MemSet(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "turbovec", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "tv_database_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "turbovec worker for database %u", dbid);
	strlcpy(worker.bgw_type, "turbovec worker", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(dbid);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("turbovec could not start a worker for database %u", dbid),
				 errhint("Consider raising max_worker_processes.")));
		return false;
	}
	return true;
}

/* The connectable databases, as a list of OIDs in TopMemoryContext */
static List *
ListDatabases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *dbs = NIL;

	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			dbs = lappend_oid(dbs, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return dbs;
}

/* Ask for a worker in every connectable database */
static void
WantAllDatabases(void)
{
	List	   *dbs = ListDatabases();
	ListCell   *lc;

	foreach(lc, dbs)
		TvResidentWakeWorker(lfirst_oid(lc));
	list_free(dbs);
}

/* Free the copies and worker slots of databases that were dropped */
static void
ForgetDroppedDatabases(void)
{
	List	   *dbs = ListDatabases();

	TvSnapshotSweep(InvalidOid, dbs, true);

	for (int i = 0; i < tv_shared->max_resident; i++)
	{
		TvResidentEntry *e = &tv_shared->entries[i];
		Oid			dbid = e->dbid;

		if (e->state != TV_RES_FREE && !list_member_oid(dbs, dbid))
		{
			Oid			indexid = e->indexid;

			TvResidentRelease(e);
			TvSnapshotRemove(dbid, indexid);
		}
	}
	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	for (int i = 0; i < tv_shared->max_databases; i++)
	{
		TvWorkerSlot *slot = &tv_shared->dbs[i];

		if (slot->dbid != InvalidOid && slot->pid == 0 && !list_member_oid(dbs, slot->dbid))
		{
			slot->dbid = InvalidOid;
			slot->wanted = false;
		}
	}
	LWLockRelease(tv_shared->registry_lock);
	list_free(dbs);
}

static void
LauncherExit(int code, Datum arg)
{
	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	tv_shared->launcher_pid = 0;
	tv_shared->launcher_latch = NULL;
	LWLockRelease(tv_shared->registry_lock);
}

void
tv_launcher_main(Datum arg)
{
	XLogRecPtr	last_redo;
	uint64		rounds = 0;
	Oid		   *start;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGUSR1, procsignal_sigusr1_handler);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(InvalidOid, InvalidOid, 0);

	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	if (tv_shared->launcher_pid != 0)
	{
		LWLockRelease(tv_shared->registry_lock);
		proc_exit(0);
	}
	tv_shared->launcher_pid = MyProcPid;
	tv_shared->launcher_latch = MyLatch;
	/* workers of a previous launcher are gone after a crash restart */
	for (int i = 0; i < tv_shared->max_databases; i++)
		if (tv_shared->dbs[i].pid == 0)
			tv_shared->dbs[i].wanted = tv_shared->dbs[i].dbid != InvalidOid;
	LWLockRelease(tv_shared->registry_lock);
	before_shmem_exit(LauncherExit, (Datum) 0);

	WantAllDatabases();
	last_redo = GetRedoRecPtr();
	start = MemoryContextAlloc(TopMemoryContext, sizeof(Oid) * tv_shared->max_databases);

	while (!ShutdownRequestPending)
	{
		int			nstart = 0;
		XLogRecPtr	redo;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* a checkpoint happened: wake the databases with copies to dump */
		redo = GetRedoRecPtr();
		if (redo != last_redo)
		{
			last_redo = redo;
			if (tv_snapshots)
				for (int i = 0; i < tv_shared->max_resident; i++)
				{
					TvResidentEntry *e = &tv_shared->entries[i];

					if (e->state == TV_RES_READY &&
						(e->snap_change_count != e->change_count || e->snap_bytes == 0))
						TvResidentRequestDump(e->dbid);
				}
		}

		LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
		for (int i = 0; i < tv_shared->max_databases; i++)
		{
			TvWorkerSlot *slot = &tv_shared->dbs[i];

			if (slot->dbid != InvalidOid && slot->wanted && slot->pid == 0)
			{
				start[nstart++] = slot->dbid;
				slot->wanted = false;
			}
		}
		LWLockRelease(tv_shared->registry_lock);

		for (int i = 0; i < nstart; i++)
			if (!StartDatabaseWorker(start[i]))
			{
				/* try again on the next round */
				TvResidentWakeWorker(start[i]);
			}

		if (++rounds % TV_LAUNCHER_CLEANUP_ROUNDS == 0)
			ForgetDroppedDatabases();

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(tv_worker_naptime_ms, 1000), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}
