/*
 * tvsnapshot.c
 *	  Parse and seal .tv snapshot files: the pure part, no PostgreSQL
 *	  headers, so test/fuzz builds it with plain gcc or clang.
 *
 * Invariants: every input byte is hostile until proven otherwise.  A length
 * is compared with the bytes actually present before anything is read
 * through it, every product of header fields is checked for overflow in
 * 64 bits before it is formed, and the header's fields are all read through
 * fixed offsets of a buffer already known to hold the whole header.  The
 * stream's own pointers (IVF directory entries, block prev links) are
 * range-checked and walked with a step bound, so a loader that trusts a
 * snapshot accepted here never follows a link out of the stream or around
 * a cycle.  Nothing here allocates memory.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tvsnapshot.h"

/* Byte offsets of the header fields on disk (docs/SNAPSHOT.md) */
#define OFF_MAGIC			0
#define OFF_VERSION			8
#define OFF_HEADER_BYTES	12
#define OFF_DBOID			16
#define OFF_INDEXOID		20
#define OFF_RELFILENODE		24
#define OFF_DIM				28
#define OFF_BITS			32
#define OFF_METRIC			36
#define OFF_LISTS			40
#define OFF_LIST_AREA		44
#define OFF_BLOCK_BYTES		48
#define OFF_RESERVED		52
#define OFF_SEED			56
#define OFF_LSN				64
#define OFF_CHANGE_COUNT	72
#define OFF_NSLOTS			80
#define OFF_LIVE			88
#define OFF_STREAM_BYTES	96
#define OFF_REFINE_BYTES	104
#define OFF_BODY_CRC		112
#define OFF_HEADER_CRC		116

/* Block header fields read by the structure check (see turbovec.h) */
#define BLOCK_LIVE_OFFSET	0
#define BLOCK_PREV_OFFSET	4
#define BLOCK_LIST_OFFSET	8
/* IVF directory entry: tail, nblocks, free_hint, reserved */
#define LIST_ENTRY_BYTES	16

/* CRC-32C, reflected polynomial 0x1EDC6F41 */
#define CRC32C_POLY_REFLECTED 0x82F63B78u

static uint32_t crc32c_table[256];
static bool crc32c_table_ready = false;

TvCrc32cFunc tv_snapshot_crc32c = tv_crc32c_update;

/* Reasons that carry numbers are formatted here; valid until the next call */
static char reason_buf[192];

#if defined(__GNUC__) || defined(__clang__)
static const char *Reason(const char *fmt,...) __attribute__((format(printf, 1, 2)));
#endif

/* Format a defect into reason_buf */
static const char *
Reason(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(reason_buf, sizeof(reason_buf), fmt, ap);
	va_end(ap);
	return reason_buf;
}

/* Build the byte-at-a-time table once; a racing second build writes the same values */
static void
Crc32cInitTable(void)
{
	uint32_t	i;

	for (i = 0; i < 256; i++)
	{
		uint32_t	c = i;
		int			k;

		for (k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ CRC32C_POLY_REFLECTED : c >> 1;
		crc32c_table[i] = c;
	}
	crc32c_table_ready = true;
}

/*
 * Feed len bytes into a running CRC-32C.  Start from TV_CRC32C_INIT and
 * finish with TV_CRC32C_FINISH, exactly like PostgreSQL's COMP_CRC32C.
 */
uint32_t
tv_crc32c_update(uint32_t crc, const void *data, size_t len)
{
	const uint8_t *p = data;

	if (!crc32c_table_ready)
		Crc32cInitTable();
	while (len-- > 0)
		crc = crc32c_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
	return crc;
}

static uint32_t
Get32(const uint8_t *p)
{
	return (uint32_t) p[0] | ((uint32_t) p[1] << 8) |
		((uint32_t) p[2] << 16) | ((uint32_t) p[3] << 24);
}

static uint64_t
Get64(const uint8_t *p)
{
	return (uint64_t) Get32(p) | ((uint64_t) Get32(p + 4) << 32);
}

static void
Put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) v;
	p[1] = (uint8_t) (v >> 8);
	p[2] = (uint8_t) (v >> 16);
	p[3] = (uint8_t) (v >> 24);
}

static void
Put64(uint8_t *p, uint64_t v)
{
	Put32(p, (uint32_t) v);
	Put32(p + 4, (uint32_t) (v >> 32));
}

