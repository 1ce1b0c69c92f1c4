/*
 * tvvacuum.c
 *	  VACUUM for turbo indexes: clear the live bit of lanes whose heap rows
 *	  are dead, so inserts reuse them and scans skip them.
 *
 * Only the 4-byte live word of a block changes.  Blocks start on 8-byte
 * stream offsets and pages carry a multiple of 8 bytes, so the word never
 * straddles a page and each change is one small generic WAL record, with
 * the metapage, whose change counter moves with every clear.  The
 * TIDs are read first under share locks; only live bits are cleared, and
 * only inserters set them (a lane whose bit is set is never handed out), so
 * nothing can change under our decision.  The page is taken with a cleanup
 * lock, as the index AM contract asks of bulk delete.
 *
 * Pages are never freed: the stream stays dense and freed lanes are reused.
 * REINDEX compacts an index after mass deletion.
 */
#include "postgres.h"

#include "access/generic_xlog.h"
#include "commands/vacuum.h"
#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "storage/bufmgr.h"
#include "utils/rel.h"

#include "turbovec.h"
#include "tvresident.h"

/*
 * Clear the given lanes of block b's live word.  The metapage's counter
 * moves in the same record, under its exclusive lock, so a resident copy or
 * a rebuild in progress never misses a cleared lane.
 */
static uint32
ClearLanes(Relation index, uint64 b, uint32 dead, BufferAccessStrategy strategy)
{
	Buffer		metabuf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	TvMetaPageData meta;
	uint64		offset;
	Buffer		buf;
	GenericXLogState *xlog;
	Page		page;
	TvMetaPage	newmeta;
	uint32		live;
	uint32		cleared;

	LockBuffer(metabuf, BUFFER_LOCK_EXCLUSIVE);
	TvCheckMetaPage(index, BufferGetPage(metabuf));
	memcpy(&meta, TvPageGetMeta(BufferGetPage(metabuf)), sizeof(meta));
	offset = TvBlockOffset(&meta, b);
	buf = ReadBufferExtended(index, MAIN_FORKNUM,
							 TV_FIRST_DATA_BLKNO + offset / TV_PAGE_PAYLOAD,
							 RBM_NORMAL, strategy);
	LockBufferForCleanup(buf);
	xlog = GenericXLogStart(index);
	newmeta = TvPageGetMeta(GenericXLogRegisterBuffer(xlog, metabuf, 0));
	page = GenericXLogRegisterBuffer(xlog, buf, 0);
	memcpy(&live, TvPagePayload(page) + offset % TV_PAGE_PAYLOAD, sizeof(uint32));
	cleared = live & dead;
	live &= ~dead;
	memcpy(TvPagePayload(page) + offset % TV_PAGE_PAYLOAD, &live, sizeof(uint32));
	if (cleared)
	{
		TvMetaPageData after;

		newmeta->change_count++;
		after = *newmeta;
		GenericXLogFinish(xlog);
		TvResidentApplyClear(index, &after, meta.change_count, b, cleared);
	}
	else
		GenericXLogAbort(xlog);
	UnlockReleaseBuffer(buf);
	UnlockReleaseBuffer(metabuf);
	return cleared;
}

/*
 * IVF: point each list that lost lanes at a block with free lanes, so its
 * next insert looks there first.  Called with the metapage locked, which
 * keeps inserters (the other writers of the directory) out.
 */
static void
UpdateListHints(Relation index, uint32 lists, const uint32 *freed)
{
	uint32		j = 0;

	while (j < lists)
	{
		uint64		off = (uint64) j * sizeof(TvListEntry);
		BlockNumber blkno = TV_FIRST_DATA_BLKNO + off / TV_PAGE_PAYLOAD;
		uint32		per_page = TV_PAGE_PAYLOAD / sizeof(TvListEntry);
		uint32		end = Min(lists, (j / per_page + 1) * per_page);
		bool		any = false;

		for (uint32 k = j; k < end; k++)
			any |= (freed[k] != 0);
		if (any)
		{
			Buffer		buf = ReadBuffer(index, blkno);
			GenericXLogState *xlog;
			Page		page;

			LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
			xlog = GenericXLogStart(index);
			page = GenericXLogRegisterBuffer(xlog, buf, 0);
			for (uint32 k = j; k < end; k++)
			{
				TvListEntry *e = (TvListEntry *)
					(TvPagePayload(page) + ((uint64) k * sizeof(TvListEntry)) % TV_PAGE_PAYLOAD);

				if (freed[k] != 0)
					e->free_hint = freed[k];
			}
			TvCommitBuffer(buf, xlog);
		}
		j = end;
	}
}

