/*
 * turbovec.c
 *	  Module start-up and the turbo access method's handler: reloptions,
 *	  GUCs, cost estimate, opclass validation and build phase names.
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "access/amapi.h"
#include "access/htup_details.h"
#include "access/genam.h"
#include "access/reloptions.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_amop.h"
#include "catalog/pg_amproc.h"
#include "catalog/pg_class.h"
#include "catalog/pg_opclass.h"
#include "commands/defrem.h"
#include "commands/progress.h"
#include "commands/vacuum.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "optimizer/cost.h"
#include "optimizer/optimizer.h"
#include "optimizer/paths.h"
#include "utils/guc.h"
#include "utils/catcache.h"
#include "utils/lsyscache.h"
#include "utils/selfuncs.h"
#include "utils/spccache.h"
#include "utils/syscache.h"

#include "turbovec.h"
#include "tvresident.h"
#include "tvsnapshot.h"

PG_MODULE_MAGIC;

int			tv_candidates = TV_DEFAULT_CANDIDATES;
int			tv_probes = TV_DEFAULT_PROBES;
int			tv_max_scan_tuples = TV_DEFAULT_MAX_SCAN_TUPLES;
int			tv_iterative_scan = TV_ITERATIVE_STRICT;
int			tv_resident_memory_mb = TV_DEFAULT_RESIDENT_MEMORY;
int			tv_ready_timeout_ms = 500;
int			tv_not_ready = TV_NOT_READY_EXTENT;
bool		tv_snapshots = true;
int			tv_worker_naptime_ms = 1000;
int			tv_test_build_delay_ms = 0;
bool		tv_test_full_list_search = false;
int			tv_test_scan_delay_ms = 0;
int			tv_test_scan_message_rows = 0;
bool		tv_use_resident = true;
int			tv_max_resident = TV_DEFAULT_MAX_RESIDENT;
int			tv_max_databases = TV_DEFAULT_MAX_DATABASES;

static object_access_hook_type prev_object_access_hook = NULL;
static void TvObjectAccess(ObjectAccessType access, Oid classId, Oid objectId,
						   int subId, void *arg);

static const struct config_enum_entry not_ready_options[] = {
	{"extent", TV_NOT_READY_EXTENT, false},
	{"error", TV_NOT_READY_ERROR, false},
	{NULL, 0, false}
};

static const struct config_enum_entry iterative_scan_options[] = {
	{"strict_order", TV_ITERATIVE_STRICT, false},
	{"relaxed_order", TV_ITERATIVE_RELAXED, false},
	{NULL, 0, false}
};
relopt_kind tv_relopt_kind;

/*
 * Lists a scan probes first: the setting, or when it is 0 one list in 16,
 * at least 16, and from about 580 lists on no more than 1.5 sqrt(lists),
 * where one in 16 reads far more lists than recall needs (GloVe-100, 580
 * lists: 37 either way, recall@10 0.96; 1M x 768 with 4,000 lists: 95
 * instead of 250, recall@10 0.999 against 1.000 at 1.5-1.75 times the QPS).
 */
int
TvProbes(int lists)
{
	int			probes = tv_probes;

	if (probes == 0)
	{
		int			by_fraction = (lists + 15) / 16;
		int			by_root = (int) ceil(1.5 * sqrt((double) Max(lists, 0)));

		probes = Max(16, Min(by_fraction, by_root));
	}
	return Min(probes, lists);
}