/* A uint32 of the stream, in host order like the index pages it copies */
static uint32_t
StreamWord(const uint8_t *stream, uint64_t offset)
{
	uint32_t	v;

	memcpy(&v, stream + offset, sizeof(v));
	return v;
}

/* Write the header's fields at their fixed little-endian offsets */
void
tv_snapshot_encode_header(const TvSnapshotHeader *hdr, uint8_t *out)
{
	memset(out, 0, TV_SNAPSHOT_HEADER_BYTES);
	memcpy(out + OFF_MAGIC, hdr->magic, TV_SNAPSHOT_MAGIC_LEN);
	Put32(out + OFF_VERSION, hdr->version);
	Put32(out + OFF_HEADER_BYTES, hdr->header_bytes);
	Put32(out + OFF_DBOID, hdr->dboid);
	Put32(out + OFF_INDEXOID, hdr->indexoid);
	Put32(out + OFF_RELFILENODE, hdr->relfilenode);
	Put32(out + OFF_DIM, hdr->dim);
	Put32(out + OFF_BITS, hdr->bits);
	Put32(out + OFF_METRIC, hdr->metric);
	Put32(out + OFF_LISTS, hdr->lists);
	Put32(out + OFF_LIST_AREA, hdr->list_area);
	Put32(out + OFF_BLOCK_BYTES, hdr->block_bytes);
	Put32(out + OFF_RESERVED, hdr->reserved);
	Put64(out + OFF_SEED, hdr->seed);
	Put64(out + OFF_LSN, hdr->lsn);
	Put64(out + OFF_CHANGE_COUNT, hdr->change_count);
	Put64(out + OFF_NSLOTS, hdr->nslots);
	Put64(out + OFF_LIVE, hdr->live);
	Put64(out + OFF_STREAM_BYTES, hdr->stream_bytes);
	Put64(out + OFF_REFINE_BYTES, hdr->refine_bytes);
	Put32(out + OFF_BODY_CRC, hdr->body_crc);
	Put32(out + OFF_HEADER_CRC, hdr->header_crc);
}

/* Read TV_SNAPSHOT_HEADER_BYTES bytes (the caller made sure they exist) */
void
tv_snapshot_decode_header(const uint8_t *in, TvSnapshotHeader *hdr)
{
	memset(hdr, 0, sizeof(*hdr));
	memcpy(hdr->magic, in + OFF_MAGIC, TV_SNAPSHOT_MAGIC_LEN);
	hdr->version = Get32(in + OFF_VERSION);
	hdr->header_bytes = Get32(in + OFF_HEADER_BYTES);
	hdr->dboid = Get32(in + OFF_DBOID);
	hdr->indexoid = Get32(in + OFF_INDEXOID);
	hdr->relfilenode = Get32(in + OFF_RELFILENODE);
	hdr->dim = Get32(in + OFF_DIM);
	hdr->bits = Get32(in + OFF_BITS);
	hdr->metric = Get32(in + OFF_METRIC);
	hdr->lists = Get32(in + OFF_LISTS);
	hdr->list_area = Get32(in + OFF_LIST_AREA);
	hdr->block_bytes = Get32(in + OFF_BLOCK_BYTES);
	hdr->reserved = Get32(in + OFF_RESERVED);
	hdr->seed = Get64(in + OFF_SEED);
	hdr->lsn = Get64(in + OFF_LSN);
	hdr->change_count = Get64(in + OFF_CHANGE_COUNT);
	hdr->nslots = Get64(in + OFF_NSLOTS);
	hdr->live = Get64(in + OFF_LIVE);
	hdr->stream_bytes = Get64(in + OFF_STREAM_BYTES);
	hdr->refine_bytes = Get64(in + OFF_REFINE_BYTES);
	hdr->body_crc = Get32(in + OFF_BODY_CRC);
	hdr->header_crc = Get32(in + OFF_HEADER_CRC);
}

/* CRC-32C of the encoded header with header_crc zeroed */
uint32_t
tv_snapshot_header_crc(const TvSnapshotHeader *hdr)
{
	uint8_t		raw[TV_SNAPSHOT_HEADER_BYTES];
	uint32_t	crc = TV_CRC32C_INIT;

	tv_snapshot_encode_header(hdr, raw);
	memset(raw + OFF_HEADER_CRC, 0, 4);
	crc = tv_snapshot_crc32c(crc, raw, sizeof(raw));
	return TV_CRC32C_FINISH(crc);
}

