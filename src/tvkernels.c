/*
 * tvkernels.c
 *	  Block scoring kernels: a portable scalar reference, an AVX2 version,
 *	  and the run-time choice between them.  Also the encoder's steps, the
 *	  8-bit list ranking, and the float products k-means and the list
 *	  assignment run on (the last in AVX-512 too).
 *
 * A kernel sums, for each of a block's 32 lanes, one quantized LUT byte per
 * group, then writes bias + scale * (float) sum.  The sum is an exact
 * integer, and both versions finish with the same two float operations
 * (a multiply, then an add: keep -ffp-contract=off so neither becomes an
 * FMA), so their results are bit-identical.
 *
 * Overflow: the AVX2 version adds bytes into 16-bit counters, each counter
 * taking at most one byte per group it covers, and widens them into 32-bit
 * sums every 256 bytes (256 * 255 < 65536).  With dim <= 16000 a 32-bit sum
 * is at most 16000 * 255, which is also exact as a float.
 *
 * The AVX2 code is compiled with a target attribute, never -march, and is
 * chosen only when cpuid and xgetbv say the CPU and the OS support it.
 */
#include "tvcodec.h"

#include <float.h>
#include <math.h>
#include <string.h>

/*
 * No fused multiply-adds: the build passes -ffp-contract=off to gcc, but
 * PGXS also compiles this file with clang for JIT inlining, and clang fuses
 * a * b + c within an expression by default.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#if defined(__x86_64__) || defined(__i386__)
#define TV_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

/* Portable until tv_kernels_init says otherwise */
TvScoreBlockFn tv_score_block = tv_score_block_scalar;
TvSumGroupsFn tv_sum_groups = tv_sum_groups_scalar;
TvRefineBlockIpFn tv_refine_block_ip = tv_refine_block_ip_scalar;
TvQuantizeLutFn tv_quantize_lut = tv_quantize_lut_scalar;
TvRankDotFn tv_rank_dot = tv_rank_dot_scalar;
TvFwhtFn	tv_fwht = tv_fwht_scalar;
TvQuantizeRowFn tv_quantize_row = tv_quantize_row_scalar;
TvSumSquaresFn tv_sum_squares = tv_sum_squares_scalar;
TvScaleRowFn tv_scale_row = tv_scale_row_scalar;
TvAccumulateFn tv_accumulate = tv_accumulate_scalar;
TvQuantizeI8Fn tv_quantize_i8 = tv_quantize_i8_scalar;
TvRefineRowFn tv_refine_row = tv_refine_row_scalar;
TvPairFn	tv_dot = tv_dot_scalar;
TvPairFn	tv_l2sq = tv_l2sq_scalar;
TvTileFn	tv_dot_tile = tv_dot_tile_scalar;
TvTileFn	tv_dot_tile_aligned = tv_dot_tile_scalar;

int32_t
tv_rank_dot_scalar(const uint8_t *k, const int8_t *q, int dim)
{
	int32_t		s = 0;

	for (int i = 0; i < dim; i++)
		s += (int32_t) k[i] * q[i];
	return s;
}

/*
 * A row's scale and a bound on its norm for the list search's first pass,
 * from its largest |x| and its sum of squares summed in floats (whose
 * error the factor covers with room)
 */
static inline void
ListRowBounds(int dim, float amax, float sum, float *scale, float *norm)
{
	*scale = amax / 127;
	*norm = (float) (sqrt((double) sum * (1 + (dim + 64) * ldexp(1.0, -23))) * (1 + 1e-6));
}

/*
 * Whether a row's largest |x| is 0 or within [least, limit] and its sum of
 * squares finite (not, after a NaN or an overflow)
 */
static inline bool
ListRowFits(float amax, float sum, float least, float limit)
{
	return sum <= FLT_MAX && amax <= limit && (amax == 0 || amax >= least);
}

/* The lanes of block b that hold lists */
static inline uint16_t
ListLanes(int lists, int b)
{
	int			n = lists - b * 16;

	return n >= 16 ? 0xFFFF : (uint16_t) ((1u << n) - 1);
}

bool
tv_list_centroid_codes(const float *c, int dim, float norm2, bool l2, float least,
					   float limit, int8_t *q, TvListTerms *t)
{
	double		f = l2 ? 2 : 1;
	double		rounding = (dim + 64) * ldexp(1.0, -23) + ldexp(1.0, -16);
	float		amax = 0,
				sc;
	double		sum2 = 0,
				err2 = 0,
				cq,
				ce;

	for (int i = 0; i < dim; i++)
		amax = fmaxf(amax, fabsf(c[i]));
	/*
	 * scales that would underflow, and a NaN norm (fmaxf skips a NaN
	 * coordinate: its error makes ce NaN, which the last test refuses)
	 */
	if (!(amax <= limit) || (amax > 0 && amax < least) || !(fabsf(norm2) <= 1e30f))
		return false;
	sc = amax / 127;
	t->sum = 0;
	for (int i = 0; i < dim; i++)
	{
		int			v = tv_clamp_code(amax > 0 ? rintf(c[i] / sc) : 0);
		double		e = (double) c[i] - (double) sc * v;

		q[i] = (int8_t) v;
		t->sum += v;
		sum2 += (double) v * v;
		err2 += e * e;
	}
	cq = (double) sc * sqrt(sum2) * (1 + 1e-9);
	ce = sqrt(err2) * (1 + 1e-9);
	if (!(cq + ce <= limit * sqrt((double) dim)))
		return false;
	t->norm = l2 ? norm2 : 0;
	t->scale = (float) (f * sc);
	t->err = (float) ((f * ce + f * rounding * (cq + ce)) * (1 + 1e-6));
	t->full = (float) (f * cq * (1 + 1e-6));
	t->slack = (float) (ldexp(1.0, -16) * fabs(t->norm));
	return true;
}

bool
tv_list_row_codes_scalar(const float *x, int dim, float least, float limit, uint8_t *k,
						 float *scale, float *norm)
{
	float		amax = 0,
				sum = 0,
				inv;

	for (int i = 0; i < dim; i++)
	{
		amax = fmaxf(amax, fabsf(x[i]));
		sum += x[i] * x[i];
	}
	if (!ListRowFits(amax, sum, least, limit))
		return false;
	ListRowBounds(dim, amax, sum, scale, norm);
	inv = amax > 0 ? 127 / amax : 0;
	for (int i = 0; i < dim; i++)
	{
		int			v = tv_clamp_code(rintf(x[i] * inv));

		k[i] = (uint8_t) (v + 128);
	}
	return true;
}

int
tv_list_candidates_scalar(const TvListBounds *lb, const int32_t *qd, float sx, float nx,
						  float exb, uint16_t *masks)
{
	float		thr = INFINITY;
	int			count = 0;

	for (int pass = 0; pass < 2; pass++)
		for (int j = 0; j < lb->lists; j++)
		{
			float		approx = lb->norm[j] -
				sx * lb->scale[j] * (float) (qd[j] - 128 * lb->sum[j]);
			float		bound = nx * lb->err[j] + exb * lb->full[j] + lb->slack[j];

			if (pass == 0)
				thr = fminf(thr, approx + bound);
			else
			{
				if (j % 16 == 0)
					masks[j / 16] = 0;
				if (approx - bound <= thr)
				{
					masks[j / 16] |= (uint16_t) (1u << (j % 16));
					count++;
				}
			}
			if (pass == 0 && j == lb->lists - 1 && !(thr < INFINITY))
				return -1;
		}
	return count;
}

void
tv_rank_lists_scalar(const uint8_t *rows, int nrows, int ld, const int8_t *blocks,
					 int nblocks, int groups, int32_t *out)
{
	for (int r = 0; r < nrows; r++)
		for (int j = 0; j < nblocks * 16; j++)
		{
			const int8_t *block = blocks + (size_t) (j / 16) * groups * 64;
			int32_t		s = 0;

			for (int g = 0; g < groups; g++)
				for (int k = 0; k < 4; k++)
					s += (int32_t) rows[(size_t) r * ld + g * 4 + k] *
						block[g * 64 + (j % 16) * 4 + k];
			out[(size_t) r * nblocks * 16 + j] = s;
		}
}

/*
 * Reference summation of groups [g0, g0 + ngroups), their codes at codes;
 * it reads the layout documented in tvcodec.c.  Adds to sums, lane order.
 */
void
tv_sum_groups_scalar(const TvQueryLut *lut, const uint8_t *codes, int g0,
					 int ngroups, uint32_t *sums)
{
	const uint8_t *lut0 = lut->lut + (size_t) 16 * g0;
	int			g,
				j;

	/* Lane by lane, so each sum stays in a register */
	if (lut->bits == 3)
	{
		for (j = 0; j < TV_LANES; j++)
		{
			const uint8_t *p = codes;
			const uint8_t *t = lut0;
			int			lshift = 2 * (j >> 3);
			int			hshift = j >> 2;
			uint32_t	sum = 0;

			for (g = 0; g < ngroups; g++, p += 12, t += 16)
			{
				int			lo = (p[j & 7] >> lshift) & 3;
				int			hi = (p[8 + (j & 3)] >> hshift) & 1;

				sum += t[lo | (hi << 2)];
			}
			sums[j] += sum;
		}
	}
	else
	{
		/* 2 and 4 bits share the nibble layout */
		for (j = 0; j < 16; j++)
		{
			const uint8_t *p = codes + j;
			const uint8_t *t = lut0;
			uint32_t	lo = 0,
						hi = 0;

			for (g = 0; g < ngroups; g++, p += 16, t += 16)
			{
				lo += t[*p & 0x0F];
				hi += t[*p >> 4];
			}
			sums[j] += lo;
			sums[j + 16] += hi;
		}
	}
}

