/*
 * tvresident.h
 *	  Shared state of the resident index, the readiness of each turbo
 *	  index, and the background worker (tvresident.c, tvworker.c).
 */
#ifndef TVRESIDENT_H
#define TVRESIDENT_H

#include "access/xlogdefs.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/dsa.h"
#include "utils/relcache.h"

#include "turbovec.h"

/*
 * Default of turbovec.resident_memory (MB): a copy of 1M x 768-d rows at 4
 * bits with its headroom (983 MB).  Reserved at start-up, but untouched
 * pages take no RAM (docs/RESIDENT.md, "Settings").
 */
#define TV_DEFAULT_RESIDENT_MEMORY	1024

/* defaults of turbovec.max_resident_indexes and turbovec.max_databases */
#define TV_DEFAULT_MAX_RESIDENT		256
#define TV_DEFAULT_MAX_DATABASES	64

typedef enum TvResidentState
{
	TV_RES_FREE = 0,			/* entry unused */
	TV_RES_EMPTY,				/* known, no copy yet */
	TV_RES_BUILDING,			/* the worker is making the copy */
	TV_RES_READY,				/* the copy is complete; current if counters match */
	TV_RES_STALE,				/* a writer found the copy behind */
	TV_RES_TOO_BIG,				/* does not fit turbovec.resident_memory */
	TV_RES_FAILED				/* the rebuild raised an error; retried after REINDEX */
} TvResidentState;

/* A resident copy, at the start of its dsa allocation */
typedef struct TvResidentCopy
{
	uint32		dim;
	uint32		bits;
	uint32		metric;
	uint32		lists;
	uint32		list_area;
	uint32		block_bytes;
	uint64		nslots;			/* slots in use, as in the metapage */
	uint64		capacity_slots; /* slots the allocation has room for */
	uint64		stream_capacity;	/* bytes reserved for the stream */
	uint32		refine_bytes;	/* tv_refine_bytes(dim): one slot's refinement */
	/*
	 * stream (list area + blocks), then capacity_slots refinement codes of
	 * refine_bytes each, in slot order (docs/RESIDENT.md)
	 */
} TvResidentCopy;

#define TvResidentStream(copy) \
	((char *) (copy) + MAXALIGN(sizeof(TvResidentCopy)))
#define TvResidentRefines(copy) \
	((uint8 *) TvResidentStream(copy) + (copy)->stream_capacity)
#define TvResidentRefine(copy, slot) \
	(TvResidentRefines(copy) + (Size) (slot) * (copy)->refine_bytes)

typedef struct TvResidentEntry
{
	/* identity and state: registry lock */
	Oid			dbid;
	Oid			indexid;
	Oid			relfilenode;
	TvResidentState state;
	uint64		rows_done;		/* rebuild progress */
	uint64		rows_total;
	TimestampTz ready_since;
	bool		from_snapshot;	/* the current copy came from a .tv file */
	Oid			tried_relfilenode;	/* relfilenode of the last rebuild attempt */
	int			builder_pid;	/* the process building the copy (BUILDING) */
	bool		dumping;		/* a snapshot dump is in flight */
	bool		unlogged;		/* not WAL-logged: never dumped (SNAPSHOT.md) */
	bool		retry_snapshot; /* a start-up snapshot load gave way to DDL:
								 * the worker's next try loads it again */

	/* the copy: entry lock */
	LWLock	   *lock;
	uint32		epoch;			/* bumped when the copy is replaced or taken */
	pg_atomic_uint32 pins[2];	/* scans reading the copy, by epoch parity */
	dsa_pointer data;
	bool		filling;		/* BUILDING, in place, vectors still being fetched:
								 * writers mirror into it */
	Size		bytes;
	uint64		change_count;	/* metapage counter the copy reflects */
	XLogRecPtr	lsn;

	/* last snapshot: written by the worker only */
	uint64		snap_change_count;
	XLogRecPtr	snap_lsn;
	TimestampTz snap_time;
	int64		snap_bytes;

	ConditionVariable cv;		/* broadcast on every state change */
} TvResidentEntry;

typedef struct TvWorkerSlot
{
	Oid			dbid;			/* InvalidOid: free */
	bool		wanted;			/* the launcher should start a worker */
	bool		poke;			/* look at the indexes now */
	bool		dump;			/* a checkpoint happened: dump what changed */
	int			pid;
	Latch	   *latch;
} TvWorkerSlot;

typedef struct TvShared
{
	LWLock	   *registry_lock;
	int			dsa_tranche;
	int			launcher_pid;
	Latch	   *launcher_latch;
	int			max_databases;	/* entries of dbs */
	int			max_resident;	/* entries of entries */
	TvWorkerSlot *dbs;			/* in the same segment, after this struct */
	TvResidentEntry *entries;
	char	   *dsa_place;		/* turbovec.resident_memory bytes */
} TvShared;

extern TvShared *tv_shared;

/* GUCs */
extern int	tv_resident_memory_mb;
extern int	tv_ready_timeout_ms;
extern int	tv_not_ready;
extern bool tv_snapshots;
extern int	tv_worker_naptime_ms;
extern int	tv_test_build_delay_ms;
extern int	tv_test_scan_delay_ms;
extern bool tv_use_resident;
extern int	tv_max_resident;
extern int	tv_max_databases;

#define TV_NOT_READY_EXTENT	0
#define TV_NOT_READY_ERROR	1

/* tvresident.c */
extern void TvResidentInit(void);
extern dsa_area *TvResidentArea(void);
extern TvResidentEntry *TvResidentLookup(Oid dbid, Oid indexid, bool create);
extern void TvResidentRelease(TvResidentEntry *e);
extern void TvResidentSetState(TvResidentEntry *e, TvResidentState state);
extern void TvResidentWakeWorker(Oid dbid);
extern void TvResidentRequestDump(Oid dbid);
extern bool TvResidentComing(Relation index, TvResidentEntry *e);
extern TvResidentEntry *TvResidentWaitReady(Relation index, int timeout_ms,
											TvResidentEntry **entry, bool *coming);
extern TvResidentCopy *TvResidentGetCopy(TvResidentEntry *e);
extern int	TvResidentPin(TvResidentEntry *e);
extern void TvResidentUnpin(TvResidentEntry *e, int pin);
extern int	TvResidentRetire(TvResidentEntry *e);
extern void TvResidentWaitUnpinned(TvResidentEntry *e, int retired);
extern void TvResidentApplyInsert(Relation index, const TvMetaPageData *meta,
								  uint64 old_count, uint64 slot, const char *image,
								  const uint8 *refine, uint64 entry_off,
								  const TvListEntry *entry);
extern const float *TvResidentCentroid(const float *centroids,
									   const TvMetaPageData *meta, const char *blk);
extern void TvResidentEncodeRefine(const TvCodec *codec, TvMetric metric,
								   const float *centroid, const float *x,
								   uint8 *refine);
extern uint64 TvResidentCopyBytes(const TvMetaPageData *meta, uint64 *cap_slots,
								  uint64 *stream_cap);
extern void TvResidentApplyClear(Relation index, const TvMetaPageData *meta,
								 uint64 old_count, uint64 block, uint32 cleared);

/* tvworker.c */
extern void TvWorkerInit(void);
extern bool TvResidentRebuild(Relation heap, Relation index, TvResidentEntry *e,
							  bool try_snapshot, bool from_scratch, bool give_way);
extern void TvResidentDump(TvResidentEntry *e);
extern PGDLLEXPORT void tv_launcher_main(Datum arg);
extern PGDLLEXPORT void tv_database_main(Datum arg);

#endif							/* TVRESIDENT_H */
