/*
 * fuzz_snapshot.c
 *	  libFuzzer harness for the .tv parser (tv_snapshot_parse).
 *
 * Input: one control byte, then the file bytes.  Control bits:
 *	 0x01  expect what the input's own header says (identity, codec, change
 *		   counter, LSN), so the fuzzer gets past the identity checks;
 *		   otherwise expect a fixed index no input is likely to name
 *	 0x02  rewrite the header CRC to match, so mutations reach the field,
 *		   size and identity checks instead of stopping at the CRC
 *	 0x04  rewrite the body CRC (over everything after the header) too, so
 *		   mutations reach the stream structure check
 * The parser must never crash, read outside the input (ASan), overflow
 * (UBSan) or accept a file it then describes inconsistently.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tvsnapshot.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t		control;
	uint8_t    *buf;
	size_t		len;
	TvSnapshotExpect expect;
	TvSnapshotHeader hdr;
	const uint8_t *stream;
	const uint8_t *refines;
	const char *why;

	if (size < 1)
		return 0;
	control = data[0];
	len = size - 1;
	/* an exact-size heap copy, so ASan sees any read past the end */
	buf = malloc(len ? len : 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data + 1, len);

	if (len >= TV_SNAPSHOT_HEADER_BYTES && (control & 0x06) != 0)
	{
		TvSnapshotHeader h;

		tv_snapshot_decode_header(buf, &h);
		if (control & 0x04)
		{
			uint32_t	crc = TV_CRC32C_INIT;

			crc = tv_crc32c_update(crc, buf + TV_SNAPSHOT_HEADER_BYTES,
								   len - TV_SNAPSHOT_HEADER_BYTES);
			h.body_crc = TV_CRC32C_FINISH(crc);
		}
		h.header_crc = tv_snapshot_header_crc(&h);
		tv_snapshot_encode_header(&h, buf);
	}

	memset(&expect, 0, sizeof(expect));
	if ((control & 0x01) && len >= TV_SNAPSHOT_HEADER_BYTES)
	{
		TvSnapshotHeader h;

		tv_snapshot_decode_header(buf, &h);
		expect.dboid = h.dboid;
		expect.indexoid = h.indexoid;
		expect.relfilenode = h.relfilenode;
		expect.dim = h.dim;
		expect.bits = h.bits;
		expect.metric = h.metric;
		expect.seed = h.seed;
		expect.change_count = h.change_count;
		expect.min_lsn = h.lsn;
	}
	else
	{
		expect.dboid = 5;
		expect.indexoid = 16385;
		expect.relfilenode = 16385;
		expect.dim = 100;
		expect.bits = 4;
		expect.metric = 1;
		expect.seed = UINT64_C(0x71558807FED42913);
		expect.change_count = 1;
	}

	why = tv_snapshot_parse(buf, len, &expect, &hdr, &stream, &refines);
	if (why == NULL)
	{
		/* accepted: the claimed sizes must describe exactly this buffer */
		if (stream != buf + TV_SNAPSHOT_HEADER_BYTES ||
			refines != stream + hdr.stream_bytes ||
			hdr.stream_bytes + hdr.refine_bytes + TV_SNAPSHOT_HEADER_BYTES != len ||
			hdr.live > hdr.nslots)
			abort();
		/* touch every accepted byte, so ASan checks the bounds */
		if (len > TV_SNAPSHOT_HEADER_BYTES)
		{
			volatile uint8_t sink = 0;
			size_t		i;

			for (i = TV_SNAPSHOT_HEADER_BYTES; i < len; i += 61)
				sink ^= buf[i];
			sink ^= buf[len - 1];
			(void) sink;
		}
	}
	else if (why[0] == '\0')
		abort();				/* a refusal must name its defect */
	free(buf);
	return 0;
}