/* The estimates from complete sums: the last step of every kernel */
void
tv_finish_sums(const TvQueryLut *lut, const uint32_t *sums, float *out)
{
	int			j;

	for (j = 0; j < TV_LANES; j++)
		out[j] = lut->bias + lut->scale * (float) sums[j];
}

/* Reference kernel: all groups of a contiguous block */
void
tv_score_block_scalar(const TvQueryLut *lut, const uint8_t *block_codes,
					  float *out)
{
	uint32_t	sums[TV_LANES];

	memset(sums, 0, sizeof(sums));
	tv_sum_groups_scalar(lut, block_codes, 0, lut->ngroups, sums);
	tv_finish_sums(lut, sums, out);
}

/* ----------------------------------------------------------------
 * Float products for lists (tvivf.c): k-means, list assignment, ranking.
 * Unlike the scoring kernels above, versions may round differently (they
 * sum in different orders); what the build relies on is that a tile's
 * value for a pair does not depend on the tile's other rows or centroids.
 * ----------------------------------------------------------------
 */
float
tv_dot_scalar(const float *a, const float *b, int dim)
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

float
tv_l2sq_scalar(const float *a, const float *b, int dim)
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

void
tv_dot_tile_scalar(const float *x, const float *c, int dim, float *out)
{
	for (int a = 0; a < 4; a++)
		for (int b = 0; b < 3; b++)
			out[a * 3 + b] = tv_dot_scalar(x + (size_t) a * dim, c + (size_t) b * dim, dim);
}

void
tv_accumulate_scalar(double *sum, const float *x, int n)
{
	for (int i = 0; i < n; i++)
		sum[i] += (double) x[i];
}

int64_t
tv_quantize_i8_scalar(const float *x, int n, float scale, uint8_t *k)
{
	int64_t		sq = 0;

	for (int i = 0; i < n; i++)
	{
		/* |x / scale| <= 127 up to rounding */
		int			v = tv_clamp_code(scale > 0 ? rintf(x[i] / scale) : 0);

		k[i] = (uint8_t) (v + 128);
		sq += v * v;
	}
	return sq;
}

#ifdef TV_X86

/* The register states the OS saves (XCR0's low word); needs OSXSAVE */
static unsigned int
ReadXcr0(void)
{
	unsigned int lo,
				hi;

	__asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	(void) hi;
	return lo;
}

/*
 * CPU supports AVX2 and the OS saves the YMM registers (OSXSAVE, then
 * XCR0 bits 1 and 2).
 */
bool
tv_kernels_have_avx2(void)
{
	unsigned int eax,
				ebx,
				ecx,
				edx;

	if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
		return false;
	if ((ecx & bit_OSXSAVE) == 0 || (ecx & bit_AVX) == 0)
		return false;
	if ((ReadXcr0() & 0x6) != 0x6)
		return false;
	if (__get_cpuid_max(0, NULL) < 7)
		return false;
	__cpuid_count(7, 0, eax, ebx, ecx, edx);
	return (ebx & bit_AVX2) != 0;
}

#define TV_AVX2 __attribute__((target("avx2")))

/*
 * 32 lanes of 32-bit sums, kept as even and odd lanes of each half-block:
 * e[0] = lanes 0, 2, .., 14, o[0] = lanes 1, 3, .., 15, e[1] and o[1] the
 * same for lanes 16..31.
 */
typedef struct TvSums
{
	__m256i		e[2];
	__m256i		o[2];
} TvSums;

/*
 * 16-bit counters are fed whole pshufb results: a counts even byte +
 * 256 * odd byte, b the odd byte alone.  a - (b << 8) recovers the even sum
 * exactly as long as it stays below 65536.
 */
static inline TV_AVX2 void
Count(__m256i *a, __m256i *b, __m256i r)
{
	*a = _mm256_add_epi16(*a, r);
	*b = _mm256_add_epi16(*b, _mm256_srli_epi16(r, 8));
}

/* Zero-extend the 8 16-bit words of the low / high 128-bit half */
static inline TV_AVX2 __m256i
WidenLo(__m256i x)
{
	return _mm256_cvtepu16_epi32(_mm256_castsi256_si128(x));
}

static inline TV_AVX2 __m256i
WidenHi(__m256i x)
{
	return _mm256_cvtepu16_epi32(_mm256_extracti128_si256(x, 1));
}

/*
 * Fold nibble-layout counters into the sums.  Both 128-bit halves of a
 * counter cover the same 16 lanes (two groups side by side).
 */
static inline TV_AVX2 void
FlushNibble(TvSums *s, __m256i a, __m256i b, int part)
{
	__m256i		even = _mm256_sub_epi16(a, _mm256_slli_epi16(b, 8));

	s->e[part] = _mm256_add_epi32(s->e[part],
								  _mm256_add_epi32(WidenLo(even), WidenHi(even)));
	s->o[part] = _mm256_add_epi32(s->o[part],
								  _mm256_add_epi32(WidenLo(b), WidenHi(b)));
}

/* Fold 3-bit counters: the low half covers lanes 0..15, the high 16..31 */
static inline TV_AVX2 void
Flush3(TvSums *s, __m256i a, __m256i b)
{
	__m256i		even = _mm256_sub_epi16(a, _mm256_slli_epi16(b, 8));

	s->e[0] = _mm256_add_epi32(s->e[0], WidenLo(even));
	s->e[1] = _mm256_add_epi32(s->e[1], WidenHi(even));
	s->o[0] = _mm256_add_epi32(s->o[0], WidenLo(b));
	s->o[1] = _mm256_add_epi32(s->o[1], WidenHi(b));
}

/* Pairs of nibble groups: lanes 0..15 from low nibbles, 16..31 from high */
static inline TV_AVX2 void
NibblePairs(TvSums *s, const uint8_t *codes, const uint8_t *lut, int npairs)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F);
	__m256i		a0 = _mm256_setzero_si256();
	__m256i		b0 = _mm256_setzero_si256();
	__m256i		a1 = _mm256_setzero_si256();
	__m256i		b1 = _mm256_setzero_si256();
	int			i;

	for (i = 0; i < npairs; i++)
	{
		__m256i		v = _mm256_loadu_si256((const __m256i *) (codes + 32 * i));
		__m256i		t = _mm256_loadu_si256((const __m256i *) (lut + 32 * i));
		__m256i		lo = _mm256_and_si256(v, m4);
		__m256i		hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);

		Count(&a0, &b0, _mm256_shuffle_epi8(t, lo));
		Count(&a1, &b1, _mm256_shuffle_epi8(t, hi));
	}
	FlushNibble(s, a0, b0, 0);
	FlushNibble(s, a1, b1, 1);
}

/* An odd last group: the high half sees code 0 in a zero table, adding 0 */
static inline TV_AVX2 void
NibbleLast(TvSums *s, const uint8_t *codes, const uint8_t *lut)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F);
	__m256i		v = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *) codes));
	__m256i		t = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *) lut));
	__m256i		lo = _mm256_and_si256(v, m4);
	__m256i		hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
	__m256i		a0 = _mm256_setzero_si256();
	__m256i		b0 = _mm256_setzero_si256();
	__m256i		a1 = _mm256_setzero_si256();
	__m256i		b1 = _mm256_setzero_si256();

	Count(&a0, &b0, _mm256_shuffle_epi8(t, lo));
	Count(&a1, &b1, _mm256_shuffle_epi8(t, hi));
	FlushNibble(s, a0, b0, 0);
	FlushNibble(s, a1, b1, 1);
}

/*
 * 3-bit groups.  One broadcast and one variable shift per part turn the
 * packed bits into one index byte per lane, in lane order (see the layout
 * comment in tvcodec.c).
 */
static inline TV_AVX2 void
Groups3(TvSums *s, const uint8_t *codes, const uint8_t *lut, int ngroups)
{
	const __m256i sh64 = _mm256_setr_epi64x(0, 2, 4, 6);
	const __m256i sh32 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	const __m256i m3 = _mm256_set1_epi8(0x03);
	const __m256i m1 = _mm256_set1_epi8(0x01);
	__m256i		a = _mm256_setzero_si256();
	__m256i		b = _mm256_setzero_si256();
	int			g;

	for (g = 0; g < ngroups; g++)
	{
		const uint8_t *p = codes + 12 * g;
		int64_t		low;
		int32_t		high;
		__m256i		lo,
					hi,
					t;

		memcpy(&low, p, 8);
		memcpy(&high, p + 8, 4);
		lo = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(low), sh64), m3);
		hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(high), sh32), m1);
		lo = _mm256_or_si256(lo, _mm256_slli_epi32(hi, 2));
		t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) (lut + 16 * g)));
		Count(&a, &b, _mm256_shuffle_epi8(t, lo));
	}
	Flush3(s, a, b);
}

/*
 * Add groups [g0, g0 + ngroups), their codes at codes, to the sums.  The
 * 16-bit counters are folded every 256 pairs (256 groups at 3 bits), so a
 * piece of any length is safe.
 */
static inline TV_AVX2 void
AccumulateGroups(TvSums *s, const TvQueryLut *lut, const uint8_t *codes,
				 int g0, int ngroups)
{
	const uint8_t *lut0 = lut->lut + (size_t) 16 * g0;
	int			k,
				n;

	if (lut->bits == 3)
	{
		for (k = 0; k < ngroups; k += n)
		{
			n = ngroups - k < 256 ? ngroups - k : 256;
			Groups3(s, codes + (size_t) 12 * k, lut0 + (size_t) 16 * k, n);
		}
	}
	else
	{
		int			npairs = ngroups / 2;

		/* Each 16-bit counter takes one byte per pair */
		for (k = 0; k < npairs; k += n)
		{
			n = npairs - k < 256 ? npairs - k : 256;
			NibblePairs(s, codes + (size_t) 32 * k, lut0 + (size_t) 32 * k, n);
		}
		if (ngroups & 1)
			NibbleLast(s, codes + (size_t) 16 * (ngroups - 1),
					   lut0 + (size_t) 16 * (ngroups - 1));
	}
}

