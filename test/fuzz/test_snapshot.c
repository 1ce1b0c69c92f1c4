/*
 * test_snapshot.c
 *	  Deterministic tests of the .tv parser (src/tvsnapshot.c), plain C, no
 *	  PostgreSQL.  Builds valid snapshots of a few shapes with
 *	  tv_snapshot_seal, checks they parse, then damages them one defect class
 *	  at a time and checks each is refused with the expected reason.
 *
 *	  ./test_snapshot                 run the tests
 *	  ./test_snapshot --corpus DIR    write the fuzz seed corpus into DIR
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tvsnapshot.h"

static int	passed;
static int	failed;

/* One test snapshot: the file bytes and what a matching reader expects */
typedef struct Snap
{
	uint8_t    *buf;
	size_t		len;
	TvSnapshotExpect expect;
	const char *name;
} Snap;

/* A shape to build */
typedef struct Shape
{
	const char *name;
	uint32_t	dim;
	uint32_t	bits;
	uint32_t	metric;
	uint32_t	lists;
	uint64_t	nslots;
} Shape;

static const Shape shapes[] = {
	{"flat-empty", 3, 4, 1, 0, 0},
	{"flat-1", 1, 3, 2, 0, 1},
	{"flat-partial", 100, 4, 3, 0, 70},
	{"flat-whole", 17, 2, 1, 0, 64},
	{"ivf-4", 8, 2, 1, 4, 320},
	{"ivf-empty", 5, 3, 3, 3, 0},
};

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint32_t
Rand32(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t) rng_state;
}

static void
Check(int ok, const char *snap, const char *what, const char *detail)
{
	if (ok)
		passed++;
	else
	{
		failed++;
		printf("FAIL %s: %s (%s)\n", snap, what, detail ? detail : "NULL");
	}
}

/* Block size the codec gives (tvcodec.c), as TvBlockBytes */
static uint32_t
BlockBytes(uint32_t dim, uint32_t bits)
{
	uint32_t	groups = bits == 2 ? (dim + 1) / 2 : dim;
	uint32_t	group_bytes = bits == 3 ? 12 : 16;

	return (TV_SNAPSHOT_BLOCK_HEADER + groups * group_bytes + 7) & ~7u;
}

static void
PutNative32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