/* The IVF list area size the index uses for (lists, dim), as TvListAreaBytes */
static uint64_t
ListAreaBytes(uint32_t lists, uint32_t dim)
{
	uint64_t	bytes;

	if (lists == 0)
		return 0;
	bytes = (uint64_t) lists * LIST_ENTRY_BYTES + (uint64_t) lists * dim * 4;
	return (bytes + 7) & ~(uint64_t) 7;
}

/*
 * Stream and refinement sizes implied by the shape fields, or false when either
 * would overflow 64 bits.  Blocks are ceil(nslots / 32), formed without
 * nslots + 31 overflowing.
 */
static bool
BodySizes(const TvSnapshotHeader *h, uint64_t *stream_bytes, uint64_t *refine_bytes)
{
	uint64_t	nblocks = h->nslots / TV_SNAPSHOT_LANES +
		(h->nslots % TV_SNAPSHOT_LANES != 0);
	uint64_t	per_slot = TV_REFINE_BYTES(h->dim);

	if (h->block_bytes != 0 &&
		nblocks > (UINT64_MAX - h->list_area) / h->block_bytes)
		return false;
	if (per_slot != 0 && h->nslots > UINT64_MAX / per_slot)
		return false;
	*stream_bytes = h->list_area + nblocks * h->block_bytes;
	*refine_bytes = h->nslots * per_slot;
	return true;
}

/*
 * Check what the first avail bytes of a file of file_len bytes say.  See
 * tvsnapshot.h; the order is: framing (magic, version, header size, header
 * CRC), field ranges, sizes against the file length, then identity and
 * currency against expect.
 */
const char *
tv_snapshot_parse_header(const uint8_t *buf, size_t avail, uint64_t file_len,
						 const TvSnapshotExpect *expect, TvSnapshotHeader *hdr)
{
	TvSnapshotHeader h;
	uint32_t	version;
	uint32_t	header_bytes;
	uint64_t	stream_bytes;
	uint64_t	refine_bytes;
	uint64_t	total;
	size_t		n;

	if (avail > file_len)
		avail = (size_t) file_len;
	if (file_len == 0)
		return "empty file";

	/* A prefix that disagrees with the magic is bad magic, else truncated */
	n = avail < TV_SNAPSHOT_MAGIC_LEN ? avail : TV_SNAPSHOT_MAGIC_LEN;
	if (memcmp(buf, TV_SNAPSHOT_MAGIC, n) != 0)
		return "bad magic";
	if (avail < OFF_HEADER_BYTES)
		return "truncated";
	version = Get32(buf + OFF_VERSION);
	if (version != TV_SNAPSHOT_VERSION)
		return Reason("unsupported version %" PRIu32, version);
	if (avail < OFF_DBOID)
		return "truncated";
	header_bytes = Get32(buf + OFF_HEADER_BYTES);
	if (header_bytes != TV_SNAPSHOT_HEADER_BYTES)
		return Reason("header size %" PRIu32 ", expected %d",
					  header_bytes, TV_SNAPSHOT_HEADER_BYTES);
	if (avail < TV_SNAPSHOT_HEADER_BYTES)
		return "truncated";

	tv_snapshot_decode_header(buf, &h);
	if (tv_snapshot_header_crc(&h) != h.header_crc)
		return "header CRC mismatch";
	if (h.reserved != 0)
		return "reserved header field not zero";

	/* Field ranges: what any turbo index could have written */
	if (h.dim < 1 || h.dim > TV_SNAPSHOT_MAX_DIM)
		return Reason("dimension %" PRIu32 " out of range", h.dim);
	if (h.bits < TV_SNAPSHOT_MIN_BITS || h.bits > TV_SNAPSHOT_MAX_BITS)
		return Reason("bits %" PRIu32 " out of range", h.bits);
	if (h.metric < 1 || h.metric > TV_SNAPSHOT_MAX_METRIC)
		return Reason("metric %" PRIu32 " out of range", h.metric);
	if (h.lists > TV_SNAPSHOT_MAX_LISTS)
		return Reason("lists %" PRIu32 " out of range", h.lists);
	if (h.list_area != ListAreaBytes(h.lists, h.dim))
		return Reason("list area %" PRIu32 " bytes, expected %" PRIu64,
					  h.list_area, ListAreaBytes(h.lists, h.dim));
	/* A block holds at least 32 lanes of dim*bits bits of code */
	if (h.block_bytes % 8 != 0 ||
		h.block_bytes < TV_SNAPSHOT_BLOCK_HEADER + 4 * (uint64_t) h.dim * h.bits)
		return Reason("block size %" PRIu32 " invalid for dimension %" PRIu32
					  " at %" PRIu32 " bits", h.block_bytes, h.dim, h.bits);
	if (h.lists > 0 && h.nslots % TV_SNAPSHOT_LANES != 0)
		return Reason("IVF snapshot holds %" PRIu64 " slots, not whole blocks",
					  h.nslots);
	if (h.live > h.nslots)
		return Reason("live count %" PRIu64 " exceeds slot count %" PRIu64,
					  h.live, h.nslots);

	/* Sizes: consistent with the shape, then with the file */
	if (!BodySizes(&h, &stream_bytes, &refine_bytes))
		return "sizes inconsistent (overflow)";
	if (h.stream_bytes != stream_bytes || h.refine_bytes != refine_bytes)
		return "sizes inconsistent";
	if (stream_bytes > UINT64_MAX - TV_SNAPSHOT_HEADER_BYTES - refine_bytes)
		return "sizes inconsistent (overflow)";
	total = TV_SNAPSHOT_HEADER_BYTES + stream_bytes + refine_bytes;
	if (file_len < total)
		return "truncated";
	if (file_len > total)
		return "trailing bytes";

	/* Identity: the index, and the codec that made its codes */
	if (h.dboid != expect->dboid || h.indexoid != expect->indexoid)
		return Reason("belongs to another index (database %" PRIu32
					  ", index %" PRIu32 ")", h.dboid, h.indexoid);
	if (h.relfilenode != expect->relfilenode)
		return Reason("belongs to another index (relfilenode %" PRIu32
					  ", expected %" PRIu32 ")",
					  h.relfilenode, expect->relfilenode);
	if (h.dim != expect->dim)
		return Reason("dimension %" PRIu32 ", expected %" PRIu32,
					  h.dim, expect->dim);
	if (h.bits != expect->bits)
		return Reason("bits %" PRIu32 ", expected %" PRIu32,
					  h.bits, expect->bits);
	if (h.metric != expect->metric)
		return Reason("metric %" PRIu32 ", expected %" PRIu32,
					  h.metric, expect->metric);
	if (h.seed != expect->seed)
		return "seed differs";

	/* Currency: the dump must reflect the index as it is now */
	if (h.change_count != expect->change_count)
		return Reason("stale: change counter %" PRIu64 ", expected %" PRIu64,
					  h.change_count, expect->change_count);
	if (h.lsn < expect->min_lsn)
		return Reason("stale: LSN %X/%X, expected at least %X/%X",
					  (unsigned) (h.lsn >> 32), (unsigned) h.lsn,
					  (unsigned) (expect->min_lsn >> 32),
					  (unsigned) expect->min_lsn);

	*hdr = h;
	return NULL;
}

