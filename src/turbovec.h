/*
 * turbovec.h
 *	  Shared declarations of the turbo index access method.
 *
 * On disk a turbo index is a metapage (block 0) followed by data pages that
 * carry one contiguous byte stream: the IVF list area (empty in the flat
 * layout), then fixed-size 32-lane blocks laid end to end, so no page space
 * is wasted whatever the dimension.  A block may start on one page and end
 * on a later one.  Each block is
 *
 *		uint32	live		bit l set: lane l holds a live heap TID
 *		uint32	prev		IVF: previous block of the same list, plus one (0: none)
 *		uint32	list		IVF: the list the block belongs to
 *		uint32	reserved
 *		ItemPointerData tids[32]
 *		float	norm[32]	||v||
 *		float	ipscale[32]	||u|| / <u/||u||, uhat>, u = v or its IVF residual
 *		codes				TvCodec.block_code_bytes, see tvcodec.h
 *
 * Slots (block * 32 + lane) below TvMetaPageData.nslots have been handed out;
 * a slot whose live bit is clear is free for reuse.  In the IVF layout every
 * block belongs to one list and all its 32 slots are handed out with it.
 * docs/FORMAT.md has the full format and the WAL rules.
 */
#ifndef TURBOVEC_H
#define TURBOVEC_H

#include "postgres.h"

#include "access/amapi.h"
#include "access/generic_xlog.h"
#include "access/reloptions.h"
#include "nodes/execnodes.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "utils/array.h"
#include "utils/relcache.h"

#include "tvcodec.h"
#include "tvcompat.h"

/* Reloption and GUC limits */
#define TV_MIN_BITS				2
#define TV_DEFAULT_BITS			4
#define TV_MAX_BITS				4
#define TV_MIN_CANDIDATES		1
#define TV_DEFAULT_CANDIDATES	100
#define TV_MAX_CANDIDATES		100000
#define TV_DEFAULT_MAX_SCAN_TUPLES	20000
#define TV_MIN_LISTS			0	/* 0: flat layout */
#define TV_DEFAULT_LISTS		(-1)	/* not given: TvAutoLists at build */
#define TV_DEFAULT_RESIDUAL		true
#define TV_MAX_LISTS			32768
#define TV_MIN_PROBES			0	/* 0: automatic, TvProbes() */
#define TV_DEFAULT_PROBES		0
#define TV_MAX_PROBES			TV_MAX_LISTS
#define TV_MAX_NORM				1e18	/* its square stays finite in float4 */

/* Support functions */
#define TV_DISTANCE_PROC		1	/* exact distance, used to re-rank */
#define TV_METRIC_PROC			2	/* returns the TvMetric of the opclass */
#define TV_TOARRAY_PROC			3	/* optional: column type to real[] */
#define TV_NPROCS				3

/* Metrics, as stored in the metapage */
typedef enum TvMetric
{
	TV_METRIC_L2 = 1,
	TV_METRIC_IP = 2,
	TV_METRIC_COSINE = 3
} TvMetric;

/* Build phases for pg_stat_progress_create_index (1 is "initializing") */
#define TV_PHASE_ENCODE			2
#define TV_PHASE_SAMPLE			3
#define TV_PHASE_KMEANS			4
#define TV_PHASE_LAYOUT			5

/* Page identity */
#define TV_MAGIC_NUMBER			0x54555242	/* "TURB" */
#define TV_VERSION				1
#define TV_PAGE_ID				0xFF8C
#define TV_METAPAGE_BLKNO		0
#define TV_FIRST_DATA_BLKNO		1

#define TV_PAGE_META			(1 << 0)
#define TV_PAGE_DATA			(1 << 1)

typedef struct TvPageOpaqueData
{
	uint16		flags;
	uint16		unused1;
	uint16		unused2;
	uint16		page_id;		/* TV_PAGE_ID, last so pg_filedump finds it */
} TvPageOpaqueData;

typedef TvPageOpaqueData *TvPageOpaque;

#define TvPageGetOpaque(page) ((TvPageOpaque) PageGetSpecialPointer(page))

