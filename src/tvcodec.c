/*
 * tvcodec.c
 *	  TurboQuant codec: the seeded rotation, the Lloyd-Max codebooks, row
 *	  codes, query lookup tables and the 32-lane block layout.
 *
 * Invariants this file keeps:
 *	- Everything that shapes a code is a pure function of (seed, dim, bits):
 *	  a private PRNG (splitmix64 seeding xoshiro256**), codebook constants
 *	  written out as literals (tools/lloyd_max.py derives them), and only
 *	  IEEE-exact arithmetic (+, -, *, /, sqrt) in a fixed order.  No libm
 *	  transcendental function and no FMA (-ffp-contract=off, and a pragma
 *	  for clang) can move a value across a decision threshold on another
 *	  machine.  SIMD paths do the scalar code's operations exactly.
 *	- The rotation R is orthogonal and keeps exactly dim coordinates.  It is
 *	  `rounds` repetitions of: a seeded permutation, random signs, a
 *	  normalised Walsh-Hadamard transform on the first W coordinates, random
 *	  signs, and the same transform on the last W coordinates, W being the
 *	  largest power of two <= dim.  The two windows overlap, so every
 *	  coordinate is mixed whatever dim is.  tv_codec_rotate applies each
 *	  step in place, needing no scratch; the encoder and the query path,
 *	  which have scratch, permute by a faster gather with the same result.
 *	- The block layout (docs/CODEC.md) is what tvkernels.c reads; the LUT a
 *	  query gets is built here to match it, including padding.
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

#if defined(__SSE2__) && !defined(TV_CODEC_NO_SIMD)
#include <immintrin.h>
#endif

/* Three rounds mix as well as a dense random rotation (docs/CODEC.md) */
#define TV_ROTATION_ROUNDS	3

/*
 * Lloyd-Max levels for N(0, 1), from tools/lloyd_max.py.  MSE per unit
 * variance: 0.117482 (2 bits), 0.034548 (3 bits), 0.009501 (4 bits).
 */
static const float levels2[4] = {
	-1.510417608e+00f, -4.527800346e-01f, 4.527800346e-01f, 1.510417608e+00f,
};

static const float levels3[8] = {
	-2.151945705e+00f, -1.343909279e+00f, -7.560052812e-01f, -2.450941789e-01f,
	2.450941789e-01f, 7.560052812e-01f, 1.343909279e+00f, 2.151945705e+00f,
};

static const float levels4[16] = {
	-2.732589571e+00f, -2.069017227e+00f, -1.618046386e+00f, -1.256231197e+00f,
	-9.423404565e-01f, -6.567591185e-01f, -3.880482995e-01f, -1.283950299e-01f,
	1.283950299e-01f, 3.880482995e-01f, 6.567591185e-01f, 9.423404565e-01f,
	1.256231197e+00f, 1.618046386e+00f, 2.069017227e+00f, 2.732589571e+00f,
};

/* The tables area is read as floats, then uint16 entries */
_Static_assert(offsetof(TvCodec, tables) % sizeof(float) == 0,
			   "TvCodec.tables must be float-aligned");

/* ----------------------------------------------------------------
 * Private PRNG: splitmix64 expands (seed, dim) into xoshiro256** state
 * ----------------------------------------------------------------
 */
typedef struct TvRng
{
	uint64_t	s[4];
} TvRng;