void
_PG_init(void)
{
	tv_kernels_init();

	tv_relopt_kind = add_reloption_kind();
	add_int_reloption(tv_relopt_kind, "bits",
					  "Bits per coordinate of the TurboQuant code",
					  TV_DEFAULT_BITS, TV_MIN_BITS, TV_MAX_BITS,
					  AccessExclusiveLock);
	add_int_reloption(tv_relopt_kind, "lists",
					  "Number of IVF lists (0 for the flat layout; not given: chosen from the rows and dimension)",
					  TV_DEFAULT_LISTS, TV_MIN_LISTS, TV_MAX_LISTS,
					  AccessExclusiveLock);
	add_bool_reloption(tv_relopt_kind, "residual",
					   "IVF codes of the residual to the list's centroid (off: of the vector)",
					   TV_DEFAULT_RESIDUAL, AccessExclusiveLock);

	DefineCustomIntVariable("turbovec.candidates",
							"Number of candidates re-ranked on exact distances.",
							"Higher values give better recall and slower queries.",
							&tv_candidates,
							TV_DEFAULT_CANDIDATES, TV_MIN_CANDIDATES, TV_MAX_CANDIDATES,
							PGC_USERSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("turbovec.probes",
							"Number of IVF lists a scan probes first; 0 picks one list in 16 (at most 1.5 sqrt(lists)), at least 16.",
							"A scan that needs more rows goes on to further lists.",
							&tv_probes,
							TV_DEFAULT_PROBES, TV_MIN_PROBES, TV_MAX_PROBES,
							PGC_USERSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("turbovec.max_scan_tuples",
							"Most candidates one scan re-ranks, over all its windows.",
							"A scan that needs more rows (a selective filter) stops there; its first window is always turbovec.candidates.",
							&tv_max_scan_tuples,
							TV_DEFAULT_MAX_SCAN_TUPLES, 1, INT_MAX,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("turbovec.iterative_scan",
							 "Order of rows a scan finds after its first window.",
							 "strict_order skips a row nearer than one already returned; relaxed_order returns it, out of order.",
							 &tv_iterative_scan, TV_ITERATIVE_STRICT, iterative_scan_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("turbovec.ready_timeout",
							"How long a scan waits for a turbo index that is not ready.",
							"Then turbovec.not_ready decides.",
							&tv_ready_timeout_ms,
							500, 0, 3600 * 1000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomEnumVariable("turbovec.not_ready",
							 "What a scan does when its index is still not ready after turbovec.ready_timeout.",
							 "extent reads the index pages; error raises SQLSTATE 55000.",
							 &tv_not_ready, TV_NOT_READY_EXTENT, not_ready_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("turbovec.snapshots",
							 "Dump a .tv snapshot of each changed resident copy after each checkpoint.",
							 "Off: no snapshot files at all; start-up rebuilds from the indexes.",
							 &tv_snapshots, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("turbovec.worker_naptime",
							"How often the turbovec worker looks for indexes whose copy is behind.",
							NULL,
							&tv_worker_naptime_ms,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomBoolVariable("turbovec.use_resident",
							 "Let scans use resident copies of turbo indexes.",
							 "Off reads the index pages, for comparison and diagnosis.",
							 &tv_use_resident, true,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("turbovec.test_build_delay",
							"Testing only: sleep this long after every 1024 rows of a resident rebuild or of a CREATE INDEX phase, after every k-means round, and before every 256 kB of a snapshot read at start-up.",
							NULL,
							&tv_test_build_delay_ms,
							0, 0, 60 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS | GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	DefineCustomBoolVariable("turbovec.test_full_list_search",
							 "Testing only: builds search lists with floats alone, without the 8-bit first pass.",
							 "The first pass drops only lists that cannot be the nearest, so the lists chosen are the same either way.",
							 &tv_test_full_list_search, false,
							 PGC_USERSET, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	DefineCustomIntVariable("turbovec.test_scan_message_rows",
							"Testing only: the most rows a parallel worker of CREATE INDEX sends the leader in one message (0: as many as fit in 64 kB).",
							NULL,
							&tv_test_scan_message_rows,
							0, 0, 1000000,
							PGC_SUSET, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	DefineCustomIntVariable("turbovec.test_scan_delay",
							"Testing only: sleep this long in each resident scan while it holds the copy pinned.",
							NULL,
							&tv_test_scan_delay_ms,
							0, 0, 60 * 1000,
							PGC_SUSET, GUC_UNIT_MS | GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);

	/*
	 * PostgreSQL allows postmaster-only settings only while preloading, so a
	 * configuration that keeps this one without preloading gets a WARNING.
	 */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("turbovec.resident_memory",
								"Shared memory for resident copies of turbo indexes.",
								"An index whose copy does not fit is served from its pages.",
								&tv_resident_memory_mb,
								TV_DEFAULT_RESIDENT_MEMORY, 16, INT_MAX / 2,
								PGC_POSTMASTER, GUC_UNIT_MB, NULL, NULL, NULL);
		DefineCustomIntVariable("turbovec.max_resident_indexes",
								"Turbo indexes of the whole cluster that can have a resident copy.",
								"Each takes a registry entry and an LWLock in shared memory; further indexes are served from their pages.",
								&tv_max_resident,
								TV_DEFAULT_MAX_RESIDENT, 1, 65536,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
		DefineCustomIntVariable("turbovec.max_databases",
								"Databases that can have a turbovec worker at the same time.",
								"The indexes of further databases are served from their pages.",
								&tv_max_databases,
								TV_DEFAULT_MAX_DATABASES, 1, 4096,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
		TvResidentInit();
		TvWorkerInit();
	}

	prev_object_access_hook = object_access_hook;
	object_access_hook = TvObjectAccess;

	MarkGUCPrefixReserved("turbovec");
}

/*
 * DROP INDEX of a turbo index removes its snapshot file at once, rather
 * than when the database's worker next runs.  If the drop rolls back, the
 * next checkpoint dumps the copy again: a snapshot is only a cache.
 */
static void
TvObjectAccess(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == RelationRelationId && subId == 0)
	{
		HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(objectId));

		if (HeapTupleIsValid(tup))
		{
			Form_pg_class rel = (Form_pg_class) GETSTRUCT(tup);
			bool		turbo = rel->relkind == RELKIND_INDEX &&
				rel->relam == get_index_am_oid("turbo", true);

			ReleaseSysCache(tup);
			if (turbo)
			{
				TvSnapshotRemove(MyDatabaseId, objectId);
				TvResidentWakeWorker(MyDatabaseId);
			}
		}
	}
}

static bytea *
tvoptions(Datum reloptions, bool validate)
{
	static const relopt_parse_elt tab[] = {
		{"bits", RELOPT_TYPE_INT, offsetof(TvOptions, bits)},
		{"lists", RELOPT_TYPE_INT, offsetof(TvOptions, lists)},
		{"residual", RELOPT_TYPE_BOOL, offsetof(TvOptions, residual)},
	};

	return (bytea *) build_reloptions(reloptions, validate, tv_relopt_kind,
									  sizeof(TvOptions), tab, lengthof(tab));
}

/*
 * Without an ORDER BY on a distance the index is useless: give it an
 * infinite cost.  Otherwise a scan reads every code page once and fetches
 * about turbovec.candidates heap rows to re-rank them, all before the first
 * row comes out, so it is all start-up cost.
 */
static void
tvcostestimate(PlannerInfo *root, IndexPath *path, double loop_count,
			   Cost *indexStartupCost, Cost *indexTotalCost,
			   Selectivity *indexSelectivity, double *indexCorrelation,
			   double *indexPages)
{
	GenericCosts costs;
	double		spc_seq_page_cost;
	double		spc_random_page_cost;
	double		rerank;
	double		scanned = 1.0;

	if (path->indexorderbys == NIL)
	{
		*indexStartupCost = DBL_MAX;
		*indexTotalCost = DBL_MAX;
		*indexSelectivity = 0;
		*indexCorrelation = 0;
		*indexPages = 0;
		return;
	}

	MemSet(&costs, 0, sizeof(costs));
	genericcostestimate(root, path, loop_count, &costs);

	get_tablespace_page_costs(path->indexinfo->reltablespace,
							  &spc_random_page_cost, &spc_seq_page_cost);

	rerank = Min((double) tv_candidates, Max(path->indexinfo->tuples, 1.0));

	/* an IVF scan reads the probed lists only (the lists the build made) */
	{
		Relation	index = index_open(path->indexinfo->indexoid, NoLock);
		int			lists = TvGetIndexState(index)->meta.lists;

		index_close(index, NoLock);
		if (lists > 0)
			scanned = (double) TvProbes(lists) / lists;
	}

	/* codes are scored in 32-lane blocks, far cheaper than one operator call each */
	*indexStartupCost = path->indexinfo->pages * scanned * spc_seq_page_cost +
		path->indexinfo->tuples * scanned * cpu_operator_cost * 0.1 +
		rerank * (spc_random_page_cost + cpu_operator_cost * 10);
	*indexTotalCost = *indexStartupCost + costs.numIndexTuples * cpu_index_tuple_cost;
	*indexSelectivity = 1.0;
	*indexCorrelation = 0;
	*indexPages = path->indexinfo->pages;
}

static char *
tvbuildphasename(int64 phasenum)
{
	switch (phasenum)
	{
		case PROGRESS_CREATEIDX_SUBPHASE_INITIALIZE:
			return "initializing";
		case TV_PHASE_ENCODE:
			return "encoding vectors";
		case TV_PHASE_SAMPLE:
			return "sampling vectors";
		case TV_PHASE_KMEANS:
			return "training lists";
		case TV_PHASE_LAYOUT:
			return "writing lists";
		default:
			return NULL;
	}
}

/*
 * Check an opclass: it needs the distance function (1), the metric function
 * (2) and one ordering operator (strategy 1); a conversion to real[] (3)
 * is needed only for column types other than real[].
 */
static bool
tvvalidate(Oid opclassoid)
{
	HeapTuple	classtup;
	Form_pg_opclass classform;
	Oid			opfamilyoid;
	CatCList   *proclist;
	CatCList   *oprlist;
	bool		have[TV_NPROCS + 1] = {false};
	bool		result = true;

	classtup = SearchSysCache1(CLAOID, ObjectIdGetDatum(opclassoid));
	if (!HeapTupleIsValid(classtup))
		elog(ERROR, "cache lookup failed for operator class %u", opclassoid);
	classform = (Form_pg_opclass) GETSTRUCT(classtup);
	opfamilyoid = classform->opcfamily;

	proclist = SearchSysCacheList1(AMPROCNUM, ObjectIdGetDatum(opfamilyoid));
	for (int i = 0; i < proclist->n_members; i++)
	{
		Form_pg_amproc procform = (Form_pg_amproc) GETSTRUCT(&proclist->members[i]->tuple);

		if (procform->amprocnum < 1 || procform->amprocnum > TV_NPROCS)
		{
			ereport(INFO,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("turbo operator family contains function %u with invalid support number %d",
							procform->amproc, procform->amprocnum)));
			result = false;
			continue;
		}
		have[procform->amprocnum] = true;
	}
	ReleaseCatCacheList(proclist);

	/* the conversion to real[] is optional */
	for (int i = 1; i <= TV_METRIC_PROC; i++)
		if (!have[i])
		{
			ereport(INFO,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("turbo operator class is missing support function %d", i)));
			result = false;
		}

	oprlist = SearchSysCacheList1(AMOPSTRATEGY, ObjectIdGetDatum(opfamilyoid));
	for (int i = 0; i < oprlist->n_members; i++)
	{
		Form_pg_amop oprform = (Form_pg_amop) GETSTRUCT(&oprlist->members[i]->tuple);

		if (oprform->amopstrategy != 1 || oprform->amoppurpose != AMOP_ORDER)
		{
			ereport(INFO,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("turbo operator family contains operator %u that is not an ordering operator with strategy 1",
							oprform->amopopr)));
			result = false;
		}
	}
	ReleaseCatCacheList(oprlist);
	ReleaseSysCache(classtup);

	return result;
}

PG_FUNCTION_INFO_V1(tvhandler);
Datum
tvhandler(PG_FUNCTION_ARGS)
{
	IndexAmRoutine *amroutine = makeNode(IndexAmRoutine);

	amroutine->amstrategies = 0;
	amroutine->amsupport = TV_NPROCS;
	amroutine->amoptsprocnum = 0;
	amroutine->amcanorder = false;
	amroutine->amcanorderbyop = true;
	amroutine->amcanbackward = false;
	amroutine->amcanunique = false;
	amroutine->amcanmulticol = false;
	amroutine->amoptionalkey = true;
	amroutine->amsearcharray = false;
	amroutine->amsearchnulls = false;
	amroutine->amstorage = false;
	amroutine->amclusterable = false;
	amroutine->ampredlocks = false;
	amroutine->amcanparallel = false;
	amroutine->amcaninclude = false;
	amroutine->amusemaintenanceworkmem = false;
	/* fields later versions added (amsummarizing, amcanbuildparallel, ...) stay zero */
	amroutine->amparallelvacuumoptions = VACUUM_OPTION_PARALLEL_BULKDEL;
	amroutine->amkeytype = InvalidOid;

	amroutine->ambuild = tvbuild;
	amroutine->ambuildempty = tvbuildempty;
	amroutine->aminsert = tvinsert;
	amroutine->ambulkdelete = tvbulkdelete;
	amroutine->amvacuumcleanup = tvvacuumcleanup;
	amroutine->amcanreturn = NULL;
	amroutine->amcostestimate = tvcostestimate;
	amroutine->amoptions = tvoptions;
	amroutine->amproperty = NULL;
	amroutine->ambuildphasename = tvbuildphasename;
	amroutine->amvalidate = tvvalidate;
	amroutine->amadjustmembers = NULL;
	amroutine->ambeginscan = tvbeginscan;
	amroutine->amrescan = tvrescan;
	amroutine->amgettuple = tvgettuple;
	amroutine->amgetbitmap = NULL;
	amroutine->amendscan = tvendscan;
	amroutine->ammarkpos = NULL;
	amroutine->amrestrpos = NULL;
	amroutine->amestimateparallelscan = NULL;
	amroutine->aminitparallelscan = NULL;
	amroutine->amparallelrescan = NULL;

	PG_RETURN_POINTER(amroutine);
}