/* Build and seal a valid snapshot of the shape */
static Snap
Build(const Shape *sh)
{
	Snap		s;
	TvSnapshotHeader h;
	uint64_t	nblocks = (sh->nslots + 31) / 32;
	uint32_t	list_area = 0;
	uint8_t    *stream;
	uint8_t    *refines;
	uint64_t	b;
	uint64_t	i;
	uint64_t	live = 0;

	memset(&h, 0, sizeof(h));
	if (sh->lists > 0)
		list_area = (uint32_t) ((sh->lists * 16 + sh->lists * sh->dim * 4 + 7) & ~7u);
	h.dboid = 16384;
	h.indexoid = 24576 + sh->dim;
	h.relfilenode = 30000 + sh->dim;
	h.dim = sh->dim;
	h.bits = sh->bits;
	h.metric = sh->metric;
	h.lists = sh->lists;
	h.list_area = list_area;
	h.block_bytes = BlockBytes(sh->dim, sh->bits);
	h.seed = UINT64_C(0x71558807FED42913);
	h.lsn = UINT64_C(0x0000000301A2B3C8);
	h.change_count = 9 + sh->nslots;
	h.nslots = sh->nslots;

	s.len = TV_SNAPSHOT_HEADER_BYTES + list_area + nblocks * h.block_bytes +
		sh->nslots * TV_REFINE_BYTES(sh->dim);
	s.buf = malloc(s.len + 1);
	stream = s.buf + TV_SNAPSHOT_HEADER_BYTES;
	refines = stream + list_area + nblocks * h.block_bytes;
	for (i = TV_SNAPSHOT_HEADER_BYTES; i < s.len; i++)
		s.buf[i] = (uint8_t) Rand32();

	/* Block headers: live bits only below nslots; IVF chains round robin */
	for (b = 0; b < nblocks; b++)
	{
		uint8_t    *blk = stream + list_area + b * h.block_bytes;
		uint64_t	used = sh->nslots - b * 32 < 32 ? sh->nslots - b * 32 : 32;
		uint32_t	mask = used == 32 ? 0xFFFFFFFFu : ((1u << used) - 1);
		uint32_t	lw = Rand32() & mask;
		int			k;

		PutNative32(blk, lw);
		for (k = 0; k < 32; k++)
			live += (lw >> k) & 1;
		if (sh->lists > 0)
		{
			uint32_t	l = (uint32_t) (b % sh->lists);

			PutNative32(blk + 4, b >= sh->lists ? (uint32_t) (b - sh->lists + 1) : 0);
			PutNative32(blk + 8, l);
		}
	}
	for (i = 0; i < sh->lists; i++)
	{
		uint8_t    *e = stream + i * 16;
		uint32_t	len = 0;
		uint32_t	tail = 0;

		for (b = i; b < nblocks; b += sh->lists)
		{
			len++;
			tail = (uint32_t) b + 1;
		}
		PutNative32(e, tail);
		PutNative32(e + 4, len);
		PutNative32(e + 8, len > 0 ? (uint32_t) i + 1 : 0);
		PutNative32(e + 12, 0);
	}
	h.live = live;
	tv_snapshot_seal(&h, stream, refines);
	tv_snapshot_encode_header(&h, s.buf);

	s.expect.dboid = h.dboid;
	s.expect.indexoid = h.indexoid;
	s.expect.relfilenode = h.relfilenode;
	s.expect.dim = h.dim;
	s.expect.bits = h.bits;
	s.expect.metric = h.metric;
	s.expect.seed = h.seed;
	s.expect.change_count = h.change_count;
	s.expect.min_lsn = h.lsn;
	s.name = sh->name;
	return s;
}

static const char *
Parse(const uint8_t *buf, size_t len, const TvSnapshotExpect *e)
{
	TvSnapshotHeader h;
	const uint8_t *st;
	const uint8_t *ve;

	return tv_snapshot_parse(buf, len, e, &h, &st, &ve);
}

/* Expect a refusal whose reason contains want (any reason when want is NULL) */
static void
Refused(const Snap *s, const uint8_t *buf, size_t len, const TvSnapshotExpect *e,
		const char *what, const char *want)
{
	const char *why = Parse(buf, len, e);

	Check(why != NULL && (want == NULL || strstr(why, want) != NULL),
		  s->name, what, why);
}

/* Copy of s with the header decoded, changed by the caller, and re-sealed */
static uint8_t *
Mutate(const Snap *s, TvSnapshotHeader *h)
{
	uint8_t    *copy = malloc(s->len + 1);

	memcpy(copy, s->buf, s->len);
	tv_snapshot_decode_header(copy, h);
	return copy;
}

/* Encode h into buf with a header CRC that matches (body CRC left alone) */
static void
Reseal(uint8_t *buf, TvSnapshotHeader *h)
{
	h->header_crc = tv_snapshot_header_crc(h);
	tv_snapshot_encode_header(h, buf);
}

/* Recompute the body CRC too, for defects the body CRC would otherwise hide */
static void
ResealBody(uint8_t *buf, TvSnapshotHeader *h)
{
	uint32_t	crc = TV_CRC32C_INIT;

	crc = tv_crc32c_update(crc, buf + TV_SNAPSHOT_HEADER_BYTES,
						   (size_t) (h->stream_bytes + h->refine_bytes));
	h->body_crc = TV_CRC32C_FINISH(crc);
	Reseal(buf, h);
}