/*
 * Walk list l's chain from its directory entry: every block on it must name
 * l, the walk must end (prev 0) after exactly nblocks steps.  A cycle runs
 * past nblocks and is caught, so the walk takes at most nblocks + 1 steps.
 */
static const char *
CheckListChain(const TvSnapshotHeader *h, const uint8_t *stream,
			   uint64_t nblocks, uint32_t l, uint32_t tail, uint32_t length)
{
	uint64_t	b = tail;
	uint64_t	steps = 0;

	while (b != 0)
	{
		uint64_t	offset = h->list_area + (b - 1) * h->block_bytes;

		if (b > nblocks || steps >= length)
			return Reason("stream: list %" PRIu32 " chain broken", l);
		if (StreamWord(stream, offset + BLOCK_LIST_OFFSET) != l)
			return Reason("stream: list %" PRIu32 " chain enters another list", l);
		steps++;
		b = StreamWord(stream, offset + BLOCK_PREV_OFFSET);
	}
	if (steps != length)
		return Reason("stream: list %" PRIu32 " chain shorter than its directory entry", l);
	return NULL;
}

/*
 * The stream's own structure: no live lane at or past nslots, and in the IVF
 * layout a directory whose chains cover every block exactly once (each
 * chain holds only blocks naming its list and is as long as its entry says,
 * and the lengths add up to the block count).
 */
