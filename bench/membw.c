/*
 * membw.c
 *	  Single-core read bandwidth of this machine at three working-set sizes
 *	  (L3-resident, the size of GloVe-100's 4-bit codes, DRAM): the roofline
 *	  the scan kernels are compared against in docs/PERFORMANCE.md.
 *
 *	  gcc -O2 -o /tmp/membw bench/membw.c && /tmp/membw
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Sum the buffer with four independent AVX2 streams, as the kernel reads */
__attribute__((noinline, target("avx2")))
static long long
ReadAll(const char *p, size_t n)
{
	__m256i		a = _mm256_setzero_si256(), b = a, c = a, d = a;
	long long	r[4];

	for (size_t i = 0; i < n; i += 128)
	{
		a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *) (p + i)));
		b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *) (p + i + 32)));
		c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i *) (p + i + 64)));
		d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i *) (p + i + 96)));
	}
	a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
	_mm256_storeu_si256((__m256i *) r, a);
	return r[0] + r[1] + r[2] + r[3];
}

int
main(void)
{
	size_t		sizes[] = {8 << 20, 22 << 20, 256 << 20};

	for (int k = 0; k < 3; k++)
	{
		size_t		n = sizes[k];
		char	   *p = aligned_alloc(64, n);
		long long	s = 0;
		int			reps = (k == 2) ? 5 : 50;
		double		t0;
		double		t;

		memset(p, 1, n);
		s += ReadAll(p, n);		/* warm */
		t0 = now();
		for (int r = 0; r < reps; r++)
		{
			s += ReadAll(p, n);
			__asm__ volatile("":::"memory");
		}
		t = now() - t0;
		printf("%4zu MB: %6.1f GB/s  (%.3f ms per pass; checksum %lld)\n",
			   n >> 20, (double) n * reps / t / 1e9, t / reps * 1e3, s & 0xff);
		free(p);
	}
	return 0;
}
