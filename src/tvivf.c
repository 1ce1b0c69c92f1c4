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
 * Builds and k-means assign vectors with a TvListAssigner: an exact
 * search over 4 x 3 tiles of dot products on its aligned copies
 * (ExactChunk; where the CPU has AVX512-VNNI, after an 8-bit first pass
 * that drops the lists that cannot be the nearest: see "A first pass in 8
 * bits"), or with thousands of lists a search of the nearest groups of
 * lists (see "Grouped assignment").  Inserts use TvNearestLists (a batch
 * of one, its products rounded by tv_dot), so an insert may pick another
 * list than a build would have for a borderline vector, and with that many
 * lists a nearer one; nothing depends on which.
 *
 * Metrics: L2 assigns by squared distance; inner product by the largest
 * inner product; cosine trains on unit vectors (spherical k-means) and
 * assigns by the largest inner product with unit centroids.
 */
#include "postgres.h"

#include <math.h>

#include "commands/progress.h"
#include "miscadmin.h"
#include "optimizer/paths.h"
#include "pgstat.h"
#include "utils/float.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "turbovec.h"


/* Smaller is closer, for every metric */
static inline float
ListDistance(const float *c, int dim, TvMetric metric, const float *x)
{
	if (metric == TV_METRIC_L2)
		return tv_l2sq(c, x, dim);
	return -tv_dot(c, x, dim);
}

/* ||c||^2 of each centroid, for TvNearestLists under L2 */
float *
TvCentroidNorms(const float *centroids, int lists, int dim)
{
	float	   *norms = palloc(sizeof(float) * lists);

	for (int j = 0; j < lists; j++)
		norms[j] = tv_dot(centroids + (Size) j * dim, centroids + (Size) j * dim, dim);
	return norms;
}

/* Vectors assigned together: 32 rows of 784 floats stay in L2 cache */
#define TV_ASSIGN_ROWS	32

/*
 * The nearest list of each of n vectors (xs, n * dim floats) into out[n].
 * Ranks by ||c||^2 - 2<x,c> under L2 (cnorms from TvCentroidNorms; the
 * ||x||^2 term is the same for every list) and by -<x,c> otherwise, so all
 * the work is dot products, done four vectors by three centroids at a time.
 * A tie goes to the lower list.  Rounding differs from ranking by
 * ||x - c||^2, so a vector on the border of two lists may go to either;
 * nothing depends on which.
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
				tv_dot_tile(x + (Size) a * dim, c, dim, dots);
				for (int i = 0; i < 4; i++)
					for (int b = 0; b < 3; b++)
						TV_CONSIDER(a + i, j + b, dots[i * 3 + b]);
			}
			for (; a < rows; a++)
				for (int b = 0; b < 3; b++)
					TV_CONSIDER(a, j + b, tv_dot(x + (Size) a * dim, c + (Size) b * dim, dim));
		}
		for (; j < lists; j++)
			for (int a = 0; a < rows; a++)
				TV_CONSIDER(a, j, tv_dot(x + (Size) a * dim, centroids + (Size) j * dim, dim));
#undef TV_CONSIDER
	}
}

/*
 * Grouped assignment.  With thousands of lists the nearest-list search
 * is most of a build: 1M rows x 4,000 lists x 768 dimensions is 3.1 T
 * multiply-adds, and each k-means round over 128k samples another 0.4 T.
 * From TV_GROUP_MIN_LISTS lists on, the centroids are themselves clustered
 * into about sqrt(lists) groups; a vector is compared with the group
 * centres, then with the members of its TV_GROUP_PROBES nearest groups
 * only (a quarter of the lists at 4,000), and goes to the nearest of
 * those.  A vector whose nearest centroid lies in another group goes to a
 * near list instead (0.6% of them at 1M x 768 with 4,000 lists; 8 groups
 * instead of 16 missed more and cost 0.005-0.008 of recall@10): it is coded
 * for the list it is in and scans rank lists on their own, so the cost is
 * only a little recall through looser lists (measured in
 * docs/PERFORMANCE.md).  Inner product keeps the exact
 * search: a group centre says little about which of its members has the
 * largest product with a vector.
 *
 * The first half of k-means' Lloyd rounds search TV_GROUP_COARSE_PROBES
 * groups only (TvListAssignerSetCoarse): while the centroids still move a
 * lot, an exact nearest list buys little, and the rounds take 0.33 instead
 * of 0.85 s at 1M x 768 with 4,000 lists.  The later rounds, and the
 * encoding pass, search TV_GROUP_PROBES.
 *
 * Every product goes through one tile kernel (tv_dot_tile_aligned on the
 * assigner's aligned buffers when the dimension is a multiple of 16,
 * tv_dot_tile otherwise: chosen by the dimension alone), whose value for a
 * pair does not depend on the other rows or centroids of its tile, so a
 * vector's list does not depend on the batch it came in: serial and
 * parallel builds lay out the same pages.
 */
static void Normalize(float *x, int dim);
static void PruneSetup(TvListAssigner *la);

#define TV_GROUP_MIN_LISTS	1024
#define TV_GROUP_PROBES		16
#define TV_GROUP_COARSE_PROBES	4
#define TV_GROUP_ROUNDS		6
#define TV_GROUP_CHUNK		256
#define TV_EXACT_ROWS		16	/* rows ExactChunk takes, a multiple of 4 */
#define TV_PRUNE_MIN_LISTS	32	/* fewer: no 8-bit first pass */
#define TV_PRUNE_MAX_NORM	1e15	/* larger rows or centroids: none either */
#define TV_PRUNE_MIN_NORM	1e-30	/* nor for smaller ones, but zero */

struct TvListAssigner
{
	MemoryContext cxt;			/* holds this and everything below */
	const float *centroids;		/* the caller's; exact search */
	const float *cnorms;
	int			lists;
	int			dim;
	TvMetric	metric;
	int			ngroups;		/* 0: exact search */
	float	   *acent;			/* exact search on aligned rows: the centroids, */
	int			apad;			/* padded to a multiple of 3 */
	int			gpad;			/* ngroups rounded up to a multiple of 3 */
	float	   *gcent;			/* gpad group centres */
	float	   *gnorm;			/* their ||g||^2 */
	int		   *gstart;			/* ngroups + 1 offsets into members */
	int		   *gcount;			/* real members of each group (no padding) */
	int		   *members;		/* list numbers, group by group, each padded to 3s */
	float	   *mcent;			/* their centroids, in that order */
	float	   *mnorm;
	TvTileFn	tile;			/* tv_dot_tile_aligned when dim allows */
	/* scratch for one chunk of rows */
	float	   *rows;			/* the chunk, padded to a multiple of 4 rows */
	float	   *grows;			/* the chunk's rows that probe one group */
	float	   *dots;			/* products of a tile sweep */
	int			probes;			/* groups searched per row, at most TV_GROUP_PROBES */
	int		   *picks;			/* probes groups per row, -1 if fewer */
	int		   *byg;			/* rows sorted by probed group */
	int		   *fill;			/* ngroups + 1 */
	float		bestd[TV_GROUP_CHUNK];

	/* the exact search's 8-bit first pass (see "A first pass in 8 bits") */
	bool		prune;
	int			groups;			/* groups of 4 codes a row: dim / 4 rounded up */
	int			cpad16;			/* lists rounded up to a multiple of 16 */
	int8	   *cblocks;		/* their codes in blocks of 16 (tv_rank_lists) */
	TvListBounds bounds;		/* and the terms of their intervals */
	uint8	   *rcodes;			/* TV_EXACT_ROWS rows' codes, biased by 128 */
	int32	   *qdots;			/* TV_EXACT_ROWS x cpad16 products of codes */
	uint16	   *masks;			/* 4 rows' candidate lists, cpad16 / 16 each */
};

/*
 * n floats starting on a TV_TILE_ALIGN boundary, in CurrentMemoryContext;
 * freed with the context only
 */
static float *
AllocAlignedFloats(Size n)
{
	char	   *p = palloc_extended(sizeof(float) * n + TV_TILE_ALIGN, MCXT_ALLOC_HUGE);

	return (float *) TYPEALIGN(TV_TILE_ALIGN, p);
}

/*
 * The tile kernel for rows in buffers from AllocAlignedFloats: every row
 * starts on a boundary when dim is a multiple of 16.  Chosen by dim alone,
 * so a pair's product is the same in every process and call.
 */
static TvTileFn
AlignedTile(int dim)
{
	return (dim % (TV_TILE_ALIGN / sizeof(float)) == 0) ? tv_dot_tile_aligned : tv_dot_tile;
}

/*
 * out[r * nc + k] = <x_r, c_k> for nr rows (a multiple of 4) and nc
 * centroids (a multiple of 3), all through tile
 */
static void
TileDots(TvTileFn tile, const float *x, int nr, const float *c, int nc, int dim,
		 float *out)
{
	float		t[12];

	Assert(nr % 4 == 0 && nc % 3 == 0);
	for (int a = 0; a < nr; a += 4)
		for (int b = 0; b < nc; b += 3)
		{
			tile(x + (Size) a * dim, c + (Size) b * dim, dim, t);
			for (int i = 0; i < 4; i++)
				for (int k = 0; k < 3; k++)
					out[(Size) (a + i) * nc + b + k] = t[i * 3 + k];
		}
}

/*
 * Copy n rows into dst (unless they are there) and repeat the last up to a
 * multiple of 4; returns that
 */
static int
PadRows(float *dst, const float *src, int n, int dim)
{
	int			padded = (n + 3) & ~3;

	if (dst != src)
		memcpy(dst, src, sizeof(float) * dim * n);
	for (int i = n; i < padded; i++)
		memcpy(dst + (Size) i * dim, src + (Size) (n - 1) * dim, sizeof(float) * dim);
	return padded;
}

/*
 * An assigner for these centroids (kept by reference, as are cnorms, until
 * TvListAssignerFree), in a context of its own under CurrentMemoryContext.
 * Grouping costs about
 * TV_GROUP_ROUNDS * sqrt(lists) * lists * dim multiply-adds (0.1 s at
 * 4,000 x 768), and is the same in every process for the same centroids.
 */
TvListAssigner *
TvListAssignerCreate(const float *centroids, const float *cnorms, int lists, int dim,
					 TvMetric metric)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "turbo list assigner",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldCxt = MemoryContextSwitchTo(cxt);
	TvListAssigner *la = palloc0(sizeof(TvListAssigner));
	int			ng;
	int		   *groupof;
	double	   *sums;
	int			maxpad = 0;
	int			at;

	la->cxt = cxt;
	la->centroids = centroids;
	la->cnorms = cnorms;
	la->lists = lists;
	la->dim = dim;
	la->metric = metric;
	if (lists < TV_GROUP_MIN_LISTS || metric == TV_METRIC_IP)
	{
		/* aligned copies for the tile kernel (ExactChunk) */
		la->apad = (lists + 2) / 3 * 3;
		la->acent = AllocAlignedFloats((Size) dim * la->apad);
		memcpy(la->acent, centroids, sizeof(float) * dim * lists);
		for (int j = lists; j < la->apad; j++)
			memcpy(la->acent + (Size) j * dim, centroids + (Size) (lists - 1) * dim,
				   sizeof(float) * dim);
		la->rows = AllocAlignedFloats((Size) dim * TV_EXACT_ROWS);
		la->tile = AlignedTile(dim);
		if (lists >= TV_PRUNE_MIN_LISTS && tv_kernels_have_avx512vnni() &&
			!tv_test_full_list_search)
			PruneSetup(la);
		MemoryContextSwitchTo(oldCxt);
		return la;
	}

	ng = (int) ceil(sqrt((double) lists));
	la->ngroups = ng;
	la->gpad = (ng + 2) / 3 * 3;
	la->gcent = AllocAlignedFloats((Size) dim * la->gpad);
	groupof = palloc(sizeof(int) * lists);
	sums = palloc_extended(sizeof(double) * dim * ng, MCXT_ALLOC_HUGE);

	/* k-means over the centroids, seeded with evenly spaced ones */
	for (int g = 0; g < ng; g++)
		memcpy(la->gcent + (Size) g * dim,
			   centroids + (Size) ((int64) g * lists / ng) * dim, sizeof(float) * dim);
	for (int round = 0;; round++)
	{
		float	   *gn = TvCentroidNorms(la->gcent, ng, dim);
		int		   *n = palloc0(sizeof(int) * ng);

		TvNearestLists(la->gcent, gn, ng, dim, metric, centroids, lists, groupof);
		pfree(gn);
		if (round == TV_GROUP_ROUNDS)
		{
			pfree(n);
			break;
		}
		memset(sums, 0, sizeof(double) * dim * ng);
		for (int j = 0; j < lists; j++)
		{
			double	   *s = sums + (Size) groupof[j] * dim;
			const float *c = centroids + (Size) j * dim;

			for (int d = 0; d < dim; d++)
				s[d] += c[d];
			n[groupof[j]]++;
		}
		for (int g = 0; g < ng; g++)
		{
			float	   *gc = la->gcent + (Size) g * dim;

			/* an empty group keeps its centre */
			if (n[g] == 0)
				continue;
			for (int d = 0; d < dim; d++)
				gc[d] = (float) (sums[(Size) g * dim + d] / n[g]);
			if (metric == TV_METRIC_COSINE)
				Normalize(gc, dim);
		}
		pfree(n);
		CHECK_FOR_INTERRUPTS();
	}
	pfree(sums);
	for (int g = ng; g < la->gpad; g++)
		memcpy(la->gcent + (Size) g * dim, la->gcent + (Size) (ng - 1) * dim,
			   sizeof(float) * dim);
	la->gnorm = TvCentroidNorms(la->gcent, la->gpad, dim);

	/* members group by group, each group padded to a multiple of 3 */
	la->gcount = palloc0(sizeof(int) * ng);
	la->gstart = palloc(sizeof(int) * (ng + 1));
	for (int j = 0; j < lists; j++)
		la->gcount[groupof[j]]++;
	at = 0;
	for (int g = 0; g < ng; g++)
	{
		int			padded = (la->gcount[g] + 2) / 3 * 3;

		la->gstart[g] = at;
		at += padded;
		maxpad = Max(maxpad, padded);
	}
	la->gstart[ng] = at;
	la->members = palloc(sizeof(int) * at);
	la->mcent = AllocAlignedFloats((Size) dim * at);
	la->mnorm = palloc(sizeof(float) * at);
	{
		int		   *next = palloc(sizeof(int) * ng);

		for (int g = 0; g < ng; g++)
			next[g] = la->gstart[g];
		for (int j = 0; j < lists; j++)
			la->members[next[groupof[j]]++] = j;
		for (int g = 0; g < ng; g++)
			for (int k = la->gstart[g] + la->gcount[g]; k < la->gstart[g + 1]; k++)
				la->members[k] = la->members[la->gstart[g] + la->gcount[g] - 1];
		pfree(next);
	}
	for (int k = 0; k < at; k++)
	{
		memcpy(la->mcent + (Size) k * dim, centroids + (Size) la->members[k] * dim,
			   sizeof(float) * dim);
		la->mnorm[k] = cnorms ? cnorms[la->members[k]] : 0;
	}
	pfree(groupof);

	la->rows = AllocAlignedFloats((Size) dim * (TV_GROUP_CHUNK + 3));
	la->grows = AllocAlignedFloats((Size) dim * (TV_GROUP_CHUNK + 3));
	la->tile = AlignedTile(dim);
	la->dots = palloc_extended(sizeof(float) * (TV_GROUP_CHUNK + 3) * Max(maxpad, la->gpad),
							   MCXT_ALLOC_HUGE);
	la->probes = TV_GROUP_PROBES;
	la->picks = palloc(sizeof(int) * TV_GROUP_CHUNK * TV_GROUP_PROBES);
	la->byg = palloc(sizeof(int) * TV_GROUP_CHUNK * TV_GROUP_PROBES);
	la->fill = palloc(sizeof(int) * (ng + 1));
	MemoryContextSwitchTo(oldCxt);
	return la;
}

