/*
 * tvvacuum.c
 *	  VACUUM for turbo indexes: clear the live bit of lanes whose heap rows
 *	  are dead, so inserts reuse them and scans skip them.
 *
 * Only the 4-byte live word of a block changes.  Blocks start on 8-byte
 * stream offsets and pages carry a multiple of 8 bytes, so the word never
 * straddles a page and each change is one small generic WAL record.  The
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

/* Clear the given lanes of a block's live word */
static uint32
ClearLanes(Relation index, uint64 offset, uint32 dead, BufferAccessStrategy strategy)
{
	BlockNumber blkno = TV_FIRST_DATA_BLKNO + offset / TV_PAGE_PAYLOAD;
	Size		pos = offset % TV_PAGE_PAYLOAD;
	Buffer		buf;
	GenericXLogState *xlog;
	Page		page;
	uint32		live;
	uint32		cleared;

	buf = ReadBufferExtended(index, MAIN_FORKNUM, blkno, RBM_NORMAL, strategy);
	LockBufferForCleanup(buf);
	xlog = GenericXLogStart(index);
	page = GenericXLogRegisterBuffer(xlog, buf, 0);
	memcpy(&live, TvPagePayload(page) + pos, sizeof(uint32));
	cleared = live & dead;
	live &= ~dead;
	memcpy(TvPagePayload(page) + pos, &live, sizeof(uint32));
	if (cleared)
		GenericXLogFinish(xlog);
	else
		GenericXLogAbort(xlog);
	UnlockReleaseBuffer(buf);
	return cleared;
}

/* Record vacuum's changes in the metapage */
static void
UpdateMeta(Relation index, uint64 first_freed)
{
	Buffer		metabuf = ReadBuffer(index, TV_METAPAGE_BLKNO);
	GenericXLogState *xlog;
	TvMetaPage	meta;

	LockBuffer(metabuf, BUFFER_LOCK_EXCLUSIVE);
	TvCheckMetaPage(index, BufferGetPage(metabuf));
	xlog = GenericXLogStart(index);
	meta = TvPageGetMeta(GenericXLogRegisterBuffer(xlog, metabuf, 0));
	meta->free_hint = Min(meta->free_hint, first_freed);
	meta->change_count++;
	TvCommitBuffer(metabuf, xlog);
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

	if (stats == NULL)
		stats = (IndexBulkDeleteResult *) palloc0(sizeof(IndexBulkDeleteResult));

	TvReadMeta(index, &meta);
	nblocks = (meta.nslots + TV_LANES - 1) / TV_LANES;

	for (uint64 b = 0; b < nblocks; b++)
	{
		uint64		offset = b * meta.block_bytes;
		uint32		live;
		uint32		dead = 0;

		vacuum_delay_point();

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
			uint32		cleared = ClearLanes(index, offset, dead, info->strategy);

			stats->tuples_removed += pg_popcount32(cleared);
			if (cleared)
				first_freed = Min(first_freed, b);
		}
	}

	if (first_freed != PG_UINT64_MAX)
		UpdateMeta(index, first_freed);
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
	nblocks = (meta.nslots + TV_LANES - 1) / TV_LANES;
	for (uint64 b = 0; b < nblocks; b++)
	{
		uint32		live;

		TvReadStream(index, b * meta.block_bytes + TV_BLOCK_LIVE_OFFSET,
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
