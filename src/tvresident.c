/*
 * tvresident.c
 *	  The resident index: a shared-memory copy of each turbo index's stream
 *	  (list area and 32-lane blocks, page boundaries removed) plus one
 *	  refinement code per slot for re-ranking in memory, and the readiness
 *	  of each copy.
 *
 * Exists only with shared_preload_libraries = 'turbovec'.  Copies live in a
 * dynamic shared area created in place in the fixed shared memory
 * (turbovec.resident_memory), so the budget is fixed at start-up and every
 * backend reaches a copy through a dsa_pointer, never a raw address.
 *
 * A copy is current when its change_count equals the metapage's.  Every
 * writer of the extent holds the metapage's exclusive lock while it bumps
 * the counter, and mirrors its change into a READY copy under the entry's
 * LWLock before releasing the metapage, so a scan that reads the metapage
 * counter and then finds the same counter in the copy sees the extent's
 * state.  Anything else (a standby's WAL redo, a full copy, a writer that
 * found the copy behind) leaves the counters apart, and scans read the
 * extent until the worker (tvworker.c) rebuilds the copy.
 *
 * Lock order: metapage buffer, data page buffers, entry LWLock, registry
 * LWLock.  The registry lock guards entry identity and state; the entry
 * lock guards the copy's bytes against other writers, while scans read a
 * pinned copy without it (TvResidentPin).
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/dsa.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "turbovec.h"
#include "tvresident.h"

TvShared   *tv_shared = NULL;
static dsa_area *tv_area = NULL;

/* the copy this backend's scan has pinned (at most one at a time) */
static TvResidentEntry *pinned_entry = NULL;
static int	pinned_slot = 0;
static bool pin_callbacks = false;

static void UnpinAtAbort(XactEvent event, void *arg);
static void UnpinAtSubAbort(SubXactEvent event, SubTransactionId mySubid,
							SubTransactionId parentSubid, void *arg);
static void UnpinAtExit(int code, Datum arg);
static void UnpinLeftover(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* The fixed part: struct, worker slots and registry entries */
static Size
SharedHeadSize(void)
{
	return MAXALIGN(sizeof(TvShared)) +
		MAXALIGN(sizeof(TvWorkerSlot) * tv_max_databases) +
		MAXALIGN(sizeof(TvResidentEntry) * tv_max_resident);
}

static Size
SharedSize(void)
{
	return SharedHeadSize() + (Size) tv_resident_memory_mb * 1024 * 1024;
}

static void
TvShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(SharedSize());
	RequestNamedLWLockTranche("turbovec", tv_max_resident + 1);
}

static void
TvShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	tv_shared = ShmemInitStruct("turbovec", SharedSize(), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("turbovec");
		Size		place_size = (Size) tv_resident_memory_mb * 1024 * 1024;
		char	   *p = (char *) tv_shared;
		dsa_area   *area;

		MemSet(tv_shared, 0, SharedHeadSize());
		tv_shared->max_databases = tv_max_databases;
		tv_shared->max_resident = tv_max_resident;
		p += MAXALIGN(sizeof(TvShared));
		tv_shared->dbs = (TvWorkerSlot *) p;
		p += MAXALIGN(sizeof(TvWorkerSlot) * tv_max_databases);
		tv_shared->entries = (TvResidentEntry *) p;
		p += MAXALIGN(sizeof(TvResidentEntry) * tv_max_resident);
		tv_shared->dsa_place = p;
		tv_shared->registry_lock = &locks[0].lock;
		for (int i = 0; i < tv_shared->max_resident; i++)
		{
			tv_shared->entries[i].lock = &locks[i + 1].lock;
			pg_atomic_init_u32(&tv_shared->entries[i].pins[0], 0);
			pg_atomic_init_u32(&tv_shared->entries[i].pins[1], 0);
			ConditionVariableInit(&tv_shared->entries[i].cv);
		}
		tv_shared->dsa_tranche = LWLockNewTrancheId();
		area = dsa_create_in_place(tv_shared->dsa_place, place_size,
								   tv_shared->dsa_tranche, NULL);
		/* the budget is the place: never grow into extra segments */
		dsa_set_size_limit(area, place_size);
		dsa_pin(area);
		dsa_detach(area);
	}
	LWLockRelease(AddinShmemInitLock);
	LWLockRegisterTranche(tv_shared->dsa_tranche, "turbovec_dsa");
}

/* From _PG_init, only while shared_preload_libraries is processed */
void
TvResidentInit(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = TvShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = TvShmemStartup;
}