/*
 * The sums in lane order: lanes 16k..16k+7 in *lo8, 16k+8..16k+15 in *hi8.
 */
static inline TV_AVX2 void
LaneOrder(const TvSums *s, int k, __m256i *lo8, __m256i *hi8)
{
	__m256i		lo = _mm256_unpacklo_epi32(s->e[k], s->o[k]);
	__m256i		hi = _mm256_unpackhi_epi32(s->e[k], s->o[k]);

	*lo8 = _mm256_permute2x128_si256(lo, hi, 0x20);
	*hi8 = _mm256_permute2x128_si256(lo, hi, 0x31);
}

/* Vector version of the scalar kernel; same integer sums, same rounding */
TV_AVX2 void
tv_score_block_avx2(const TvQueryLut *lut, const uint8_t *block_codes,
					float *out)
{
	TvSums		s;
	int			k;
	__m256		scale = _mm256_set1_ps(lut->scale);
	__m256		bias = _mm256_set1_ps(lut->bias);

	s.e[0] = s.e[1] = s.o[0] = s.o[1] = _mm256_setzero_si256();
	AccumulateGroups(&s, lut, block_codes, 0, lut->ngroups);

	/* Back to lane order, then bias + scale * sum as in the scalar code */
	for (k = 0; k < 2; k++)
	{
		__m256i		a,
					b;

		LaneOrder(&s, k, &a, &b);
		_mm256_storeu_ps(out + 16 * k,
						 _mm256_add_ps(bias, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(a))));
		_mm256_storeu_ps(out + 16 * k + 8,
						 _mm256_add_ps(bias, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(b))));
	}
}

/* Vector version of tv_sum_groups_scalar */
TV_AVX2 void
tv_sum_groups_avx2(const TvQueryLut *lut, const uint8_t *codes, int g0,
				   int ngroups, uint32_t *sums)
{
	TvSums		s;
	int			k;

	s.e[0] = s.e[1] = s.o[0] = s.o[1] = _mm256_setzero_si256();
	AccumulateGroups(&s, lut, codes, g0, ngroups);
	for (k = 0; k < 2; k++)
	{
		__m256i		a,
					b;
		__m256i    *p = (__m256i *) (sums + 16 * k);

		LaneOrder(&s, k, &a, &b);
		_mm256_storeu_si256(p, _mm256_add_epi32(_mm256_loadu_si256(p), a));
		_mm256_storeu_si256(p + 1, _mm256_add_epi32(_mm256_loadu_si256(p + 1), b));
	}
}

/*
 * The lane's first-stage codes of coordinates i..i+7 (the block layout in
 * tvcodec.c), from gathers of the 32-bit words holding them; a word starts
 * at a multiple of 4 within its group, so no gather reads past the codes.
 * bits is a constant in each caller, so the switch folds away.
 */
static inline TV_AVX2 __m256i
RefineLaneCodes(const uint8_t *block_codes, int lane, int i, const int bits)
{
	switch (bits)
	{
		case 2:
			{
				/* coordinates 2g and 2g + 1 share group g's nibble */
				__m128i		w4 = _mm_i32gather_epi32((const int *) (block_codes + (size_t) i * 8 + (lane & 12)),
													 _mm_setr_epi32(0, 16, 32, 48), 1);
				__m256i		w = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(w4),
															_mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
				__m256i		sh = _mm256_add_epi32(_mm256_set1_epi32(8 * (lane & 3) + 4 * (lane >> 4)),
												  _mm256_setr_epi32(0, 2, 0, 2, 0, 2, 0, 2));

				return _mm256_and_si256(_mm256_srlv_epi32(w, sh), _mm256_set1_epi32(3));
			}
		case 3:
			{
				/* low bits: byte lane % 8, bits 2 * (lane / 8); high bit: byte 8 + lane % 4, bit lane / 4 */
				__m256i		offsets = _mm256_setr_epi32(0, 12, 24, 36, 48, 60, 72, 84);
				const uint8_t *g = block_codes + (size_t) i * 12;
				__m256i		lo = _mm256_i32gather_epi32((const int *) (g + (lane & 4)), offsets, 1);
				__m256i		hi = _mm256_i32gather_epi32((const int *) (g + 8), offsets, 1);

				lo = _mm256_and_si256(_mm256_srli_epi32(lo, 8 * (lane & 3) + 2 * (lane >> 3)),
									  _mm256_set1_epi32(3));
				hi = _mm256_and_si256(_mm256_srli_epi32(hi, 8 * (lane & 3) + (lane >> 2)),
									  _mm256_set1_epi32(1));
				return _mm256_or_si256(lo, _mm256_slli_epi32(hi, 2));
			}
		default:
			{
				/* byte lane % 16, the high nibble from lane 16 */
				__m256i		w = _mm256_i32gather_epi32((const int *) (block_codes + (size_t) i * 16 + (lane & 12)),
													   _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112), 1);

				return _mm256_and_si256(_mm256_srli_epi32(w, 8 * (lane & 3) + 4 * (lane >> 4)),
										_mm256_set1_epi32(15));
			}
	}
}

/*
 * tv_refine_block_ip_scalar, 8 coordinates at a time: the codes from
 * RefineLaneCodes, the refinement nibbles from one 32-bit load, each
 * coordinate's value and step from gathers on the codec's tables.  The
 * products are exact in double, as in the scalar code; only the order of
 * the sums differs.
 */
static inline TV_AVX2 float
RefineBlockIp(const TvCodec *codec, const uint8_t *block_codes, int lane,
			  const uint8_t *refine, const float *qr, float *sd, const int bits)
{
	int			dim = codec->dim;
	const uint8_t *nib = refine + 4;
	__m256i		nibble_shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
	__m256i		fifteen = _mm256_set1_epi32(15);
	__m256d		sum_lo = _mm256_setzero_pd();
	__m256d		sum_hi = _mm256_setzero_pd();
	__m256		var8 = _mm256_setzero_ps();
	float		rscale;
	float		var_lanes[8];
	double		sum_lanes[8];
	double		sum = 0.0;
	double		var = 0.0;
	int			i;

	memcpy(&rscale, refine, sizeof(float));
	for (i = 0; i + 8 <= dim; i += 8)
	{
		__m256i		c = RefineLaneCodes(block_codes, lane, i, bits);
		uint32_t	packed;
		__m256i		f;
		__m256		value,
					step,
					q;

		memcpy(&packed, nib + i / 2, sizeof(uint32_t));
		f = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int) packed),
											   nibble_shifts), fifteen);
		value = _mm256_i32gather_ps(codec->refine_value,
									_mm256_or_si256(_mm256_slli_epi32(c, 4), f), 4);
		step = _mm256_i32gather_ps(codec->refine_step, c, 4);
		q = _mm256_loadu_ps(qr + i);
		sum_lo = _mm256_add_pd(sum_lo,
							   _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(value)),
											 _mm256_cvtps_pd(_mm256_castps256_ps128(q))));
		sum_hi = _mm256_add_pd(sum_hi,
							   _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(value, 1)),
											 _mm256_cvtps_pd(_mm256_extractf128_ps(q, 1))));
		q = _mm256_mul_ps(step, q);
		var8 = _mm256_add_ps(var8, _mm256_mul_ps(q, q));
	}
	_mm256_storeu_pd(sum_lanes, sum_lo);
	_mm256_storeu_pd(sum_lanes + 4, sum_hi);
	_mm256_storeu_ps(var_lanes, var8);
	for (int k = 0; k < 8; k++)
	{
		sum += sum_lanes[k];
		var += var_lanes[k];
	}
	/* the last dim % 8 coordinates, as the scalar code does them */
	tv_refine_sums(codec, block_codes, lane, refine, qr, i, &sum, &var);
	*sd = (float) (fabs(rscale) * sqrt(var / 12.0));
	return (float) (rscale * sum);
}

TV_AVX2 float
tv_refine_block_ip_avx2(const TvCodec *codec, const uint8_t *block_codes,
						int lane, const uint8_t *refine, const float *qr,
						float *sd)
{
	switch (codec->bits)
	{
		case 2:
			return RefineBlockIp(codec, block_codes, lane, refine, qr, sd, 2);
		case 3:
			return RefineBlockIp(codec, block_codes, lane, refine, qr, sd, 3);
		default:
			return RefineBlockIp(codec, block_codes, lane, refine, qr, sd, 4);
	}
}

/*
 * tv_quantize_lut_scalar for 3- and 4-bit codes, 4 entries per vector: the
 * same double operations in the same order, so the same bytes (a group's
 * entries are levels times its coordinate; its minimum comes from the
 * extreme levels).  2-bit groups, sums of two coordinates, go the scalar
 * way.
 */
