/*
 * tvivf.c
 *	  IVF lists: k-means training of the coarse centroids, assignment of a
 *	  vector to its nearest list, and the distances that order a query's
 *	  probes.
 *
 * Centroids only route vectors to lists; codes are always taken of the
 * vector itself, so they stay a function of (seed, dim, bits) alone.  The
 * training is deterministic for a given seed and sample on a given kernel;
 * the AVX2 and scalar dot products may round differently, so two machines
 * of different kinds may pick different lists for a borderline vector.
 * Nothing depends on that: a standby replays the primary's pages.
 *
 * Metrics: L2 assigns by squared distance; inner product by the largest
 * inner product; cosine trains on unit vectors (spherical k-means) and
 * assigns by the largest inner product with unit centroids.
 */
#include "postgres.h"

#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TV_IVF_X86 1
#endif

#include "miscadmin.h"
#include "utils/float.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "turbovec.h"

typedef float (*TvVecFn) (const float *a, const float *b, int dim);

static float
DotScalar(const float *a, const float *b, int dim)
{
	float		s[4] = {0, 0, 0, 0};
	int			i = 0;

	for (; i + 4 <= dim; i += 4)
	{
		s[0] += a[i] * b[i];
		s[1] += a[i + 1] * b[i + 1];
		s[2] += a[i + 2] * b[i + 2];
		s[3] += a[i + 3] * b[i + 3];
	}
	for (; i < dim; i++)
		s[0] += a[i] * b[i];
	return (s[0] + s[1]) + (s[2] + s[3]);
}

static float
L2SqScalar(const float *a, const float *b, int dim)
{
	float		s[4] = {0, 0, 0, 0};
	int			i = 0;

	for (; i + 4 <= dim; i += 4)
	{
		float		d0 = a[i] - b[i];
		float		d1 = a[i + 1] - b[i + 1];
		float		d2 = a[i + 2] - b[i + 2];
		float		d3 = a[i + 3] - b[i + 3];

		s[0] += d0 * d0;
		s[1] += d1 * d1;
		s[2] += d2 * d2;
		s[3] += d3 * d3;
	}
	for (; i < dim; i++)
		s[0] += (a[i] - b[i]) * (a[i] - b[i]);
	return (s[0] + s[1]) + (s[2] + s[3]);
}

#ifdef TV_IVF_X86
__attribute__((target("avx2,fma")))
static float
HorizontalSum(__m256 v)
{
	__m128		lo = _mm256_castps256_ps128(v);
	__m128		hi = _mm256_extractf128_ps(v, 1);

	lo = _mm_add_ps(lo, hi);
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
	return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma")))
static float
DotAvx2(const float *a, const float *b, int dim)
{
	__m256		s0 = _mm256_setzero_ps();
	__m256		s1 = _mm256_setzero_ps();
	int			i = 0;
	float		tail = 0;

	for (; i + 16 <= dim; i += 16)
	{
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
	}
	for (; i + 8 <= dim; i += 8)
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
	for (; i < dim; i++)
		tail += a[i] * b[i];
	return HorizontalSum(_mm256_add_ps(s0, s1)) + tail;
}

__attribute__((target("avx2,fma")))
static float
L2SqAvx2(const float *a, const float *b, int dim)
{
	__m256		s0 = _mm256_setzero_ps();
	__m256		s1 = _mm256_setzero_ps();
	int			i = 0;
	float		tail = 0;

	for (; i + 16 <= dim; i += 16)
	{
		__m256		d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
		__m256		d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));

		s0 = _mm256_fmadd_ps(d0, d0, s0);
		s1 = _mm256_fmadd_ps(d1, d1, s1);
	}
	for (; i + 8 <= dim; i += 8)
	{
		__m256		d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));

		s0 = _mm256_fmadd_ps(d0, d0, s0);
	}
	for (; i < dim; i++)
		tail += (a[i] - b[i]) * (a[i] - b[i]);
	return HorizontalSum(_mm256_add_ps(s0, s1)) + tail;
}
#endif

static TvVecFn Dot = DotScalar;
static TvVecFn L2Sq = L2SqScalar;

/* Pick the dot-product kernels once, from _PG_init */
void
TvIvfInit(void)
{
#ifdef TV_IVF_X86
	if (tv_kernels_have_avx2())
	{
		Dot = DotAvx2;
		L2Sq = L2SqAvx2;
	}
#endif
}

/* Smaller is closer, for every metric */
static inline float
ListDistance(const float *c, int dim, TvMetric metric, const float *x)
{
	if (metric == TV_METRIC_L2)
		return L2Sq(c, x, dim);
	return -Dot(c, x, dim);
}

int
TvNearestList(const float *centroids, int lists, int dim, TvMetric metric, const float *x)
{
	int			best = 0;
	float		bestd = get_float4_infinity();

	for (int j = 0; j < lists; j++)
	{
		float		d = ListDistance(centroids + (Size) j * dim, dim, metric, x);

		if (d < bestd)
		{
			bestd = d;
			best = j;
		}
	}
	return best;
}

void
TvListDistances(const float *centroids, int lists, int dim, TvMetric metric,
				const float *q, float *dist)
{
	for (int j = 0; j < lists; j++)
		dist[j] = ListDistance(centroids + (Size) j * dim, dim, metric, q);
}