static void
TestCrc(void)
{
	uint32_t	crc = TV_CRC32C_INIT;
	uint32_t	crc2 = TV_CRC32C_INIT;

	crc = tv_crc32c_update(crc, "123456789", 9);
	Check(TV_CRC32C_FINISH(crc) == 0xE3069283u, "crc", "check value 123456789", NULL);
	/* Feeding in pieces gives the same CRC */
	crc2 = tv_crc32c_update(crc2, "1234", 4);
	crc2 = tv_crc32c_update(crc2, "56789", 5);
	Check(crc2 == crc, "crc", "incremental", NULL);
	crc = tv_crc32c_update(TV_CRC32C_INIT, "", 0);
	Check(TV_CRC32C_FINISH(crc) == 0, "crc", "empty input", NULL);
}

static void
TestSnapshot(const Snap *s)
{
	TvSnapshotHeader h;
	TvSnapshotHeader got;
	TvSnapshotExpect e;
	const uint8_t *st;
	const uint8_t *ve;
	const char *why;
	uint8_t    *m;
	size_t		i;
	uint64_t	nblocks;

	/* valid */
	why = tv_snapshot_parse(s->buf, s->len, &s->expect, &got, &st, &ve);
	Check(why == NULL, s->name, "valid snapshot parses", why);
	if (why != NULL)
		return;
	Check(st == s->buf + TV_SNAPSHOT_HEADER_BYTES &&
		  ve == st + got.stream_bytes &&
		  got.stream_bytes + got.refine_bytes + TV_SNAPSHOT_HEADER_BYTES == s->len,
		  s->name, "stream and vector pointers", NULL);
	e = s->expect;
	e.min_lsn = 0;
	Check(Parse(s->buf, s->len, &e) == NULL, s->name, "min_lsn 0 accepted", NULL);
	nblocks = got.nslots / 32 + (got.nslots % 32 != 0);

	/* the split reader API gives the same answer */
	why = tv_snapshot_parse_header(s->buf, TV_SNAPSHOT_HEADER_BYTES, s->len,
								   &s->expect, &h);
	Check(why == NULL && tv_snapshot_check_body(&h, st, ve) == NULL,
		  s->name, "parse_header + check_body", why);

	/* empty file */
	Refused(s, s->buf, 0, &s->expect, "empty file", "empty");

	/* bad magic */
	m = Mutate(s, &h);
	m[0] ^= 0x20;
	Refused(s, m, s->len, &s->expect, "bad magic", "bad magic");
	m[0] ^= 0x20;
	m[7] = 0x02;
	Refused(s, m, s->len, &s->expect, "bad magic (format byte)", "bad magic");
	free(m);

	/* wrong version: with a matching header CRC, and without */
	m = Mutate(s, &h);
	h.version = 7;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "version 7", "unsupported version 7");
	free(m);
	m = Mutate(s, &h);
	m[8] = 3;
	Refused(s, m, s->len, &s->expect, "version 3 unsealed", "unsupported version 3");
	free(m);
	/* a version 1 file (float vectors, before refinement codes): refused */
	m = Mutate(s, &h);
	h.version = 1;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "version 1", "unsupported version 1");
	free(m);

	/* header size */
	m = Mutate(s, &h);
	h.header_bytes = 128;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "header size", "header size");
	free(m);

	/* header CRC: each header byte flipped after the version is caught */
	for (i = 16; i < TV_SNAPSHOT_HEADER_BYTES; i++)
	{
		m = Mutate(s, &h);
		m[i] ^= 0x01;
		Refused(s, m, s->len, &s->expect, "header byte flipped", "header CRC mismatch");
		free(m);
	}

	/* body: flip the first, a middle and the last body byte */
	if (s->len > TV_SNAPSHOT_HEADER_BYTES)
	{
		size_t		pos[3];
		int			k;

		pos[0] = TV_SNAPSHOT_HEADER_BYTES;
		pos[1] = (TV_SNAPSHOT_HEADER_BYTES + s->len) / 2;
		pos[2] = s->len - 1;
		for (k = 0; k < 3; k++)
		{
			m = Mutate(s, &h);
			m[pos[k]] ^= 0x80;
			Refused(s, m, s->len, &s->expect, "body byte flipped", "body CRC mismatch");
			free(m);
		}
	}

	/* every proper prefix is refused; past the header it says truncated */
	for (i = 0; i < s->len; i++)
	{
		why = Parse(s->buf, i, &s->expect);
		Check(why != NULL && (i < 8 || i >= TV_SNAPSHOT_HEADER_BYTES
							  ? strcmp(why, i == 0 ? "empty file" : "truncated") == 0
							  : strstr(why, "truncated") != NULL),
			  s->name, "prefix refused", why);
	}

	/* trailing bytes */
	m = Mutate(s, &h);
	m[s->len] = 0;
	Refused(s, m, s->len + 1, &s->expect, "one trailing byte", "trailing bytes");
	free(m);

	/* identity */
	e = s->expect;
	e.dim++;
	Refused(s, s->buf, s->len, &e, "wrong dimension", "dimension");
	e = s->expect;
	e.bits = e.bits == 4 ? 2 : 4;
	Refused(s, s->buf, s->len, &e, "wrong bits", "bits");
	e = s->expect;
	e.metric = e.metric % 3 + 1;
	Refused(s, s->buf, s->len, &e, "wrong metric", "metric");
	e = s->expect;
	e.seed ^= 1;
	Refused(s, s->buf, s->len, &e, "wrong seed", "seed differs");
	e = s->expect;
	e.indexoid++;
	Refused(s, s->buf, s->len, &e, "another index", "belongs to another index");
	e = s->expect;
	e.dboid++;
	Refused(s, s->buf, s->len, &e, "another database", "belongs to another index");
	e = s->expect;
	e.relfilenode++;
	Refused(s, s->buf, s->len, &e, "rewritten index", "belongs to another index");

	/* currency */
	e = s->expect;
	e.change_count++;
	Refused(s, s->buf, s->len, &e, "newer change counter", "stale: change counter");
	e = s->expect;
	e.change_count--;
	Refused(s, s->buf, s->len, &e, "older change counter", "stale: change counter");
	e = s->expect;
	e.min_lsn++;
	Refused(s, s->buf, s->len, &e, "LSN below min_lsn", "stale: LSN");

	/* field ranges, each with a valid header CRC */
	m = Mutate(s, &h);
	h.dim = 0;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "dimension 0", "dimension 0 out of range");
	free(m);
	m = Mutate(s, &h);
	h.dim = 16001;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "dimension 16001", "out of range");
	free(m);
	m = Mutate(s, &h);
	h.bits = 5;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "bits 5", "out of range");
	free(m);
	m = Mutate(s, &h);
	h.metric = 0;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "metric 0", "out of range");
	free(m);
	m = Mutate(s, &h);
	h.reserved = 1;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "reserved", "reserved");
	free(m);
	m = Mutate(s, &h);
	h.list_area += 8;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "list area", "list area");
	free(m);
	m = Mutate(s, &h);
	h.block_bytes = 464;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "block too small", "block size");
	free(m);
	m = Mutate(s, &h);
	h.block_bytes += 4;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "block not multiple of 8", "block size");
	free(m);
	m = Mutate(s, &h);
	h.live = h.nslots + 1;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "live > nslots", "live count");
	free(m);
	m = Mutate(s, &h);
	h.stream_bytes += 8;
	h.refine_bytes -= h.refine_bytes ? 4 : 0;
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "sizes disagree with shape", "sizes inconsistent");
	free(m);
	/* more slots than the body holds, sizes claimed consistently */
	m = Mutate(s, &h);
	h.nslots += 32;
	h.stream_bytes += h.block_bytes;
	h.refine_bytes += 32 * (uint64_t) TV_REFINE_BYTES(h.dim);
	Reseal(m, &h);
	Refused(s, m, s->len, &s->expect, "nslots beyond the file", "truncated");
	free(m);

	/* hostile huge sizes: claimed consistently, CRC valid, file tiny */
	{
		static const uint64_t huge[] = {
			UINT64_C(1) << 62, UINT64_MAX, UINT64_MAX - 31, UINT64_C(1) << 59,
			UINT64_C(1) << 40, UINT64_C(0x0000FFFFFFFFFFE0)
		};
		size_t		k;

		for (k = 0; k < sizeof(huge) / sizeof(huge[0]); k++)
		{
			m = Mutate(s, &h);
			h.nslots = huge[k] - huge[k] % 32;
			h.dim = 16000;
			h.bits = 4;
			h.lists = 0;
			h.list_area = 0;
			h.block_bytes = 0xFFFFFFF8u;
			h.live = 0;
			/* what a wrapping writer would claim */
			h.stream_bytes = h.nslots / 32 * h.block_bytes;
			h.refine_bytes = h.nslots * TV_REFINE_BYTES(16000);
			Reseal(m, &h);
			Refused(s, m, s->len, &s->expect, "huge nslots, huge blocks", "sizes inconsistent");
			h.block_bytes = 64008;
			h.stream_bytes = h.nslots / 32 * h.block_bytes;
			Reseal(m, &h);
			Refused(s, m, s->len, &s->expect, "huge nslots", NULL);
			/* sizes that fit 64 bits but not the file */
			h.nslots = huge[k] >> 24;
			h.nslots -= h.nslots % 32;
			h.stream_bytes = h.nslots / 32 * h.block_bytes;
			h.refine_bytes = h.nslots * TV_REFINE_BYTES(16000);
			Reseal(m, &h);
			Refused(s, m, s->len, &s->expect, "large nslots, small file", NULL);
			/* header claims, then the file is just the header */
			Refused(s, m, TV_SNAPSHOT_HEADER_BYTES, &s->expect, "header-only file", NULL);
			free(m);
		}
	}

	/*
	 * Sizes that wrap to exactly a header-only file: 2^62 slots of 8004
	 * refinement bytes (dim 16000) is 2^64 * 2001 bytes, 2^57 blocks of
	 * 2^18 bytes is 2^75.  Only
	 * the overflow checks stop this one, even with a matching expect.
	 */
	{
		uint8_t		raw[TV_SNAPSHOT_HEADER_BYTES];

		m = Mutate(s, &h);
		h.nslots = UINT64_C(1) << 62;
		h.dim = 16000;
		h.bits = 4;
		h.lists = 0;
		h.list_area = 0;
		h.block_bytes = 1u << 18;
		h.live = 0;
		h.stream_bytes = 0;
		h.refine_bytes = 0;
		h.body_crc = 0;			/* CRC-32C of no bytes */
		Reseal(raw, &h);
		e = s->expect;
		e.dim = 16000;
		e.bits = 4;
		Refused(s, raw, sizeof(raw), &e, "sizes wrapping to the header", "overflow");
		free(m);
	}

	/* stream structure: body CRC recomputed so only the structure check sees it */
	if (s->expect.change_count > 0 && got.lists == 0 && got.nslots % 32 != 0)
	{
		uint8_t    *blk;

		m = Mutate(s, &h);
		blk = m + TV_SNAPSHOT_HEADER_BYTES + h.list_area + (nblocks - 1) * h.block_bytes;
		blk[3] |= 0x80;			/* lane 31 of the partial last block */
		ResealBody(m, &h);
		Refused(s, m, s->len, &s->expect, "live lane past nslots", "stream: live lane");
		free(m);
	}
	if (got.lists > 0 && nblocks > got.lists)
	{
		uint8_t    *stream;
		uint8_t    *blk;
		uint32_t	v;

		/* a cycle: the oldest block of list 0 points back at its tail */
		m = Mutate(s, &h);
		stream = m + TV_SNAPSHOT_HEADER_BYTES;
		memcpy(&v, stream, 4);
		blk = stream + h.list_area;
		memcpy(blk + 4, &v, 4);
		ResealBody(m, &h);
		Refused(s, m, s->len, &s->expect, "IVF chain cycle", "chain broken");
		free(m);

		/* a block naming the wrong list */
		m = Mutate(s, &h);
		blk = m + TV_SNAPSHOT_HEADER_BYTES + h.list_area + (uint64_t) h.block_bytes * (nblocks - 1);
		v = 0;
		memcpy(&v, blk + 8, 4);
		v = (v + 1) % got.lists;
		memcpy(blk + 8, &v, 4);
		ResealBody(m, &h);
		Refused(s, m, s->len, &s->expect, "IVF block names another list", "stream:");
		free(m);

		/* a directory tail past the end */
		m = Mutate(s, &h);
		v = (uint32_t) nblocks + 1;
		memcpy(m + TV_SNAPSHOT_HEADER_BYTES, &v, 4);
		ResealBody(m, &h);
		Refused(s, m, s->len, &s->expect, "IVF tail out of range", "out of range");
		free(m);

		/* a prev link past the end */
		m = Mutate(s, &h);
		v = 0xFFFFFFFFu;
		blk = m + TV_SNAPSHOT_HEADER_BYTES + h.list_area + (uint64_t) h.block_bytes * (nblocks - 1);
		memcpy(blk + 4, &v, 4);
		ResealBody(m, &h);
		Refused(s, m, s->len, &s->expect, "IVF prev out of range", "stream:");
		free(m);

		/* a directory length that leaves a block on no chain */
		m = Mutate(s, &h);
		memcpy(&v, m + TV_SNAPSHOT_HEADER_BYTES + 4, 4);
		v--;
		memcpy(m + TV_SNAPSHOT_HEADER_BYTES + 4, &v, 4);
		ResealBody(m, &h);
		Refused(s, m, s->len, &s->expect, "IVF length short", "stream:");
		free(m);
	}
	if (got.lists > 0 && got.nslots == 0)
	{
		/* IVF with slots not whole blocks */
		m = Mutate(s, &h);
		h.nslots = 1;
		Reseal(m, &h);
		Refused(s, m, s->len, &s->expect, "IVF partial block", "not whole blocks");
		free(m);
	}
}