TV_AVX2 void
tv_quantize_lut_avx2(const TvCodec *codec, const float *qr, double inv,
					 double rstep, uint8_t *lut)
{
	int			nlevels = 1 << codec->bits;
	double		lmin = codec->levels[0];
	double		lmax = codec->levels[nlevels - 1];
	__m256d		levels[4];
	__m256d		scale = _mm256_set1_pd(rstep);
	__m256d		half = _mm256_set1_pd(0.5);
	__m256d		one = _mm256_set1_pd(1.0);
	__m256d		top = _mm256_set1_pd(255.0);

	if (codec->bits == 2)
	{
		tv_quantize_lut_scalar(codec, qr, inv, rstep, lut);
		return;
	}
	for (int k = 0; k < 4; k++)
		levels[k] = _mm256_cvtps_pd(_mm_loadu_ps(codec->levels + 4 * k));
	for (int g = 0; g < codec->ngroups; g++)
	{
		double		a = (double) qr[g] * inv;
		double		x = lmin * a;
		double		y = lmax * a;
		__m256d		lo = _mm256_set1_pd(x < y ? x : y);
		__m256d		av = _mm256_set1_pd(a);
		__m128i		q[4];

		for (int k = 0; k < 4; k++)
		{
			__m256d		e = _mm256_add_pd(_mm256_mul_pd(_mm256_sub_pd(_mm256_mul_pd(levels[k], av),
																	  lo),
														scale),
										  half);

			/* x >= 1 ? x : 0 (a NaN gives 0), then at most 255 */
			e = _mm256_and_pd(e, _mm256_cmp_pd(e, one, _CMP_GE_OQ));
			e = _mm256_blendv_pd(top, e, _mm256_cmp_pd(e, top, _CMP_LE_OQ));
			q[k] = _mm256_cvttpd_epi32(e);
		}
		_mm_storeu_si128((__m128i *) (lut + (size_t) g * 16),
						 _mm_packus_epi16(_mm_packus_epi32(q[0], q[1]),
										  _mm_packus_epi32(q[2], q[3])));
		/* 3 bits: entries 8-15 stay 0 */
		if (nlevels < 16)
			memset(lut + (size_t) g * 16 + nlevels, 0, 16 - nlevels);
	}
}

/*
 * The dot-product instructions need AVX2's OS support (YMM state) plus:
 * AVX-VNNI, CPUID.(7,1):EAX bit 4; AVX512-VNNI (with the 256-bit forms),
 * CPUID.(7,0):ECX bit 11 and EBX bits 16 (F) and 31 (VL), and the OS
 * saving the opmask and ZMM state (XCR0 bits 5-7).
 */
bool
tv_kernels_have_avxvnni(void)
{
	unsigned int eax,
				ebx,
				ecx,
				edx;

	if (!tv_kernels_have_avx2())
		return false;
	__cpuid_count(7, 0, eax, ebx, ecx, edx);
	if (eax < 1)
		return false;
	__cpuid_count(7, 1, eax, ebx, ecx, edx);
	return (eax & (1u << 4)) != 0;
}

/*
 * CPU supports AVX-512F and the OS saves the opmask and ZMM state (XCR0
 * bits 5-7) besides the YMM state
 */
bool
tv_kernels_have_avx512f(void)
{
	unsigned int eax,
				ebx,
				ecx,
				edx;

	/* tv_kernels_have_avx2 checked OSXSAVE */
	if (!tv_kernels_have_avx2() || (ReadXcr0() & 0xE6) != 0xE6)
		return false;
	__cpuid_count(7, 0, eax, ebx, ecx, edx);
	return (ebx & (1u << 16)) != 0;
}

bool
tv_kernels_have_avx512vnni(void)
{
	unsigned int eax,
				ebx,
				ecx,
				edx;

	if (!tv_kernels_have_avx512f())
		return false;
	__cpuid_count(7, 0, eax, ebx, ecx, edx);
	return (ebx & (1u << 31)) != 0 && (ecx & (1u << 11)) != 0;
}

TV_AVX2 int32_t
tv_rank_dot_avx2(const uint8_t *k, const int8_t *q, int dim)
{
	__m256i		s = _mm256_setzero_si256();
	__m128i		h;
	int			i = 0;
	int32_t		tail = 0;

	/* 16 products a step, summed in pairs into 8 int32 lanes */
	for (; i + 16 <= dim; i += 16)
	{
		__m256i		a = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *) (k + i)));
		__m256i		b = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (q + i)));

		s = _mm256_add_epi32(s, _mm256_madd_epi16(a, b));
	}
	for (; i < dim; i++)
		tail += (int32_t) k[i] * q[i];
	h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
	h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
	h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
	return _mm_cvtsi128_si32(h) + tail;
}

/*
 * 64 coordinates a step in two chains (the instruction's latency is
 * several cycles), then 32, then the rest one by one.  Each int32 lane
 * adds four u8 x s8 products per instruction, without saturation.
 */
#define TV_RANK_DOT_VNNI(name, features, dpbusd) \
__attribute__((target(features))) int32_t \
name(const uint8_t *k, const int8_t *q, int dim) \
{ \
	__m256i		s0 = _mm256_setzero_si256(); \
	__m256i		s1 = _mm256_setzero_si256(); \
	__m128i		h; \
	int			i = 0; \
	int32_t		tail = 0; \
\
	for (; i + 64 <= dim; i += 64) \
	{ \
		s0 = dpbusd(s0, _mm256_loadu_si256((const __m256i *) (k + i)), \
					_mm256_loadu_si256((const __m256i *) (q + i))); \
		s1 = dpbusd(s1, _mm256_loadu_si256((const __m256i *) (k + i + 32)), \
					_mm256_loadu_si256((const __m256i *) (q + i + 32))); \
	} \
	for (; i + 32 <= dim; i += 32) \
		s0 = dpbusd(s0, _mm256_loadu_si256((const __m256i *) (k + i)), \
					_mm256_loadu_si256((const __m256i *) (q + i))); \
	for (; i < dim; i++) \
		tail += (int32_t) k[i] * q[i]; \
	s0 = _mm256_add_epi32(s0, s1); \
	h = _mm_add_epi32(_mm256_castsi256_si128(s0), _mm256_extracti128_si256(s0, 1)); \
	h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2))); \
	h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1))); \
	return _mm_cvtsi128_si32(h) + tail; \
}

TV_RANK_DOT_VNNI(tv_rank_dot_avxvnni, "avx2,avxvnni", _mm256_dpbusd_avx_epi32)
TV_RANK_DOT_VNNI(tv_rank_dot_avx512vnni, "avx2,avx512f,avx512vl,avx512vnni", _mm256_dpbusd_epi32)

/*
 * tv_rank_lists with AVX512-VNNI: a row's 4 codes of group g, broadcast,
 * against the 16 centroids' 4 codes of that group in a block, add to the
 * 16 centroids' sums lane by lane, so no sum is ever reduced across lanes.
 * Four rows and up to six blocks at a time: 24 sums, 6 blocks and a row's
 * group in the 32 registers.
 */
#define TV_LIST_BLOCKS	6

/* 4 bytes as an int32, from any address */
static inline int32_t
Load32(const uint8_t *p)
{
	int32_t		v;

	memcpy(&v, p, sizeof(v));
	return v;
}

__attribute__((target("avx2,avx512f,avx512vnni"))) void
tv_rank_lists_avx512vnni(const uint8_t *rows, int nrows, int ld, const int8_t *blocks,
						 int nblocks, int groups, int32_t *out)
{
	const uint8_t *row[4];
	int			ncent = nblocks * 16;

	/* missing rows repeat the first; their sums are not stored */
	for (int r = 0; r < 4; r++)
		row[r] = rows + (size_t) (r < nrows ? r : 0) * ld;
	for (int b0 = 0; b0 < nblocks; b0 += TV_LIST_BLOCKS)
	{
		int			nb = nblocks - b0 < TV_LIST_BLOCKS ? nblocks - b0 : TV_LIST_BLOCKS;
		const int8_t *bp = blocks + (size_t) b0 * groups * 64;
		__m512i		acc[4][TV_LIST_BLOCKS];

#pragma GCC unroll 4
		for (int r = 0; r < 4; r++)
#pragma GCC unroll 6
			for (int b = 0; b < TV_LIST_BLOCKS; b++)
				acc[r][b] = _mm512_setzero_si512();
		if (nb == TV_LIST_BLOCKS)
		{
			for (int g = 0; g < groups; g++)
			{
				__m512i		c[TV_LIST_BLOCKS];

#pragma GCC unroll 6
				for (int b = 0; b < TV_LIST_BLOCKS; b++)
					c[b] = _mm512_loadu_si512(bp + ((size_t) b * groups + g) * 64);
#pragma GCC unroll 4
				for (int r = 0; r < 4; r++)
				{
					__m512i		x = _mm512_set1_epi32(Load32(row[r] + g * 4));

#pragma GCC unroll 6
					for (int b = 0; b < TV_LIST_BLOCKS; b++)
						acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], x, c[b]);
				}
			}
		}
		else
		{
			for (int g = 0; g < groups; g++)
				for (int b = 0; b < nb; b++)
				{
					__m512i		c = _mm512_loadu_si512(bp + ((size_t) b * groups + g) * 64);

					for (int r = 0; r < 4; r++)
						acc[r][b] = _mm512_dpbusd_epi32(acc[r][b],
														_mm512_set1_epi32(Load32(row[r] + g * 4)), c);
				}
		}
		for (int r = 0; r < nrows; r++)
			for (int b = 0; b < nb; b++)
				_mm512_storeu_si512(out + (size_t) r * ncent + (b0 + b) * 16, acc[r][b]);
	}
}

/*
 * The first three butterfly levels (h = 1, 2, 4) of 8 floats in one
 * register, after the scale: tv_fwht_scalar's Radix8, lane for lane.  A
 * subtraction is an addition of the negated value (a sign flip, exact),
 * as in the SSE2 version.
 */