static uint64_t
SplitMix64(uint64_t *state)
{
	uint64_t	z = (*state += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static inline uint64_t
Rotl64(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t
RngNext(TvRng *rng)
{
	uint64_t   *s = rng->s;
	uint64_t	result = Rotl64(s[1] * 5, 7) * 9;
	uint64_t	t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = Rotl64(s[3], 45);
	return result;
}

/* The dimension is mixed in so each dim gets an unrelated rotation */
static void
RngSeed(TvRng *rng, uint64_t seed, int dim)
{
	uint64_t	sm = seed ^ ((uint64_t) dim * UINT64_C(0xD1B54A32D192ED03));
	int			i;

	for (i = 0; i < 4; i++)
		rng->s[i] = SplitMix64(&sm);
}

/* Uniform in [0, n), n <= 2^32, by multiply-shift (Lemire) */
static inline uint32_t
RngBelow(TvRng *rng, uint32_t n)
{
	return (uint32_t) (((RngNext(rng) >> 32) * (uint64_t) n) >> 32);
}

/* ----------------------------------------------------------------
 * Codec tables
 *
 * tables holds, for each round r, the two sign vectors (dim floats each,
 * +1.0f or -1.0f: a multiply vectorizes where a bit test would not), for
 * all rounds first; then, per round, dim uint16 Fisher-Yates swap partners
 * (entry i, 1 <= i < dim, is the j <= i swapped with i; entry 0 unused);
 * then, per round, the same permutation as a gather map (after the swaps,
 * position i holds what was at map[i]).  The swaps permute in place, for
 * callers without scratch space; the map is faster when there is some.
 * ----------------------------------------------------------------
 */
static inline const float *
CodecSigns(const TvCodec *codec, int round, int step)
{
	const float *signs = (const float *) codec->tables;

	return signs + (size_t) (round * 2 + step) * codec->dim;
}

static inline const uint16_t *
CodecSwaps(const TvCodec *codec, int round)
{
	const uint16_t *swaps;

	swaps = (const uint16_t *) (codec->tables + sizeof(float) *
								(size_t) codec->rounds * 2 * codec->dim);
	return swaps + (size_t) round * codec->dim;
}

static inline const uint16_t *
CodecGather(const TvCodec *codec, int round)
{
	return CodecSwaps(codec, codec->rounds) + (size_t) round * codec->dim;
}

/*
 * Bytes of a TvCodec for dim; a dim out of range is clamped so the answer is
 * always a safe allocation size.
 */
size_t
tv_codec_size(int dim)
{
	if (dim < TV_CODEC_MIN_DIM)
		dim = TV_CODEC_MIN_DIM;
	if (dim > TV_CODEC_MAX_DIM)
		dim = TV_CODEC_MAX_DIM;
	return offsetof(TvCodec, tables) +
		(size_t) TV_ROTATION_ROUNDS * dim * (2 * sizeof(float) + 2 * sizeof(uint16_t));
}

/* Kernel groups of a 32-lane block and their size, for in-range dim and bits */
static void
BlockGroups(int dim, int bits, int *ngroups, int *group_bytes)
{
	switch (bits)
	{
		case 2:
			*ngroups = (dim + 1) / 2;
			*group_bytes = 16;
			break;
		case 3:
			*ngroups = dim;
			*group_bytes = 12;
			break;
		default:
			*ngroups = dim;
			*group_bytes = 16;
			break;
	}
}

/*
 * TvCodec.block_code_bytes for (dim, bits) without building a codec, so a
 * reader can check a stored block size cheaply; -1 when out of range.
 */
int
tv_codec_block_code_bytes(int dim, int bits)
{
	int			ngroups;
	int			group_bytes;

	if (dim < TV_CODEC_MIN_DIM || dim > TV_CODEC_MAX_DIM ||
		bits < TV_CODEC_MIN_BITS || bits > TV_CODEC_MAX_BITS)
		return -1;
	BlockGroups(dim, bits, &ngroups, &group_bytes);
	return ngroups * group_bytes;
}


/*
 * Fill in the codec for (dim, bits, seed).  The caller checks the ranges
 * (TV_CODEC_MIN_DIM..TV_CODEC_MAX_DIM, TV_CODEC_MIN_BITS..TV_CODEC_MAX_BITS);
 * out-of-range values are clamped rather than trusted.
 */
void
tv_codec_init(TvCodec *codec, int dim, int bits, uint64_t seed)
{
	const float *levels;
	int			nlevels;
	TvRng		rng;
	float	   *signs;
	uint16_t   *swaps;
	uint16_t   *gather;
	int			r,
				i;

	if (dim < TV_CODEC_MIN_DIM)
		dim = TV_CODEC_MIN_DIM;
	if (dim > TV_CODEC_MAX_DIM)
		dim = TV_CODEC_MAX_DIM;
	if (bits < TV_CODEC_MIN_BITS)
		bits = TV_CODEC_MIN_BITS;
	if (bits > TV_CODEC_MAX_BITS)
		bits = TV_CODEC_MAX_BITS;

	/* Zero first, so padding bytes are deterministic too */
	memset(codec, 0, tv_codec_size(dim));
	codec->dim = dim;
	codec->bits = bits;
	codec->seed = seed;
	codec->code_bytes = (dim * bits + 7) / 8;
	BlockGroups(dim, bits, &codec->ngroups, &codec->group_bytes);
	switch (bits)
	{
		case 2:
			levels = levels2;
			break;
		case 3:
			levels = levels3;
			break;
		default:
			levels = levels4;
			break;
	}
	codec->block_code_bytes = codec->ngroups * codec->group_bytes;
	codec->window = 1;
	while (codec->window * 2 <= dim)
		codec->window *= 2;
	codec->rounds = TV_ROTATION_ROUNDS;

	nlevels = 1 << bits;
	for (i = 0; i < nlevels; i++)
		codec->levels[i] = levels[i];
	/* Midpoints: the nearest level wins; IEEE makes this exact everywhere */
	for (i = 0; i < nlevels - 1; i++)
		codec->thresholds[i] = 0.5f * (levels[i] + levels[i + 1]);

	/* The refinement's cells, as tv_codec_encode_refine cuts them */
	{
		float		lo[16];
		float		step[16];
		int			c,
					f;

		tv_refine_cells(codec, lo, step);
		for (c = 0; c < nlevels; c++)
		{
			codec->refine_step[c] = step[c];
			for (f = 0; f < 16; f++)
				codec->refine_value[c << 4 | f] = lo[c] + ((float) f + 0.5f) * step[c];
		}
	}

	/* The rotation depends on (seed, dim) only, not on bits */
	RngSeed(&rng, seed, dim);
	signs = (float *) codec->tables;
	swaps = (uint16_t *) (codec->tables + sizeof(float) *
						  (size_t) codec->rounds * 2 * dim);
	gather = swaps + (size_t) codec->rounds * dim;
	for (r = 0; r < codec->rounds; r++)
	{
		uint16_t   *sw = swaps + (size_t) r * dim;
		uint16_t   *map = gather + (size_t) r * dim;
		float	   *sg = signs + (size_t) r * 2 * dim;
		uint64_t	word = 0;

		for (i = dim - 1; i >= 1; i--)
			sw[i] = (uint16_t) RngBelow(&rng, (uint32_t) i + 1);
		/* The gather map: the same swaps applied to the identity */
		for (i = 0; i < dim; i++)
			map[i] = (uint16_t) i;
		for (i = dim - 1; i >= 1; i--)
		{
			uint16_t	t = map[i];

			map[i] = map[sw[i]];
			map[sw[i]] = t;
		}
		for (i = 0; i < 2 * dim; i++)
		{
			if (i % 64 == 0)
				word = RngNext(&rng);
			sg[i] = (word >> (i % 64)) & 1 ? -1.0f : 1.0f;
		}
	}
}

/* Two floats per coordinate: the rotated vector and a gather buffer */
size_t
tv_codec_work_floats(const TvCodec *codec)
{
	return (size_t) 2 * codec->dim;
}

/* ----------------------------------------------------------------
 * Rotation
 * ----------------------------------------------------------------
 */

/*
 * x, y = x + y, x - y for 8 floats each.  All loads come before all stores,
 * and x's stores before y's, so SLP vectorizes it without alias checks.
 */
static inline void
Butterfly8(float *x, float *y)
{
	float		x0 = x[0],
				x1 = x[1],
				x2 = x[2],
				x3 = x[3],
				x4 = x[4],
				x5 = x[5],
				x6 = x[6],
				x7 = x[7];
	float		y0 = y[0],
				y1 = y[1],
				y2 = y[2],
				y3 = y[3],
				y4 = y[4],
				y5 = y[5],
				y6 = y[6],
				y7 = y[7];

	x[0] = x0 + y0;
	x[1] = x1 + y1;
	x[2] = x2 + y2;
	x[3] = x3 + y3;
	x[4] = x4 + y4;
	x[5] = x5 + y5;
	x[6] = x6 + y6;
	x[7] = x7 + y7;
	y[0] = x0 - y0;
	y[1] = x1 - y1;
	y[2] = x2 - y2;
	y[3] = x3 - y3;
	y[4] = x4 - y4;
	y[5] = x5 - y5;
	y[6] = x6 - y6;
	y[7] = x7 - y7;
}

/*
 * Two butterfly levels at once (strides h and 2h) on 8 floats at each of
 * p, p + h, p + 2h, p + 3h: half the loads and stores of two radix-2
 * passes.  Loads first, then stores pointer by pointer, as above.
 */
static inline void
Butterfly4x8(float *p0, float *p1, float *p2, float *p3)
{
	float		a[8],
				b[8],
				c[8],
				d[8];
	int			k;

	for (k = 0; k < 8; k++)
	{
		float		x0 = p0[k],
					x1 = p1[k],
					x2 = p2[k],
					x3 = p3[k];

		a[k] = (x0 + x1) + (x2 + x3);
		b[k] = (x0 - x1) + (x2 - x3);
		c[k] = (x0 + x1) - (x2 + x3);
		d[k] = (x0 - x1) - (x2 - x3);
	}
	for (k = 0; k < 8; k++)
		p0[k] = a[k];
	for (k = 0; k < 8; k++)
		p1[k] = b[k];
	for (k = 0; k < 8; k++)
		p2[k] = c[k];
	for (k = 0; k < 8; k++)
		p3[k] = d[k];
}

/*
 * p[0..8) = H8 (s * p[0..8)), the first three butterfly levels.  The SSE2
 * version (the x86-64 baseline, so no dispatch) does exactly the scalar
 * version's operations, in the same order, on four lanes at once: x + (-y)
 * is x - y in IEEE arithmetic, so the codes are the same either way.
 * TV_CODEC_NO_SIMD forces the portable code, for testing that.
 */
/* element k's scale: s, or +-s with the signs */
static inline float
SignedScale(float s, const float *signs, int k)
{
	return signs ? s * signs[k] : s;
}

#if defined(__SSE2__) && !defined(TV_CODEC_NO_SIMD)

static inline __m128
Radix4Sse(__m128 x, __m128 neg13, __m128 neg23)
{
	/* [x0+x1, x0-x1, x2+x3, x2-x3], then the h = 2 level on that */
	__m128		y = _mm_add_ps(_mm_shuffle_ps(x, x, _MM_SHUFFLE(2, 2, 0, 0)),
							   _mm_xor_ps(_mm_shuffle_ps(x, x, _MM_SHUFFLE(3, 3, 1, 1)), neg13));

	return _mm_add_ps(_mm_shuffle_ps(y, y, _MM_SHUFFLE(1, 0, 1, 0)),
					  _mm_xor_ps(_mm_shuffle_ps(y, y, _MM_SHUFFLE(3, 2, 3, 2)), neg23));
}

static inline void
Radix8(float *p, float s, const float *signs)
{
	const __m128 neg13 = _mm_setr_ps(0.0f, -0.0f, 0.0f, -0.0f);
	const __m128 neg23 = _mm_setr_ps(0.0f, 0.0f, -0.0f, -0.0f);
	__m128		vs = _mm_set1_ps(s);
	__m128		ms_lo = vs,
				ms_hi = vs;
	__m128		lo,
				hi;

	if (signs != NULL)
	{
		ms_lo = _mm_mul_ps(_mm_loadu_ps(signs), vs);
		ms_hi = _mm_mul_ps(_mm_loadu_ps(signs + 4), vs);
	}
	lo = Radix4Sse(_mm_mul_ps(_mm_loadu_ps(p), ms_lo), neg13, neg23);
	hi = Radix4Sse(_mm_mul_ps(_mm_loadu_ps(p + 4), ms_hi), neg13, neg23);

	_mm_storeu_ps(p, _mm_add_ps(lo, hi));
	_mm_storeu_ps(p + 4, _mm_sub_ps(lo, hi));
}

#else

static inline void
Radix8(float *p, float s, const float *signs)
{
	float		x0 = p[0] * SignedScale(s, signs, 0),
				x1 = p[1] * SignedScale(s, signs, 1),
				x2 = p[2] * SignedScale(s, signs, 2),
				x3 = p[3] * SignedScale(s, signs, 3),
				x4 = p[4] * SignedScale(s, signs, 4),
				x5 = p[5] * SignedScale(s, signs, 5),
				x6 = p[6] * SignedScale(s, signs, 6),
				x7 = p[7] * SignedScale(s, signs, 7);
	float		y0 = x0 + x1,
				y1 = x0 - x1,
				y2 = x2 + x3,
				y3 = x2 - x3,
				y4 = x4 + x5,
				y5 = x4 - x5,
				y6 = x6 + x7,
				y7 = x6 - x7;
	float		z0 = y0 + y2,
				z1 = y1 + y3,
				z2 = y0 - y2,
				z3 = y1 - y3,
				z4 = y4 + y6,
				z5 = y5 + y7,
				z6 = y4 - y6,
				z7 = y5 - y7;

	p[0] = z0 + z4;
	p[1] = z1 + z5;
	p[2] = z2 + z6;
	p[3] = z3 + z7;
	p[4] = z0 - z4;
	p[5] = z1 - z5;
	p[6] = z2 - z6;
	p[7] = z3 - z7;
}

#endif

/*
 * Normalised in-place Walsh-Hadamard transform of n (a power of two)
 * floats: a = H a / sqrt(n), which is orthogonal and its own inverse.
 * With signs (n of +1 or -1), a = H diag(signs) a / sqrt(n): the scale
 * becomes +-s per element, and a * (+-s) is +-(a * s) exactly, so this is
 * bit-identical to multiplying by the signs first.
 *
 * Loops run over fixed chunks of 8 so that gcc's -O2 vectorizer (which
 * refuses loops that need a remainder) turns them into SIMD code; that
 * changes no result, since every butterfly is an independent add or
 * subtract.
 */
void
tv_fwht_scalar(float *restrict a, int n, float s, const float *signs)
{
	int			h,
				i,
				j;

	if (n < 8)
	{
		for (i = 0; i < n; i++)
			a[i] *= SignedScale(s, signs, i);
		for (h = 1; h < n; h <<= 1)
			for (i = 0; i < n; i += 2 * h)
				for (j = i; j < i + h; j++)
				{
					float		u = a[j];
					float		v = a[j + h];

					a[j] = u + v;
					a[j + h] = u - v;
				}
		return;
	}

	/* Scale, then the h = 1, 2, 4 butterflies fused, 8 floats at a time */
	for (i = 0; i < n; i += 8)
		Radix8(a + i, s, signs ? signs + i : NULL);

	for (h = 8; 4 * h <= n; h <<= 2)
	{
		for (i = 0; i < n; i += 4 * h)
		{
			for (j = i; j < i + h; j += 8)
				Butterfly4x8(a + j, a + j + h, a + j + 2 * h, a + j + 3 * h);
		}
	}
	if (h < n)
	{
		for (j = 0; j < h; j += 8)
			Butterfly8(a + j, a + j + h);
	}
}

/*
 * a[i] *= signs[i], i < n.  Chunks of 8 through local arrays, which gcc's
 * -O2 vectorizes (the plain loop stayed scalar: 8 % of an encode).
 */
static void
ApplySigns(float *restrict a, const float *restrict signs, int n)
{
	int			i;

	for (i = 0; i + 8 <= n; i += 8)
	{
		float		x[8],
					sg[8];

		memcpy(x, a + i, sizeof(x));
		memcpy(sg, signs + i, sizeof(sg));
		for (int k = 0; k < 8; k++)
			x[k] *= sg[k];
		memcpy(a + i, x, sizeof(x));
	}
	for (; i < n; i++)
		a[i] *= signs[i];
}

/* 1/sqrt(W): exact for even log2(W), correctly rounded otherwise */
static inline float
WindowScale(const TvCodec *codec)
{
	return (float) (1.0 / sqrt((double) codec->window));
}

void
tv_codec_rotate(const TvCodec *codec, const float *in, float *out)
{
	int			dim = codec->dim;
	int			w = codec->window;
	float		s = WindowScale(codec);
	int			r,
				i;

	if (out != in)
		memcpy(out, in, sizeof(float) * dim);

	for (r = 0; r < codec->rounds; r++)
	{
		const uint16_t *sw = CodecSwaps(codec, r);

		/* Permutation, as the Fisher-Yates swaps in generation order */
		for (i = dim - 1; i >= 1; i--)
		{
			int			j = sw[i];
			float		t = out[i];

			out[i] = out[j];
			out[j] = t;
		}
		ApplySigns(out, CodecSigns(codec, r, 0), dim);
		tv_fwht(out, w, s, NULL);
		ApplySigns(out, CodecSigns(codec, r, 1), dim);
		tv_fwht(out + dim - w, w, s, NULL);
	}
}

void
tv_codec_unrotate(const TvCodec *codec, const float *in, float *out)
{
	int			dim = codec->dim;
	int			w = codec->window;
	float		s = WindowScale(codec);
	int			r,
				i;

	if (out != in)
		memcpy(out, in, sizeof(float) * dim);

	/* The steps of rotate, inverted, in reverse order */
	for (r = codec->rounds - 1; r >= 0; r--)
	{
		const uint16_t *sw = CodecSwaps(codec, r);

		tv_fwht(out + dim - w, w, s, NULL);
		ApplySigns(out, CodecSigns(codec, r, 1), dim);
		tv_fwht(out, w, s, NULL);
		ApplySigns(out, CodecSigns(codec, r, 0), dim);
		for (i = 1; i < dim; i++)
		{
			int			j = sw[i];
			float		t = out[i];

			out[i] = out[j];
			out[j] = t;
		}
	}
}

void
tv_scale_row_scalar(float *dst, const float *v, double mult, int n)
{
	for (int i = 0; i < n; i++)
		dst[i] = (float) ((double) v[i] * mult);
}

/*
 * a = R a, like tv_codec_rotate, using tmp (dim floats) to permute by a
 * gather instead of by swaps, with the sign steps folded into the gather
 * and the transforms' scale.  Moving values and flipping signs change no
 * rounding, so the result is bit-identical.
 */
static void
RotateWork(const TvCodec *codec, float *a, float *tmp)
{
	int			dim = codec->dim;
	int			w = codec->window;
	float		s = WindowScale(codec);
	float	   *src = a;
	float	   *dst = tmp;
	int			r;

	for (r = 0; r < codec->rounds; r++)
	{
		const uint16_t *map = CodecGather(codec, r);
		const float *sg = CodecSigns(codec, r, 0);
		const float *sg1 = CodecSigns(codec, r, 1);
		float	   *t;
		int			i;

		/* the signs of what the transforms cover go into their scale */
		for (i = 0; i < w; i++)
			dst[i] = src[map[i]];
		for (; i < dim; i++)
			dst[i] = src[map[i]] * sg[i];
		tv_fwht(dst, w, s, sg);
		ApplySigns(dst, sg1, dim - w);
		tv_fwht(dst + dim - w, w, s, sg1 + dim - w);
		t = src;
		src = dst;
		dst = t;
	}
	if (src != a)
		memcpy(a, src, sizeof(float) * dim);
}

/* ----------------------------------------------------------------
 * Row codes
 * ----------------------------------------------------------------
 */
static inline int
RowGet(const uint8_t *code, int i, int bits)
{
	int			pos = i * bits;
	int			byte = pos >> 3;
	int			shift = pos & 7;
	unsigned	v = code[byte];

	/* Read the next byte only when the field spills into it */
	if (shift + bits > 8)
		v |= (unsigned) code[byte + 1] << 8;
	return (int) ((v >> shift) & ((1u << bits) - 1));
}

/* code must start zeroed */
static inline void
RowOr(uint8_t *code, int i, int bits, int c)
{
	int			pos = i * bits;
	int			byte = pos >> 3;
	int			shift = pos & 7;

	code[byte] |= (uint8_t) (c << shift);
	if (shift + bits > 8)
		code[byte + 1] |= (uint8_t) (c >> (8 - shift));
}

/*
 * The encoder's sums in double: element i goes into running sum i % 8, and
 * the eight are added pairwise at the end.  The order is fixed, so every
 * machine gets the same bits, and the chunks of 8 vectorize instead of one
 * serial chain of additions.  Eight named fields rather than an array: as
 * a local, gcc keeps them in registers (an array's sums went through
 * memory every chunk).
 */
typedef struct TvLanes
{
	double		d0,
				d1,
				d2,
				d3,
				d4,
				d5,
				d6,
				d7;
} TvLanes;

/* Add one chunk's 8 terms (zeros past a partial chunk's end) */
static inline void
LanesAdd(TvLanes *l, const double *p)
{
	l->d0 += p[0];
	l->d1 += p[1];
	l->d2 += p[2];
	l->d3 += p[3];
	l->d4 += p[4];
	l->d5 += p[5];
	l->d6 += p[6];
	l->d7 += p[7];
}

static inline double
LanesTotal(const TvLanes *l)
{
	return ((l->d0 + l->d1) + (l->d2 + l->d3)) + ((l->d4 + l->d5) + (l->d6 + l->d7));
}

/*
 * Quantize y[0..dim) into a row code: a code is the number of thresholds
 * below y, so a tie goes to the lower level.  Counting (rather than a
 * binary search) has no branches and no dependent loads, and the chunks of
 * 8 vectorize.  Eight codes make exactly `bits` bytes (LSB first), so each
 * chunk writes its own bytes.  Replaces each y by its level and returns
 * <y, levels[code]>, summed as tv_sum_squares sums: in eight running sums,
 * not one serial chain.
 */
static inline double
QuantizeAll(const TvCodec *codec, int bits, float *y, uint8_t *code)
{
	const float *t = codec->thresholds;
	const float *l = codec->levels;
	int			nthr = (1 << bits) - 1;
	int			dim = codec->dim;
	TvLanes		dot = {0, 0, 0, 0, 0, 0, 0, 0};
	int			i,
				k,
				m;

	for (i = 0; i < dim; i += 8, code += bits)
	{
		int			n = dim - i < 8 ? dim - i : 8;
		float		x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
		float		q[8];
		double		p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
		int			c[8] = {0, 0, 0, 0, 0, 0, 0, 0};
		uint32_t	word = 0;

		if (n == 8)
		{
			for (m = 0; m < 8; m++)
				x[m] = y[i + m];
		}
		else
		{
			for (m = 0; m < n; m++)
				x[m] = y[i + m];
		}
		for (k = 0; k < nthr; k++)
		{
			float		tk = t[k];

			for (m = 0; m < 8; m++)
				c[m] += x[m] > tk;
		}
		for (m = 0; m < 8; m++)
			q[m] = l[c[m]];
		if (n == 8)
		{
			for (m = 0; m < 8; m++)
				p[m] = (double) x[m] * (double) q[m];
			for (m = 0; m < 8; m++)
				y[i + m] = q[m];
			for (m = 0; m < 8; m++)
				word |= (uint32_t) c[m] << (bits * m);
			for (m = 0; m < bits; m++)
				code[m] = (uint8_t) (word >> (8 * m));
		}
		else
		{
			/* the partial last chunk: element i still in sum i % 8 */
			for (m = 0; m < n; m++)
			{
				p[m] = (double) x[m] * (double) q[m];
				y[i + m] = q[m];
				word |= (uint32_t) c[m] << (bits * m);
			}
			for (m = 0; m < (n * bits + 7) / 8; m++)
				code[m] = (uint8_t) (word >> (8 * m));
		}
		LanesAdd(&dot, p);
	}
	return LanesTotal(&dot);
}

double
tv_quantize_row_scalar(const TvCodec *codec, float *y, uint8_t *code)
{
	switch (codec->bits)
	{
		case 2:
			return QuantizeAll(codec, 2, y, code);
		case 3:
			return QuantizeAll(codec, 3, y, code);
		default:
			return QuantizeAll(codec, 4, y, code);
	}
}

/* Sum of squares in double, in the encoder's fixed order (TvLanes) */
double
tv_sum_squares_scalar(const float *v, int n)
{
	TvLanes		sum = {0, 0, 0, 0, 0, 0, 0, 0};
	double		p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	int			i = 0;

	for (; i + 8 <= n; i += 8)
	{
		sum.d0 += (double) v[i] * (double) v[i];
		sum.d1 += (double) v[i + 1] * (double) v[i + 1];
		sum.d2 += (double) v[i + 2] * (double) v[i + 2];
		sum.d3 += (double) v[i + 3] * (double) v[i + 3];
		sum.d4 += (double) v[i + 4] * (double) v[i + 4];
		sum.d5 += (double) v[i + 5] * (double) v[i + 5];
		sum.d6 += (double) v[i + 6] * (double) v[i + 6];
		sum.d7 += (double) v[i + 7] * (double) v[i + 7];
	}
	for (int m = 0; i + m < n; m++)
		p[m] = (double) v[i + m] * (double) v[i + m];
	LanesAdd(&sum, p);
	return LanesTotal(&sum);
}

bool
tv_codec_encode(const TvCodec *codec, const float *v,
				uint8_t *code, TvFactors *factors, float *work)
{
	int			dim = codec->dim;
	double		norm2;
	double		norm;
	double		mult;
	double		dot;
	double		xdot;

	norm2 = tv_sum_squares(v, dim);
	/* Also catches NaN, though callers reject non-finite input */
	if (!(norm2 > 0.0))
	{
		memset(code, 0, codec->code_bytes);
		factors->norm = 0.0f;
		factors->ipscale = 0.0f;
		return false;
	}
	norm = sqrt(norm2);

	/* y = R (v / ||v||) * sqrt(dim): about N(0, 1) per coordinate */
	mult = sqrt((double) dim) / norm;
	tv_scale_row(work, v, mult, dim);
	RotateWork(codec, work, work + dim);

	dot = tv_quantize_row(codec, work, code);

	/*
	 * <x, xhat> = <y, levels[code]> / dim.  Each level has the sign of its
	 * y, so this is positive; the fallback, ||v|| / ||xhat||^2 (the plain
	 * projection estimate), only guards against the impossible.
	 */
	xdot = dot / dim;
	factors->norm = (float) norm;
	if (xdot > 0.0)
		factors->ipscale = (float) (norm / xdot);
	else
		factors->ipscale = (float) (norm / (tv_sum_squares(work, dim) / dim));
	return true;
}

void
tv_codec_decode(const TvCodec *codec, const uint8_t *code,
				float scale, float *out, float *work)
{
	int			dim = codec->dim;
	float		m = (float) ((double) scale / sqrt((double) dim));
	int			i;

	(void) work;
	for (i = 0; i < dim; i++)
		out[i] = codec->levels[RowGet(code, i, codec->bits)] * m;
	tv_codec_unrotate(codec, out, out);
}

float
tv_code_inner_product(const TvCodec *codec, const uint8_t *code,
					  const float *q, float *work)
{
	int			dim = codec->dim;
	double		sum = 0.0;
	int			i;

	/* <R^T l / sqrt(dim), q> = <l, R q> / sqrt(dim) */
	memcpy(work, q, sizeof(float) * dim);
	RotateWork(codec, work, work + dim);
	for (i = 0; i < dim; i++)
		sum += (double) codec->levels[RowGet(code, i, codec->bits)] * work[i];
	return (float) (sum / sqrt((double) dim));
}

/* ----------------------------------------------------------------
 * Query lookup tables
 * ----------------------------------------------------------------
 */
size_t
tv_query_lut_size(const TvCodec *codec)
{
	return offsetof(TvQueryLut, lut) + (size_t) codec->ngroups * 16;
}

/*
 * The float contributions of group g's possible indexes, given the rotated
 * query qr; returns how many indexes the layout can produce (the rest of f
 * is not set).
 */
static int
GroupEntries(const TvCodec *codec, const float *qr, int g, double inv,
			 double *f)
{
	const float *l = codec->levels;
	int			c;

	switch (codec->bits)
	{
		case 2:
			{
				double		qa = (double) qr[2 * g] * inv;

				/*
				 * An odd dim's last group has no second coordinate: make the
				 * entry ignore the padding bits, whatever they hold.
				 */
				double		qb = (2 * g + 1 < codec->dim) ?
					(double) qr[2 * g + 1] * inv : 0.0;

				for (c = 0; c < 16; c++)
					f[c] = l[c & 3] * qa + l[c >> 2] * qb;
				return 16;
			}
		case 3:
			for (c = 0; c < 8; c++)
				f[c] = l[c] * ((double) qr[g] * inv);
			return 8;
		default:
			for (c = 0; c < 16; c++)
				f[c] = l[c] * ((double) qr[g] * inv);
			return 16;
	}
}

/*
 * The smallest and largest of GroupEntries(codec, qr, g, inv) without
 * computing them: an entry is a level times a coordinate (2 bits: the sum
 * of two such), and rounding is monotone, so the extremes come from the
 * extreme levels -- the same doubles GroupEntries would produce.
 */
static inline void
GroupRange(const TvCodec *codec, const float *qr, int g, double inv,
		   double *lo, double *hi)
{
	double		lmin = codec->levels[0];
	double		lmax = codec->levels[(1 << codec->bits) - 1];
	double		a,
				x,
				y;

	if (codec->bits == 2)
	{
		double		qa = (double) qr[2 * g] * inv;
		double		qb = (2 * g + 1 < codec->dim) ?
			(double) qr[2 * g + 1] * inv : 0.0;
		double		xa = lmin * qa,
					ya = lmax * qa,
					xb = lmin * qb,
					yb = lmax * qb;

		*lo = (xa < ya ? xa : ya) + (xb < yb ? xb : yb);
		*hi = (xa < ya ? ya : xa) + (xb < yb ? yb : xb);
		return;
	}
	a = (double) qr[g] * inv;
	x = lmin * a;
	y = lmax * a;
	*lo = x < y ? x : y;
	*hi = x < y ? y : x;
}

/*
 * Entries are quantized with a per-group bias (the group minimum) and one
 * step for all groups, so the kernel only sums bytes.  Each entry is off by
 * at most step / 2 (and a rounding of the reciprocal step), so an estimate
 * is within ngroups * step / 2.
 */
void
tv_query_prepare(const TvCodec *codec, const float *q,
				 TvQueryLut *lut, float *work)
{
	double		inv = 1.0 / sqrt((double) codec->dim);
	double		bias = 0.0;
	double		range = 0.0;
	float		step;
	int			g;

	memcpy(work, q, sizeof(float) * codec->dim);
	RotateWork(codec, work, work + codec->dim);

	/* Pass 1: biases and the widest group */
	for (g = 0; g < codec->ngroups; g++)
	{
		double		lo,
					hi;

		GroupRange(codec, work, g, inv, &lo, &hi);
		bias += lo;
		if (hi - lo > range)
			range = hi - lo;
	}
	step = (float) (range / 255.0);

	lut->ngroups = codec->ngroups;
	lut->bits = codec->bits;

	/*
	 * Callers pass finite floats, but values near FLT_MAX can overflow the
	 * rotation; scores that are all equal beat scores that are NaN.
	 */
	if (!(fabs(bias) <= FLT_MAX) || !(step <= FLT_MAX))
	{
		lut->bias = 0.0f;
		lut->scale = 0.0f;
		memset(lut->lut, 0, (size_t) codec->ngroups * 16);
		return;
	}
	lut->bias = (float) bias;
	lut->scale = step > 0.0f ? step : 0.0f;
	if (!(step > 0.0f))
	{
		/* every entry equal: all zero */
		memset(lut->lut, 0, (size_t) codec->ngroups * 16);
		return;
	}

	/*
	 * Pass 2: the entries, quantized with the float step (a multiply by its
	 * reciprocal: a division per entry was a tenth of a 784-d query)
	 */
	tv_quantize_lut(codec, work, inv, 1.0 / (double) step, lut->lut);
}

/*
 * Pass 2 of tv_query_prepare, the reference for tv_quantize_lut_avx2: each
 * group's entries less its minimum, times rstep, rounded (at most 255).
 */
void
tv_quantize_lut_scalar(const TvCodec *codec, const float *qr, double inv,
					   double rstep, uint8_t *lut)
{
	double		f[16] = {0};	/* 3 bits fill 8 */

	for (int g = 0; g < codec->ngroups; g++)
	{
		uint8_t    *out = lut + (size_t) g * 16;
		int			n = GroupEntries(codec, qr, g, inv, f);
		double		lo,
					hi;

		GroupRange(codec, qr, g, inv, &lo, &hi);

		/*
		 * Branch-free over a constant count, so it vectorizes (entries past
		 * n are zeroed after); a NaN gives 0, not undefined behaviour
		 */
		for (int c = 0; c < 16; c++)
		{
			double		x = (f[c] - lo) * rstep + 0.5;

			x = (x >= 1.0) ? x : 0.0;
			x = (x <= 255.0) ? x : 255.0;
			out[c] = (uint8_t) (int) x;
		}
		if (n < 16)
			memset(out + n, 0, 16 - n);
	}
}

/* ----------------------------------------------------------------
 * Block layout
 *
 * 4 bits: group g = coordinate g, 16 bytes; byte j holds lane j in its low
 *		   nibble and lane j + 16 in its high nibble.
 * 2 bits: group g = coordinates 2g and 2g + 1, nibble c0 | c1 << 2, placed
 *		   as for 4 bits; an odd dim pads c1 with 0.
 * 3 bits: group g = coordinate g, 12 bytes.  Bytes 0-7 hold the low two
 *		   bits: lane L at byte L % 8, bits 2 * (L / 8).  Bytes 8-11 hold
 *		   the high bit: lane L at byte 8 + L % 4, bit L / 4.  This is what
 *		   lets the AVX2 kernel expand a group with one variable shift each.
 * ----------------------------------------------------------------
 */
static inline void
NibblePut(uint8_t *group, int lane, int nibble)
{
	uint8_t    *b = group + (lane & 15);

	if (lane < 16)
		*b = (uint8_t) ((*b & 0xF0) | nibble);
	else
		*b = (uint8_t) ((*b & 0x0F) | (nibble << 4));
}

static inline int
NibbleGet(const uint8_t *group, int lane)
{
	uint8_t		b = group[lane & 15];

	return lane < 16 ? (b & 0x0F) : (b >> 4);
}

static inline void
Put3(uint8_t *group, int lane, int c)
{
	uint8_t    *lo = group + (lane & 7);
	uint8_t    *hi = group + 8 + (lane & 3);
	int			ls = 2 * (lane >> 3);
	int			hs = lane >> 2;

	*lo = (uint8_t) ((*lo & ~(3 << ls)) | ((c & 3) << ls));
	*hi = (uint8_t) ((*hi & ~(1 << hs)) | (((c >> 2) & 1) << hs));
}

static inline int
Get3(const uint8_t *group, int lane)
{
	int			lo = (group[lane & 7] >> (2 * (lane >> 3))) & 3;
	int			hi = (group[8 + (lane & 3)] >> (lane >> 2)) & 1;

	return lo | (hi << 2);
}

void
tv_block_put_code(const TvCodec *codec, uint8_t *block_codes,
				  int lane, const uint8_t *code)
{
	int			dim = codec->dim;
	int			g;

	switch (codec->bits)
	{
		case 2:
			for (g = 0; g < codec->ngroups; g++)
			{
				int			c0 = RowGet(code, 2 * g, 2);
				int			c1 = (2 * g + 1 < dim) ? RowGet(code, 2 * g + 1, 2) : 0;

				NibblePut(block_codes + (size_t) g * 16, lane, c0 | (c1 << 2));
			}
			break;
		case 3:
			for (g = 0; g < dim; g++)
				Put3(block_codes + (size_t) g * 12, lane, RowGet(code, g, 3));
			break;
		default:
			{
				/*
				 * Row byte i holds dimensions 2i (low nibble) and 2i + 1:
				 * two groups per byte, without the generic field reads
				 * (laying out a 784-d build spent 0.1 s here)
				 */
				uint8_t    *b = block_codes + (lane & 15);
				int			half = dim / 2;

				if (lane < 16)
				{
					for (g = 0; g < half; g++, b += 32)
					{
						b[0] = (uint8_t) ((b[0] & 0xF0) | (code[g] & 0x0F));
						b[16] = (uint8_t) ((b[16] & 0xF0) | (code[g] >> 4));
					}
				}
				else
				{
					for (g = 0; g < half; g++, b += 32)
					{
						b[0] = (uint8_t) ((b[0] & 0x0F) | (code[g] << 4));
						b[16] = (uint8_t) ((b[16] & 0x0F) | (code[g] & 0xF0));
					}
				}
				if (dim & 1)
					NibblePut(block_codes + (size_t) (dim - 1) * 16, lane,
							  RowGet(code, dim - 1, 4));
			}
			break;
	}
}

/*
 * Lanes 0..n-1 of a zeroed block from n row codes at once: the same bytes
 * as tv_block_put_code lane by lane.  At 4 bits each row byte (two
 * dimensions) of the 32 lanes is gathered first and the block's 32 bytes
 * for those dimensions written whole, instead of 64 read-modify-writes of
 * nibbles; laying out a build spends most of its time here.
 */
void
tv_block_put_codes(const TvCodec *codec, uint8_t *block_codes,
				   const uint8_t *const *rows, int n)
{
	int			dim = codec->dim;
	int			half = dim / 2;
	uint8_t    *b = block_codes;
	int			g,
				k;

	if (codec->bits != 4)
	{
		for (k = 0; k < n; k++)
			tv_block_put_code(codec, block_codes, k, rows[k]);
		return;
	}
	for (g = 0; g < half; g++, b += 32)
	{
		uint8_t		t[TV_LANES];

		memset(t, 0, sizeof(t));
		for (k = 0; k < n; k++)
			t[k] = rows[k][g];
		/* lanes 0-15 in the low nibbles, 16-31 in the high ones */
		for (k = 0; k < 16; k++)
		{
			b[k] = (uint8_t) ((t[k] & 0x0F) | (t[k + 16] << 4));
			b[16 + k] = (uint8_t) ((t[k] >> 4) | (t[k + 16] & 0xF0));
		}
	}
	if (dim & 1)
	{
		for (k = 0; k < n; k++)
			NibblePut(block_codes + (size_t) (dim - 1) * 16, k,
					  RowGet(rows[k], dim - 1, 4));
	}
}

void
tv_block_get_code(const TvCodec *codec, const uint8_t *block_codes,
				  int lane, uint8_t *code)
{
	int			dim = codec->dim;
	int			g;

	memset(code, 0, codec->code_bytes);
	switch (codec->bits)
	{
		case 2:
			for (g = 0; g < codec->ngroups; g++)
			{
				int			n = NibbleGet(block_codes + (size_t) g * 16, lane);

				RowOr(code, 2 * g, 2, n & 3);
				if (2 * g + 1 < dim)
					RowOr(code, 2 * g + 1, 2, n >> 2);
			}
			break;
		case 3:
			for (g = 0; g < dim; g++)
				RowOr(code, g, 3, Get3(block_codes + (size_t) g * 12, lane));
			break;
		default:
			for (g = 0; g < dim; g++)
				RowOr(code, g, 4, NibbleGet(block_codes + (size_t) g * 16, lane));
			break;
	}
}

/* ----------------------------------------------------------------
 * Refinement codes (the resident copy's second stage, docs/CODEC.md)
 * ----------------------------------------------------------------
 */

/*
 * The cells of the first-stage codebook as [lo, lo + 16 * step): inner
 * cells are the intervals between thresholds, the two outer ones reach to
 * +-TV_REFINE_LIMIT (past it, P < 1e-5 per coordinate, a value is clamped).
 */
void
tv_refine_cells(const TvCodec *codec, float *lo, float *step)
{
	int			n = 1 << codec->bits;
	int			c;

	for (c = 0; c < n; c++)
	{
		float		a = (c == 0) ? -TV_REFINE_LIMIT : codec->thresholds[c - 1];
		float		b = (c == n - 1) ? TV_REFINE_LIMIT : codec->thresholds[c];

		lo[c] = a;
		step[c] = (b - a) / 16.0f;
	}
}

size_t
tv_refine_bytes(int dim)
{
	return TV_REFINE_BYTES(dim);
}

/*
 * The refinement of the rotated y[0..dim) into nibbles (zeroed): each y's
 * cell, its code as QuantizeAll counts it, cut into 16 steps, the step
 * clamped to the cell's ends.  Returns <y, ytilde>, summed as
 * tv_sum_squares sums.  The AVX2 version (tvkernels.c) is bit-identical.
 */
double
tv_refine_row_scalar(const TvCodec *codec, const float *y, uint8_t *nib)
{
	int			nthr = (1 << codec->bits) - 1;
	int			dim = codec->dim;
	float		lo[16];
	float		step[16];
	TvLanes		dot = {0, 0, 0, 0, 0, 0, 0, 0};

	tv_refine_cells(codec, lo, step);
	for (int i = 0; i < dim; i += 8)
	{
		/* a partial last chunk's missing products are zeros: no change */
		double		p[8] = {0, 0, 0, 0, 0, 0, 0, 0};

		for (int m = 0; m < 8 && i + m < dim; m++)
		{
			float		x = y[i + m];
			int			c = 0;
			int			f;
			float		pos;
			float		yhat;

			for (int k = 0; k < nthr; k++)
				c += (x > codec->thresholds[k]);
			pos = (x - lo[c]) / step[c];
			f = (pos >= 15.0f) ? 15 : (pos > 0.0f ? (int) pos : 0);
			yhat = lo[c] + ((float) f + 0.5f) * step[c];
			p[m] = (double) x * (double) yhat;
			nib[(i + m) >> 1] |= (uint8_t) (f << ((m & 1) * 4));
		}
		LanesAdd(&dot, p);
	}
	return LanesTotal(&dot);
}

bool
tv_codec_encode_refine(const TvCodec *codec, const float *v, uint8_t *refine,
					   float *work)
{
	int			dim = codec->dim;
	uint8_t    *nib = refine + 4;
	double		norm2;
	double		norm;
	double		mult;
	double		dot;
	float		rscale;

	memset(refine, 0, tv_refine_bytes(dim));
	norm2 = tv_sum_squares(v, dim);
	if (!(norm2 > 0.0))
		return false;
	norm = sqrt(norm2);

	/* y exactly as tv_codec_encode computes it, so the cells are its codes */
	mult = sqrt((double) dim) / norm;
	tv_scale_row(work, v, mult, dim);
	RotateWork(codec, work, work + dim);

	dot = tv_refine_row(codec, work, nib);

	/* ||v|| / <x, xtilde>, as the first stage's ipscale; <x, xtilde> > 0 */
	rscale = (dot > 0.0) ? (float) (norm * dim / dot) : (float) norm;
	memcpy(refine, &rscale, sizeof(float));
	return true;
}

void
tv_refine_prepare(const TvCodec *codec, const float *q, float *qr)
{
	tv_codec_rotate(codec, q, qr);
	tv_refine_scale(codec, qr, qr);
}

void
tv_refine_scale(const TvCodec *codec, const float *rq, float *qr)
{
	double		s = 1.0 / sqrt((double) codec->dim);

	for (int i = 0; i < codec->dim; i++)
		qr[i] = (float) (rq[i] * s);
}

void
tv_refine_sums(const TvCodec *codec, const uint8_t *block_codes, int lane,
			   const uint8_t *refine, const float *qr, int from,
			   double *sum, double *var)
{
	const uint8_t *nib = refine + 4;

	for (int i = from; i < codec->dim; i++)
	{
		int			c;
		int			f = (nib[i >> 1] >> ((i & 1) * 4)) & 15;

		switch (codec->bits)
		{
			case 2:
				{
					int			n = NibbleGet(block_codes + (size_t) (i >> 1) * 16, lane);

					c = (i & 1) ? (n >> 2) : (n & 3);
				}
				break;
			case 3:
				c = Get3(block_codes + (size_t) i * 12, lane);
				break;
			default:
				c = NibbleGet(block_codes + (size_t) i * 16, lane);
				break;
		}
		*sum += (double) codec->refine_value[c << 4 | f] * qr[i];
		*var += (double) codec->refine_step[c] * codec->refine_step[c] * qr[i] * qr[i];
	}
}

float
tv_refine_block_ip_scalar(const TvCodec *codec, const uint8_t *block_codes,
						  int lane, const uint8_t *refine, const float *qr,
						  float *sd)
{
	float		rscale;
	double		sum = 0.0;
	double		var = 0.0;

	memcpy(&rscale, refine, sizeof(float));
	tv_refine_sums(codec, block_codes, lane, refine, qr, 0, &sum, &var);
	/* each coordinate's error is uniform over its step: variance step^2/12 */
	*sd = (float) (fabs(rscale) * sqrt(var / 12.0));
	return (float) (rscale * sum);
}