/*
 * About the memory of an assigner: the copy of the centroids in group
 * order with their padding, the group centres and two chunks of rows (the
 * products of a sweep are small next to those); for exact search, the
 * aligned copy of the centroids and one chunk of rows (ExactChunk), and
 * the 8-bit first pass's codes and bounds where the CPU may run it
 */
double
TvListAssignerBytes(int lists, int dim, TvMetric metric)
{
	double		ng;

	if (lists < TV_GROUP_MIN_LISTS || metric == TV_METRIC_IP)
		return sizeof(float) * (double) dim * (lists + 2 + TV_EXACT_ROWS) +
			(lists >= TV_PRUNE_MIN_LISTS ?
			 (double) (lists + 16) * (dim + 4 + 7 * sizeof(float) + TV_EXACT_ROWS * sizeof(int32)) : 0);
	ng = ceil(sqrt((double) lists));
	return sizeof(float) * (double) dim * (lists + 3 * ng + 2 * (TV_GROUP_CHUNK + 3));
}

void
TvListAssignerFree(TvListAssigner *la)
{
	MemoryContextDelete(la->cxt);
}

/* Smaller is closer: the ranking of TvNearestLists */
#define RankOf(metric, norm, dot) \
	((metric) == TV_METRIC_L2 ? (norm) - 2 * (dot) : -(dot))