/* Record vacuum's changes in the metapage (and the IVF directory) */
static void
UpdateMeta(Relation index, uint64 first_freed, const uint32 *list_freed)
{
	Buffer		metabuf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	GenericXLogState *xlog;
	TvMetaPage	meta;
	TvMetaPageData after;

	LockBuffer(metabuf, BUFFER_LOCK_EXCLUSIVE);
	TvCheckMetaPage(index, BufferGetPage(metabuf));
	if (list_freed)
		UpdateListHints(index, TvPageGetMeta(BufferGetPage(metabuf))->lists, list_freed);
	xlog = GenericXLogStart(index);
	meta = TvPageGetMeta(GenericXLogRegisterBuffer(xlog, metabuf, 0));
	meta->free_hint = Min(meta->free_hint, first_freed);
	meta->change_count++;
	after = *meta;
	GenericXLogFinish(xlog);
	/* only hints changed: the copy keeps up by taking the new counter */
	TvResidentApplyClear(index, &after, after.change_count - 1, 0, 0);
	UnlockReleaseBuffer(metabuf);
}

IndexBulkDeleteResult *
tvbulkdelete(IndexVacuumInfo *info, IndexBulkDeleteResult *stats,
			 IndexBulkDeleteCallback callback, void *callback_state)
{
	Relation	index = info->index;
	TvMetaPageData meta;
	uint64		nblocks;
	uint64		first_freed = PG_UINT64_MAX;
	char		header[TV_BLOCK_NORM_OFFSET];
	uint32	   *list_freed = NULL;

	if (stats == NULL)
		stats = (IndexBulkDeleteResult *) palloc0(sizeof(IndexBulkDeleteResult));

	TvReadMeta(index, &meta);
	nblocks = TvBlockCount(&meta);
	if (meta.lists > 0)
		list_freed = palloc0(sizeof(uint32) * meta.lists);

	for (uint64 b = 0; b < nblocks; b++)
	{
		uint64		offset = TvBlockOffset(&meta, b);
		uint32		live;
		uint32		dead = 0;

		TvVacuumDelayPoint();

		TvReadStream(index, offset, sizeof(header), header, info->strategy);
		memcpy(&live, header + TV_BLOCK_LIVE_OFFSET, sizeof(uint32));
		while (live != 0)
		{
			int			lane = pg_rightmost_one_pos32(live);
			ItemPointerData tid;

			live &= live - 1;
			memcpy(&tid, header + TV_BLOCK_TIDS_OFFSET + lane * sizeof(ItemPointerData),
				   sizeof(ItemPointerData));
			if (callback(&tid, callback_state))
				dead |= (uint32) 1 << lane;
		}
		if (dead != 0)
		{
			uint32		cleared = ClearLanes(index, b, dead, info->strategy);

			stats->tuples_removed += pg_popcount32(cleared);
			if (cleared)
			{
				uint32		list;

				first_freed = Min(first_freed, b);
				memcpy(&list, header + TV_BLOCK_LIST_OFFSET, sizeof(uint32));
				if (list_freed && list < meta.lists && list_freed[list] == 0)
					list_freed[list] = (uint32) (b + 1);
			}
		}
	}

	if (first_freed != PG_UINT64_MAX)
		UpdateMeta(index, first_freed, list_freed);
	return stats;
}

/* Number of live lanes in the index */
uint64
TvCountLive(Relation index, BufferAccessStrategy strategy)
{
	TvMetaPageData meta;
	uint64		nblocks;
	uint64		count = 0;

	TvReadMeta(index, &meta);
	nblocks = TvBlockCount(&meta);
	for (uint64 b = 0; b < nblocks; b++)
	{
		uint32		live;

		TvReadStream(index, TvBlockOffset(&meta, b) + TV_BLOCK_LIVE_OFFSET,
					 sizeof(uint32), (char *) &live, strategy);
		count += pg_popcount32(live);
		if ((b & 1023) == 1023)
			CHECK_FOR_INTERRUPTS();
	}
	return count;
}

IndexBulkDeleteResult *
tvvacuumcleanup(IndexVacuumInfo *info, IndexBulkDeleteResult *stats)
{
	if (info->analyze_only)
		return stats;

	if (stats == NULL)
		stats = (IndexBulkDeleteResult *) palloc0(sizeof(IndexBulkDeleteResult));
	stats->num_pages = RelationGetNumberOfBlocks(info->index);
	stats->num_index_tuples = TvCountLive(info->index, info->strategy);
	stats->estimated_count = false;
	return stats;
}