/* Stream bytes carried by each data page, from the end of the page header */
#define TV_PAGE_PAYLOAD_OFFSET	MAXALIGN(SizeOfPageHeaderData)
#define TV_PAGE_PAYLOAD \
	(BLCKSZ - TV_PAGE_PAYLOAD_OFFSET - MAXALIGN(sizeof(TvPageOpaqueData)))
#define TvPagePayload(page)		((char *) (page) + TV_PAGE_PAYLOAD_OFFSET)

typedef struct TvMetaPageData
{
	uint32		magic;
	uint32		version;
	uint32		dim;			/* 0 until the first vector arrives */
	uint16		bits;
	uint16		metric;			/* TvMetric */
	uint64		seed;			/* codec seed */
	uint32		block_bytes;	/* size of one 32-lane block in the stream */
	uint32		page_payload;	/* stream bytes per data page */
	uint64		nslots;			/* slots handed out */
	uint64		free_hint;		/* no free slot lives in an earlier block */
	uint64		change_count;	/* bumped by every modification */
	uint32		ndatapages;		/* data pages that carry the stream */
	uint32		lists;			/* IVF lists; 0 for the flat layout */
	uint32		list_area;		/* stream bytes before the first block */
	uint32		flags;			/* TV_META_* */
} TvMetaPageData;

/*
 * IVF codes are of the residual to the list's centroid (docs/FORMAT.md).
 * Indexes from before this flag existed read 0 here: codes of the vector.
 */
#define TV_META_RESIDUAL		0x0001
#define TvMetaResidual(meta)	(((meta)->flags & TV_META_RESIDUAL) != 0)

typedef TvMetaPageData *TvMetaPage;

#define TvPageGetMeta(page)		((TvMetaPage) PageGetContents(page))

/* Block header layout inside the stream */
#define TV_BLOCK_LIVE_OFFSET	0
#define TV_BLOCK_PREV_OFFSET	4
#define TV_BLOCK_LIST_OFFSET	8
#define TV_BLOCK_TIDS_OFFSET	16
#define TV_BLOCK_NORM_OFFSET	(TV_BLOCK_TIDS_OFFSET + TV_LANES * sizeof(ItemPointerData))
#define TV_BLOCK_IPSCALE_OFFSET (TV_BLOCK_NORM_OFFSET + TV_LANES * sizeof(float))
#define TV_BLOCK_CODES_OFFSET	(TV_BLOCK_IPSCALE_OFFSET + TV_LANES * sizeof(float))

/* Where block b starts in the stream */
#define TvBlockOffset(meta, b) \
	((uint64) (meta)->list_area + (uint64) (b) * (meta)->block_bytes)
#define TvBlockCount(meta)		(((meta)->nslots + TV_LANES - 1) / TV_LANES)
/* Data pages needed to carry blocks [0, nblocks) */
#define TvStreamPages(meta, nblocks) \
	((TvBlockOffset(meta, nblocks) + TV_PAGE_PAYLOAD - 1) / TV_PAGE_PAYLOAD)

/*
 * The IVF list area at the start of the stream: lists directory entries,
 * then lists centroids of dim floats.  Sizes are multiples of 8.
 */
typedef struct TvListEntry
{
	uint32		tail;			/* last block of the list, plus one (0: empty) */
	uint32		nblocks;		/* blocks in the list */
	uint32		free_hint;		/* a block VACUUM freed lanes in, plus one */
	uint32		reserved;
} TvListEntry;

/* an entry never crosses a page: scans and inserts read it from one page */
StaticAssertDecl(TV_PAGE_PAYLOAD % sizeof(TvListEntry) == 0,
				 "directory entries must tile a page's payload");

#define TvListAreaBytes(lists, dim) \
	((uint32) TYPEALIGN(8, (Size) (lists) * sizeof(TvListEntry) + \
						(Size) (lists) * (dim) * sizeof(float)))
#define TvCentroidsOffset(lists)	((uint64) (lists) * sizeof(TvListEntry))