/* Assign m <= TV_GROUP_CHUNK rows through the groups */
static void
AssignChunk(TvListAssigner *la, const float *xs, int m, int *out)
{
	int			dim = la->dim;
	int			ng = la->ngroups;
	int			probes = la->probes;
	int			mpad = PadRows(la->rows, xs, m, dim);

	/* the probes nearest non-empty groups of each row */
	TileDots(la->tile, la->rows, mpad, la->gcent, la->gpad, dim, la->dots);
	for (int r = 0; r < m; r++)
	{
		float		pd[TV_GROUP_PROBES];
		int		   *pg = la->picks + r * probes;
		int			np = 0;

		for (int g = 0; g < ng; g++)
		{
			float		d;
			int			at;

			if (la->gcount[g] == 0)
				continue;
			d = RankOf(la->metric, la->gnorm[g], la->dots[(Size) r * la->gpad + g]);
			/* ascending by distance, then group: d < pd keeps ties in order */
			if (np == probes && !(d < pd[np - 1]))
				continue;
			at = (np < probes) ? np++ : np - 1;
			while (at > 0 && d < pd[at - 1])
			{
				pd[at] = pd[at - 1];
				pg[at] = pg[at - 1];
				at--;
			}
			pd[at] = d;
			pg[at] = g;
		}
		for (int k = np; k < probes; k++)
			pg[k] = -1;
		la->bestd[r] = get_float4_infinity();
		out[r] = 0;
	}

	/* rows by group: a counting sort */
	memset(la->fill, 0, sizeof(int) * (ng + 1));
	for (int i = 0; i < m * probes; i++)
		if (la->picks[i] >= 0)
			la->fill[la->picks[i] + 1]++;
	for (int g = 0; g < ng; g++)
		la->fill[g + 1] += la->fill[g];
	for (int r = 0; r < m; r++)
		for (int k = 0; k < probes; k++)
		{
			int			g = la->picks[r * probes + k];

			if (g >= 0)
				la->byg[la->fill[g]++] = r;
		}
	/* fill[g] now ends group g, which starts where g - 1 ends */

	for (int g = 0; g < ng; g++)
	{
		int			from = (g == 0) ? 0 : la->fill[g - 1];
		int			cnt = la->fill[g] - from;
		int			cpad;
		int			nmem = la->gstart[g + 1] - la->gstart[g];

		if (cnt == 0)
			continue;
		for (int i = 0; i < cnt; i++)
			memcpy(la->grows + (Size) i * dim, la->rows + (Size) la->byg[from + i] * dim,
				   sizeof(float) * dim);
		cpad = PadRows(la->grows, la->grows, cnt, dim);
		TileDots(la->tile, la->grows, cpad, la->mcent + (Size) la->gstart[g] * dim, nmem,
				 dim, la->dots);
		for (int i = 0; i < cnt; i++)
		{
			int			r = la->byg[from + i];

			for (int k = 0; k < la->gcount[g]; k++)
			{
				int			mk = la->gstart[g] + k;
				int			list = la->members[mk];
				float		d = RankOf(la->metric, la->mnorm[mk], la->dots[(Size) i * nmem + k]);

				/* ties go to the lower list, whichever group came first */
				if (d < la->bestd[r] || (d == la->bestd[r] && list < out[r]))
				{
					la->bestd[r] = d;
					out[r] = list;
				}
			}
		}
	}

	/* a row no group improved on (infinite distances): the exact search */
	for (int r = 0; r < m; r++)
		if (!(la->bestd[r] < get_float4_infinity()))
			TvNearestLists(la->centroids, la->cnorms, la->lists, dim, la->metric,
						   xs + (Size) r * dim, 1, out + r);
}