/* Seed corpus for the fuzzer: a control byte, then a snapshot file */
static int
WriteCorpus(const char *dir, Snap *snaps, int n)
{
	int			i;
	int			c;

	for (i = 0; i < n; i++)
	{
		for (c = 0; c < 2; c++)
		{
			char		path[4096];
			FILE	   *f;
			uint8_t		control = c == 0 ? 0x07 : 0x00;

			snprintf(path, sizeof(path), "%s/%s-%d.tv", dir, snaps[i].name, c);
			f = fopen(path, "wb");
			if (f == NULL)
			{
				perror(path);
				return 1;
			}
			fwrite(&control, 1, 1, f);
			if (snaps[i].len > 0)
				fwrite(snaps[i].buf, 1, snaps[i].len, f);
			fclose(f);
		}
	}
	return 0;
}

int
main(int argc, char **argv)
{
	Snap		snaps[sizeof(shapes) / sizeof(shapes[0])];
	int			n = (int) (sizeof(shapes) / sizeof(shapes[0]));
	int			i;
	int			rc = 0;

	for (i = 0; i < n; i++)
		snaps[i] = Build(&shapes[i]);
	if (argc == 3 && strcmp(argv[1], "--corpus") == 0)
		rc = WriteCorpus(argv[2], snaps, n);
	else
	{
		TestCrc();
		for (i = 0; i < n; i++)
			TestSnapshot(&snaps[i]);
		printf("snapshot: %d passed, %d failed\n", passed, failed);
		rc = failed != 0;
	}
	for (i = 0; i < n; i++)
		free(snaps[i].buf);
	return rc;
}