static const char *
CheckStream(const TvSnapshotHeader *h, const uint8_t *stream)
{
	uint64_t	nblocks = h->nslots / TV_SNAPSHOT_LANES +
		(h->nslots % TV_SNAPSHOT_LANES != 0);
	uint64_t	covered = 0;
	uint32_t	l;

	if (h->nslots % TV_SNAPSHOT_LANES != 0)
	{
		uint64_t	last = h->list_area + (nblocks - 1) * h->block_bytes;
		uint32_t	used = (uint32_t) (h->nslots % TV_SNAPSHOT_LANES);
		uint32_t	live = StreamWord(stream, last + BLOCK_LIVE_OFFSET);

		if ((live >> used) != 0)
			return "stream: live lane past the slot count";
	}

	for (l = 0; l < h->lists; l++)
	{
		uint64_t	entry = (uint64_t) l * LIST_ENTRY_BYTES;
		uint32_t	tail = StreamWord(stream, entry);
		uint32_t	length = StreamWord(stream, entry + 4);
		uint32_t	free_hint = StreamWord(stream, entry + 8);
		const char *why;

		if (tail > nblocks || length > nblocks || free_hint > nblocks)
			return Reason("stream: list %" PRIu32 " directory entry out of range", l);
		covered += length;
		if (covered > nblocks)
			return "stream: list lengths exceed the block count";
		why = CheckListChain(h, stream, nblocks, l, tail, length);
		if (why)
			return why;
		if (free_hint != 0 &&
			StreamWord(stream, h->list_area + (uint64_t) (free_hint - 1) * h->block_bytes +
					   BLOCK_LIST_OFFSET) != l)
			return Reason("stream: list %" PRIu32 " free hint names another list's block", l);
	}
	if (h->lists > 0 && covered != nblocks)
		return "stream: block on no list chain";
	return NULL;
}

/* Body CRC, then the stream's structure; hdr passed tv_snapshot_parse_header */
const char *
tv_snapshot_check_body(const TvSnapshotHeader *hdr, const uint8_t *stream,
					   const uint8_t *refines)
{
	uint32_t	crc = TV_CRC32C_INIT;

	crc = tv_snapshot_crc32c(crc, stream, (size_t) hdr->stream_bytes);
	crc = tv_snapshot_crc32c(crc, refines, (size_t) hdr->refine_bytes);
	if (TV_CRC32C_FINISH(crc) != hdr->body_crc)
		return "body CRC mismatch";
	return CheckStream(hdr, stream);
}

/* Validate a whole snapshot in memory; see tvsnapshot.h */
const char *
tv_snapshot_parse(const uint8_t *buf, size_t len, const TvSnapshotExpect *expect,
				  TvSnapshotHeader *hdr, const uint8_t **stream,
				  const uint8_t **refines)
{
	TvSnapshotHeader h;
	const char *why;
	const uint8_t *s;
	const uint8_t *v;

	*stream = NULL;
	*refines = NULL;
	why = tv_snapshot_parse_header(buf, len, (uint64_t) len, expect, &h);
	if (why)
		return why;
	/* parse_header proved len == header + stream_bytes + refine_bytes */
	s = buf + TV_SNAPSHOT_HEADER_BYTES;
	v = s + h.stream_bytes;
	why = tv_snapshot_check_body(&h, s, v);
	if (why)
		return why;
	*hdr = h;
	*stream = s;
	*refines = v;
	return NULL;
}

/* Fill the derived fields and both CRCs of a header about to be written */
void
tv_snapshot_seal(TvSnapshotHeader *hdr, const uint8_t *stream,
				 const uint8_t *refines)
{
	uint64_t	nblocks = hdr->nslots / TV_SNAPSHOT_LANES +
		(hdr->nslots % TV_SNAPSHOT_LANES != 0);
	uint32_t	crc = TV_CRC32C_INIT;

	memcpy(hdr->magic, TV_SNAPSHOT_MAGIC, TV_SNAPSHOT_MAGIC_LEN);
	hdr->version = TV_SNAPSHOT_VERSION;
	hdr->header_bytes = TV_SNAPSHOT_HEADER_BYTES;
	hdr->reserved = 0;
	hdr->stream_bytes = hdr->list_area + nblocks * hdr->block_bytes;
	hdr->refine_bytes = hdr->nslots * TV_REFINE_BYTES(hdr->dim);

	crc = tv_snapshot_crc32c(crc, stream, (size_t) hdr->stream_bytes);
	crc = tv_snapshot_crc32c(crc, refines, (size_t) hdr->refine_bytes);
	hdr->body_crc = TV_CRC32C_FINISH(crc);
	hdr->header_crc = 0;
	hdr->header_crc = tv_snapshot_header_crc(hdr);
}