/* This backend's view of the area, attached on first use */
dsa_area *
TvResidentArea(void)
{
	if (tv_area == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		tv_area = dsa_attach_in_place(tv_shared->dsa_place, NULL);
		on_shmem_exit(dsa_on_shmem_exit_release_in_place,
					  PointerGetDatum(tv_shared->dsa_place));
		MemoryContextSwitchTo(old);
	}
	return tv_area;
}

/*
 * The entry of an index, or NULL.  With create, a free entry is claimed
 * (state EMPTY); NULL when the registry is full.  Caller holds nothing.
 */
TvResidentEntry *
TvResidentLookup(Oid dbid, Oid indexid, bool create)
{
	TvResidentEntry *found = NULL;
	TvResidentEntry *free = NULL;

	if (tv_shared == NULL)
		return NULL;
	LWLockAcquire(tv_shared->registry_lock, create ? LW_EXCLUSIVE : LW_SHARED);
	for (int i = 0; i < tv_shared->max_resident; i++)
	{
		TvResidentEntry *e = &tv_shared->entries[i];

		if (e->state == TV_RES_FREE)
		{
			if (free == NULL)
				free = e;
			continue;
		}
		if (e->dbid == dbid && e->indexid == indexid)
		{
			found = e;
			break;
		}
	}
	if (found == NULL && create && free != NULL)
	{
		free->dbid = dbid;
		free->indexid = indexid;
		free->relfilenode = InvalidOid;
		free->state = TV_RES_EMPTY;
		free->data = InvalidDsaPointer;
		free->filling = false;
		free->bytes = 0;
		free->change_count = 0;
		free->rows_done = free->rows_total = 0;
		free->ready_since = 0;
		free->from_snapshot = false;
		free->tried_relfilenode = InvalidOid;
		free->builder_pid = 0;
		free->dumping = false;
		free->retry_snapshot = false;
		free->snap_change_count = 0;
		free->snap_lsn = InvalidXLogRecPtr;
		free->snap_time = 0;
		free->snap_bytes = 0;
		found = free;
	}
	LWLockRelease(tv_shared->registry_lock);
	return found;
}

/* Give an entry back, freeing its copy */
void
TvResidentRelease(TvResidentEntry *e)
{
	dsa_pointer old;
	int			retired;

	LWLockAcquire(e->lock, LW_EXCLUSIVE);
	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	old = e->data;
	e->data = InvalidDsaPointer;
	e->bytes = 0;
	e->state = TV_RES_FREE;
	e->dbid = InvalidOid;
	e->indexid = InvalidOid;
	LWLockRelease(tv_shared->registry_lock);
	retired = TvResidentRetire(e);
	LWLockRelease(e->lock);
	TvResidentWaitUnpinned(e, retired);
	if (DsaPointerIsValid(old))
		dsa_free(TvResidentArea(), old);
	ConditionVariableBroadcast(&e->cv);
}

/* Change an entry's state; wakes waiters */
void
TvResidentSetState(TvResidentEntry *e, TvResidentState state)
{
	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	e->state = state;
	if (state == TV_RES_READY)
		e->ready_since = GetCurrentTimestamp();
	e->builder_pid = (state == TV_RES_BUILDING) ? MyProcPid : 0;
	LWLockRelease(tv_shared->registry_lock);
	ConditionVariableBroadcast(&e->cv);
}

/* Ask the worker of a database to dump its changed copies (a checkpoint) */
void
TvResidentRequestDump(Oid dbid)
{
	/* wake first: that gives the database a worker slot if it had none */
	TvResidentWakeWorker(dbid);
	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	for (int i = 0; i < tv_shared->max_databases; i++)
		if (tv_shared->dbs[i].dbid == dbid)
			tv_shared->dbs[i].dump = true;
	LWLockRelease(tv_shared->registry_lock);
}

/* Ask the worker of our database to look at its indexes now */
void
TvResidentWakeWorker(Oid dbid)
{
	if (tv_shared == NULL)
		return;
	LWLockAcquire(tv_shared->registry_lock, LW_EXCLUSIVE);
	for (int i = 0; i < tv_shared->max_databases; i++)
	{
		TvWorkerSlot *slot = &tv_shared->dbs[i];

		if (slot->dbid == dbid)
		{
			slot->poke = true;
			if (slot->pid != 0 && slot->latch)
				SetLatch(slot->latch);
			else
			{
				/* its worker exited: the launcher starts another */
				slot->wanted = true;
				if (tv_shared->launcher_latch)
					SetLatch(tv_shared->launcher_latch);
			}
			LWLockRelease(tv_shared->registry_lock);
			return;
		}
	}
	/* no worker yet: ask the launcher for one */
	for (int i = 0; i < tv_shared->max_databases; i++)
	{
		if (tv_shared->dbs[i].dbid == InvalidOid)
		{
			tv_shared->dbs[i].dbid = dbid;
			tv_shared->dbs[i].wanted = true;
			break;
		}
	}
	if (tv_shared->launcher_latch)
		SetLatch(tv_shared->launcher_latch);
	LWLockRelease(tv_shared->registry_lock);
}