static inline TV_AVX2 __m256
FwhtRadix8Avx2(__m256 x)
{
	const __m256 neg_odd = _mm256_setr_ps(0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f);
	const __m256 neg_hi2 = _mm256_setr_ps(0.0f, 0.0f, -0.0f, -0.0f, 0.0f, 0.0f, -0.0f, -0.0f);
	const __m256 neg_hi4 = _mm256_setr_ps(0.0f, 0.0f, 0.0f, 0.0f, -0.0f, -0.0f, -0.0f, -0.0f);

	/* [x0 + x1, x0 - x1, x2 + x3, x2 - x3] in each half */
	x = _mm256_add_ps(_mm256_moveldup_ps(x),
					  _mm256_xor_ps(_mm256_movehdup_ps(x), neg_odd));
	/* [y0 + y2, y1 + y3, y0 - y2, y1 - y3] in each half */
	x = _mm256_add_ps(_mm256_shuffle_ps(x, x, _MM_SHUFFLE(1, 0, 1, 0)),
					  _mm256_xor_ps(_mm256_shuffle_ps(x, x, _MM_SHUFFLE(3, 2, 3, 2)), neg_hi2));
	/* [lo + hi, lo - hi] */
	return _mm256_add_ps(_mm256_permute2f128_ps(x, x, 0x00),
						 _mm256_xor_ps(_mm256_permute2f128_ps(x, x, 0x11), neg_hi4));
}

/* One butterfly level: (u, v) = (u + v, u - v) */
#define FWHT_BF(u, v) \
	do { __m256 t_ = (u); (u) = _mm256_add_ps(t_, (v)); (v) = _mm256_sub_ps(t_, (v)); } while (0)

/*
 * Three levels (h, 2h, 4h) across the registers x[0..8), x[k] holding the
 * 8 floats at offset k * h: the scalar code's levels in the same order
 * (each level's outputs are the next level's inputs either way)
 */
static inline TV_AVX2 void
FwhtRadix8Across(__m256 *x)
{
	FWHT_BF(x[0], x[1]);
	FWHT_BF(x[2], x[3]);
	FWHT_BF(x[4], x[5]);
	FWHT_BF(x[6], x[7]);
	FWHT_BF(x[0], x[2]);
	FWHT_BF(x[1], x[3]);
	FWHT_BF(x[4], x[6]);
	FWHT_BF(x[5], x[7]);
	FWHT_BF(x[0], x[4]);
	FWHT_BF(x[1], x[5]);
	FWHT_BF(x[2], x[6]);
	FWHT_BF(x[3], x[7]);
}

/*
 * tv_fwht_scalar with 8 floats a register: the first six levels on 64
 * floats at a time without going back to memory, then three levels a
 * pass, then the last one or two.  Every float gets the same additions in
 * the same order as in the scalar code.
 */
TV_AVX2 void
tv_fwht_avx2(float *a, int n, float s, const float *signs)
{
	__m256		vs = _mm256_set1_ps(s);
	__m256		x[8];
	int			h,
				i,
				j,
				k;

	if (n < 64)
	{
		tv_fwht_scalar(a, n, s, signs);
		return;
	}
	for (i = 0; i < n; i += 64)
	{
		for (k = 0; k < 8; k++)
		{
			__m256		m = vs;

			/* +-s: the product is +-(a * s), bit for bit */
			if (signs != NULL)
				m = _mm256_mul_ps(_mm256_loadu_ps(signs + i + 8 * k), vs);
			x[k] = FwhtRadix8Avx2(_mm256_mul_ps(_mm256_loadu_ps(a + i + 8 * k), m));
		}
		FwhtRadix8Across(x);
		for (k = 0; k < 8; k++)
			_mm256_storeu_ps(a + i + 8 * k, x[k]);
	}
	for (h = 64; 8 * h <= n; h <<= 3)
	{
		for (i = 0; i < n; i += 8 * h)
			for (j = i; j < i + h; j += 8)
			{
				for (k = 0; k < 8; k++)
					x[k] = _mm256_loadu_ps(a + j + k * h);
				FwhtRadix8Across(x);
				for (k = 0; k < 8; k++)
					_mm256_storeu_ps(a + j + k * h, x[k]);
			}
	}
	if (4 * h <= n)
	{
		for (j = 0; j < h; j += 8)
		{
			for (k = 0; k < 4; k++)
				x[k] = _mm256_loadu_ps(a + j + k * h);
			FWHT_BF(x[0], x[1]);
			FWHT_BF(x[2], x[3]);
			FWHT_BF(x[0], x[2]);
			FWHT_BF(x[1], x[3]);
			for (k = 0; k < 4; k++)
				_mm256_storeu_ps(a + j + k * h, x[k]);
		}
	}
	else if (2 * h <= n)
	{
		for (j = 0; j < h; j += 8)
		{
			x[0] = _mm256_loadu_ps(a + j);
			x[1] = _mm256_loadu_ps(a + j + h);
			FWHT_BF(x[0], x[1]);
			_mm256_storeu_ps(a + j, x[0]);
			_mm256_storeu_ps(a + j + h, x[1]);
		}
	}
}

/* The codec's thresholds, each in all 8 lanes; returns how many */
static inline TV_AVX2 int
ThresholdsAvx2(const TvCodec *codec, __m256 *thr)
{
	int			nthr = (1 << codec->bits) - 1;

	for (int k = 0; k < nthr; k++)
		thr[k] = _mm256_set1_ps(codec->thresholds[k]);
	return nthr;
}

/* Each value's code: how many thresholds lie below it (a true compare is -1) */
static inline TV_AVX2 __m256i
CellsAvx2(__m256 x, const __m256 *thr, int nthr)
{
	__m256i		c = _mm256_setzero_si256();

	for (int k = 0; k < nthr; k++)
		c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(x, thr[k], _CMP_GT_OQ)));
	return c;
}

/* table[c] for each lane, c < 16: entries 0-7 in lo, 8-15 in hi (4 bits only) */
static inline TV_AVX2 __m256
Lookup16Avx2(__m256 lo, __m256 hi, __m256i c, int bits)
{
	__m256		v = _mm256_permutevar8x32_ps(lo, c);

	if (bits == 4)
		v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(hi, c),
							 _mm256_castsi256_ps(_mm256_cmpgt_epi32(c, _mm256_set1_epi32(7))));
	return v;
}

/* The running sums i % 8 (lanes 0-3 in *dlo, 4-7 in *dhi) += x * y in double */
static inline TV_AVX2 void
LanesAddAvx2(__m256d *dlo, __m256d *dhi, __m256 x, __m256 y)
{
	*dlo = _mm256_add_pd(*dlo, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)),
											 _mm256_cvtps_pd(_mm256_castps256_ps128(y))));
	*dhi = _mm256_add_pd(*dhi, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)),
											 _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1))));
}

/* The eight sums added pairwise, as TvLanes adds them (tvcodec.c) */
static inline TV_AVX2 double
LanesTotalAvx2(__m256d dlo, __m256d dhi)
{
	double		d[8];

	_mm256_storeu_pd(d, dlo);
	_mm256_storeu_pd(d + 4, dhi);
	return ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
}

/*
 * tv_sum_squares_scalar with the eight running sums in two registers; a
 * partial last chunk is padded with zeros, whose squares change no sum
 */
TV_AVX2 double
tv_sum_squares_avx2(const float *v, int n)
{
	__m256d		dlo = _mm256_setzero_pd();
	__m256d		dhi = _mm256_setzero_pd();
	int			i = 0;

	for (; i + 8 <= n; i += 8)
	{
		__m256		x = _mm256_loadu_ps(v + i);

		LanesAddAvx2(&dlo, &dhi, x, x);
	}
	if (i < n)
	{
		float		pad[8] = {0, 0, 0, 0, 0, 0, 0, 0};
		__m256		x;

		memcpy(pad, v + i, sizeof(float) * (n - i));
		x = _mm256_loadu_ps(pad);
		LanesAddAvx2(&dlo, &dhi, x, x);
	}
	return LanesTotalAvx2(dlo, dhi);
}

/* dst[i] = (float) ((double) v[i] * mult), four conversions a register */
TV_AVX2 void
tv_scale_row_avx2(float *dst, const float *v, double mult, int n)
{
	__m256d		m = _mm256_set1_pd(mult);
	int			i = 0;

	for (; i + 4 <= n; i += 4)
		_mm_storeu_ps(dst + i,
					  _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(v + i)), m)));
	for (; i < n; i++)
		dst[i] = (float) ((double) v[i] * mult);
}

/* sum[i] += (double) x[i], four a register: each sum's one addition, as before */
TV_AVX2 void
tv_accumulate_avx2(double *sum, const float *x, int n)
{
	int			i = 0;

	for (; i + 4 <= n; i += 4)
		_mm256_storeu_pd(sum + i, _mm256_add_pd(_mm256_loadu_pd(sum + i),
												_mm256_cvtps_pd(_mm_loadu_ps(x + i))));
	for (; i < n; i++)
		sum[i] += (double) x[i];
}

/*
 * tv_quantize_i8_scalar eight values a register: the same division and
 * rounding to even (the default rounding mode, as rintf's), NaN masked to
 * 0, then the clamp, which the rounded values meet exactly as floats
 */
TV_AVX2 int64_t
tv_quantize_i8_avx2(const float *x, int n, float scale, uint8_t *k)
{
	__m256		s = _mm256_set1_ps(scale);
	__m256		hi = _mm256_set1_ps(127.0f);
	__m256		lo = _mm256_set1_ps(-127.0f);
	__m256i		bias = _mm256_set1_epi32(128);
	__m256i		sq8 = _mm256_setzero_si256();
	int64_t		sq = 0;
	int			i = 0;

	if (!(scale > 0))
	{
		memset(k, 128, n);
		return 0;
	}
	for (; i + 8 <= n; i += 8)
	{
		__m256		f = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), s),
										_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
		__m256i		v;
		__m128i		b;

		f = _mm256_and_ps(f, _mm256_cmp_ps(f, f, _CMP_ORD_Q));
		f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
		v = _mm256_cvtps_epi32(f);
		/* v * v <= 16129: eight lanes of int32 hold 2^17 of them each */
		sq8 = _mm256_add_epi32(sq8, _mm256_mullo_epi32(v, v));
		v = _mm256_add_epi32(v, bias);
		b = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
		b = _mm_packus_epi16(b, b);
		_mm_storel_epi64((__m128i *) (k + i), b);
	}
	{
		int32_t		lanes[8];

		_mm256_storeu_si256((__m256i *) lanes, sq8);
		for (int m = 0; m < 8; m++)
			sq += lanes[m];
	}
	return sq + tv_quantize_i8_scalar(x + i, n - i, scale, k + i);
}

