/*
 * tvsnapshot.h
 *	  The .tv snapshot file: a dump of one turbo index's resident copy (its
 *	  stream bytes and one refinement code per slot) that start-up may load
 *	  instead of rebuilding from the index and the table.
 *
 * A snapshot is only a cache.  Whatever is wrong with a file (torn, stale,
 * another index's, hostile) makes the reader return a reason, and the caller
 * logs one WARNING and rebuilds; nothing here raises an ERROR.
 *
 * The parse/seal part (tvsnapshot.c) uses no PostgreSQL headers, so the unit
 * test and the libFuzzer harness in test/fuzz build it alone.  File I/O lives
 * in tvsnapshotio.c (backend).  docs/SNAPSHOT.md has the format.
 */
#ifndef TVSNAPSHOT_H
#define TVSNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tvcodec.h"			/* TV_REFINE_BYTES */

/* "TURBOTV" and a 0x01 byte: the first 8 bytes of every .tv file */
#define TV_SNAPSHOT_MAGIC		"TURBOTV\x01"
#define TV_SNAPSHOT_MAGIC_LEN	8
#define TV_SNAPSHOT_VERSION		2
/* Bytes of the version 2 header on disk (see the offsets in SNAPSHOT.md) */
#define TV_SNAPSHOT_HEADER_BYTES 120

/* Limits the reader holds a header to (the same as the index's) */
#define TV_SNAPSHOT_MAX_DIM		16000
#define TV_SNAPSHOT_MIN_BITS	2
#define TV_SNAPSHOT_MAX_BITS	4
#define TV_SNAPSHOT_MAX_METRIC	3
#define TV_SNAPSHOT_MAX_LISTS	32768
#define TV_SNAPSHOT_LANES		32
/* Block header bytes before the codes: live, prev, list, reserved, tids, norm, ipscale */
#define TV_SNAPSHOT_BLOCK_HEADER 464

/*
 * The header, in memory.  On disk every field is little-endian at a fixed
 * offset (tv_snapshot_encode_header), whatever the host; field order here is
 * the on-disk order and the struct has no padding (reserved fills the hole
 * before seed).
 */
typedef struct TvSnapshotHeader
{
	char		magic[8];		/* TV_SNAPSHOT_MAGIC */
	uint32_t	version;		/* TV_SNAPSHOT_VERSION */
	uint32_t	header_bytes;	/* TV_SNAPSHOT_HEADER_BYTES */
	uint32_t	dboid;
	uint32_t	indexoid;
	uint32_t	relfilenode;
	uint32_t	dim;
	uint32_t	bits;
	uint32_t	metric;			/* TvMetric: 1 L2, 2 inner product, 3 cosine */
	uint32_t	lists;			/* IVF lists, 0 flat */
	uint32_t	list_area;		/* stream bytes before block 0 */
	uint32_t	block_bytes;	/* one 32-lane block */
	uint32_t	reserved;		/* 0 */
	uint64_t	seed;			/* codec seed */
	uint64_t	lsn;			/* WAL position the dumped state reflects */
	uint64_t	change_count;	/* metapage change counter the dump reflects */
	uint64_t	nslots;			/* slots handed out */
	uint64_t	live;			/* live lanes, for information (<= nslots) */
	uint64_t	stream_bytes;	/* list_area + ceil(nslots / 32) * block_bytes */
	uint64_t	refine_bytes;	/* nslots * TV_REFINE_BYTES(dim) */
	uint32_t	body_crc;		/* CRC-32C over stream bytes, then vector bytes */
	uint32_t	header_crc;		/* CRC-32C over the encoded header, this field 0 */
} TvSnapshotHeader;

/*
 * What the reader expects: the index the caller is loading and its current
 * metapage.  A snapshot is current when its change_count equals the
 * metapage's and its lsn is at least min_lsn.
 */
typedef struct TvSnapshotExpect
{
	uint32_t	dboid;
	uint32_t	indexoid;
	uint32_t	relfilenode;
	uint32_t	dim;
	uint32_t	bits;
	uint32_t	metric;
	uint64_t	seed;
	uint64_t	change_count;
	uint64_t	min_lsn;
} TvSnapshotExpect;

