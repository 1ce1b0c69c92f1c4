/*
 * tvivf.c
 *	  IVF lists: k-means training of the coarse centroids, assignment of a
 *	  vector to its nearest list, and the distances that order a query's
 *	  probes.
 *
 * Centroids route vectors to lists and, unless the index says
 * residual = off, are subtracted before coding (tvpage.c TvEncodeVector):
 * a residual is shorter than its vector, so the same bits estimate it more
 * closely.  The training is deterministic for a given seed and sample on a
 * given kernel; the AVX2 and scalar dot products may round differently, so
 * two machines of different kinds may pick different lists for a
 * borderline vector.  Nothing depends on that: a standby replays the
 * primary's pages, and every code is coded for the list it is in.
 *
 * A build assigns whole batches of vectors with TvNearestLists, which works
 * in dot products over 4 x 3 tiles; single inserts use TvNearestList.
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

/*
 * Dot products of 4 vectors (x, stride dim) with 3 centroids (c, stride
 * dim) into out[4 * 3]: twelve accumulators share every load, so the tile
 * runs on the FMA units instead of on loads, which is what makes the
 * assignment of a whole table to hundreds of lists cheap.
 */
__attribute__((target("avx2,fma")))
static void
DotTileAvx2(const float *x, const float *c, int dim, float *out)
{
	const float *x0 = x,
			   *x1 = x + dim,
			   *x2 = x + 2 * dim,
			   *x3 = x + 3 * dim;
	const float *c0 = c,
			   *c1 = c + dim,
			   *c2 = c + 2 * dim;
	__m256		a00 = _mm256_setzero_ps(),
				a01 = _mm256_setzero_ps(),
				a02 = _mm256_setzero_ps();
	__m256		a10 = _mm256_setzero_ps(),
				a11 = _mm256_setzero_ps(),
				a12 = _mm256_setzero_ps();
	__m256		a20 = _mm256_setzero_ps(),
				a21 = _mm256_setzero_ps(),
				a22 = _mm256_setzero_ps();
	__m256		a30 = _mm256_setzero_ps(),
				a31 = _mm256_setzero_ps(),
				a32 = _mm256_setzero_ps();
	int			i = 0;

	for (; i + 8 <= dim; i += 8)
	{
		__m256		v0 = _mm256_loadu_ps(c0 + i);
		__m256		v1 = _mm256_loadu_ps(c1 + i);
		__m256		v2 = _mm256_loadu_ps(c2 + i);
		__m256		xv;

		xv = _mm256_loadu_ps(x0 + i);
		a00 = _mm256_fmadd_ps(xv, v0, a00);
		a01 = _mm256_fmadd_ps(xv, v1, a01);
		a02 = _mm256_fmadd_ps(xv, v2, a02);
		xv = _mm256_loadu_ps(x1 + i);
		a10 = _mm256_fmadd_ps(xv, v0, a10);
		a11 = _mm256_fmadd_ps(xv, v1, a11);
		a12 = _mm256_fmadd_ps(xv, v2, a12);
		xv = _mm256_loadu_ps(x2 + i);
		a20 = _mm256_fmadd_ps(xv, v0, a20);
		a21 = _mm256_fmadd_ps(xv, v1, a21);
		a22 = _mm256_fmadd_ps(xv, v2, a22);
		xv = _mm256_loadu_ps(x3 + i);
		a30 = _mm256_fmadd_ps(xv, v0, a30);
		a31 = _mm256_fmadd_ps(xv, v1, a31);
		a32 = _mm256_fmadd_ps(xv, v2, a32);
	}
	out[0] = HorizontalSum(a00);
	out[1] = HorizontalSum(a01);
	out[2] = HorizontalSum(a02);
	out[3] = HorizontalSum(a10);
	out[4] = HorizontalSum(a11);
	out[5] = HorizontalSum(a12);
	out[6] = HorizontalSum(a20);
	out[7] = HorizontalSum(a21);
	out[8] = HorizontalSum(a22);
	out[9] = HorizontalSum(a30);
	out[10] = HorizontalSum(a31);
	out[11] = HorizontalSum(a32);
	for (; i < dim; i++)
		for (int a = 0; a < 4; a++)
			for (int b = 0; b < 3; b++)
				out[a * 3 + b] += x[a * dim + i] * c[b * dim + i];
}
#endif

typedef void (*TvTileFn) (const float *x, const float *c, int dim, float *out);

static void
DotTileScalar(const float *x, const float *c, int dim, float *out)
{
	for (int a = 0; a < 4; a++)
		for (int b = 0; b < 3; b++)
			out[a * 3 + b] = DotScalar(x + (Size) a * dim, c + (Size) b * dim, dim);
}