/*
 * A first pass in 8 bits.  The exact search (ExactChunk) computes every
 * row's product with every centroid in floats, a quarter of a Fashion-MNIST
 * build at 192 lists.  Where the CPU has AVX512-VNNI it first scores rows
 * and centroids as 8-bit codes (c ~ sc * qc, x ~ sx * qx, each scale the
 * largest coordinate over 127), four times the products an instruction,
 * and computes in floats only the lists that could be the nearest: for
 * each list an interval that must hold its exact rank value, and the
 * lists whose interval starts above the lowest end of another's are
 * dropped.  The rest are scored by the same tile kernel, in the same tile
 * positions and order as the full search, so the chosen list is the same,
 * bit for bit and tie for tie.
 *
 * The interval: x.c - x^.c^ = x.(c - c^) + (x - x^).c^, so by
 * Cauchy-Schwarz it is within ||x|| ||c - c^|| + ||x - x^|| ||c^||, where
 * ||c - c^|| and ||c^|| are computed per centroid and ||x - x^|| <=
 * sx (1/2 + 1e-4) sqrt(dim) (each coordinate rounds to the nearest code).
 * To that come the float kernel's own rounding, at most
 * (dim + 64) 2^-23 ||x|| ||c|| (a generous bound for any summation order),
 * and 2^-16 of the magnitudes for every float operation of the interval
 * itself.  A Fashion-MNIST row keeps about 3 of 192 lists.  Rows or
 * centroids so large that products could overflow (above 1e15), or so
 * small that a scale would underflow (below 1e-30), keep the full search.
 */