/* splitmix64: a private generator, so training never depends on random() */
static uint64
NextRandom(uint64 *state)
{
	uint64		z = (*state += UINT64CONST(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64CONST(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64CONST(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static void
Normalize(float *x, int dim)
{
	double		n = 0;

	for (int i = 0; i < dim; i++)
		n += (double) x[i] * x[i];
	if (n > 0)
	{
		float		inv = (float) (1.0 / sqrt(n));

		for (int i = 0; i < dim; i++)
			x[i] *= inv;
	}
}

/*
 * Lloyd's k-means over the sample, seeded by k-means++ with the private
 * generator; an empty cluster takes a fresh random sample.
 * Returns lists * dim floats in CurrentMemoryContext.  Cosine samples are
 * normalized in place.
 */
float *
TvKmeans(const TvKmeansInput *in, int lists, int iterations)
{
	int			dim = in->dim;
	int			n = in->nsamples;
	float	   *centroids = palloc_extended((Size) lists * dim * sizeof(float), MCXT_ALLOC_HUGE);
	double	   *sums = palloc_extended((Size) lists * dim * sizeof(double), MCXT_ALLOC_HUGE);
	int		   *counts = palloc(sizeof(int) * lists);
	int		   *assign = palloc(sizeof(int) * n);
	uint64		rng = in->seed ^ ((uint64) lists << 32) ^ (uint64) dim;

	Assert(lists >= 1 && lists <= n);

	if (in->metric == TV_METRIC_COSINE)
		for (int i = 0; i < n; i++)
			Normalize(in->samples + (Size) i * dim, dim);

	/*
	 * k-means++ seeding: each next centroid is a sample drawn with
	 * probability proportional to its squared distance from the nearest
	 * centroid so far, which keeps separated clusters from sharing a list.
	 */
	{
		double	   *d2 = palloc(sizeof(double) * n);
		int			first = (int) (NextRandom(&rng) % (uint64) n);

		memcpy(centroids, in->samples + (Size) first * dim, sizeof(float) * dim);
		for (int i = 0; i < n; i++)
			d2[i] = L2Sq(centroids, in->samples + (Size) i * dim, dim);
		for (int j = 1; j < lists; j++)
		{
			double		total = 0;
			double		r;
			int			pick = n - 1;
			float	   *c = centroids + (Size) j * dim;

			for (int i = 0; i < n; i++)
				total += d2[i];
			r = (double) (NextRandom(&rng) >> 11) / (double) (UINT64CONST(1) << 53) * total;
			for (int i = 0; i < n; i++)
			{
				r -= d2[i];
				if (r < 0)
				{
					pick = i;
					break;
				}
			}
			if (total <= 0)
				pick = (int) (NextRandom(&rng) % (uint64) n);
			memcpy(c, in->samples + (Size) pick * dim, sizeof(float) * dim);
			for (int i = 0; i < n; i++)
			{
				double		d = L2Sq(c, in->samples + (Size) i * dim, dim);

				if (d < d2[i])
					d2[i] = d;
			}
			CHECK_FOR_INTERRUPTS();
		}
		pfree(d2);
	}

	for (int it = 0; it < iterations; it++)
	{
		int			changed = 0;

		for (int i = 0; i < n; i++)
		{
			int			j = TvNearestList(centroids, lists, dim, in->metric,
										  in->samples + (Size) i * dim);

			if (it == 0 || j != assign[i])
				changed++;
			assign[i] = j;
			if ((i & 255) == 0)
				CHECK_FOR_INTERRUPTS();
		}
		/* settled: another round would move fewer than 1 sample in 200 */
		if (it > 0 && changed * 200 < n)
			break;

		memset(sums, 0, (Size) lists * dim * sizeof(double));
		memset(counts, 0, sizeof(int) * lists);
		for (int i = 0; i < n; i++)
		{
			const float *x = in->samples + (Size) i * dim;
			double	   *s = sums + (Size) assign[i] * dim;

			for (int d = 0; d < dim; d++)
				s[d] += x[d];
			counts[assign[i]]++;
		}
		for (int j = 0; j < lists; j++)
		{
			float	   *c = centroids + (Size) j * dim;

			if (counts[j] == 0)
			{
				/* an empty list restarts from a random sample */
				int			k = (int) (NextRandom(&rng) % (uint64) n);

				memcpy(c, in->samples + (Size) k * dim, sizeof(float) * dim);
				continue;
			}
			for (int d = 0; d < dim; d++)
				c[d] = (float) (sums[(Size) j * dim + d] / counts[j]);
			if (in->metric == TV_METRIC_COSINE)
				Normalize(c, dim);
		}
	}

	pfree(sums);
	pfree(counts);
	pfree(assign);
	return centroids;
}

/*
 * Read the list area of an IVF index: the directory (returned in *entries)
 * and the centroids, both in cxt.
 */
float *
TvReadCentroids(Relation index, const TvMetaPageData *meta, TvListEntry **entries,
				MemoryContext cxt)
{
	char	   *area = MemoryContextAllocHuge(cxt, meta->list_area);

	Assert(meta->lists > 0);
	TvReadStream(index, 0, meta->list_area, area, NULL);
	if (entries)
		*entries = (TvListEntry *) area;
	return (float *) (area + TvCentroidsOffset(meta->lists));
}