static TvVecFn Dot = DotScalar;
static TvVecFn L2Sq = L2SqScalar;
static TvTileFn DotTile = DotTileScalar;

/* Pick the dot-product kernels once, from _PG_init */
void
TvIvfInit(void)
{
#ifdef TV_IVF_X86
	if (tv_kernels_have_avx2())
	{
		Dot = DotAvx2;
		L2Sq = L2SqAvx2;
		DotTile = DotTileAvx2;
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

/* ||c||^2 of each centroid, for TvNearestLists under L2 */
float *
TvCentroidNorms(const float *centroids, int lists, int dim)
{
	float	   *norms = palloc(sizeof(float) * lists);

	for (int j = 0; j < lists; j++)
		norms[j] = Dot(centroids + (Size) j * dim, centroids + (Size) j * dim, dim);
	return norms;
}

/* Vectors assigned together: 32 rows of 784 floats stay in L2 cache */
#define TV_ASSIGN_ROWS	32

/*
 * The nearest list of each of n vectors (xs, n * dim floats) into out[n].
 * Ranks by ||c||^2 - 2<x,c> under L2 (cnorms from TvCentroidNorms; the
 * ||x||^2 term is the same for every list) and by -<x,c> otherwise, so all
 * the work is dot products, done four vectors by three centroids at a time.
 * A tie goes to the lower list.  Rounding differs from TvNearestList, so a
 * vector on the border of two lists may go to either; nothing depends on
 * which.
 */
void
TvNearestLists(const float *centroids, const float *cnorms, int lists, int dim,
			   TvMetric metric, const float *xs, int n, int *out)
{
	float		bestd[TV_ASSIGN_ROWS];
	float		dots[12];

	Assert(metric != TV_METRIC_L2 || cnorms != NULL);

	for (int r0 = 0; r0 < n; r0 += TV_ASSIGN_ROWS)
	{
		int			rows = Min(TV_ASSIGN_ROWS, n - r0);
		const float *x = xs + (Size) r0 * dim;
		int		   *best = out + r0;
		int			j = 0;

		for (int a = 0; a < rows; a++)
		{
			bestd[a] = get_float4_infinity();
			best[a] = 0;
		}

#define TV_CONSIDER(a, list, dot) \
		do { \
			float		d_ = (metric == TV_METRIC_L2) ? \
				cnorms[list] - 2 * (dot) : -(dot); \
			if (d_ < bestd[a]) \
			{ \
				bestd[a] = d_; \
				best[a] = (list); \
			} \
		} while (0)

		/* three centroids at a time, ascending, so ties keep the lower list */
		for (; j + 3 <= lists; j += 3)
		{
			const float *c = centroids + (Size) j * dim;
			int			a = 0;

			for (; a + 4 <= rows; a += 4)
			{
				DotTile(x + (Size) a * dim, c, dim, dots);
				for (int i = 0; i < 4; i++)
					for (int b = 0; b < 3; b++)
						TV_CONSIDER(a + i, j + b, dots[i * 3 + b]);
			}
			for (; a < rows; a++)
				for (int b = 0; b < 3; b++)
					TV_CONSIDER(a, j + b, Dot(x + (Size) a * dim, c + (Size) b * dim, dim));
		}
		for (; j < lists; j++)
			for (int a = 0; a < rows; a++)
				TV_CONSIDER(a, j, Dot(x + (Size) a * dim, centroids + (Size) j * dim, dim));
#undef TV_CONSIDER
	}
}

/* <q, c> for one list's centroid: what a residual code's estimate adds */
float
TvCentroidDot(const float *centroids, int dim, int list, const float *q)
{
	return Dot(centroids + (Size) list * dim, q, dim);
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
		float	   *cnorms = TvCentroidNorms(centroids, lists, dim);
		int			nearest[256];

		for (int i0 = 0; i0 < n; i0 += lengthof(nearest))
		{
			int			rows = Min((int) lengthof(nearest), n - i0);

			TvNearestLists(centroids, cnorms, lists, dim, in->metric,
						   in->samples + (Size) i0 * dim, rows, nearest);
			for (int i = 0; i < rows; i++)
			{
				if (it == 0 || nearest[i] != assign[i0 + i])
					changed++;
				assign[i0 + i] = nearest[i];
			}
			CHECK_FOR_INTERRUPTS();
		}
		pfree(cnorms);
		elog(DEBUG2, "turbo k-means round %d: %d of %d samples changed lists", it + 1, changed, n);
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