/* Reloptions */
typedef struct TvOptions
{
	int32		vl_len_;		/* varlena header (do not touch directly!) */
	int			bits;
	int			lists;
	bool		residual;		/* IVF: code the residual to the centroid */
} TvOptions;

/* What every operation needs to know about an index, cached in rd_amcache */
typedef struct TvIndexState
{
	TvMetaPageData meta;		/* as last read */
	TvMetric	metric;
	FmgrInfo	distance;		/* exact distance support function */
	FmgrInfo   *toarray;		/* column type to real[], NULL for real[] */
	Oid			collation;
	TvCodec    *codec;			/* NULL while meta.dim == 0 */
	float	   *centroids;		/* IVF: TvCachedCentroids */
	float	   *cnorms;			/* and their ||c||^2 */
} TvIndexState;

/* GUCs */
extern int	tv_candidates;
extern int	tv_probes;
extern int	tv_max_scan_tuples;
extern int	tv_iterative_scan;
extern int	tv_test_scan_message_rows;	/* testing: rows per worker message */
extern bool tv_test_full_list_search;	/* testing: no 8-bit first pass */

/* turbovec.iterative_scan: what a scan does with rows of a later window */
typedef enum TvIterativeScan
{
	TV_ITERATIVE_STRICT,		/* never return a row nearer than one returned */
	TV_ITERATIVE_RELAXED		/* return every row, possibly out of order */
} TvIterativeScan;

/* turbovec.c */
extern void _PG_init(void);
extern int	TvProbes(int lists);
extern relopt_kind tv_relopt_kind;

/* tvvector.c */
extern float *TvArrayGetFloats(ArrayType *array, int *dim);
extern float *TvDatumGetFloats(FmgrInfo *toarray, Datum value, int *dim);
extern FmgrInfo *TvGetToArrayProc(Relation index, MemoryContext cxt);
extern void TvCheckDimensions(Relation index, int expected, int actual);
extern void TvCheckNorm(Relation index, const float *x, int dim);
extern float TvMaxAbs(const float *x, int dim);
extern double TvNorm(const float *x, int dim);
extern double TvExactDistance(TvMetric metric, const float *a, const float *b, int dim);

/* tvpage.c */
extern TvIndexState *TvGetIndexState(Relation index);
extern TvIndexState *TvCopyIndexState(const TvIndexState *src, MemoryContext cxt);
extern void TvReadMeta(Relation index, TvMetaPageData *meta);
extern void TvInitMetaPage(Page page, int bits, TvMetric metric, uint64 seed);
extern void TvInitDataPage(Page page);
extern void TvCheckMetaPage(Relation index, Page page);
extern int	TvBlockBytes(const TvCodec *codec);
extern TvCodec *TvCreateCodec(int dim, int bits, uint64 seed, MemoryContext cxt);
extern int	TvGetBits(Relation index);
extern int	TvGetLists(Relation index);
extern bool TvGetResidual(Relation index);
extern TvMetric TvGetMetric(Relation index);
extern Buffer TvNewDataBuffer(Relation index, ForkNumber forknum);
extern void TvCommitBuffer(Buffer buf, GenericXLogState *state);
extern void TvReadStream(Relation index, uint64 offset, Size len, char *out,
						 BufferAccessStrategy strategy);
extern const float *TvCachedCentroids(Relation index, const float **cnorms);
extern const uint8 *TvCachedRankCentroids(Relation index, const float **scales,
										const float **cnorms);
extern Buffer *TvBufferHints(Relation index, BlockNumber npages, BlockNumber *nhints);
extern Buffer TvPinPage(Relation index, BlockNumber blkno, BufferAccessStrategy strategy,
						Buffer *hints, BlockNumber nhints, bool *read);
extern size_t TvEncodeWorkFloats(const TvCodec *codec);
extern bool TvEncodeVector(const TvCodec *codec, TvMetric metric, const float *centroid,
						   const float *x, uint8 *code, TvFactors *factors,
						   float *work);
extern bool TvIndexValue(IndexInfo *indexInfo, EState *estate, TupleTableSlot *slot,
						 Datum *value);

/* tvsecurity.c */