/* y[i..i+n) in 8 lanes, zeros past n */
static inline TV_AVX2 __m256
LoadPaddedAvx2(const float *y, int n)
{
	float		pad[8] = {0, 0, 0, 0, 0, 0, 0, 0};

	if (n == 8)
		return _mm256_loadu_ps(y);
	memcpy(pad, y, sizeof(float) * n);
	return _mm256_loadu_ps(pad);
}

/*
 * tv_quantize_row_scalar, 8 coordinates a register: each y's code, its
 * level by a permute, the products into running sums i % 8, and the 8
 * codes shifted into place and ORed into `bits` bytes.  The last, partial
 * chunk is padded with zeros, whose products (zero) change no sum.
 */
TV_AVX2 double
tv_quantize_row_avx2(const TvCodec *codec, float *y, uint8_t *code)
{
	int			bits = codec->bits;
	int			dim = codec->dim;
	__m256		thr[15];
	int			nthr = ThresholdsAvx2(codec, thr);
	__m256		lev_lo = _mm256_loadu_ps(codec->levels);
	__m256		lev_hi = bits == 4 ? _mm256_loadu_ps(codec->levels + 8) : lev_lo;
	__m256i		shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
											_mm256_set1_epi32(bits));
	__m256d		dlo = _mm256_setzero_pd();
	__m256d		dhi = _mm256_setzero_pd();

	for (int i = 0; i < dim; i += 8, code += bits)
	{
		int			n = dim - i < 8 ? dim - i : 8;
		__m256		x = LoadPaddedAvx2(y + i, n);
		__m256i		c = CellsAvx2(x, thr, nthr);
		__m256		q = Lookup16Avx2(lev_lo, lev_hi, c, bits);
		__m128i		w;
		uint32_t	word;

		LanesAddAvx2(&dlo, &dhi, x, q);
		/* codes do not overlap once shifted, so adding them ORs them */
		c = _mm256_sllv_epi32(c, shifts);
		w = _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
		w = _mm_add_epi32(w, _mm_shuffle_epi32(w, _MM_SHUFFLE(1, 0, 3, 2)));
		w = _mm_add_epi32(w, _mm_shuffle_epi32(w, _MM_SHUFFLE(2, 3, 0, 1)));
		word = (uint32_t) _mm_cvtsi128_si32(w);
		if (n == 8)
		{
			_mm256_storeu_ps(y + i, q);
			memcpy(code, &word, bits);
		}
		else
		{
			float		out[8];

			/* the padding's codes, past the n codes' bits, are not written */
			_mm256_storeu_ps(out, q);
			memcpy(y + i, out, sizeof(float) * n);
			word &= (1u << (n * bits)) - 1;
			memcpy(code, &word, (n * bits + 7) / 8);
		}
	}
	return LanesTotalAvx2(dlo, dhi);
}

/*
 * tv_refine_row_scalar 8 coordinates a register: each y's cell, its lower
 * end and step by permutes, the step index clamped in floats before
 * truncation (the same index), ytilde, and the products into running sums
 * i % 8 as tv_quantize_row_avx2 keeps them.
 */
TV_AVX2 double
tv_refine_row_avx2(const TvCodec *codec, const float *y, uint8_t *nib)
{
	int			bits = codec->bits;
	int			dim = codec->dim;
	float		lo[16];
	float		step[16];
	__m256		thr[15];
	int			nthr = ThresholdsAvx2(codec, thr);
	__m256		lo_lo,
				lo_hi,
				st_lo,
				st_hi;
	__m256		zero = _mm256_setzero_ps();
	__m256		fifteen = _mm256_set1_ps(15.0f);
	__m256		half = _mm256_set1_ps(0.5f);
	__m256d		dlo = _mm256_setzero_pd();
	__m256d		dhi = _mm256_setzero_pd();

	memset(lo, 0, sizeof(lo));
	memset(step, 0, sizeof(step));
	tv_refine_cells(codec, lo, step);
	lo_lo = _mm256_loadu_ps(lo);
	lo_hi = _mm256_loadu_ps(lo + 8);
	st_lo = _mm256_loadu_ps(step);
	st_hi = _mm256_loadu_ps(step + 8);
	for (int i = 0; i < dim; i += 8)
	{
		int			n = dim - i < 8 ? dim - i : 8;
		__m256		x = LoadPaddedAvx2(y + i, n);
		__m256i		c = CellsAvx2(x, thr, nthr);
		__m256		l = Lookup16Avx2(lo_lo, lo_hi, c, bits);
		__m256		s = Lookup16Avx2(st_lo, st_hi, c, bits);
		__m256		pos = _mm256_div_ps(_mm256_sub_ps(x, l), s);
		__m256i		fi;
		int32_t		f[8];
		int			k;

		/* >= 15: 15; > 0: truncated; else 0 (pos is never NaN) */
		fi = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(pos, zero), fifteen));
		/* ytilde; the padding's products are zero, which changes no sum */
		LanesAddAvx2(&dlo, &dhi, x,
					 _mm256_add_ps(l, _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(fi), half), s)));
		_mm256_storeu_si256((__m256i *) f, fi);
		for (k = 0; k + 1 < n; k += 2)
			nib[(i + k) >> 1] = (uint8_t) (f[k] | (f[k + 1] << 4));
		if (k < n)
			nib[(i + k) >> 1] = (uint8_t) f[k];
	}
	return LanesTotalAvx2(dlo, dhi);
}


/* Float products for lists, 8 lanes */
#define TV_AVX2_FMA __attribute__((target("avx2,fma")))

TV_AVX2_FMA
static inline float
HorizontalSum(__m256 v)
{
	__m128		lo = _mm256_castps256_ps128(v);
	__m128		hi = _mm256_extractf128_ps(v, 1);

	lo = _mm_add_ps(lo, hi);
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
	return _mm_cvtss_f32(lo);
}

TV_AVX2_FMA
float
tv_dot_avx2(const float *a, const float *b, int dim)
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

TV_AVX2_FMA
float
tv_l2sq_avx2(const float *a, const float *b, int dim)
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

/* int32 masks: loading 8 from (tail_mask + 8 - r) enables the first r lanes */
static const int32_t tail_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* out[0..7] = the horizontal sums of a0..a7, in one vector */
TV_AVX2_FMA
static inline void
Sum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
	 __m256 a4, __m256 a5, __m256 a6, __m256 a7, float *out)
{
	__m256		u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
	__m256		u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));

	/* u0 = [a0..a3 low halves | a0..a3 high halves], u1 likewise for a4..a7 */
	_mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
										_mm256_permute2f128_ps(u0, u1, 0x31)));
}

/* out[0..3] = the horizontal sums of a0..a3 */
TV_AVX2_FMA
static inline void
Sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3, float *out)
{
	__m256		u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));

	_mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
}

/*
 * Dot products of 4 vectors (x, stride dim) with 3 centroids (c, stride
 * dim) into out[4 * 3], for one vector width: twelve accumulators share
 * every load, so the tile runs on the FMA units instead of on loads, which
 * is what makes the assignment of a whole table to hundreds of lists
 * cheap.  A dimension that is not a multiple of WIDTH ends with one step
 * of masked loads (MASK_T mask = TAILMASK(rest), loaded by MASKLOAD), which
 * read nothing past the vectors, and the twelve sums are reduced together
 * (FOLD brings a register to 8 lanes), which matters at 100 dimensions:
 * there a scalar tail and twelve separate horizontal sums cost as much as
 * the products.
 */
#define TV_TILE_STEP(VEC, FMADD, LOAD) \
	do { \
		VEC			v0 = LOAD(c0 + i); \
		VEC			v1 = LOAD(c1 + i); \
		VEC			v2 = LOAD(c2 + i); \
		VEC			xv; \
		xv = LOAD(x0 + i); \
		a00 = FMADD(xv, v0, a00); \
		a01 = FMADD(xv, v1, a01); \
		a02 = FMADD(xv, v2, a02); \
		xv = LOAD(x1 + i); \
		a10 = FMADD(xv, v0, a10); \
		a11 = FMADD(xv, v1, a11); \
		a12 = FMADD(xv, v2, a12); \
		xv = LOAD(x2 + i); \
		a20 = FMADD(xv, v0, a20); \
		a21 = FMADD(xv, v1, a21); \
		a22 = FMADD(xv, v2, a22); \
		xv = LOAD(x3 + i); \
		a30 = FMADD(xv, v0, a30); \
		a31 = FMADD(xv, v1, a31); \
		a32 = FMADD(xv, v2, a32); \
	} while (0)

#define TV_DOT_TILE(NAME, ATTR, VEC, WIDTH, SETZERO, LOADU, FMADD, MASK_T, TAILMASK, MASKLOAD, FOLD) \
ATTR void \
NAME(const float *x, const float *c, int dim, float *out) \
{ \
	const float *x0 = x, \
			   *x1 = x + dim, \
			   *x2 = x + 2 * dim, \
			   *x3 = x + 3 * dim; \
	const float *c0 = c, \
			   *c1 = c + dim, \
			   *c2 = c + 2 * dim; \
	VEC			a00 = SETZERO(), a01 = SETZERO(), a02 = SETZERO(); \
	VEC			a10 = SETZERO(), a11 = SETZERO(), a12 = SETZERO(); \
	VEC			a20 = SETZERO(), a21 = SETZERO(), a22 = SETZERO(); \
	VEC			a30 = SETZERO(), a31 = SETZERO(), a32 = SETZERO(); \
	int			i = 0; \
\
	for (; i + WIDTH <= dim; i += WIDTH) \
		TV_TILE_STEP(VEC, FMADD, LOADU); \
	if (i < dim) \
	{ \
		MASK_T		mask = TAILMASK(dim - i); \
\
		TV_TILE_STEP(VEC, FMADD, MASKLOAD); \
	} \
	Sum8(FOLD(a00), FOLD(a01), FOLD(a02), FOLD(a10), \
		 FOLD(a11), FOLD(a12), FOLD(a20), FOLD(a21), out); \
	Sum4(FOLD(a22), FOLD(a30), FOLD(a31), FOLD(a32), out + 8); \
}