static void
PruneSetup(TvListAssigner *la)
{
	int			dim = la->dim;
	int			groups = (dim + 3) / 4;
	int			cpad16 = (la->lists + 15) & ~15;
	int8	   *cblocks = palloc0((Size) cpad16 * groups * 4);
	int8	   *q = palloc0(groups * 4);
	float	   *norm = palloc0(sizeof(float) * cpad16);
	int32	   *csum = palloc0(sizeof(int32) * cpad16);
	float	   *cscale = palloc0(sizeof(float) * cpad16);
	float	   *cerr = palloc0(sizeof(float) * cpad16);
	float	   *cfull = palloc0(sizeof(float) * cpad16);
	float	   *cslack = palloc0(sizeof(float) * cpad16);

	for (int j = 0; j < la->lists; j++)
	{
		int8	   *block = cblocks + (Size) (j / 16) * groups * 64 + (j % 16) * 4;
		TvListTerms t;

		/* outside the bounds' range: the full search */
		if (!tv_list_centroid_codes(la->centroids + (Size) j * dim, dim,
									la->cnorms ? la->cnorms[j] : 0,
									la->metric == TV_METRIC_L2,
									TV_PRUNE_MIN_NORM, TV_PRUNE_MAX_NORM, q, &t))
			return;
		for (int g = 0; g < groups; g++)
			memcpy(block + g * 64, q + g * 4, 4);
		norm[j] = t.norm;
		csum[j] = t.sum;
		cscale[j] = t.scale;
		cerr[j] = t.err;
		cfull[j] = t.full;
		cslack[j] = t.slack;
	}
	la->groups = groups;
	la->cpad16 = cpad16;
	la->cblocks = cblocks;
	la->bounds.lists = la->lists;
	la->bounds.norm = norm;
	la->bounds.scale = cscale;
	la->bounds.sum = csum;
	la->bounds.err = cerr;
	la->bounds.full = cfull;
	la->bounds.slack = cslack;
	la->rcodes = palloc0((Size) groups * 4 * TV_EXACT_ROWS);
	la->qdots = palloc(sizeof(int32) * TV_EXACT_ROWS * cpad16);
	/* a row's masks, and one of zeros that CandidateBits may read */
	la->masks = palloc0(sizeof(uint16) * 4 * (cpad16 / 16 + 1));
	la->prune = true;
}

/* Bits 0-2: whether lists j, j + 1, j + 2 are among a row's candidates */
static inline uint32
CandidateBits(const uint16 *masks, int j)
{
	uint32		w = masks[j / 16];

	/* the three may run into the next mask (there is always one more, 0) */
	if (j % 16 > 13)
		w |= (uint32) masks[j / 16 + 1] << 16;
	return (w >> (j % 16)) & 7;
}

/*
 * ExactChunk through the 8-bit first pass; false (nothing decided) when a
 * row is too large for its bounds or no candidate had a finite rank
 */
static bool
PrunedChunk(TvListAssigner *la, int m, int *out)
{
	int			dim = la->dim;
	int			ld = la->groups * 4;
	int			cpad16 = la->cpad16;
	int			nmasks = cpad16 / 16;
	int			stride = nmasks + 1;
	float		t[12];
	float		scale[TV_EXACT_ROWS];
	float		norm[TV_EXACT_ROWS];
	float		exb_per_scale = (float) ((0.5 + 1e-4) * sqrt((double) dim) * (1 + 1e-6));

	/* the rows' codes, and their codes' products with every centroid's */
	for (int i = 0; i < m; i++)
		if (!tv_list_row_codes_avx512(la->rows + (Size) i * dim, dim, TV_PRUNE_MIN_NORM,
									  TV_PRUNE_MAX_NORM, la->rcodes + (Size) i * ld,
									  &scale[i], &norm[i]))
			return false;
	for (int a = 0; a < m; a += 4)
		tv_rank_lists_avx512vnni(la->rcodes + (Size) a * ld, Min(4, m - a), ld, la->cblocks,
								 nmasks, la->groups, la->qdots + (Size) a * cpad16);

	for (int a = 0; a < m; a += 4)
	{
		int			rows = Min(4, m - a);

		/* each row's candidates: lists whose interval starts below every end */
		for (int i = 0; i < rows; i++)
			if (tv_list_candidates_avx512(&la->bounds, la->qdots + (Size) (a + i) * cpad16,
										  scale[a + i], norm[a + i],
										  scale[a + i] * exb_per_scale,
										  la->masks + i * stride) < 0)
				return false;
		for (int i = 0; i < rows; i++)
		{
			la->bestd[a + i] = get_float4_infinity();
			out[a + i] = 0;
		}
		/* the candidates' exact ranks, in the full search's tiles and order */
		for (int j = 0; j < la->apad; j += 3)
		{
			uint32		need = 0;

			for (int i = 0; i < rows; i++)
				need |= CandidateBits(la->masks + i * stride, j);
			if (need == 0)
				continue;
			la->tile(la->rows + (Size) a * dim, la->acent + (Size) j * dim, dim, t);
			for (int i = 0; i < rows; i++)
			{
				uint32		bits = CandidateBits(la->masks + i * stride, j);

				for (int b = 0; b < 3; b++)
				{
					float		d;

					if (!(bits & (1u << b)))
						continue;
					d = RankOf(la->metric, la->cnorms ? la->cnorms[j + b] : 0, t[i * 3 + b]);
					if (d < la->bestd[a + i])
					{
						la->bestd[a + i] = d;
						out[a + i] = j + b;
					}
				}
			}
		}
		for (int i = 0; i < rows; i++)
			if (!(la->bestd[a + i] < get_float4_infinity()))
				return false;
	}
	return true;
}

/*
 * The exact search for m <= TV_EXACT_ROWS rows: TvNearestLists' ranking and
 * tie rule, on the assigner's aligned copies, every product from its one
 * tile kernel (rows padded to a multiple of 4, centroids to one of 3, the
 * padding never chosen), so that the kernel is AVX-512 where AlignedTile
 * allows: a Fashion-MNIST build with 192 lists spent a quarter of its time
 * in the AVX2 tile.
 */