/* Address of a copy; caller holds the entry lock */
TvResidentCopy *
TvResidentGetCopy(TvResidentEntry *e)
{
	if (!DsaPointerIsValid(e->data))
		return NULL;
	return (TvResidentCopy *) dsa_get_address(TvResidentArea(), e->data);
}

/*
 * Scans score a copy without holding the entry lock, so that writers, who
 * mirror into the copy under that lock while they hold buffer locks, never
 * wait for a whole scan.  A scan pins the copy under the entry lock (shared
 * is enough) and unpins it when done; whoever replaces, takes or frees the
 * copy retires it under the exclusive lock and waits for its pins to go
 * before touching it.  Pins are counted by the parity of the entry's
 * epoch, so scans that pin the next copy are not waited for.  A scan holds
 * one pin at most, and only while it scores (no user code runs); an error
 * meanwhile gives it back at (sub)transaction abort or backend exit.
 *
 * What a scan reads while a writer mirrors into the copy: the writer only
 * touches lanes whose rows no running scan can see (a new row, not yet
 * committed, in a fresh lane or one VACUUM freed) and clears lanes of dead
 * rows, so a torn read costs at most a wasted candidate, which the
 * executor's visibility check drops.  A new block is written before the
 * list tail that links it (barriers on both sides).
 */
int
TvResidentPin(TvResidentEntry *e)
{
	int			pin = e->epoch & 1;

	if (!pin_callbacks)
	{
		RegisterXactCallback(UnpinAtAbort, NULL);
		RegisterSubXactCallback(UnpinAtSubAbort, NULL);
		before_shmem_exit(UnpinAtExit, (Datum) 0);
		pin_callbacks = true;
	}
	UnpinLeftover();			/* never more than one */
	pg_atomic_fetch_add_u32(&e->pins[pin], 1);
	pinned_entry = e;
	pinned_slot = pin;
	return pin;
}

void
TvResidentUnpin(TvResidentEntry *e, int pin)
{
	Assert(pinned_entry == e && pinned_slot == pin);
	pinned_entry = NULL;
	pg_atomic_fetch_sub_u32(&e->pins[pin], 1);
}

/* An error while scoring leaves the pin: give it back */
static void
UnpinLeftover(void)
{
	if (pinned_entry != NULL)
		TvResidentUnpin(pinned_entry, pinned_slot);
}

static void
UnpinAtAbort(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		UnpinLeftover();
}

static void
UnpinAtSubAbort(SubXactEvent event, SubTransactionId mySubid,
				SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		UnpinLeftover();
}

static void
UnpinAtExit(int code, Datum arg)
{
	UnpinLeftover();
}

/* Caller holds the entry lock exclusively and replaces or takes the copy */
int
TvResidentRetire(TvResidentEntry *e)
{
	return e->epoch++ & 1;
}

