/*
 * tvcompat.h
 *	  The differences between the PostgreSQL major versions turbovec builds
 *	  against (15, 17 and 18 are tested), in one place, so that version
 *	  tests do not spread through the code.  Each shim says which version
 *	  changed what.
 */
#ifndef TVCOMPAT_H
#define TVCOMPAT_H

#include "postgres.h"

#include "commands/vacuum.h"
#include "miscadmin.h"

/* 16 renamed RelFileNode (relNode) to RelFileLocator (relNumber) */
#if PG_VERSION_NUM >= 160000
#define TvRelFileNumber(rel)	((rel)->rd_locator.relNumber)
#else
#define TvRelFileNumber(rel)	((rel)->rd_node.relNode)
#endif

/* 16 gave ReadRecentBuffer() a RelFileLocator instead of a RelFileNode */
#if PG_VERSION_NUM >= 160000
#define TvReadRecentBuffer(rel, fork, blkno, buf) \
	ReadRecentBuffer((rel)->rd_locator, (fork), (blkno), (buf))
#else
#define TvReadRecentBuffer(rel, fork, blkno, buf) \
	ReadRecentBuffer((rel)->rd_node, (fork), (blkno), (buf))
#endif

/* 16 replaced pg_class_ownercheck() by object_ownercheck() */
#if PG_VERSION_NUM >= 160000
#define TvOwnerCheck(relid)	object_ownercheck(RelationRelationId, (relid), GetUserId())
#else
#define TvOwnerCheck(relid)	pg_class_ownercheck((relid), GetUserId())
#endif

/* 18 gave vacuum_delay_point() an is_analyze argument */
#if PG_VERSION_NUM >= 180000
#define TvVacuumDelayPoint()	vacuum_delay_point(false)
#else
#define TvVacuumDelayPoint()	vacuum_delay_point()
#endif

/* 18 replaced the pg_attribute_noreturn() suffix by a pg_noreturn prefix */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/* 14 added indexUnchanged to aminsert; use as the argument before indexInfo */
#if PG_VERSION_NUM >= 140000
#define TV_AMINSERT_UNCHANGED_ARG	, bool indexUnchanged
#else
#define TV_AMINSERT_UNCHANGED_ARG
#endif

#endif							/* TVCOMPAT_H */