/* 8 lanes; the mask's first r int32 lanes are set */
#define TV_TAILMASK_AVX2(r) _mm256_loadu_si256((const __m256i *) (tail_mask + 8 - (r)))
#define TV_MASKLOAD_AVX2(p) _mm256_maskload_ps((p), mask)
#define TV_FOLD_AVX2(v) (v)

TV_DOT_TILE(tv_dot_tile_avx2, TV_AVX2_FMA, __m256, 8, _mm256_setzero_ps, _mm256_loadu_ps,
			_mm256_fmadd_ps, __m256i, TV_TAILMASK_AVX2, TV_MASKLOAD_AVX2, TV_FOLD_AVX2)

#define TV_AVX512 __attribute__((target("avx2,fma,avx512f")))

/* The two halves of a ZMM register added: 16 lanes to 8 */
static inline TV_AVX512 __m256
FoldAvx512(__m512 v)
{
	return _mm256_add_ps(_mm512_castps512_ps256(v),
						 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/*
 * The tile with 16 lanes: twice the products an instruction, with the
 * same twelve accumulators (of 32 registers).  At 768 dimensions about 1.5
 * times as fast as AVX2 on a core with 512-bit units when the rows start
 * on cache lines, and half as fast when they do not (a 64-byte load then
 * always spans two lines): tv_dot_tile_aligned, for callers that align
 * their rows.
 */
#define TV_TAILMASK_AVX512(r) ((__mmask16) ((1u << (r)) - 1))
#define TV_MASKLOAD_AVX512(p) _mm512_maskz_loadu_ps(mask, (p))

TV_DOT_TILE(tv_dot_tile_avx512, TV_AVX512, __m512, 16, _mm512_setzero_ps, _mm512_loadu_ps,
			_mm512_fmadd_ps, __mmask16, TV_TAILMASK_AVX512, TV_MASKLOAD_AVX512, FoldAvx512)

/* a ^ b on the bits of floats (AVX-512F has no xor_ps) */
static inline TV_AVX512 __m512
XorAvx512(__m512 a, __m512 b)
{
	return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a),
												_mm512_castps_si512(b)));
}

/*
 * The first four butterfly levels (h = 1, 2, 4, 8) of 16 floats in one
 * register, after the scale: FwhtRadix8Avx2's three in each half, then the
 * halves.  A subtraction is an addition of the negated value, exact.
 */
static inline TV_AVX512 __m512
FwhtRadix16Avx512(__m512 x)
{
	const __m512 neg_odd = _mm512_setr_ps(0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f,
										  0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f);
	const __m512 neg_hi2 = _mm512_setr_ps(0.0f, 0.0f, -0.0f, -0.0f, 0.0f, 0.0f, -0.0f, -0.0f,
										  0.0f, 0.0f, -0.0f, -0.0f, 0.0f, 0.0f, -0.0f, -0.0f);
	const __m512 neg_hi4 = _mm512_setr_ps(0.0f, 0.0f, 0.0f, 0.0f, -0.0f, -0.0f, -0.0f, -0.0f,
										  0.0f, 0.0f, 0.0f, 0.0f, -0.0f, -0.0f, -0.0f, -0.0f);
	const __m512 neg_hi8 = _mm512_setr_ps(0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f,
										  -0.0f, -0.0f, -0.0f, -0.0f, -0.0f, -0.0f, -0.0f, -0.0f);

	/* h = 1 and 2 within each 128-bit lane, as in the AVX2 version */
	x = _mm512_add_ps(_mm512_moveldup_ps(x), XorAvx512(_mm512_movehdup_ps(x), neg_odd));
	x = _mm512_add_ps(_mm512_shuffle_ps(x, x, _MM_SHUFFLE(1, 0, 1, 0)),
					  XorAvx512(_mm512_shuffle_ps(x, x, _MM_SHUFFLE(3, 2, 3, 2)), neg_hi2));
	/* h = 4: 128-bit lanes [0 + 1, 0 - 1, 2 + 3, 2 - 3] */
	x = _mm512_add_ps(_mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(2, 2, 0, 0)),
					  XorAvx512(_mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(3, 3, 1, 1)), neg_hi4));
	/* h = 8: [lo + hi, lo - hi] */
	return _mm512_add_ps(_mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(1, 0, 1, 0)),
						 XorAvx512(_mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(3, 2, 3, 2)), neg_hi8));
}

#define FWHT_BF512(u, v) \
	do { __m512 t_ = (u); (u) = _mm512_add_ps(t_, (v)); (v) = _mm512_sub_ps(t_, (v)); } while (0)

/* FwhtRadix8Across with 16 floats a register */
static inline TV_AVX512 void
FwhtRadix8Across512(__m512 *x)
{
	FWHT_BF512(x[0], x[1]);
	FWHT_BF512(x[2], x[3]);
	FWHT_BF512(x[4], x[5]);
	FWHT_BF512(x[6], x[7]);
	FWHT_BF512(x[0], x[2]);
	FWHT_BF512(x[1], x[3]);
	FWHT_BF512(x[4], x[6]);
	FWHT_BF512(x[5], x[7]);
	FWHT_BF512(x[0], x[4]);
	FWHT_BF512(x[1], x[5]);
	FWHT_BF512(x[2], x[6]);
	FWHT_BF512(x[3], x[7]);
}

/*
 * tv_fwht_avx2 with 16 floats a register: the first seven levels on 128
 * floats at a time, then three levels a pass, then the last one or two.
 * The levels run in the scalar code's order, each float getting the same
 * additions, so it is bit-identical.  A 512-point transform (784
 * dimensions) is two passes instead of the AVX2 version's two of twice
 * as many instructions.
 */
TV_AVX512 void
tv_fwht_avx512(float *a, int n, float s, const float *signs)
{
	__m512		vs = _mm512_set1_ps(s);
	__m512		x[8];
	int			h,
				i,
				j,
				k;

	if (n < 128)
	{
		tv_fwht_avx2(a, n, s, signs);
		return;
	}
	for (i = 0; i < n; i += 128)
	{
		for (k = 0; k < 8; k++)
		{
			__m512		m = vs;

			if (signs != NULL)
				m = _mm512_mul_ps(_mm512_loadu_ps(signs + i + 16 * k), vs);
			x[k] = FwhtRadix16Avx512(_mm512_mul_ps(_mm512_loadu_ps(a + i + 16 * k), m));
		}
		FwhtRadix8Across512(x);
		for (k = 0; k < 8; k++)
			_mm512_storeu_ps(a + i + 16 * k, x[k]);
	}
	for (h = 128; 8 * h <= n; h <<= 3)
	{
		for (i = 0; i < n; i += 8 * h)
			for (j = i; j < i + h; j += 16)
			{
				for (k = 0; k < 8; k++)
					x[k] = _mm512_loadu_ps(a + j + k * h);
				FwhtRadix8Across512(x);
				for (k = 0; k < 8; k++)
					_mm512_storeu_ps(a + j + k * h, x[k]);
			}
	}
	if (4 * h <= n)
	{
		for (j = 0; j < h; j += 16)
		{
			for (k = 0; k < 4; k++)
				x[k] = _mm512_loadu_ps(a + j + k * h);
			FWHT_BF512(x[0], x[1]);
			FWHT_BF512(x[2], x[3]);
			FWHT_BF512(x[0], x[2]);
			FWHT_BF512(x[1], x[3]);
			for (k = 0; k < 4; k++)
				_mm512_storeu_ps(a + j + k * h, x[k]);
		}
	}
	else if (2 * h <= n)
	{
		for (j = 0; j < h; j += 16)
		{
			x[0] = _mm512_loadu_ps(a + j);
			x[1] = _mm512_loadu_ps(a + j + h);
			FWHT_BF512(x[0], x[1]);
			_mm512_storeu_ps(a + j, x[0]);
			_mm512_storeu_ps(a + j + h, x[1]);
		}
	}
}

/*
 * tv_list_row_codes_scalar 16 coordinates a register: the largest |x| and
 * the sum of squares in one pass, the codes in a second (rounded to even
 * by the conversion, clamped, biased, narrowed to bytes)
 */
TV_AVX512 bool
tv_list_row_codes_avx512(const float *x, int dim, float least, float limit, uint8_t *k,
						 float *scale, float *norm)
{
	__m512		vmax = _mm512_setzero_ps();
	__m512		vsum = _mm512_setzero_ps();
	__m512		vinv;
	__m512i		lo = _mm512_set1_epi32(-127);
	__m512i		hi = _mm512_set1_epi32(127);
	__m512i		bias = _mm512_set1_epi32(128);
	float		amax,
				sum;
	int			i;

	for (i = 0; i + 16 <= dim; i += 16)
	{
		__m512		v = _mm512_loadu_ps(x + i);

		vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
		vsum = _mm512_fmadd_ps(v, v, vsum);
	}
	if (i < dim)
	{
		__mmask16	m = (__mmask16) ((1u << (dim - i)) - 1);
		__m512		v = _mm512_maskz_loadu_ps(m, x + i);

		vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
		vsum = _mm512_fmadd_ps(v, v, vsum);
	}
	amax = _mm512_reduce_max_ps(vmax);
	sum = _mm512_reduce_add_ps(vsum);
	/* a NaN or an overflow leaves the sum not finite */
	if (!ListRowFits(amax, sum, least, limit))
		return false;
	ListRowBounds(dim, amax, sum, scale, norm);
	vinv = _mm512_set1_ps(amax > 0 ? 127 / amax : 0);
	for (i = 0; i < dim; i += 16)
	{
		__mmask16	m = (dim - i >= 16) ? 0xFFFF : (__mmask16) ((1u << (dim - i)) - 1);
		__m512i		q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv));

		q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), bias);
		_mm512_mask_cvtepi32_storeu_epi8(k + i, m, q);
	}
	return true;
}