/* CRC-32C (Castagnoli), as PostgreSQL's INIT/COMP/FIN_CRC32C */
#define TV_CRC32C_INIT			0xFFFFFFFFu
#define TV_CRC32C_FINISH(crc)	((crc) ^ 0xFFFFFFFFu)
typedef uint32_t (*TvCrc32cFunc) (uint32_t crc, const void *data, size_t len);

/* Portable table-driven CRC-32C update (no pre/post inversion) */
extern uint32_t tv_crc32c_update(uint32_t crc, const void *data, size_t len);

/*
 * The update function tv_snapshot_seal/parse use; tv_crc32c_update unless
 * the backend installs PostgreSQL's hardware-accelerated one (same values).
 */
extern TvCrc32cFunc tv_snapshot_crc32c;

/* Header <-> its TV_SNAPSHOT_HEADER_BYTES little-endian bytes */
extern void tv_snapshot_encode_header(const TvSnapshotHeader *hdr, uint8_t *out);
extern void tv_snapshot_decode_header(const uint8_t *in, TvSnapshotHeader *hdr);
/* CRC-32C of the encoded header with header_crc taken as 0 */
extern uint32_t tv_snapshot_header_crc(const TvSnapshotHeader *hdr);

/*
 * Validate a whole snapshot held in memory (the fuzz target).  Returns NULL
 * when it is whole and matches *expect, else a string naming the defect
 * ("bad magic", "truncated", "stale: change counter 5, expected 9", ...).
 * The string is static storage, valid until the next call.  On success *hdr
 * is filled and *stream / *refines point into buf (unaligned: copy before
 * using the values in place).  Never reads outside buf, never trusts a
 * length before checking it against len, never overflows on hostile sizes.
 *
 * Besides expect, a caller must check hdr->lists, list_area and block_bytes
 * against its own metapage before reading the stream with the metapage's
 * numbers: the parser only proves them consistent with each other and with
 * the file length.
 */
extern const char *tv_snapshot_parse(const uint8_t *buf, size_t len,
									 const TvSnapshotExpect *expect,
									 TvSnapshotHeader *hdr,
									 const uint8_t **stream,
									 const uint8_t **refines);

/*
 * The two halves of tv_snapshot_parse, for a reader that loads the header
 * before allocating the body.  parse_header checks the first avail bytes of
 * a file of file_len bytes: everything but the body (identity, currency,
 * field ranges, sizes against file_len).  check_body checks the body CRC and
 * the stream's block headers and IVF chains.
 */
extern const char *tv_snapshot_parse_header(const uint8_t *buf, size_t avail,
											uint64_t file_len,
											const TvSnapshotExpect *expect,
											TvSnapshotHeader *hdr);
extern const char *tv_snapshot_check_body(const TvSnapshotHeader *hdr,
										  const uint8_t *stream,
										  const uint8_t *refines);

/*
 * Fill magic, version, header_bytes, reserved, stream_bytes, refine_bytes
 * and both CRCs for writing.  The caller fills identity and shape (dboid ..
 * block_bytes, seed, lsn, change_count, nslots, live); stream and refines
 * hold stream_bytes and refine_bytes bytes.  Pure.
 */
extern void tv_snapshot_seal(TvSnapshotHeader *hdr, const uint8_t *stream,
							 const uint8_t *refines);

/*
 * Backend part (tvsnapshotio.c).  Declared only when PostgreSQL headers are
 * in: files live under $PGDATA/pgsql_tmp_turbovec as <dboid>_<indexoid>.tv.
 */
#ifdef PG_VERSION_NUM
#define TV_SNAPSHOT_DIR			"pgsql_tmp_turbovec"

extern void TvSnapshotPath(uint32 dboid, uint32 indexoid, char *path);
extern bool TvSnapshotWrite(const TvSnapshotHeader *hdr, const char *stream,
							const char *refines, Size *size);
/* Asked between pieces of a snapshot read; true stops the read */
typedef bool (*TvSnapshotStopFunc) (void *arg);

extern bool TvSnapshotRead(const TvSnapshotExpect *expect, TvSnapshotHeader *hdr,
						   char **stream, char **refines, const char **why,
						   TvSnapshotStopFunc stop, void *stop_arg, bool *stopped);
extern void TvSnapshotRemove(uint32 dboid, uint32 indexoid);
extern void TvSnapshotSweep(uint32 dboid, const List *keep, bool keep_listed);
#endif

#endif							/* TVSNAPSHOT_H */