static void
ExactChunk(TvListAssigner *la, const float *xs, int m, int *out)
{
	int			dim = la->dim;
	int			nr = PadRows(la->rows, xs, m, dim);
	float		t[12];

	if (la->prune && PrunedChunk(la, m, out))
		return;
	for (int a = 0; a < m; a++)
	{
		la->bestd[a] = get_float4_infinity();
		out[a] = 0;
	}
	/* ascending centroids, so ties keep the lower list */
	for (int j = 0; j < la->apad; j += 3)
		for (int a = 0; a < nr; a += 4)
		{
			la->tile(la->rows + (Size) a * dim, la->acent + (Size) j * dim, dim, t);
			for (int i = 0; i < 4 && a + i < m; i++)
				for (int b = 0; b < 3 && j + b < la->lists; b++)
				{
					float		d = RankOf(la->metric, la->cnorms ? la->cnorms[j + b] : 0,
										   t[i * 3 + b]);

					if (d < la->bestd[a + i])
					{
						la->bestd[a + i] = d;
						out[a + i] = j + b;
					}
				}
		}
}

/*
 * Search only the coarse number of nearest groups per vector from now on
 * (k-means' early rounds), or all of them (TV_GROUP_PROBES) again
 */
void
TvListAssignerSetCoarse(TvListAssigner *la, bool coarse)
{
	la->probes = coarse ? TV_GROUP_COARSE_PROBES : TV_GROUP_PROBES;
}

/*
 * The nearest list of each of n vectors (xs, n * dim floats) into out[n]:
 * the exact search (ExactChunk) below TV_GROUP_MIN_LISTS lists and under
 * inner product, the grouped search otherwise.
 */
void
TvAssignLists(TvListAssigner *la, const float *xs, int n, int *out)
{
	if (la->ngroups == 0)
	{
		for (int r0 = 0; r0 < n; r0 += TV_EXACT_ROWS)
			ExactChunk(la, xs + (Size) r0 * la->dim, Min(TV_EXACT_ROWS, n - r0), out + r0);
		return;
	}
	for (int r0 = 0; r0 < n; r0 += TV_GROUP_CHUNK)
		AssignChunk(la, xs + (Size) r0 * la->dim, Min(TV_GROUP_CHUNK, n - r0), out + r0);
}

/*
 * Centroids as 8-bit integers for ranking lists: c ~ scale[j] * k[j][i],
 * scale[j] = max |c_ji| / 127, stored biased as k + 128 (1..255) for the
 * u8 x s8 kernels (tv_rank_dot).  A query at 1M x 768 with 2,000 lists read
 * 6 MB of float centroids to rank them (a sixth of its time, bound by
 * memory); the bytes are a quarter of that.  Scans rank with these and
 * recompute the nearest lists exactly (TvListDistance), so the error only
 * matters far from the lists probed.
 */
void
TvQuantizeCentroids(const float *centroids, int lists, int dim, uint8 *codes, float *scales)
{
	for (int j = 0; j < lists; j++)
	{
		const float *c = centroids + (Size) j * dim;
		uint8	   *k = codes + (Size) j * dim;
		float		amax = 0;

		for (int i = 0; i < dim; i++)
			amax = Max(amax, fabsf(c[i]));
		scales[j] = amax / 127;
		for (int i = 0; i < dim; i++)
			k[i] = (uint8) (128 + (amax > 0 ? lrintf(c[i] * 127 / amax) : 0));
	}
}

/*
 * Approximate list distances from TvQuantizeCentroids' codes, on the scale
 * of ListDistance (under L2 ||c||^2 - 2<c, q> + ||q||^2, cnorms from
 * TvCentroidNorms), so that exact and approximate values can be compared.
 * The query is quantized to int8 as the centroids are: <k, q8> is the
 * kernel's sum of (k + 128) q8 less 128 times the sum of q8, exact in
 * integers whichever kernel the CPU runs.  (An int16 query gained nothing
 * measurable: the centroids' own rounding dominates, and the nearest lists
 * are recomputed exactly.)
 */
void
TvApproxListDistances(const uint8 *codes, const float *scales, const float *cnorms,
					  int lists, int dim, TvMetric metric, const float *q, float *dist)
{
	int8	   *q8 = palloc(sizeof(int8) * dim);
	float		qmax = 0;
	float		qscale;
	float		qnorm2 = 0;
	int32		qsum = 0;

	for (int i = 0; i < dim; i++)
		qmax = Max(qmax, fabsf(q[i]));
	qscale = qmax > 0 ? qmax / 127 : 1;
	for (int i = 0; i < dim; i++)
	{
		/* rintf, unlike lrintf, is inlined: the same rounding, to even */
		q8[i] = (int8) tv_clamp_code(rintf(q[i] / qscale));
		qsum += q8[i];
	}
	if (metric == TV_METRIC_L2)
		qnorm2 = tv_dot(q, q, dim);
	for (int j = 0; j < lists; j++)
	{
		int32		k_q = tv_rank_dot(codes + (Size) j * dim, q8, dim) - 128 * qsum;
		float		ip = scales[j] * qscale * (float) k_q;

		dist[j] = (metric == TV_METRIC_L2) ? cnorms[j] - 2 * ip + qnorm2 : -ip;
	}
	pfree(q8);
}

/* The exact ListDistance of one list */
float
TvListDistance(const float *centroids, int dim, TvMetric metric, const float *q, int list)
{
	return ListDistance(centroids + (Size) list * dim, dim, metric, q);
}