/* search_path for user code and our own SQL run outside the user's command */
#define TV_SAFE_SEARCH_PATH		"pg_catalog, pg_temp"

typedef struct TvUserContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} TvUserContext;

extern void TvSwitchToTableOwner(Relation heap, TvUserContext *ctx);
extern void TvRestoreUser(TvUserContext *ctx);

/* tvivf.c */
typedef struct TvKmeansInput
{
	int			dim;
	int			nsamples;
	float	   *samples;		/* nsamples * dim */
	TvMetric	metric;
	uint64		seed;
	bool		progress;		/* report to pg_stat_progress_create_index */
	int			nworkers;		/* parallel workers for the assignment rounds */
} TvKmeansInput;

/* k-means assigns samples in batches of this many, serial or parallel */
#define TV_ASSIGN_BATCH				256

/* k-means++ seeds from the first this many samples per list, at least MIN */
#define TV_KMEANS_SEED_PER_LIST		4
#define TV_KMEANS_SEED_MIN			4096

/* tvbuild.c */
extern int	TvAutoLists(double rows, int dim);
extern void TvTestBuildDelay(void);

extern float *TvKmeans(const TvKmeansInput *in, int lists, int iterations);
extern float *TvCentroidNorms(const float *centroids, int lists, int dim);
extern void TvNearestLists(const float *centroids, const float *cnorms, int lists,
						   int dim, TvMetric metric, const float *xs, int n,
						   int *out);
typedef struct TvListAssigner TvListAssigner;
extern TvListAssigner *TvListAssignerCreate(const float *centroids, const float *cnorms,
											int lists, int dim, TvMetric metric);
extern void TvAssignLists(TvListAssigner *la, const float *xs, int n, int *out);
extern void TvListAssignerSetCoarse(TvListAssigner *la, bool coarse);
extern void TvListAssignerFree(TvListAssigner *la);
extern double TvListAssignerBytes(int lists, int dim, TvMetric metric);
/* tvparallel.c */
typedef struct TvEncodeInput
{
	const TvCodec *codec;
	TvMetric	metric;
	int			lists;
	bool		residual;		/* code residuals to the centroids */
	const float *centroids;		/* lists * dim */
	const float *cnorms;		/* ||c||^2 per list (L2), or NULL */
	uint64		n;				/* vectors */
	int			chunk_vectors;	/* vector k is in chunks[k / chunk_vectors] */
	float	  **chunks;			/* chunk_vectors * dim floats each (the last: the rest) */
	uint64		progress_base;	/* vectors coded before these, for progress */
	bool		fill_in_place;	/* windows: the caller writes them in the segment */
} TvEncodeInput;

typedef struct TvKmeansParallel TvKmeansParallel;
extern TvKmeansParallel *TvKmeansParallelBegin(const float *samples, int nsamples,
											   int dim, int lists, TvMetric metric,
											   int nworkers);
extern void TvKmeansParallelAssign(TvKmeansParallel *kp, const float *centroids,
								   const float *cnorms, bool coarse, int *assign);
extern const double *TvKmeansParallelSums(TvKmeansParallel *kp, const int *assign);
extern void TvKmeansParallelEnd(TvKmeansParallel *kp);
extern int	TvEncodeSpooled(const TvEncodeInput *in, int nworkers, int *listof,
							uint8 *codes, TvFactors *factors);
typedef struct TvEncodeWindows TvEncodeWindows;
extern TvEncodeWindows *TvEncodeWindowsBegin(const TvEncodeInput *in, int nworkers);
extern uint64 TvEncodeWindowsCapacity(TvEncodeWindows *ew);
extern float *TvEncodeWindowsBuffer(TvEncodeWindows *ew);
extern void TvEncodeWindowsSubmit(TvEncodeWindows *ew, const TvEncodeInput *in);
extern uint64 TvEncodeWindowsCollect(TvEncodeWindows *ew, int *listof, uint8 *codes,
									 TvFactors *factors);
extern int	TvEncodeWindowsEnd(TvEncodeWindows *ew);
extern Size TvParallelSegmentBytes(const TvCodec *codec, int lists, int chunk_vectors,
									int mem_kb, uint64 n, int slots);

