/*
 * listwalk.c
 *	  How fast the block kernel walks IVF lists in memory far larger than
 *	  the caches, with and without software prefetch of the next block: the
 *	  access pattern of a resident-copy scan (tvscan.c, ResidentWindow).
 *
 *	  gcc -O2 -ffp-contract=off -Isrc -o /tmp/listwalk bench/listwalk.c \
 *	      src/tvcodec.c src/tvkernels.c -lm
 *	  /tmp/listwalk [dim] [probes]        (default 768 32)
 *
 * 1,000 lists of 32 blocks each (32,000 blocks, 1M rows: 400 MB at 768-d,
 * 4 bits), laid out contiguously; each "query" scores every block of
 * `probes` random lists, walking a list from its last block back to its
 * first as the scan follows the prev links.  Modes alternate, three rounds.
 */
#include "tvcodec.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define LISTS 1000
#define BLOCKS_PER_LIST 32
#define QUERIES 300
#define HEADER_BYTES 464		/* TV_BLOCK_CODES_OFFSET */

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static double
walk(const char *buf, size_t block_bytes, const TvQueryLut *lut, int probes,
	 int prefetch, float *sink)
{
	float		out[TV_LANES];
	double		t0 = now();

	srand(1);
	for (int q = 0; q < QUERIES; q++)
		for (int k = 0; k < probes; k++)
		{
			int			list = rand() % LISTS;

			for (int b = BLOCKS_PER_LIST - 1; b >= 0; b--)
			{
				const char *blk = buf + ((size_t) list * BLOCKS_PER_LIST + b) * block_bytes;

				if (prefetch && b > 0)
					for (size_t off = 0; off < block_bytes; off += 64)
						__builtin_prefetch(blk - block_bytes + off);
				tv_score_block(lut, (const uint8_t *) blk + HEADER_BYTES, out);
				*sink += out[0];
			}
		}
	return (now() - t0) / QUERIES;
}

int
main(int argc, char **argv)
{
	int			dim = argc > 1 ? atoi(argv[1]) : 768;
	int			probes = argc > 2 ? atoi(argv[2]) : 32;
	size_t		block_bytes = (HEADER_BYTES + tv_codec_block_code_bytes(dim, 4) + 7) & ~(size_t) 7;
	size_t		total = (size_t) LISTS * BLOCKS_PER_LIST * block_bytes;
	char	   *buf = aligned_alloc(4096, (total + 4095) & ~(size_t) 4095);
	TvCodec    *codec = malloc(tv_codec_size(dim));
	TvQueryLut *lut;
	float	   *q = malloc(sizeof(float) * dim);
	float	   *work;
	float		sink = 0;

	tv_codec_init(codec, dim, 4, 42);
	lut = malloc(tv_query_lut_size(codec));
	work = malloc(sizeof(float) * tv_codec_work_floats(codec));
	for (size_t i = 0; i + 8 <= total; i += 8)
		*(uint64_t *) (buf + i) = i * 0x9E3779B97F4A7C15ULL;
	for (int i = 0; i < dim; i++)
		q[i] = (float) rand() / RAND_MAX - 0.5f;
	tv_kernels_init();
	tv_query_prepare(codec, q, lut, work);

	printf("%d-d, %zu-byte blocks, %.0f MB, %d probes of %d blocks\n",
		   dim, block_bytes, total / 1e6, probes, BLOCKS_PER_LIST);
	for (int round = 0; round < 3; round++)
		for (int prefetch = 0; prefetch <= 1; prefetch++)
		{
			double		s = walk(buf, block_bytes, lut, probes, prefetch, &sink);

			printf("  %-12s %8.1f us a query, %5.2f GB/s\n",
				   prefetch ? "prefetch" : "no prefetch", s * 1e6,
				   (double) probes * BLOCKS_PER_LIST * block_bytes / s / 1e9);
		}
	return sink == 12345.0f;
}