/* <q, c> for one list's centroid: what a residual code's estimate adds */
float
TvCentroidDot(const float *centroids, int dim, int list, const float *q)
{
	return tv_dot(centroids + (Size) list * dim, q, dim);
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
 * k-means++ seeding reads its whole pool once per pick: at 1M x 768 with
 * 4,000 lists, 16,000 rows (49 MB of floats, more than the caches hold)
 * 4,000 times, bound by memory (11 s of a 49 s build).  So it ranks on an
 * 8-bit copy of the pool, a quarter of the bytes: row i is scale[i] times
 * its codes (rounded to the nearest of -127..127, stored biased by 128 for
 * tv_rank_dot), and distances are those between these approximations,
 * exact in integers and combined in double, so the same on every CPU.
 * The seeding only draws picks with probability by distance, for Lloyd's
 * rounds to refine; the picks are the pool's float rows.
 */
typedef struct SeedPool
{
	int			n;
	int			dim;
	uint8	   *codes;			/* n * dim, biased by 128 */
	double	   *scale;
	double	   *norm2;			/* ||approximation||^2 */
	int8	   *pick;			/* the row being added, unbiased */
	int32		pick_sum;		/* sum of its codes */
	int			pick_row;
} SeedPool;

static void
SeedPoolBuild(SeedPool *sp, const float *xs, int n, int dim)
{
	sp->n = n;
	sp->dim = dim;
	sp->codes = palloc_extended((Size) n * dim, MCXT_ALLOC_HUGE);
	sp->scale = palloc(sizeof(double) * n);
	sp->norm2 = palloc(sizeof(double) * n);
	sp->pick = palloc(dim);
	for (int i = 0; i < n; i++)
	{
		const float *x = xs + (Size) i * dim;
		uint8	   *k = sp->codes + (Size) i * dim;
		float		amax = 0;
		float		s;
		int64		sq;

		for (int d = 0; d < dim; d++)
			amax = Max(amax, fabsf(x[d]));
		s = amax / 127;
		sq = tv_quantize_i8(x, dim, s, k);
		sp->scale[i] = s;
		sp->norm2[i] = (double) s * s * (double) sq;
	}
}

/* Make row r the one SeedDistance measures from */
static void
SeedPoolPick(SeedPool *sp, int r)
{
	const uint8 *k = sp->codes + (Size) r * sp->dim;
	int32		sum = 0;

	for (int d = 0; d < sp->dim; d++)
	{
		sp->pick[d] = (int8) ((int) k[d] - 128);
		sum += sp->pick[d];
	}
	sp->pick_sum = sum;
	sp->pick_row = r;
}

/* Squared distance between the approximations of row i and the pick */
static inline double
SeedDistance(const SeedPool *sp, int i)
{
	int32		dot = tv_rank_dot(sp->codes + (Size) i * sp->dim, sp->pick, sp->dim) -
		128 * sp->pick_sum;
	double		d = sp->norm2[i] + sp->norm2[sp->pick_row] -
		2 * sp->scale[i] * sp->scale[sp->pick_row] * (double) dot;

	return Max(d, 0);
}

/*
 * Whether the pick (at cc from a row's nearest pick so far) cannot come
 * closer to a row at d2 from that one: by the triangle inequality
 * ||x - c|| >= ||c - c_near|| - ||x - c_near||, which is at least
 * ||x - c_near|| once cc >= 4 d2.  The margin (4.04: ||x - c||^2 >= 1.02
 * d2) is far above the rounding of SeedDistance, so skipping a row changes
 * nothing a computed distance would have.
 */
#define SeedCannotLower(cc, d2) ((double) (cc) >= 4.04 * (d2))

/*
 * d2[i] = min(d2[i], distance of row i from pick j) and near[i] = j where
 * pick j lowered it.  cc[k] is the distance of pick j from pick k < j: a
 * row pick j cannot come closer to (SeedCannotLower) is not read.
 */
static void
LowerDistances(const SeedPool *sp, double *d2, int *near, int j, const double *cc)
{
	for (int i = 0; i < sp->n; i++)
	{
		double		v;

		if (j > 0 && SeedCannotLower(cc[near[i]], d2[i]))
			continue;
		v = SeedDistance(sp, i);
		if (j == 0 || v < d2[i])
		{
			d2[i] = v;
			near[i] = j;
		}
	}
}

/*
 * One Lloyd assignment: the nearest list of every sample into next[] (with
 * parallel workers when kp is set), then into assign[]; returns how many
 * samples changed lists (all of them on the first round)
 */
static int
AssignSamples(const TvKmeansInput *in, TvKmeansParallel *kp, const float *centroids,
			  const float *cnorms, int lists, bool coarse, int *assign, int *next, bool first)
{
	int			n = in->nsamples;
	int			changed = 0;

	if (kp)
		TvKmeansParallelAssign(kp, centroids, cnorms, coarse, next);
	else
	{
		TvListAssigner *la = TvListAssignerCreate(centroids, cnorms, lists, in->dim,
												  in->metric);

		TvListAssignerSetCoarse(la, coarse);
		for (int i0 = 0; i0 < n; i0 += TV_ASSIGN_BATCH)
		{
			TvAssignLists(la, in->samples + (Size) i0 * in->dim,
						  Min(TV_ASSIGN_BATCH, n - i0), next + i0);
			CHECK_FOR_INTERRUPTS();
		}
		TvListAssignerFree(la);
	}
	for (int i = 0; i < n; i++)
	{
		if (first || next[i] != assign[i])
			changed++;
		assign[i] = next[i];
	}
	return changed;
}

/*
 * Lloyd's k-means over the sample, seeded by k-means++ with the private
 * generator; an empty cluster takes a fresh random sample.  The seeding
 * draws from the first TV_KMEANS_SEED_PER_LIST * lists samples only, and
 * at least TV_KMEANS_SEED_MIN (the build hands them over in random order):
 * every pick rescans its pool, so seeding from the whole sample cost
 * lists^2 * 32 distances and dominated the build (1,000 lists at 768
 * dimensions: 30 s of a 55 s build), while the Lloyd rounds that follow use
 * the whole sample anyway.  It rescans an 8-bit copy (SeedPool), a quarter
 * of the memory traffic.  The rounds' assignments, and the sums of the
 * lists' samples, go to parallel workers (tvparallel.c) once the sample
 * reaches min_parallel_table_scan_size.
 * The first half of the rounds assign coarsely (TvListAssignerSetCoarse),
 * and only the later ones may end the loop early.
 * Progress: tuples_total is iterations * samples, tuples_done the samples
 * assigned so far (a round that settles skips the rest).
 * Returns lists * dim floats in CurrentMemoryContext.  Cosine samples are
 * normalized in place.
 */
float *
TvKmeans(const TvKmeansInput *in, int lists, int iterations)
{
	int			dim = in->dim;
	int			n = in->nsamples;
	int			pool = (int) Min((int64) n, Max((int64) lists * TV_KMEANS_SEED_PER_LIST,
										  TV_KMEANS_SEED_MIN));
	float	   *centroids = palloc_extended((Size) lists * dim * sizeof(float), MCXT_ALLOC_HUGE);
	double	   *own_sums = NULL;	/* the lists' sums, when summed alone */
	const double *sums;
	int		   *counts = palloc(sizeof(int) * lists);
	int		   *assign = palloc(sizeof(int) * n);
	int		   *next = palloc(sizeof(int) * n);
	TvKmeansParallel *kp = NULL;
	uint64		rng = in->seed ^ ((uint64) lists << 32) ^ (uint64) dim;
	int64		done = 0;

	Assert(lists >= 1 && lists <= n);

	if (in->progress)
	{
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_TOTAL,
									 (int64) iterations * n);
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, 0);
	}

	if (in->metric == TV_METRIC_COSINE)
		for (int i = 0; i < n; i++)
			Normalize(in->samples + (Size) i * dim, dim);

	/*
	 * workers, as for coding the spool, once the sample is big enough; they
	 * start (a process start each) while the leader seeds
	 */
	if (in->nworkers > 0 &&
		(double) n * dim * sizeof(float) >= (double) min_parallel_table_scan_size * BLCKSZ)
		kp = TvKmeansParallelBegin(in->samples, n, dim, lists, in->metric, in->nworkers);
	if (kp == NULL)
		own_sums = palloc_extended((Size) lists * dim * sizeof(double), MCXT_ALLOC_HUGE);

	/*
	 * k-means++ seeding: each next centroid is a sample of the pool drawn
	 * with probability proportional to its squared distance from the
	 * nearest centroid so far (measured on the 8-bit copy, SeedPool),
	 * which keeps separated clusters from sharing a list.
	 */
	{
		double	   *d2 = palloc(sizeof(double) * pool);
		int		   *near = palloc(sizeof(int) * pool);
		double	   *cc = palloc(sizeof(double) * lists);
		int		   *picks = palloc(sizeof(int) * lists);
		SeedPool	sp;

		SeedPoolBuild(&sp, in->samples, pool, dim);
		picks[0] = (int) (NextRandom(&rng) % (uint64) pool);
		SeedPoolPick(&sp, picks[0]);
		LowerDistances(&sp, d2, near, 0, cc);
		for (int j = 1; j < lists; j++)
		{
			double		total = 0;
			double		r;
			int			pick = pool - 1;

			for (int i = 0; i < pool; i++)
				total += d2[i];
			r = (double) (NextRandom(&rng) >> 11) / (double) (UINT64CONST(1) << 53) * total;
			for (int i = 0; i < pool; i++)
			{
				r -= d2[i];
				if (r < 0)
				{
					pick = i;
					break;
				}
			}
			if (total <= 0)
				pick = (int) (NextRandom(&rng) % (uint64) pool);
			picks[j] = pick;
			SeedPoolPick(&sp, pick);
			for (int k = 0; k < j; k++)
				cc[k] = SeedDistance(&sp, picks[k]);
			LowerDistances(&sp, d2, near, j, cc);
			CHECK_FOR_INTERRUPTS();
		}
		for (int j = 0; j < lists; j++)
			memcpy(centroids + (Size) j * dim, in->samples + (Size) picks[j] * dim,
				   sizeof(float) * dim);
		pfree(d2);
		pfree(near);
		pfree(cc);
		pfree(picks);
		pfree(sp.codes);
		pfree(sp.scale);
		pfree(sp.norm2);
		pfree(sp.pick);
	}

	for (int it = 0; it < iterations; it++)
	{
		int			changed = 0;
		float	   *cnorms = TvCentroidNorms(centroids, lists, dim);
		bool		coarse = it < iterations / 2;

		changed = AssignSamples(in, kp, centroids, cnorms, lists, coarse, assign, next,
								it == 0);
		done += n;
		if (in->progress)
		{
			pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, done);
			TvTestBuildDelay();
		}
		pfree(cnorms);
		elog(DEBUG2, "turbo k-means round %d: %d of %d samples changed lists", it + 1, changed, n);
		/* settled: another round would move fewer than 1 sample in 200 */
		if (!coarse && it > 0 && changed * 200 < n)
			break;

		memset(counts, 0, sizeof(int) * lists);
		for (int i = 0; i < n; i++)
			counts[assign[i]]++;
		if (kp)
			sums = TvKmeansParallelSums(kp, assign);
		else
		{
			memset(own_sums, 0, (Size) lists * dim * sizeof(double));
			for (int i = 0; i < n; i++)
				tv_accumulate(own_sums + (Size) assign[i] * dim, in->samples + (Size) i * dim,
							  dim);
			sums = own_sums;
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
	if (in->progress)
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
									 (int64) iterations * n);

	if (kp)
		TvKmeansParallelEnd(kp);
	if (own_sums)
		pfree(own_sums);
	pfree(counts);
	pfree(assign);
	pfree(next);
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