/* A row the parallel heap scan's workers send: its vector, or its code */
typedef struct TvScanRecord
{
	ItemPointerData tid;
	int			dim;
	const float *vector;		/* sampling pass */
	int			list;			/* encoding pass: list, factors and code */
	int			code_bytes;
	TvFactors	factors;
	const uint8 *code;
} TvScanRecord;

typedef void (*TvScanConsumer) (const TvScanRecord *rec, void *arg);
typedef struct TvParallelScan TvParallelScan;

/*
 * The sampling hash of a row (tvbuild.c): a bijection of (seed, TID), so
 * the sample is the same whatever order the rows come in and whoever
 * reads them
 */
static inline uint64
TvSampleHash(uint64 seed, ItemPointer tid)
{
	uint64		z = seed ^ (((uint64) ItemPointerGetBlockNumberNoCheck(tid) << 16) |
							ItemPointerGetOffsetNumberNoCheck(tid));

	z = (z ^ (z >> 30)) * UINT64CONST(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64CONST(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

extern TvParallelScan *TvParallelScanBegin(Relation heap, Relation index,
										   IndexInfo *indexInfo, int nworkers,
										   const TvEncodeInput *encode, int bits,
										   uint64 seed);
extern struct TableScanDescData *TvParallelScanDesc(TvParallelScan *ps);
extern int	TvParallelScanWorkers(TvParallelScan *ps);
extern void TvParallelScanDrain(TvParallelScan *ps, TvScanConsumer consume, void *arg);
extern void TvParallelScanFilter(TvParallelScan *ps, uint64 sample_tau);
extern uint64 TvParallelScanUnreadNow(TvParallelScan *ps);
extern double TvParallelScanEnd(TvParallelScan *ps, IndexInfo *indexInfo,
								TvScanConsumer consume, void *arg, uint64 *unread);
extern Size TvParallelScanBytes(int nworkers, int mem_kb);

extern float TvCentroidDot(const float *centroids, int dim, int list, const float *q);
extern void TvListDistances(const float *centroids, int lists, int dim, TvMetric metric,
							const float *q, float *dist);
extern float TvListDistance(const float *centroids, int dim, TvMetric metric,
							const float *q, int list);
extern void TvQuantizeCentroids(const float *centroids, int lists, int dim, uint8 *codes,
								float *scales);
extern void TvApproxListDistances(const uint8 *codes, const float *scales, const float *cnorms,
								  int lists, int dim, TvMetric metric, const float *q,
								  float *dist);
extern float *TvReadCentroids(Relation index, const TvMetaPageData *meta,
							  TvListEntry **entries, MemoryContext cxt);

/* tvbuild.c */
extern IndexBuildResult *tvbuild(Relation heap, Relation index, IndexInfo *indexInfo);
extern void tvbuildempty(Relation index);

/* tvinsert.c */
extern bool tvinsert(Relation index, Datum *values, bool *isnull, ItemPointer heap_tid,
					 Relation heap, IndexUniqueCheck checkUnique TV_AMINSERT_UNCHANGED_ARG,
					 IndexInfo *indexInfo);

/* tvscan.c */
extern IndexScanDesc tvbeginscan(Relation index, int nkeys, int norderbys);
extern void tvrescan(IndexScanDesc scan, ScanKey keys, int nkeys, ScanKey orderbys, int norderbys);
extern bool tvgettuple(IndexScanDesc scan, ScanDirection dir);
extern void tvendscan(IndexScanDesc scan);

/* tvvacuum.c */
extern IndexBulkDeleteResult *tvbulkdelete(IndexVacuumInfo *info, IndexBulkDeleteResult *stats,
										   IndexBulkDeleteCallback callback, void *callback_state);
extern IndexBulkDeleteResult *tvvacuumcleanup(IndexVacuumInfo *info, IndexBulkDeleteResult *stats);
extern uint64 TvCountLive(Relation index, BufferAccessStrategy strategy);

#endif							/* TURBOVEC_H */