/*
 * tv_list_candidates_scalar 16 lists a register; the interval's ends come
 * from fused multiply-adds here, within the bounds' slack either way
 */
TV_AVX512 int
tv_list_candidates_avx512(const TvListBounds *lb, const int32_t *qd, float sx, float nx,
						  float exb, uint16_t *masks)
{
	int			nblocks = (lb->lists + 15) / 16;
	__m512		vsx = _mm512_set1_ps(sx);
	__m512		vnx = _mm512_set1_ps(nx);
	__m512		vexb = _mm512_set1_ps(exb);
	__m512		lowest = _mm512_set1_ps(INFINITY);
	__m512		vthr;
	float		thr;
	int			count = 0;

#define TV_LIST_INTERVAL(b, approx, bound) \
	do { \
		__m512		qf_ = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(qd + (b) * 16), \
															   _mm512_slli_epi32(_mm512_loadu_si512(lb->sum + (b) * 16), 7))); \
		(approx) = _mm512_fnmadd_ps(_mm512_mul_ps(vsx, _mm512_loadu_ps(lb->scale + (b) * 16)), qf_, \
									_mm512_loadu_ps(lb->norm + (b) * 16)); \
		(bound) = _mm512_fmadd_ps(vnx, _mm512_loadu_ps(lb->err + (b) * 16), \
								  _mm512_fmadd_ps(vexb, _mm512_loadu_ps(lb->full + (b) * 16), \
												  _mm512_loadu_ps(lb->slack + (b) * 16))); \
	} while (0)

	for (int b = 0; b < nblocks; b++)
	{
		__mmask16	m = ListLanes(lb->lists, b);
		__m512		approx,
					bound;

		TV_LIST_INTERVAL(b, approx, bound);
		lowest = _mm512_mask_min_ps(lowest, m, lowest, _mm512_add_ps(approx, bound));
	}
	thr = _mm512_reduce_min_ps(lowest);
	if (!(thr < INFINITY))
		return -1;
	vthr = _mm512_set1_ps(thr);
	for (int b = 0; b < nblocks; b++)
	{
		__m512		approx,
					bound;

		TV_LIST_INTERVAL(b, approx, bound);
		masks[b] = _mm512_mask_cmp_ps_mask(ListLanes(lb->lists, b),
										   _mm512_sub_ps(approx, bound), vthr, _CMP_LE_OQ);
		count += __builtin_popcount(masks[b]);
	}
#undef TV_LIST_INTERVAL
	return count;
}

#else							/* !TV_X86 */

bool
tv_kernels_have_avx2(void)
{
	return false;
}

/* Never chosen here; kept so the symbols exist on every platform */
double
tv_refine_row_avx2(const TvCodec *codec, const float *y, uint8_t *nib)
{
	return tv_refine_row_scalar(codec, y, nib);
}

double
tv_quantize_row_avx2(const TvCodec *codec, float *y, uint8_t *code)
{
	return tv_quantize_row_scalar(codec, y, code);
}

void
tv_fwht_avx2(float *a, int n, float s, const float *signs)
{
	tv_fwht_scalar(a, n, s, signs);
}

void
tv_fwht_avx512(float *a, int n, float s, const float *signs)
{
	tv_fwht_scalar(a, n, s, signs);
}

double
tv_sum_squares_avx2(const float *v, int n)
{
	return tv_sum_squares_scalar(v, n);
}

void
tv_accumulate_avx2(double *sum, const float *x, int n)
{
	tv_accumulate_scalar(sum, x, n);
}

int64_t
tv_quantize_i8_avx2(const float *x, int n, float scale, uint8_t *k)
{
	return tv_quantize_i8_scalar(x, n, scale, k);
}

void
tv_scale_row_avx2(float *dst, const float *v, double mult, int n)
{
	tv_scale_row_scalar(dst, v, mult, n);
}

void
tv_score_block_avx2(const TvQueryLut *lut, const uint8_t *block_codes,
					float *out)
{
	tv_score_block_scalar(lut, block_codes, out);
}

void
tv_sum_groups_avx2(const TvQueryLut *lut, const uint8_t *codes, int g0,
				   int ngroups, uint32_t *sums)
{
	tv_sum_groups_scalar(lut, codes, g0, ngroups, sums);
}

float
tv_refine_block_ip_avx2(const TvCodec *codec, const uint8_t *block_codes,
						int lane, const uint8_t *refine, const float *qr,
						float *sd)
{
	return tv_refine_block_ip_scalar(codec, block_codes, lane, refine, qr, sd);
}

void
tv_quantize_lut_avx2(const TvCodec *codec, const float *qr, double inv,
					 double rstep, uint8_t *lut)
{
	tv_quantize_lut_scalar(codec, qr, inv, rstep, lut);
}

bool
tv_kernels_have_avxvnni(void)
{
	return false;
}

bool
tv_kernels_have_avx512vnni(void)
{
	return false;
}

int32_t
tv_rank_dot_avx2(const uint8_t *k, const int8_t *q, int dim)
{
	return tv_rank_dot_scalar(k, q, dim);
}

int32_t
tv_rank_dot_avxvnni(const uint8_t *k, const int8_t *q, int dim)
{
	return tv_rank_dot_scalar(k, q, dim);
}

void
tv_rank_lists_avx512vnni(const uint8_t *rows, int nrows, int ld, const int8_t *blocks,
						 int nblocks, int groups, int32_t *out)
{
	tv_rank_lists_scalar(rows, nrows, ld, blocks, nblocks, groups, out);
}

bool
tv_list_row_codes_avx512(const float *x, int dim, float least, float limit, uint8_t *k,
						 float *scale, float *norm)
{
	return tv_list_row_codes_scalar(x, dim, least, limit, k, scale, norm);
}

int
tv_list_candidates_avx512(const TvListBounds *lb, const int32_t *qd, float sx, float nx,
						  float exb, uint16_t *masks)
{
	return tv_list_candidates_scalar(lb, qd, sx, nx, exb, masks);
}

int32_t
tv_rank_dot_avx512vnni(const uint8_t *k, const int8_t *q, int dim)
{
	return tv_rank_dot_scalar(k, q, dim);
}

float
tv_dot_avx2(const float *a, const float *b, int dim)
{
	return tv_dot_scalar(a, b, dim);
}

float
tv_l2sq_avx2(const float *a, const float *b, int dim)
{
	return tv_l2sq_scalar(a, b, dim);
}

void
tv_dot_tile_avx2(const float *x, const float *c, int dim, float *out)
{
	tv_dot_tile_scalar(x, c, dim, out);
}

bool
tv_kernels_have_avx512f(void)
{
	return false;
}

void
tv_dot_tile_avx512(const float *x, const float *c, int dim, float *out)
{
	tv_dot_tile_scalar(x, c, dim, out);
}

#endif							/* TV_X86 */

void
tv_kernels_init(void)
{
	bool		avx2 = tv_kernels_have_avx2();

	tv_score_block = avx2 ? tv_score_block_avx2 : tv_score_block_scalar;
	tv_sum_groups = avx2 ? tv_sum_groups_avx2 : tv_sum_groups_scalar;
	tv_refine_block_ip = avx2 ? tv_refine_block_ip_avx2 : tv_refine_block_ip_scalar;
	tv_quantize_lut = avx2 ? tv_quantize_lut_avx2 : tv_quantize_lut_scalar;
	tv_fwht = avx2 ? tv_fwht_avx2 : tv_fwht_scalar;
	tv_quantize_row = avx2 ? tv_quantize_row_avx2 : tv_quantize_row_scalar;
	tv_sum_squares = avx2 ? tv_sum_squares_avx2 : tv_sum_squares_scalar;
	tv_scale_row = avx2 ? tv_scale_row_avx2 : tv_scale_row_scalar;
	tv_accumulate = avx2 ? tv_accumulate_avx2 : tv_accumulate_scalar;
	tv_quantize_i8 = avx2 ? tv_quantize_i8_avx2 : tv_quantize_i8_scalar;
	tv_refine_row = avx2 ? tv_refine_row_avx2 : tv_refine_row_scalar;
	if (tv_kernels_have_avxvnni())
		tv_rank_dot = tv_rank_dot_avxvnni;
	else if (tv_kernels_have_avx512vnni())
		tv_rank_dot = tv_rank_dot_avx512vnni;
	else
		tv_rank_dot = avx2 ? tv_rank_dot_avx2 : tv_rank_dot_scalar;
	tv_dot = avx2 ? tv_dot_avx2 : tv_dot_scalar;
	tv_l2sq = avx2 ? tv_l2sq_avx2 : tv_l2sq_scalar;
	tv_dot_tile = avx2 ? tv_dot_tile_avx2 : tv_dot_tile_scalar;
	tv_dot_tile_aligned = tv_dot_tile;
	if (tv_kernels_have_avx512f())
	{
		tv_dot_tile_aligned = tv_dot_tile_avx512;
		tv_fwht = tv_fwht_avx512;
	}
}

const char *
tv_kernels_name(void)
{
	return tv_score_block == tv_score_block_avx2 ? "avx2" : "scalar";
}
