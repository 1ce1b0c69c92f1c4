/*
 * tvsecurity.c
 *	  Running user code outside the user's own command.
 *
 * The worker rebuilding a resident copy, or a superuser's turbo_rebuild()
 * of another role's index, evaluates index expressions written by the
 * table's owner.  Like PostgreSQL's own index builds and VACUUM, that code
 * runs as the table owner under SECURITY_RESTRICTED_OPERATION and with
 * search_path = pg_catalog, pg_temp, so it can neither act with the
 * caller's rights nor be captured through the caller's search_path.
 *
 * A transaction or subtransaction abort restores the user and the GUC
 * nesting level by itself; TvRestoreUser() is for the normal exit.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/rel.h"

#include "turbovec.h"

/* Become the owner of heap, restricted, with the safe search_path */
void
TvSwitchToTableOwner(Relation heap, TvUserContext *ctx)
{
	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(heap->rd_rel->relowner,
						   ctx->save_sec_context | SECURITY_RESTRICTED_OPERATION);
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", TV_SAFE_SEARCH_PATH,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/* Undo TvSwitchToTableOwner() */
void
TvRestoreUser(TvUserContext *ctx)
{
	AtEOXact_GUC(false, ctx->save_nestlevel);
	SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
}