/* Wait until no scan reads a retired copy */
void
TvResidentWaitUnpinned(TvResidentEntry *e, int retired)
{
	while (pg_atomic_read_u32(&e->pins[retired]) != 0)
	{
		pg_usleep(100L);		/* a scan lasts milliseconds */
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Bytes of a copy for an index of this metapage: its stream and a
 * refinement code per slot, with room for a quarter more blocks (at least
 * 16) for inserts.  Also the slots and stream bytes it has room for.
 * Computed in 64 bits from the metapage's 32- and 64-bit fields: no
 * overflow for any stream the pages can hold.
 */
uint64
TvResidentCopyBytes(const TvMetaPageData *meta, uint64 *cap_slots, uint64 *stream_cap)
{
	uint64		nblocks = TvBlockCount(meta);
	uint64		cap_blocks = nblocks + Max(nblocks / 4, 16);

	*cap_slots = cap_blocks * TV_LANES;
	*stream_cap = TvBlockOffset(meta, cap_blocks);
	return MAXALIGN(sizeof(TvResidentCopy)) + *stream_cap +
		*cap_slots * tv_refine_bytes(meta->dim);
}

/*
 * The centroid a lane's codes are relative to: its block's list's when the
 * index codes residuals (centroids is then TvCachedCentroids, fetched by
 * the caller before it takes any lock), else NULL.  blk is the lane's block.
 */
const float *
TvResidentCentroid(const float *centroids, const TvMetaPageData *meta, const char *blk)
{
	uint32		list;

	if (centroids == NULL || meta->lists == 0)
		return NULL;
	memcpy(&list, blk + TV_BLOCK_LIST_OFFSET, sizeof(uint32));
	if (list >= meta->lists)
		return NULL;			/* a torn or damaged block: a wasted candidate */
	return centroids + (Size) list * meta->dim;
}

/*
 * The refinement code of vector x (codec->dim floats) for a copy: of the
 * same vector the index codes (TvEncodeVector), the residual to centroid
 * when it is not NULL, so the refinement cuts the cells of the lane's code.
 */
void
TvResidentEncodeRefine(const TvCodec *codec, TvMetric metric, const float *centroid,
					   const float *x, uint8 *refine)
{
	int			dim = codec->dim;
	float	   *work = palloc(sizeof(float) * (tv_codec_work_floats(codec) + dim));
	float	   *r = work + tv_codec_work_floats(codec);

	if (centroid == NULL)
		tv_codec_encode_refine(codec, x, refine, work);
	else
	{
		double		norm = sqrt(tv_sum_squares(x, dim));

		for (int i = 0; i < dim; i++)
		{
			if (metric == TV_METRIC_COSINE)
				r[i] = (norm > 0) ? (float) (x[i] / norm) - centroid[i] : 0;
			else
				r[i] = x[i] - centroid[i];
		}
		tv_codec_encode_refine(codec, r, refine, work);
	}
	pfree(work);
}

/*
 * Does a writer mirror its change into the entry's copy?  Into a ready one,
 * and into one a rebuild has put in place while it fetches the last vectors
 * (TvResidentRebuild).  Caller holds the entry lock.
 */
#define Mirrored(e) \
	((e)->state == TV_RES_READY || ((e)->filling && (e)->state == TV_RES_BUILDING))

/*
 * An insert has written slot `slot` of block image `image` (block_bytes
 * bytes), whose refinement code is `refine` (TvResidentEncodeRefine; NULL
 * if the caller made none) and, for IVF, directory entry bytes at entry_off; the metapage went
 * from old_count to meta->change_count.  Mirror it into a current copy, or
 * mark the copy behind.  Called with the metapage exclusively locked.
 */
void
TvResidentApplyInsert(Relation index, const TvMetaPageData *meta, uint64 old_count,
					  uint64 slot, const char *image, const uint8 *refine,
					  uint64 entry_off, const TvListEntry *entry)
{
	TvResidentEntry *e = TvResidentLookup(MyDatabaseId, RelationGetRelid(index), false);
	TvResidentCopy *copy;
	bool		behind = false;

	if (e == NULL)
		return;
	LWLockAcquire(e->lock, LW_EXCLUSIVE);
	copy = TvResidentGetCopy(e);
	if (!Mirrored(e) || copy == NULL || e->change_count != old_count ||
		e->relfilenode != TvRelFileNumber(index) || slot >= copy->capacity_slots ||
		refine == NULL || copy->dim != meta->dim)
	{
		/* a full copy too: the worker makes a bigger one */
		if (e->state == TV_RES_READY)
			behind = true;
		e->filling = false;		/* the rebuild that fills it sees it behind */
	}
	else
	{
		uint64		block = slot / TV_LANES;
		char	   *stream = TvResidentStream(copy);

		memcpy(stream + TvBlockOffset(meta, block), image, meta->block_bytes);
		/* unlocked scans follow the list tail: the block comes first */
		pg_write_barrier();
		if (entry != NULL)
			memcpy(stream + entry_off, entry, sizeof(TvListEntry));
		memcpy(TvResidentRefine(copy, slot), refine, copy->refine_bytes);
		copy->nslots = meta->nslots;
		e->change_count = meta->change_count;
		e->lsn = GetXLogInsertRecPtr();
	}
	LWLockRelease(e->lock);
	if (behind)
	{
		TvResidentSetState(e, TV_RES_STALE);
		TvResidentWakeWorker(MyDatabaseId);
	}
}

/*
 * VACUUM cleared `cleared` lanes of block `block`, or only bumped the
 * counter (cleared = 0).  Called with the metapage exclusively locked.
 */
void
TvResidentApplyClear(Relation index, const TvMetaPageData *meta, uint64 old_count,
					 uint64 block, uint32 cleared)
{
	TvResidentEntry *e = TvResidentLookup(MyDatabaseId, RelationGetRelid(index), false);
	TvResidentCopy *copy;
	bool		behind = false;

	if (e == NULL)
		return;
	LWLockAcquire(e->lock, LW_EXCLUSIVE);
	copy = TvResidentGetCopy(e);
	if (Mirrored(e) && copy != NULL && e->change_count == old_count &&
		e->relfilenode == TvRelFileNumber(index))
	{
		if (cleared)
		{
			uint32	   *live = (uint32 *) (TvResidentStream(copy) + TvBlockOffset(meta, block));

			*live &= ~cleared;
		}
		e->change_count = meta->change_count;
		e->lsn = GetXLogInsertRecPtr();
	}
	else
	{
		if (e->state == TV_RES_READY)
			behind = true;
		e->filling = false;
	}
	LWLockRelease(e->lock);
	if (behind)
	{
		TvResidentSetState(e, TV_RES_STALE);
		TvResidentWakeWorker(MyDatabaseId);
	}
}

/*
 * Is a copy of this index on its way?  It is while a live process builds
 * it, or while it waits for its database's worker (running, or about to be
 * started by the launcher) to pick it up.  A copy that failed or does not
 * fit (until the index changes), one left by a builder that died, one with
 * no registry entry left or no worker slot for its database never comes on
 * its own: waiting for it is pointless.  e is the index's entry or NULL.
 */
bool
TvResidentComing(Relation index, TvResidentEntry *e)
{
	int			builder = 0;
	bool		worker = false;
	bool		room = (e != NULL);

	LWLockAcquire(tv_shared->registry_lock, LW_SHARED);
	if (e != NULL && (e->dbid != MyDatabaseId || e->indexid != RelationGetRelid(index)))
		room = false;			/* the entry was given to another index */
	if (e != NULL && room)
	{
		switch (e->state)
		{
			case TV_RES_BUILDING:
				builder = e->builder_pid;
				break;
			case TV_RES_TOO_BIG:
			case TV_RES_FAILED:
				/* retried once the index is rebuilt (a new relfilenode) */
				room = (e->tried_relfilenode != TvRelFileNumber(index));
				break;
			default:
				break;
		}
	}
	else
	{
		/* the worker claims an entry when it first sees the index */
		for (int i = 0; i < tv_shared->max_resident && !room; i++)
			room = (tv_shared->entries[i].state == TV_RES_FREE);
	}
	if (room && builder == 0)
	{
		for (int i = 0; i < tv_shared->max_databases; i++)
		{
			TvWorkerSlot *slot = &tv_shared->dbs[i];

			if (slot->dbid == MyDatabaseId)
			{
				/* running, or asked for: the launcher starts it */
				worker = true;
				builder = slot->pid;
				break;
			}
		}
	}
	LWLockRelease(tv_shared->registry_lock);

	if (!room)
		return false;
	if (builder != 0)
		return BackendPidGetProc(builder) != NULL;
	return worker;
}

/*
 * Wait, without spinning, up to timeout_ms for the copy of an index to be
 * ready.  Returns its entry when ready, else NULL (*entry gets what is
 * known, for progress reports).  Wakes the worker first.  Stops early when
 * the copy is not on its way (TvResidentComing); *coming says which.
 */
TvResidentEntry *
TvResidentWaitReady(Relation index, int timeout_ms, TvResidentEntry **entry,
					bool *coming)
{
	Oid			indexid = RelationGetRelid(index);
	TvResidentEntry *e = TvResidentLookup(MyDatabaseId, indexid, false);
	TimestampTz deadline;
	bool		on_its_way = true;

	/* a ready copy of the index before a REINDEX is not this index's */
#define IsReady(e) ((e) != NULL && (e)->state == TV_RES_READY && \
					(e)->relfilenode == TvRelFileNumber(index))

	if (IsReady(e))
	{
		if (entry)
			*entry = e;
		if (coming)
			*coming = true;
		return e;
	}
	TvResidentWakeWorker(MyDatabaseId);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	for (;;)
	{
		long		left;

		if (e == NULL)
			e = TvResidentLookup(MyDatabaseId, indexid, false);
		if (IsReady(e))
			break;
		on_its_way = TvResidentComing(index, e);
		if (!on_its_way)
			break;
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (left <= 0)
			break;
		if (e != NULL)
			ConditionVariableTimedSleep(&e->cv, Min(left, 100), PG_WAIT_EXTENSION);
		else
			pg_usleep(Min(left, 10) * 1000L);	/* the worker has not seen it yet */
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();
	if (entry)
		*entry = e;
	if (coming)
		*coming = on_its_way || IsReady(e);
	return IsReady(e) ? e : NULL;
#undef IsReady
}
