/*
 * test_codec.c
 *	  Standalone tests for the codec (src/tvcodec.c) and the block kernels
 *	  (src/tvkernels.c): rotation, determinism and golden codes, encoding
 *	  error, inner-product estimates, block layout round trips, scalar vs
 *	  AVX2 identity, accumulator overflow and the LUT quantization bound.
 *
 * Every check prints a line only when it fails; the last line is always
 * "codec: N passed, N failed" and the exit status is non-zero on failure.
 * `test_codec bench` prints kernel and encoder timings instead.
 *
 * Test inputs come from a private xorshift generator and Irwin-Hall
 * normals (no libm), so the golden hashes hold on every machine.
 */
#include "tvcodec.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Expected scores are computed as the kernels do: no fused multiply-add */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static int	npassed;
static int	nfailed;

static void
Check(int ok, const char *fmt,...)
{
	va_list		ap;

	if (ok)
	{
		npassed++;
		return;
	}
	nfailed++;
	printf("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static void *
Alloc(size_t n)
{
	void	   *p = calloc(1, n ? n : 1);

	if (p == NULL)
	{
		fprintf(stderr, "out of memory\n");
		exit(2);
	}
	return p;
}

/* ---------- deterministic test inputs ---------- */

static uint64_t rng_state = UINT64_C(0x2545F4914F6CDD1D);

static void
TestSeed(uint64_t s)
{
	rng_state = s ? s : 1;
}

static uint64_t
TestNext(void)
{
	uint64_t	x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * UINT64_C(0x2545F4914F6CDD1D);
}

/* Uniform in [0, 1), exact from 24 random bits */
static float
TestUniform(void)
{
	return (float) (TestNext() >> 40) * (1.0f / 16777216.0f);
}

/* Approximately N(0, 1): Irwin-Hall sum of 12 uniforms, no libm */
static float
TestNormal(void)
{
	float		s = 0.0f;
	int			i;

	for (i = 0; i < 12; i++)
		s += TestUniform();
	return s - 6.0f;
}

static void
FillNormal(float *v, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		v[i] = TestNormal();
}

static void
FillBytes(uint8_t *p, size_t n)
{
	size_t		i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t) (TestNext() >> 56);
}

static double
Dot(const float *a, const float *b, int n)
{
	double		s = 0.0;
	int			i;

	for (i = 0; i < n; i++)
		s += (double) a[i] * b[i];
	return s;
}

static TvCodec *
MakeCodec(int dim, int bits)
{
	TvCodec    *c = Alloc(tv_codec_size(dim));

	tv_codec_init(c, dim, bits, TV_CODEC_DEFAULT_SEED);
	return c;
}

/* A random valid row code: unused high bits of the last byte stay zero */
static void
RandomRowCode(const TvCodec *c, uint8_t *code)
{
	int			used = c->dim * c->bits;

	FillBytes(code, c->code_bytes);
	if (used % 8)
		code[c->code_bytes - 1] &= (uint8_t) ((1 << (used % 8)) - 1);
}

static uint64_t
Fnv1a(uint64_t h, const void *data, size_t n)
{
	const uint8_t *p = data;
	size_t		i;

	for (i = 0; i < n; i++)
	{
		h ^= p[i];
		h *= UINT64_C(0x100000001B3);
	}
	return h;
}

static const int bits_list[] = {2, 3, 4};

/* ---------- rotation ---------- */

static void
TestRotation(void)
{
	static const int dims[] = {1, 2, 3, 5, 7, 8, 31, 64, 100, 127, 517, 784,
	1000, 1536, 4097, 16000};
	size_t		d;

	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		int			dim = dims[d];
		TvCodec    *c = MakeCodec(dim, 4);
		float	   *x = Alloc(sizeof(float) * dim);
		float	   *y = Alloc(sizeof(float) * dim);
		float	   *z = Alloc(sizeof(float) * dim);
		double		nx,
					ny,
					err = 0.0,
					peak = 0.0;
		int			i;

		FillNormal(x, dim);
		tv_codec_rotate(c, x, y);
		nx = sqrt(Dot(x, x, dim));
		ny = sqrt(Dot(y, y, dim));
		Check(fabs(nx - ny) <= 1e-5 * nx,
			  "rotation norm dim %d: %.9g vs %.9g", dim, nx, ny);

		tv_codec_unrotate(c, y, z);
		for (i = 0; i < dim; i++)
			if (fabs(z[i] - x[i]) > err)
				err = fabs(z[i] - x[i]);
		Check(err <= 2e-6 * nx, "unrotate(rotate(x)) dim %d: max error %g",
			  dim, err);

		/* in place must equal out of place */
		memcpy(z, x, sizeof(float) * dim);
		tv_codec_rotate(c, z, z);
		Check(memcmp(z, y, sizeof(float) * dim) == 0,
			  "in-place rotate differs, dim %d", dim);
		tv_codec_unrotate(c, z, z);
		tv_codec_unrotate(c, y, y);
		Check(memcmp(z, y, sizeof(float) * dim) == 0,
			  "in-place unrotate differs, dim %d", dim);

		/*
		 * The internal rotation (gather-based, used by the query and
		 * encode paths) must match the public one bit for bit.
		 */
		{
			uint8_t    *code = Alloc(c->code_bytes);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			double		sum = 0.0;

			FillBytes(code, c->code_bytes);
			FillNormal(x, dim);
			tv_codec_rotate(c, x, y);
			for (i = 0; i < dim; i++)
			{
				int			pos = i * 4;
				int			k = (code[pos / 8] >> (pos % 8)) & 15;

				sum += (double) c->levels[k] * y[i];
			}
			Check((float) (sum / sqrt((double) dim)) ==
				  tv_code_inner_product(c, code, x, work),
				  "inner product path rotates differently, dim %d", dim);
			free(code);
			free(work);
		}

		/* a basis vector must be spread out, not moved */
		if (dim >= 8)
		{
			memset(x, 0, sizeof(float) * dim);
			x[dim / 3] = 1.0f;
			tv_codec_rotate(c, x, y);
			for (i = 0; i < dim; i++)
				if (fabs(y[i]) > peak)
					peak = fabs(y[i]);
			Check(peak < 0.75, "rotation barely mixes e_%d, dim %d: peak %g",
				  dim / 3, dim, peak);
		}
		free(x);
		free(y);
		free(z);
		free(c);
	}
}

/* ---------- determinism and golden codes ---------- */

/*
 * Pinned FNV-1a hashes of codes + factors of the golden inputs (dim 100).
 * A change here changes every stored code: bump the on-disk version.
 */
static const uint64_t golden[3] = {
	UINT64_C(0xA08E1C5F89482A22),	/* 2 bits */
	UINT64_C(0x298BF152783EE52F),	/* 3 bits */
	UINT64_C(0x33B66102603EC5DE),	/* 4 bits */
};

#define GOLDEN_VECTORS 64

static uint64_t
GoldenHash(int bits)
{
	int			dim = 100;
	TvCodec    *c = MakeCodec(dim, bits);
	float	   *v = Alloc(sizeof(float) * dim);
	float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
	uint8_t    *code = Alloc(c->code_bytes);
	uint64_t	h = UINT64_C(0xCBF29CE484222325);
	uint32_t	lcg = 12345;
	int			n,
				i;

	for (n = 0; n < GOLDEN_VECTORS; n++)
	{
		TvFactors	f;

		/* uniform in [-1, 1) from a plain LCG: exact on any machine */
		for (i = 0; i < dim; i++)
		{
			lcg = lcg * 1664525u + 1013904223u;
			v[i] = (float) ((int32_t) (lcg >> 8) - (1 << 23)) / (float) (1 << 23);
		}
		tv_codec_encode(c, v, code, &f, work);
		h = Fnv1a(h, code, c->code_bytes);
		h = Fnv1a(h, &f.norm, sizeof(float));
		h = Fnv1a(h, &f.ipscale, sizeof(float));
	}
	free(v);
	free(work);
	free(code);
	free(c);
	return h;
}

static void
TestDeterminism(bool print_golden)
{
	static const int dims[] = {1, 3, 100, 517, 784};
	size_t		d;
	int			b;

	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			int			bits = bits_list[b];
			TvCodec    *c1 = MakeCodec(dim, bits);
			TvCodec    *c2 = MakeCodec(dim, bits);
			TvCodec    *c3 = Alloc(tv_codec_size(dim));
			float	   *v = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c1));
			uint8_t    *k1 = Alloc(c1->code_bytes);
			uint8_t    *k2 = Alloc(c1->code_bytes);
			TvFactors	f1,
						f2;
			int			n,
						same = 1;

			Check(memcmp(c1, c2, tv_codec_size(dim)) == 0,
				  "codec init not repeatable, dim %d bits %d", dim, bits);
			tv_codec_init(c3, dim, bits, TV_CODEC_DEFAULT_SEED + 1);
			if (dim > 1)
				Check(memcmp(c1->tables, c3->tables,
							 tv_codec_size(dim) - sizeof(TvCodec)) != 0,
					  "seed does not change the rotation, dim %d", dim);

			TestSeed(1000 + dim);
			for (n = 0; n < 20; n++)
			{
				FillNormal(v, dim);
				tv_codec_encode(c1, v, k1, &f1, work);
				/* dirty the work area: results must not depend on it */
				FillNormal(work, (int) tv_codec_work_floats(c1));
				tv_codec_encode(c2, v, k2, &f2, work);
				if (memcmp(k1, k2, c1->code_bytes) != 0 ||
					memcmp(&f1, &f2, sizeof(f1)) != 0)
					same = 0;
			}
			Check(same, "encoding not repeatable, dim %d bits %d", dim, bits);
			free(c1);
			free(c2);
			free(c3);
			free(v);
			free(work);
			free(k1);
			free(k2);
		}
	}

	for (b = 0; b < 3; b++)
	{
		uint64_t	h = GoldenHash(bits_list[b]);

		if (print_golden)
			printf("golden dim 100 bits %d: UINT64_C(0x%016llX)\n",
				   bits_list[b], (unsigned long long) h);
		Check(h == golden[b], "golden hash dim 100 bits %d: 0x%016llX, pinned 0x%016llX",
			  bits_list[b], (unsigned long long) h,
			  (unsigned long long) golden[b]);
	}
}

/* ---------- encoding quality ---------- */

static void
TestZeroVector(void)
{
	int			b;

	for (b = 0; b < 3; b++)
	{
		int			dim = 37;
		TvCodec    *c = MakeCodec(dim, bits_list[b]);
		float	   *v = Alloc(sizeof(float) * dim);
		float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
		uint8_t    *code = Alloc(c->code_bytes);
		uint8_t    *zero = Alloc(c->code_bytes);
		TvQueryLut *lut = Alloc(tv_query_lut_size(c));
		uint8_t    *block = Alloc(c->block_code_bytes);
		float		out[TV_LANES];
		TvFactors	f = {1.0f, 1.0f};
		bool		ok;
		int			i,
					finite = 1;

		memset(code, 0xAB, c->code_bytes);
		ok = tv_codec_encode(c, v, code, &f, work);
		Check(!ok && f.norm == 0.0f && f.ipscale == 0.0f &&
			  memcmp(code, zero, c->code_bytes) == 0,
			  "zero vector not reported as zero, bits %d", bits_list[b]);

		/* a zero query: degenerate LUT, finite scores */
		tv_query_prepare(c, v, lut, work);
		FillBytes(block, c->block_code_bytes);
		tv_score_block_scalar(lut, block, out);
		for (i = 0; i < TV_LANES; i++)
			if (!(out[i] == 0.0f))
				finite = 0;
		Check(lut->scale == 0.0f && lut->bias == 0.0f && finite,
			  "zero query LUT, bits %d: scale %g bias %g",
			  bits_list[b], lut->scale, lut->bias);

		/* queries that overflow the rotation, or hold NaN: finite scores */
		for (i = 0; i < dim; i++)
			v[i] = 3e38f;
		tv_query_prepare(c, v, lut, work);
		tv_score_block_scalar(lut, block, out);
		finite = 1;
		for (i = 0; i < TV_LANES; i++)
			if (!(fabsf(out[i]) <= FLT_MAX))
				finite = 0;
		v[3] = NAN;
		tv_query_prepare(c, v, lut, work);
		tv_score_block_scalar(lut, block, out);
		for (i = 0; i < TV_LANES; i++)
			if (!(fabsf(out[i]) <= FLT_MAX))
				finite = 0;
		Check(finite, "huge or NaN query gives non-finite scores, bits %d",
			  bits_list[b]);
		memset(v, 0, sizeof(float) * dim);
		free(c);
		free(v);
		free(work);
		free(code);
		free(zero);
		free(lut);
		free(block);
	}
}

/*
 * Mean relative reconstruction error ||v - decode|| / ||v|| over Gaussian
 * vectors.  Bounds: Lloyd-Max distortion sqrt(0.1175, 0.0345, 0.0095) with
 * margin.
 */
static void
TestReconstruction(bool verbose)
{
	static const int dims[] = {16, 100, 784};
	static const double bound[3] = {0.36, 0.195, 0.103};
	size_t		d;
	int			b;

	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			float	   *v = Alloc(sizeof(float) * dim);
			float	   *r = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			uint8_t    *code = Alloc(c->code_bytes);
			double		total = 0.0;
			int			n,
						i,
						count = 200;

			TestSeed(77 + dim);
			for (n = 0; n < count; n++)
			{
				TvFactors	f;
				double		e = 0.0;

				FillNormal(v, dim);
				tv_codec_encode(c, v, code, &f, work);
				tv_codec_decode(c, code, f.norm, r, work);
				for (i = 0; i < dim; i++)
					e += ((double) v[i] - r[i]) * ((double) v[i] - r[i]);
				total += sqrt(e) / f.norm;
			}
			total /= count;
			if (verbose)
				printf("reconstruction dim %d bits %d: mean relative error %.4f\n",
					   dim, bits_list[b], total);
			Check(total < bound[b],
				  "reconstruction dim %d bits %d: mean relative error %.4f >= %.4f",
				  dim, bits_list[b], total, bound[b]);
			free(c);
			free(v);
			free(r);
			free(work);
			free(code);
		}
	}
}

/*
 * ipscale * <xhat, q> estimates <v, q>.  Errors are measured in units of
 * ||v|| ||q|| / sqrt(dim), the spread of <v, q> itself for random vectors.
 */
static void
TestInnerProduct(bool verbose)
{
	static const int dims[] = {100, 784};
	static const double bound[3] = {0.25, 0.13, 0.07};
	size_t		d;
	int			b;

	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			float	   *v = Alloc(sizeof(float) * dim);
			float	   *q = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			uint8_t    *code = Alloc(c->code_bytes);
			double		abserr = 0.0,
						bias = 0.0;
			int			n,
						count = 400;

			TestSeed(99 + dim);
			for (n = 0; n < count; n++)
			{
				TvFactors	f;
				double		truth,
							est,
							unit;

				FillNormal(v, dim);
				FillNormal(q, dim);
				/* correlated pairs too, as neighbours are */
				if (n % 2)
				{
					int			i;

					for (i = 0; i < dim; i++)
						q[i] = v[i] + 0.5f * q[i];
				}
				tv_codec_encode(c, v, code, &f, work);
				truth = Dot(v, q, dim);
				est = (double) f.ipscale * tv_code_inner_product(c, code, q, work);
				unit = f.norm * sqrt(Dot(q, q, dim)) / sqrt((double) dim);
				abserr += fabs(est - truth) / unit;
				bias += (est - truth) / unit;
			}
			abserr /= count;
			bias /= count;
			if (verbose)
				printf("inner product dim %d bits %d: mean abs error %.4f, mean error %.4f\n",
					   dim, bits_list[b], abserr, bias);
			Check(abserr < bound[b],
				  "inner product dim %d bits %d: mean abs error %.4f >= %.4f",
				  dim, bits_list[b], abserr, bound[b]);
			Check(fabs(bias) < bound[b] / 4,
				  "inner product dim %d bits %d: biased, mean error %.4f",
				  dim, bits_list[b], bias);
			free(c);
			free(v);
			free(q);
			free(work);
			free(code);
		}
	}
}

/* ---------- block layout ---------- */

static void
TestBlockRoundTrip(void)
{
	static const int extra[] = {100, 517, 784, 1001};
	int			k,
				b;

	for (k = 0; k < 70 + 4; k++)
	{
		int			dim = k < 70 ? k + 1 : extra[k - 70];

		for (b = 0; b < 3; b++)
		{
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			uint8_t    *codes = Alloc((size_t) TV_LANES * c->code_bytes);
			uint8_t    *back = Alloc(c->code_bytes);
			uint8_t    *block = Alloc(c->block_code_bytes);
			uint8_t    *zero = Alloc(c->code_bytes);
			int			lane,
						ok = 1,
						zok = 1;

			Check(c->block_code_bytes == c->ngroups * c->group_bytes,
				  "block_code_bytes inconsistent, dim %d", dim);

			/* a zero block reads back as zero codes */
			for (lane = 0; lane < TV_LANES; lane++)
			{
				tv_block_get_code(c, block, lane, back);
				if (memcmp(back, zero, c->code_bytes) != 0)
					zok = 0;
			}
			Check(zok, "zero block gives non-zero codes, dim %d bits %d",
				  dim, bits_list[b]);

			/* start from garbage: put must overwrite, not OR */
			FillBytes(block, c->block_code_bytes);
			for (lane = 0; lane < TV_LANES; lane++)
			{
				RandomRowCode(c, codes + (size_t) lane * c->code_bytes);
				tv_block_put_code(c, block, lane, codes + (size_t) lane * c->code_bytes);
			}
			for (lane = 0; lane < TV_LANES; lane++)
			{
				tv_block_get_code(c, block, lane, back);
				if (memcmp(back, codes + (size_t) lane * c->code_bytes,
						   c->code_bytes) != 0)
					ok = 0;
			}
			Check(ok, "block put/get round trip, dim %d bits %d",
				  dim, bits_list[b]);

			/* a zeroed block filled at once: the same bytes as lane by lane */
			{
				static const int counts[] = {1, 7, 16, 17, 31, 32};
				uint8_t    *one = Alloc(c->block_code_bytes);
				const uint8_t *rows[TV_LANES];
				int			m,
							same = 1;

				for (lane = 0; lane < TV_LANES; lane++)
					rows[lane] = codes + (size_t) lane * c->code_bytes;
				for (m = 0; m < 6; m++)
				{
					memset(block, 0, c->block_code_bytes);
					memset(one, 0, c->block_code_bytes);
					for (lane = 0; lane < counts[m]; lane++)
						tv_block_put_code(c, one, lane, rows[lane]);
					tv_block_put_codes(c, block, rows, counts[m]);
					if (memcmp(block, one, c->block_code_bytes) != 0)
						same = 0;
				}
				Check(same, "block filled at once differs, dim %d bits %d",
					  dim, bits_list[b]);
				free(one);
			}
			free(c);
			free(codes);
			free(back);
			free(block);
			free(zero);
		}
	}
}

/* ---------- kernels ---------- */

/* Integer sums straight from row codes and the LUT: the layout's meaning */
static void
ExpectedSums(const TvCodec *c, const TvQueryLut *lut, const uint8_t *block,
			 uint64_t *sums)
{
	uint8_t    *code = Alloc(c->code_bytes);
	int		   *k = Alloc(sizeof(int) * (c->dim + 1));
	int			lane,
				i,
				g;

	for (lane = 0; lane < TV_LANES; lane++)
	{
		uint64_t	s = 0;

		tv_block_get_code(c, block, lane, code);
		for (i = 0; i < c->dim; i++)
		{
			int			pos = i * c->bits;
			int			v = code[pos / 8];

			if (pos / 8 + 1 < c->code_bytes)
				v |= code[pos / 8 + 1] << 8;
			k[i] = (v >> (pos % 8)) & ((1 << c->bits) - 1);
		}
		k[c->dim] = 0;
		for (g = 0; g < c->ngroups; g++)
		{
			/* 2 bits: a pair per group, the second code in the top bits */
			int			idx = c->bits == 2 ? k[2 * g] | (k[2 * g + 1] << 2) : k[g];

			s += lut->lut[(size_t) g * 16 + idx];
		}
		sums[lane] = s;
	}
	free(code);
	free(k);
}

/* Rewrite every lane through get/put, which zeroes padding bits */
static void
NormalizeBlock(const TvCodec *c, uint8_t *block)
{
	uint8_t    *code = Alloc(c->code_bytes);
	int			lane;

	for (lane = 0; lane < TV_LANES; lane++)
	{
		tv_block_get_code(c, block, lane, code);
		tv_block_put_code(c, block, lane, code);
	}
	free(code);
}

static void
TestKernels(void)
{
	static const int extra[] = {63, 64, 65, 100, 255, 256, 257, 511, 512,
	513, 516, 517, 784, 1000, 4096, 16000};
	bool		avx2 = tv_kernels_have_avx2();
	int			k,
				b;

	Check(strcmp(tv_kernels_name(), "scalar") == 0 &&
		  tv_score_block == tv_score_block_scalar,
		  "kernel before init is not scalar");
	tv_kernels_init();
	Check(strcmp(tv_kernels_name(), avx2 ? "avx2" : "scalar") == 0,
		  "kernel after init is %s", tv_kernels_name());
	if (!avx2)
		printf("note: CPU lacks AVX2, scalar/AVX2 identity not tested\n");

	for (k = 0; k < 40 + 16; k++)
	{
		int			dim = k < 40 ? k + 1 : extra[k - 40];

		for (b = 0; b < 3; b++)
		{
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			TvQueryLut *lut = Alloc(tv_query_lut_size(c));
			uint8_t    *block = Alloc(c->block_code_bytes);
			float	   *q = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			uint64_t	sums[TV_LANES];
			float		s1[TV_LANES],
						s2[TV_LANES];
			int			trial,
						lane,
						same = 1,
						exact = 1;

			TestSeed(5 + dim * 7 + b);
			for (trial = 0; trial < 4; trial++)
			{
				FillBytes(block, c->block_code_bytes);
				if (trial < 2)
				{
					FillNormal(q, dim);
					tv_query_prepare(c, q, lut, work);
				}
				else
				{
					/* random LUT bytes, biased high to stress the counters */
					FillBytes(lut->lut, (size_t) c->ngroups * 16);
					if (trial == 3)
					{
						size_t		i;

						for (i = 0; i < (size_t) c->ngroups * 16; i++)
							lut->lut[i] |= 0xF0;
					}
					lut->ngroups = c->ngroups;
					lut->bits = c->bits;
					lut->bias = TestNormal();
					lut->scale = TestUniform() * 1e-3f;
				}
				/* identity on raw bytes, padding bits included */
				tv_score_block_scalar(lut, block, s1);
				if (avx2)
				{
					tv_score_block_avx2(lut, block, s2);
					if (memcmp(s1, s2, sizeof(s1)) != 0)
						same = 0;
				}
				/* meaning on a block whose padding is zero */
				NormalizeBlock(c, block);
				tv_score_block_scalar(lut, block, s1);
				ExpectedSums(c, lut, block, sums);
				for (lane = 0; lane < TV_LANES; lane++)
					if (s1[lane] != lut->bias + lut->scale * (float) sums[lane])
						exact = 0;
				if (avx2)
				{
					tv_score_block_avx2(lut, block, s2);
					if (memcmp(s1, s2, sizeof(s1)) != 0)
						same = 0;
				}
			}
			Check(exact, "scalar kernel disagrees with the row codes, dim %d bits %d",
				  dim, bits_list[b]);
			Check(same, "scalar and AVX2 differ, dim %d bits %d", dim, bits_list[b]);
			free(c);
			free(lut);
			free(block);
			free(q);
			free(work);
		}
	}
}

/* Encode and refine v with the portable steps or the AVX2 ones */
static void
EncodeWithSteps(bool avx2, const TvCodec *c, const float *v, uint8_t *code,
				TvFactors *f, uint8_t *refine, float *work)
{
	tv_fwht = !avx2 ? tv_fwht_scalar :
		tv_kernels_have_avx512f() ? tv_fwht_avx512 : tv_fwht_avx2;
	tv_quantize_row = avx2 ? tv_quantize_row_avx2 : tv_quantize_row_scalar;
	tv_refine_row = avx2 ? tv_refine_row_avx2 : tv_refine_row_scalar;
	tv_sum_squares = avx2 ? tv_sum_squares_avx2 : tv_sum_squares_scalar;
	tv_scale_row = avx2 ? tv_scale_row_avx2 : tv_scale_row_scalar;
	tv_codec_encode(c, v, code, f, work);
	/* work holds the levels the encoding left; the refinement works past them */
	tv_codec_encode_refine(c, v, refine, work + c->dim);
}

/*
 * The encoder's AVX2 steps against the portable ones, bit for bit: the
 * Walsh-Hadamard transform at every power of two up to the largest window,
 * and whole encodings (codes, both factors, the levels left in work) at
 * many dimensions, including ones whose last chunk of 8 is partial, with
 * large, tiny and zero coordinates mixed in.  The golden hashes must also
 * hold with the AVX2 steps chosen.
 */
static void
TestEncoderKernels(void)
{
	static const int dims[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65,
	100, 127, 255, 256, 257, 511, 512, 513, 517, 767, 768, 784, 1000, 1023,
	1024, 1025, 1536, 3072, 4096, 16000};
	bool		avx2 = tv_kernels_have_avx2();
	int			n,
				b;
	size_t		d;

	if (!avx2)
		return;
	for (n = 1; n <= 16384; n *= 2)
	{
		float	   *a1 = Alloc(sizeof(float) * n);
		float	   *a2 = Alloc(sizeof(float) * n);
		float	   *a3 = Alloc(sizeof(float) * n);
		float	   *a4 = Alloc(sizeof(float) * n);
		float	   *signs = Alloc(sizeof(float) * n);
		float		s = (float) (1.0 / sqrt((double) n));
		bool		avx512 = tv_kernels_have_avx512f();
		int			trial,
					same = 1,
					same512 = 1,
					signed_same = 1;

		TestSeed(77 + n);
		for (trial = 0; trial < 3; trial++)
		{
			FillNormal(a1, n);
			memcpy(a2, a1, sizeof(float) * n);
			memcpy(a3, a1, sizeof(float) * n);
			tv_fwht_scalar(a1, n, s, NULL);
			tv_fwht_avx2(a2, n, s, NULL);
			if (memcmp(a1, a2, sizeof(float) * n) != 0)
				same = 0;
			if (avx512)
			{
				tv_fwht_avx512(a3, n, s, NULL);
				if (memcmp(a1, a3, sizeof(float) * n) != 0)
					same512 = 0;
			}

			/* the signs folded into the scale: as if applied first */
			FillNormal(a1, n);
			for (int i = 0; i < n; i++)
				signs[i] = (TestNext() & 1) ? -1.0f : 1.0f;
			memcpy(a2, a1, sizeof(float) * n);
			memcpy(a3, a1, sizeof(float) * n);
			memcpy(a4, a1, sizeof(float) * n);
			for (int i = 0; i < n; i++)
				a1[i] *= signs[i];
			tv_fwht_scalar(a1, n, s, NULL);
			tv_fwht_scalar(a2, n, s, signs);
			tv_fwht_avx2(a3, n, s, signs);
			if (avx512)
				tv_fwht_avx512(a4, n, s, signs);
			else
				memcpy(a4, a1, sizeof(float) * n);
			if (memcmp(a1, a2, sizeof(float) * n) != 0 ||
				memcmp(a1, a3, sizeof(float) * n) != 0 ||
				memcmp(a1, a4, sizeof(float) * n) != 0)
				signed_same = 0;
		}
		Check(same, "scalar and AVX2 Walsh-Hadamard differ, n %d", n);
		Check(same512, "scalar and AVX-512 Walsh-Hadamard differ, n %d", n);
		Check(signed_same, "Walsh-Hadamard with signs differs from signs first, n %d", n);
		free(a1);
		free(a2);
		free(a3);
		free(a4);
		free(signs);
	}

	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			float	   *v = Alloc(sizeof(float) * dim);
			/* the encoding's work, then the refinement's */
			float	   *w1 = Alloc(sizeof(float) * (dim + tv_codec_work_floats(c)));
			float	   *w2 = Alloc(sizeof(float) * (dim + tv_codec_work_floats(c)));
			uint8_t    *k1 = Alloc(c->code_bytes);
			uint8_t    *k2 = Alloc(c->code_bytes);
			uint8_t    *r1 = Alloc(tv_refine_bytes(dim));
			uint8_t    *r2 = Alloc(tv_refine_bytes(dim));
			int			trial,
						same = 1,
						rsame = 1;

			TestSeed(31 + dim * 3 + b);
			for (trial = 0; trial < 8; trial++)
			{
				TvFactors	f1,
							f2;
				int			i;

				FillNormal(v, dim);
				for (i = 0; i < dim && trial >= 4; i++)
				{
					if (i % 5 == 0)
						v[i] = 0.0f;
					else if (i % 7 == 0)
						v[i] *= (trial == 4) ? 1e-30f : 1e20f;
				}
				/* dirty outputs: every byte must be written */
				memset(k1, 0xA5, c->code_bytes);
				memset(k2, 0x5A, c->code_bytes);
				memset(r1, 0x33, tv_refine_bytes(dim));
				memset(r2, 0xCC, tv_refine_bytes(dim));
				EncodeWithSteps(false, c, v, k1, &f1, r1, w1);
				EncodeWithSteps(true, c, v, k2, &f2, r2, w2);
				if (memcmp(k1, k2, c->code_bytes) != 0 ||
					memcmp(&f1, &f2, sizeof(f1)) != 0 ||
					memcmp(w1, w2, sizeof(float) * dim) != 0)
					same = 0;
				if (memcmp(r1, r2, tv_refine_bytes(dim)) != 0)
					rsame = 0;
			}
			Check(same, "scalar and AVX2 encoders differ, dim %d bits %d",
				  dim, bits_list[b]);
			Check(rsame, "scalar and AVX2 refinements differ, dim %d bits %d",
				  dim, bits_list[b]);
			free(r1);
			free(r2);
			free(c);
			free(v);
			free(w1);
			free(w2);
			free(k1);
			free(k2);
		}
	}

	tv_kernels_init();
	for (b = 0; b < 3; b++)
		Check(GoldenHash(bits_list[b]) == golden[b],
			  "golden hash dim 100 bits %d changes with the AVX2 encoder", bits_list[b]);
}

/*
 * k-means' kernels, AVX2 against portable, bit for bit: the running sums,
 * and the seeding's 8-bit rows at every length of a partial last chunk,
 * with values halfway between integers (rounding to even), beyond the
 * clamp, zeros of both signs, infinities and NaN, and a scale of zero
 */
static void
TestKmeansKernels(void)
{
	static const int lens[] = {1, 3, 7, 8, 9, 15, 16, 17, 100, 784, 1023, 16000};
	size_t		d;

	if (!tv_kernels_have_avx2())
		return;
	for (d = 0; d < sizeof(lens) / sizeof(lens[0]); d++)
	{
		int			n = lens[d];
		float	   *x = Alloc(sizeof(float) * n);
		double	   *s1 = Alloc(sizeof(double) * n);
		double	   *s2 = Alloc(sizeof(double) * n);
		uint8_t    *k1 = Alloc(n);
		uint8_t    *k2 = Alloc(n);
		int			trial,
					same = 1,
					qsame = 1;

		TestSeed(501 + n);
		for (trial = 0; trial < 6; trial++)
		{
			float		scale = (trial == 5) ? 0.0f : (float) (0.01 + TestUniform());
			int64_t		q1,
						q2;
			int			i;

			FillNormal(x, n);
			for (i = 0; i < n; i++)
			{
				if (trial >= 1 && i % 3 == 0)	/* k + 0.5 times the scale */
					x[i] = ((float) ((int) (TestNormal() * 60)) + 0.5f) * scale;
				else
					x[i] *= 60 * scale;
				if (trial >= 2 && i % 11 == 5)
					x[i] = (i % 2) ? 1e30f : -1e30f;
				if (trial >= 3 && i % 13 == 7)
					x[i] = (i % 2) ? -0.0f : 0.0f;
				if (trial >= 4 && i % 17 == 3)
					x[i] = (i % 2) ? INFINITY : -INFINITY;
				if (trial >= 4 && i % 19 == 4)
					x[i] = NAN;
			}
			for (i = 0; i < n; i++)
				s1[i] = s2[i] = TestNormal() * 1e3;
			tv_accumulate_scalar(s1, x, n);
			tv_accumulate_avx2(s2, x, n);
			/* NaN sums compare unequal to themselves: compare the bits */
			if (memcmp(s1, s2, sizeof(double) * n) != 0)
				same = 0;
			memset(k1, 0xA5, n);
			memset(k2, 0x5A, n);
			q1 = tv_quantize_i8_scalar(x, n, scale, k1);
			q2 = tv_quantize_i8_avx2(x, n, scale, k2);
			if (q1 != q2 || memcmp(k1, k2, n) != 0)
				qsame = 0;
		}
		Check(same, "scalar and AVX2 k-means sums differ, n %d", n);
		Check(qsame, "scalar and AVX2 8-bit seeding rows differ, n %d", n);
		free(x);
		free(s1);
		free(s2);
		free(k1);
		free(k2);
	}
}

/*
 * Scoring a block in pieces (a block across index pages): any split of the
 * groups, summed in any order, each piece from its own copy of the codes
 * (so no piece can read past its end unnoticed), finishes to exactly what
 * tv_score_block writes.
 */
static void
TestSplitSums(void)
{
	static const int dims[] = {1, 2, 3, 31, 100, 511, 512, 513, 767, 768, 1000, 1536, 16000};
	bool		avx2 = tv_kernels_have_avx2();
	int			k,
				b;

	for (k = 0; k < (int) (sizeof(dims) / sizeof(dims[0])); k++)
	{
		int			dim = dims[k];

		for (b = 0; b < 3; b++)
		{
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			TvQueryLut *lut = Alloc(tv_query_lut_size(c));
			uint8_t    *block = Alloc(c->block_code_bytes);
			float	   *q = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			int		   *cuts = Alloc(sizeof(int) * (c->ngroups + 2));
			int			trial,
						same = 1;

			TestSeed(11 + dim * 3 + b);
			for (trial = 0; trial < 6; trial++)
			{
				float		ref[TV_LANES],
							out[TV_LANES];
				uint32_t	sums[TV_LANES];
				int			ncuts = 0,
							i,
							kk;

				FillBytes(block, c->block_code_bytes);
				FillNormal(q, dim);
				tv_query_prepare(c, q, lut, work);
				if (trial == 5)
				{
					/* the largest bytes: counters at their limit */
					memset(lut->lut, 0xFF, (size_t) c->ngroups * 16);
				}
				tv_score_block_scalar(lut, block, ref);

				/* cuts: none, every group, or a few random ones */
				cuts[ncuts++] = 0;
				for (i = 1; i < c->ngroups; i++)
					if (trial == 1 || (trial > 1 && TestNext() % 97 < (uint64_t) (trial * 3)))
						cuts[ncuts++] = i;
				cuts[ncuts] = c->ngroups;

				for (kk = 0; kk < (avx2 ? 2 : 1); kk++)
				{
					TvSumGroupsFn fn = kk ? tv_sum_groups_avx2 : tv_sum_groups_scalar;

					memset(sums, 0, sizeof(sums));
					/* last piece first, as a scan walking down a list does */
					for (i = ncuts - 1; i >= 0; i--)
					{
						int			g0 = cuts[i];
						int			n = cuts[i + 1] - g0;
						size_t		len = (size_t) n * c->group_bytes;
						uint8_t    *piece = Alloc(len);

						memcpy(piece, block + (size_t) g0 * c->group_bytes, len);
						fn(lut, piece, g0, n, sums);
						free(piece);
					}
					tv_finish_sums(lut, sums, out);
					if (memcmp(ref, out, sizeof(ref)) != 0)
						same = 0;
				}
			}
			Check(same, "pieces differ from the whole block, dim %d bits %d",
				  dim, bits_list[b]);
			free(c);
			free(lut);
			free(block);
			free(q);
			free(work);
			free(cuts);
		}
	}
}

/* All-255 LUT at the largest dim: sums must not wrap */
static void
TestOverflow(void)
{
	int			b;

	for (b = 0; b < 3; b++)
	{
		TvCodec    *c = MakeCodec(TV_CODEC_MAX_DIM, bits_list[b]);
		TvQueryLut *lut = Alloc(tv_query_lut_size(c));
		uint8_t    *block = Alloc(c->block_code_bytes);
		float		out[TV_LANES];
		float		expect = 255.0f * c->ngroups;
		int			lane,
					ok1 = 1,
					ok2 = 1;

		memset(lut->lut, 255, (size_t) c->ngroups * 16);
		lut->ngroups = c->ngroups;
		lut->bits = c->bits;
		lut->bias = 0.0f;
		lut->scale = 1.0f;
		FillBytes(block, c->block_code_bytes);

		tv_score_block_scalar(lut, block, out);
		for (lane = 0; lane < TV_LANES; lane++)
			if (out[lane] != expect)
				ok1 = 0;
		Check(ok1, "scalar overflow, bits %d: %g != %g", bits_list[b],
			  out[0], expect);
		if (tv_kernels_have_avx2())
		{
			tv_score_block_avx2(lut, block, out);
			for (lane = 0; lane < TV_LANES; lane++)
				if (out[lane] != expect)
					ok2 = 0;
			Check(ok2, "AVX2 overflow, bits %d: %g != %g", bits_list[b],
				  out[0], expect);
		}
		free(c);
		free(lut);
		free(block);
	}
}

/*
 * Quantized block scores against the exact tv_code_inner_product: each
 * group's entry is off by at most scale / 2.  Also: padding bits in a
 * block (odd dims at 2 bits) must not change a score.
 */
static void
TestQuantization(void)
{
	static const int dims[] = {1, 2, 3, 7, 33, 100, 101, 517, 784, 1001};
	size_t		d;
	int			b;

	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			TvQueryLut *lut = Alloc(tv_query_lut_size(c));
			uint8_t    *block = Alloc(c->block_code_bytes);
			uint8_t    *clean = Alloc(c->block_code_bytes);
			uint8_t    *codes = Alloc((size_t) TV_LANES * c->code_bytes);
			float	   *v = Alloc(sizeof(float) * dim);
			float	   *q = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			float		out[TV_LANES],
						out2[TV_LANES];
			double		worst = 0.0,
						allowed = 0.0;
			int			lane,
						trial,
						ok = 1;

			TestSeed(31 + dim + 1000 * b);
			for (trial = 0; trial < 3; trial++)
			{
				for (lane = 0; lane < TV_LANES; lane++)
				{
					TvFactors	f;

					FillNormal(v, dim);
					tv_codec_encode(c, v, codes + (size_t) lane * c->code_bytes,
									&f, work);
					tv_block_put_code(c, block, lane, codes + (size_t) lane * c->code_bytes);
				}
				FillNormal(q, dim);
				tv_query_prepare(c, q, lut, work);
				tv_score_block(lut, block, out);
				allowed = c->ngroups * (double) lut->scale / 2 +
					1e-5 * sqrt(Dot(q, q, dim));
				for (lane = 0; lane < TV_LANES; lane++)
				{
					double		ip = tv_code_inner_product(c, codes + (size_t) lane * c->code_bytes,
														   q, work);
					double		e = fabs(out[lane] - ip);

					if (e > worst)
						worst = e;
					if (e > allowed)
						ok = 0;
				}
			}
			Check(ok, "quantized score off by %g > %g, dim %d bits %d",
				  worst, allowed, dim, bits_list[b]);

			/* garbage in padding bits must not matter */
			FillBytes(block, c->block_code_bytes);
			memset(clean, 0, c->block_code_bytes);
			for (lane = 0; lane < TV_LANES; lane++)
			{
				tv_block_get_code(c, block, lane, codes);
				tv_block_put_code(c, clean, lane, codes);
			}
			tv_score_block(lut, block, out);
			tv_score_block(lut, clean, out2);
			Check(memcmp(out, out2, sizeof(out)) == 0,
				  "padding bits change scores, dim %d bits %d", dim, bits_list[b]);
			free(c);
			free(lut);
			free(block);
			free(clean);
			free(codes);
			free(v);
			free(q);
			free(work);
		}
	}
}

/* The list-ranking kernels, the scalar reference first, and which this CPU runs */
#define TV_RANK_KERNELS 4

typedef struct RankKernel
{
	const char *name;
	TvRankDotFn fn;
	bool		have;
} RankKernel;

static void
GetRankKernels(RankKernel *k)
{
	k[0] = (RankKernel) {"scalar", tv_rank_dot_scalar, true};
	k[1] = (RankKernel) {"avx2", tv_rank_dot_avx2, tv_kernels_have_avx2()};
	k[2] = (RankKernel) {"avxvnni", tv_rank_dot_avxvnni, tv_kernels_have_avxvnni()};
	k[3] = (RankKernel) {"avx512vnni", tv_rank_dot_avx512vnni, tv_kernels_have_avx512vnni()};
}

/* ---------- float products for lists ---------- */

typedef struct FloatKernels
{
	const char *name;
	TvPairFn	dot;
	TvPairFn	l2sq;
	TvTileFn	dot_tile;
	bool		present;
} FloatKernels;

/*
 * n bytes ending where a PROT_NONE page begins, so that a kernel reading
 * past the last vector faults instead of passing; munmap(*base, *len)
 */
static float *
GuardedAlloc(size_t n, void **base, size_t *len)
{
	size_t		page = (size_t) sysconf(_SC_PAGESIZE);
	size_t		body = (n + page - 1) / page * page;
	char	   *p = mmap(NULL, body + page, PROT_READ | PROT_WRITE,
						 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED || mprotect(p + body, page, PROT_NONE) != 0)
	{
		fprintf(stderr, "mmap failed\n");
		exit(2);
	}
	*base = p;
	*len = body + page;
	return (float *) (p + body - n);
}

/*
 * Every version of the float products (AVX-512 has its own tile only):
 * - on small integers, whose sums are exact in float, each gives the
 *   exact value, which catches a lost or repeated coordinate at any
 *   dimension, the masked tails included;
 * - on normal values, each is within its summation error of a double sum;
 * - a tile's value for a pair does not depend on the tile's other rows and
 *   centroids, their order or their addresses (bit-identical), which the
 *   build relies on for serial and parallel builds to lay out the same
 *   lists.
 * The vectors end at a guard page, so reading past them fails.
 */
static void
TestFloatKernels(void)
{
	static const int dims[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64,
	65, 100, 127, 255, 768, 784, 1000, 1536, 3072, 16000};
	FloatKernels k[3];
	size_t		d;

	k[0] = (FloatKernels) {"scalar", tv_dot_scalar, tv_l2sq_scalar, tv_dot_tile_scalar, true};
	k[1] = (FloatKernels) {"avx2", tv_dot_avx2, tv_l2sq_avx2, tv_dot_tile_avx2,
	tv_kernels_have_avx2()};
	k[2] = (FloatKernels) {"avx512", tv_dot_avx2, tv_l2sq_avx2, tv_dot_tile_avx512,
	tv_kernels_have_avx512f()};

	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		int			dim = dims[d];
		void	   *xbase,
				   *cbase;
		size_t		xlen,
					clen;
		/* 4 rows and 3 centroids, each block ending at a guard page */
		float	   *x = GuardedAlloc(sizeof(float) * 4 * dim, &xbase, &xlen);
		float	   *c = GuardedAlloc(sizeof(float) * 3 * dim, &cbase, &clen);
		float	   *rev = Alloc(sizeof(float) * 7 * dim);
		int			kk;

		TestSeed(1009 + dim);
		for (int pass = 0; pass < 2; pass++)
		{
			bool		exact = (pass == 0);

			for (int i = 0; i < 4 * dim; i++)
				x[i] = exact ? (float) ((int) (TestNext() % 17) - 8) : TestNormal();
			for (int i = 0; i < 3 * dim; i++)
				c[i] = exact ? (float) ((int) (TestNext() % 17) - 8) : TestNormal();

			for (kk = 0; kk < 3; kk++)
			{
				float		dots[12],
							dots2[12];
				int			bad = 0,
							moved = 0;

				if (!k[kk].present)
					continue;
				k[kk].dot_tile(x, c, dim, dots);
				for (int a = 0; a < 4; a++)
					for (int b = 0; b < 3; b++)
					{
						const float *xr = x + (size_t) a * dim;
						const float *cr = c + (size_t) b * dim;
						double		dot = 0,
									l2 = 0,
									mag = 0;
						/* recursive summation: at most dim terms a lane */
						double		slack = (dim + 16) * FLT_EPSILON;
						float		got[3];

						for (int i = 0; i < dim; i++)
						{
							dot += (double) xr[i] * cr[i];
							mag += fabs((double) xr[i] * cr[i]);
							l2 += ((double) xr[i] - cr[i]) * ((double) xr[i] - cr[i]);
						}
						got[0] = dots[a * 3 + b];
						got[1] = k[kk].dot(xr, cr, dim);
						got[2] = k[kk].l2sq(cr, xr, dim);
						for (int g = 0; g < 3; g++)
						{
							double		want = (g == 2) ? l2 : dot;
							double		tol = slack * ((g == 2) ? l2 : mag) + 1e-30;

							if (exact ? got[g] != (float) want : fabs(got[g] - want) > tol)
								bad++;
						}
					}
				Check(bad == 0, "%s float products, dim %d, %s values: %d of 36 wrong",
					  k[kk].name, dim, exact ? "integer" : "normal", bad);

				/* the same pairs in reverse order, at other addresses */
				for (int a = 0; a < 4; a++)
					memcpy(rev + (size_t) (3 - a) * dim, x + (size_t) a * dim, sizeof(float) * dim);
				for (int b = 0; b < 3; b++)
					memcpy(rev + (size_t) (6 - b) * dim, c + (size_t) b * dim, sizeof(float) * dim);
				k[kk].dot_tile(rev, rev + (size_t) 4 * dim, dim, dots2);
				for (int a = 0; a < 4; a++)
					for (int b = 0; b < 3; b++)
						if (memcmp(&dots[a * 3 + b], &dots2[(3 - a) * 3 + 2 - b], sizeof(float)) != 0)
							moved++;
				Check(moved == 0, "%s float tiles, dim %d: a pair's value depends on its tile",
					  k[kk].name, dim);
			}
		}
		free(rev);
		munmap(xbase, xlen);
		munmap(cbase, clen);
	}
}

/* ---------- timings (bench mode only) ---------- */

static double
Now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void
Bench(void)
{
	static const int dims[] = {100, 784};
	static const int nvec[] = {341479, 60000};
	size_t		d;
	int			b;

	printf("%-5s %-4s %-7s %10s %10s %10s\n", "dim", "bits", "kernel",
		   "ns/vector", "ms/scan", "GB/s");
	for (d = 0; d < 2; d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			int			nblocks = (nvec[d] + TV_LANES - 1) / TV_LANES;
			size_t		bytes = (size_t) nblocks * c->block_code_bytes;
			uint8_t    *blocks = Alloc(bytes);
			TvQueryLut *lut = Alloc(tv_query_lut_size(c));
			float	   *q = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			float	   *out = Alloc(sizeof(float) * TV_LANES * (size_t) nblocks);
			int			kk;

			FillBytes(blocks, bytes);
			FillNormal(q, dim);
			tv_query_prepare(c, q, lut, work);
			for (kk = 0; kk < 2; kk++)
			{
				TvScoreBlockFn fn = kk ? tv_score_block_avx2 : tv_score_block_scalar;
				double		best = 1e30;
				int			rep,
							i;

				if (kk && !tv_kernels_have_avx2())
					continue;
				for (rep = 0; rep < (kk ? 20 : 3); rep++)
				{
					double		t0 = Now();

					for (i = 0; i < nblocks; i++)
						fn(lut, blocks + (size_t) i * c->block_code_bytes,
						   out + (size_t) i * TV_LANES);
					t0 = Now() - t0;
					if (t0 < best)
						best = t0;
				}
				printf("%-5d %-4d %-7s %10.3f %10.3f %10.2f\n", dim, bits_list[b],
					   kk ? "avx2" : "scalar", best * 1e9 / ((double) nblocks * TV_LANES),
					   best * 1e3, bytes / best / 1e9);
			}
			free(c);
			free(blocks);
			free(lut);
			free(q);
			free(work);
			free(out);
		}
	}

	/* ranking 4,000 lists' 768-d centroids (3 MB of codes), as a 1M-row scan does */
	{
		const int	lists = 4000,
					dim = 768;
		uint8_t    *k = Alloc((size_t) lists * dim);
		int8_t	   *q = Alloc(dim);
		RankKernel	kernels[TV_RANK_KERNELS];

		GetRankKernels(kernels);

		FillBytes(k, (size_t) lists * dim);
		FillBytes((uint8_t *) q, dim);
		printf("%-10s %12s\n", "rank", "us/4000x768");
		for (int n = 0; n < TV_RANK_KERNELS; n++)
		{
			double		best = 1e30;
			volatile int32_t sink = 0;

			if (!kernels[n].have)
				continue;
			for (int rep = 0; rep < 20; rep++)
			{
				double		t0 = Now();

				for (int j = 0; j < lists; j++)
					sink += kernels[n].fn(k + (size_t) j * dim, q, dim);
				t0 = Now() - t0;
				if (t0 < best)
					best = t0;
			}
			(void) sink;
			printf("%-10s %12.1f\n", kernels[n].name, best * 1e6);
		}
		free(k);
		free(q);
	}

	/* refinement of one candidate (lane), cache-resident: the kernel alone */
	printf("%-5s %-4s %-7s %10s\n", "dim", "bits", "refine", "ns/cand");
	for (d = 0; d < 2; d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			uint8_t    *block = Alloc(c->block_code_bytes);
			size_t		rb = tv_refine_bytes(dim);
			uint8_t    *refine = Alloc(rb * TV_LANES);
			float	   *qr = Alloc(sizeof(float) * dim);
			int			kk;

			FillBytes(block, c->block_code_bytes);
			FillBytes(refine, rb * TV_LANES);
			for (int l = 0; l < TV_LANES; l++)
				memcpy(refine + l * rb, &(float) {0.01f}, sizeof(float));
			FillNormal(qr, dim);
			for (kk = 0; kk < 2; kk++)
			{
				double		best = 1e30;
				volatile float sink = 0;

				if (kk && !tv_kernels_have_avx2())
					continue;
				for (int rep = 0; rep < 5; rep++)
				{
					double		t0 = Now();

					for (int i = 0; i < 20000; i++)
					{
						float		sd;
						int			lane = i % TV_LANES;

						sink += (kk ? tv_refine_block_ip_avx2 : tv_refine_block_ip_scalar)
							(c, block, lane, refine + lane * rb, qr, &sd);
					}
					t0 = Now() - t0;
					if (t0 < best)
						best = t0;
				}
				(void) sink;
				printf("%-5d %-4d %-7s %10.1f\n", dim, bits_list[b],
					   kk ? "avx2" : "scalar", best * 1e9 / 20000);
			}
			free(c);
			free(block);
			free(refine);
			free(qr);
		}
	}

	/* encoder throughput: GloVe-100 and Fashion-MNIST sized sets */
	for (d = 0; d < 2; d++)
	{
		int			dim = dims[d];
		TvCodec    *c = MakeCodec(dim, 4);
		float	   *v = Alloc(sizeof(float) * dim * 1024);
		float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
		uint8_t    *code = Alloc(c->code_bytes);
		double		t0;
		int			i;

		FillNormal(v, dim * 1024);
		t0 = Now();
		for (i = 0; i < nvec[d]; i++)
		{
			TvFactors	f;

			tv_codec_encode(c, v + (size_t) (i % 1024) * dim, code, &f, work);
		}
		t0 = Now() - t0;
		printf("encode %d x %d-d, 4 bits: %.3f s (%.0f ns/vector)\n",
			   nvec[d], dim, t0, t0 * 1e9 / nvec[d]);
		free(c);
		free(v);
		free(work);
		free(code);
	}
}

/*
 * Refinement codes: the estimate from a lane's block code plus its
 * refinement must be much finer than the first stage alone (the cells are
 * cut in 16, so about 16 times at 4 bits), for every lane of a block; the
 * zero vector gives a zero refinement.  Errors in units of
 * ||v|| ||q|| / sqrt(dim), as in TestInnerProduct.
 */
static void
TestRefine(bool verbose)
{
	static const int dims[] = {16, 100, 768};
	static const double bound[3] = {0.045, 0.025, 0.012};	/* by bits */
	size_t		d;
	int			b;

	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			float	   *v = Alloc(sizeof(float) * dim);
			float	   *q = Alloc(sizeof(float) * dim);
			float	   *qr = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			uint8_t    *code = Alloc(c->code_bytes);
			uint8_t    *block = Alloc(c->block_code_bytes);
			size_t		rb = tv_refine_bytes(dim);
			uint8_t    *refine = Alloc(rb * TV_LANES);
			double		e1 = 0.0,
						e2 = 0.0,
						z2 = 0.0;
			int			lane,
						i;

			Check(rb % 4 == 0 && rb >= 4 + (size_t) (dim + 1) / 2 && rb <= 7 + (size_t) (dim + 1) / 2,
				  "refine bytes %zu for dim %d", rb, dim);
			TestSeed(4242 + dim);
			FillNormal(q, dim);
			tv_refine_prepare(c, q, qr);
			for (lane = 0; lane < TV_LANES; lane++)
			{
				TvFactors	f;
				double		exact = 0.0,
							nv = 0.0,
							nq = 0.0,
							unit;

				FillNormal(v, dim);
				for (i = 0; i < dim; i++)
					v[i] *= 3.0f;
				tv_codec_encode(c, v, code, &f, work);
				tv_block_put_code(c, block, lane, code);
				Check(tv_codec_encode_refine(c, v, refine + lane * rb, work),
					  "refine of a non-zero vector failed");
				for (i = 0; i < dim; i++)
				{
					exact += (double) v[i] * q[i];
					nv += (double) v[i] * v[i];
					nq += (double) q[i] * q[i];
				}
				unit = sqrt(nv) * sqrt(nq) / sqrt((double) dim);
				e1 += fabs(f.ipscale * tv_code_inner_product(c, code, q, work) - exact) / unit;
			}
			for (lane = 0; lane < TV_LANES; lane++)
			{
				double		exact = 0.0,
							nv = 0.0,
							nq = 0.0;

				/* the same vectors again, to compare against the block */
				if (lane == 0)
					TestSeed(4242 + dim), FillNormal(q, dim);
				FillNormal(v, dim);
				for (i = 0; i < dim; i++)
				{
					v[i] *= 3.0f;
					exact += (double) v[i] * q[i];
					nv += (double) v[i] * v[i];
					nq += (double) q[i] * q[i];
				}
				{
					float		sd;
					double		err = tv_refine_block_ip(c, block, lane, refine + lane * rb, qr, &sd) - exact;

					e2 += fabs(err) / (sqrt(nv) * sqrt(nq) / sqrt((double) dim));
					z2 += (err / sd) * (err / sd);
				}
			}
			e1 /= TV_LANES;
			e2 /= TV_LANES;
			z2 = sqrt(z2 / TV_LANES);
			if (verbose)
				printf("refine dim %d bits %d: mean error %.5f, first stage %.5f, rms error / sd %.2f\n",
					   dim, bits_list[b], e2, e1, z2);
			/* the scan allows 6 sd: the reported sd must not be too small */
			Check(z2 > 0.3 && z2 < 2.0, "refine dim %d bits %d: rms error / sd %.2f",
				  dim, bits_list[b], z2);
			Check(e2 < bound[b] && e2 < e1 / 5,
				  "refine dim %d bits %d: mean error %.5f (first stage %.5f)",
				  dim, bits_list[b], e2, e1);
			memset(v, 0, sizeof(float) * dim);
			Check(!tv_codec_encode_refine(c, v, refine, work) && refine[0] == 0 &&
				  refine[rb - 1] == 0, "zero vector refinement not zero");
			free(c);
			free(v);
			free(q);
			free(qr);
			free(work);
			free(code);
			free(block);
			free(refine);
		}
	}
}

/*
 * The AVX2 refinement (4 bits; other widths fall back to the scalar code)
 * against the scalar reference, for every lane of a block, at dimensions
 * with and without a tail of fewer than 8 coordinates: the same estimate
 * up to the order of the double sums, the same sd up to float rounding.
 */
static void
TestRefineKernels(void)
{
	static const int dims[] = {1, 7, 8, 13, 100, 784, 1536};
	size_t		d;
	int			b;

	if (!tv_kernels_have_avx2())
	{
		printf("note: CPU lacks AVX2, scalar/AVX2 refinement not compared\n");
		return;
	}
	Check(tv_refine_block_ip == tv_refine_block_ip_avx2,
		  "refinement after init is not the AVX2 one");
	for (d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
	{
		for (b = 0; b < 3; b++)
		{
			int			dim = dims[d];
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			float	   *v = Alloc(sizeof(float) * dim);
			float	   *q = Alloc(sizeof(float) * dim);
			float	   *qr = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			uint8_t    *code = Alloc(c->code_bytes);
			uint8_t    *block = Alloc(c->block_code_bytes);
			size_t		rb = tv_refine_bytes(dim);
			uint8_t    *refine = Alloc(rb * TV_LANES);
			int			lane,
						i,
						bad = 0;

			TestSeed(991 + dim);
			FillNormal(q, dim);
			tv_refine_prepare(c, q, qr);
			for (lane = 0; lane < TV_LANES; lane++)
			{
				TvFactors	f;

				FillNormal(v, dim);
				for (i = 0; i < dim; i++)
					v[i] = v[i] * 3.0f + 0.5f;
				tv_codec_encode(c, v, code, &f, work);
				tv_block_put_code(c, block, lane, code);
				tv_codec_encode_refine(c, v, refine + lane * rb, work);
			}
			for (lane = 0; lane < TV_LANES; lane++)
			{
				float		sd_ref,
							sd;
				float		ref = tv_refine_block_ip_scalar(c, block, lane, refine + lane * rb,
															qr, &sd_ref);
				float		got = tv_refine_block_ip_avx2(c, block, lane, refine + lane * rb,
														  qr, &sd);

				if (!(fabs(got - ref) <= 1e-6 * (fabs(ref) + sd_ref) &&
					  fabs(sd - sd_ref) <= 1e-4 * sd_ref && sd_ref > 0))
					bad++;
			}
			Check(bad == 0, "refine AVX2 dim %d bits %d: %d of 32 lanes differ from scalar",
				  dim, bits_list[b], bad);
			free(c);
			free(v);
			free(q);
			free(qr);
			free(work);
			free(code);
			free(block);
			free(refine);
		}
	}
}

/*
 * The list-ranking kernels return the same integer as the scalar sum: on
 * random codes at dims around each kernel's step (tails of every length),
 * and at the extremes at TV_CODEC_MAX_DIM, where an int16 or saturating
 * intermediate would overflow.  A kernel the CPU lacks is not compared.
 */
static void
TestRankKernels(void)
{
	static const int dims[] = {1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 191, 192, 200, 768, 784, 1536, 16000};
	RankKernel	kernels[TV_RANK_KERNELS];
	uint8_t    *k = Alloc(TV_CODEC_MAX_DIM + 3);
	int8_t	   *q = Alloc(TV_CODEC_MAX_DIM + 3);

	GetRankKernels(kernels);
	/* the first is the scalar reference itself */
	for (int n = 1; n < TV_RANK_KERNELS; n++)
	{
		int			bad = 0;

		if (!kernels[n].have)
		{
			printf("note: CPU lacks %s, its list-ranking kernel not compared\n", kernels[n].name);
			continue;
		}
		for (size_t d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
		{
			int			dim = dims[d];

			TestSeed(4242 + dim);
			for (int rep = 0; rep < 20; rep++)
			{
				for (int i = 0; i < dim; i++)
				{
					k[i + 1] = (uint8_t) (1 + (TestNext() >> 32) % 255);
					q[i + 3] = (int8_t) ((int) ((TestNext() >> 32) % 255) - 127);
				}
				/* at odd offsets: the kernels load unaligned */
				if (kernels[n].fn(k + 1, q + 3, dim) != tv_rank_dot_scalar(k + 1, q + 3, dim))
					bad++;
			}
		}
		/* the largest and the most negative sums */
		memset(k, 255, TV_CODEC_MAX_DIM);
		memset(q, 127, TV_CODEC_MAX_DIM);
		Check(kernels[n].fn(k, q, TV_CODEC_MAX_DIM) == 255 * 127 * TV_CODEC_MAX_DIM,
			  "rank %s: largest sum wrong", kernels[n].name);
		memset(q, -127, TV_CODEC_MAX_DIM);
		Check(kernels[n].fn(k, q, TV_CODEC_MAX_DIM) == -255 * 127 * TV_CODEC_MAX_DIM,
			  "rank %s: most negative sum wrong", kernels[n].name);
		Check(bad == 0, "rank %s: %d sums differ from scalar", kernels[n].name, bad);
	}
	Check(tv_rank_dot == (tv_kernels_have_avxvnni() ? tv_rank_dot_avxvnni :
						  tv_kernels_have_avx512vnni() ? tv_rank_dot_avx512vnni :
						  tv_kernels_have_avx2() ? tv_rank_dot_avx2 : tv_rank_dot_scalar),
		  "tv_kernels_init picked the wrong ranking kernel");
	free(k);
	free(q);
}

/*
 * The list search's first pass (u8 rows x s8 centroids in blocks of 16)
 * against its scalar reference and against single products, for 1 to 4
 * rows, block counts around the kernel's six a pass, group counts up to
 * the largest dimension, from unaligned buffers, and at the extreme sums.
 */
static void
TestRankLists(void)
{
	static const int groups_list[] = {1, 3, 16, 196, 384, 4000};
	static const int blocks_list[] = {1, 5, 6, 7, 12, 13};
	int			max_groups = 4000,
				max_blocks = 13;
	size_t		ld = (size_t) max_groups * 4 + 4;
	uint8_t    *rows = Alloc(4 * ld + 1);
	int8_t	   *blocks = Alloc((size_t) max_blocks * max_groups * 64 + 1);
	int8_t	   *cent = Alloc((size_t) max_groups * 4);
	int32_t    *a = Alloc(sizeof(int32_t) * 4 * max_blocks * 16);
	int32_t    *b = Alloc(sizeof(int32_t) * 4 * max_blocks * 16);
	int			bad = 0,
				bad_single = 0;

	if (!tv_kernels_have_avx512vnni())
	{
		printf("note: CPU lacks avx512vnni, the list search's first pass not compared\n");
		return;
	}
	for (size_t gi = 0; gi < sizeof(groups_list) / sizeof(groups_list[0]); gi++)
		for (size_t bi = 0; bi < sizeof(blocks_list) / sizeof(blocks_list[0]); bi++)
		{
			int			groups = groups_list[gi];
			int			nblocks = blocks_list[bi];
			int			ncent = nblocks * 16;

			if ((size_t) groups * nblocks > 40000)
				continue;
			TestSeed(6161 + groups * 31 + nblocks);
			for (size_t i = 0; i < 4 * ld; i++)
				rows[i + 1] = (uint8_t) (TestNext() >> 56);
			for (size_t i = 0; i < (size_t) nblocks * groups * 64; i++)
				blocks[i + 1] = (int8_t) (TestNext() >> 56);
			for (int nrows = 1; nrows <= 4; nrows++)
			{
				memset(a, 0, sizeof(int32_t) * 4 * ncent);
				memset(b, 0, sizeof(int32_t) * 4 * ncent);
				tv_rank_lists_avx512vnni(rows + 1, nrows, (int) ld, blocks + 1, nblocks, groups, a);
				tv_rank_lists_scalar(rows + 1, nrows, (int) ld, blocks + 1, nblocks, groups, b);
				if (memcmp(a, b, sizeof(int32_t) * 4 * ncent) != 0)
					bad++;
			}
			/* the layout: centroid j's codes gathered, then a plain product */
			for (int j = 0; j < ncent; j += 7)
			{
				for (int g = 0; g < groups; g++)
					memcpy(cent + g * 4, blocks + 1 + ((size_t) (j / 16) * groups + g) * 64 + (j % 16) * 4, 4);
				for (int r = 0; r < 4; r++)
					if (a[r * ncent + j] != tv_rank_dot_scalar(rows + 1 + r * ld, cent, groups * 4))
						bad_single++;
			}
		}
	Check(bad == 0, "rank lists: %d passes differ from scalar", bad);
	Check(bad_single == 0, "rank lists: %d sums differ from single products", bad_single);
	/* the extremes over the longest row */
	memset(rows, 255, 4 * ld);
	memset(blocks, -128, (size_t) 2 * max_groups * 64);
	tv_rank_lists_avx512vnni(rows, 4, (int) ld, blocks, 2, max_groups, a);
	Check(a[0] == -255 * 128 * 16000 && a[4 * 32 - 1] == -255 * 128 * 16000,
		  "rank lists: most negative sum wrong");
	memset(blocks, 127, (size_t) 2 * max_groups * 64);
	tv_rank_lists_avx512vnni(rows, 4, (int) ld, blocks, 2, max_groups, a);
	Check(a[33] == 255 * 127 * 16000, "rank lists: largest sum wrong");
	free(rows);
	free(blocks);
	free(cent);
	free(a);
	free(b);
}

/*
 * The rest of the first pass.  A row's codes: the same codes and scale from
 * both kernels, each code within 1/2 + 1e-4 of x / scale, a norm at least
 * ||x|| and not far above, and no codes for rows past the limit or with a
 * NaN.  The candidates: for centroids coded as tvivf.c codes them and
 * bounds built as it builds them, the list nearest in exact arithmetic is
 * always a candidate (both kernels), and few others are.
 */
static void
TestListFirstPass(void)
{
	static const int dims[] = {1, 3, 15, 16, 17, 100, 784, 1000};
	int			max_dim = 1000,
				lists = 53,
				cpad16 = 64;
	float	   *x = Alloc(sizeof(float) * max_dim);
	float	   *c = Alloc(sizeof(float) * lists * max_dim);
	uint8_t    *k1 = Alloc(max_dim + 4);
	uint8_t    *k2 = Alloc(max_dim + 4);
	int8_t	   *cq = Alloc((size_t) cpad16 * max_dim);
	float	   *norm = Alloc(sizeof(float) * cpad16);
	float	   *scale = Alloc(sizeof(float) * cpad16);
	int32_t    *sum = Alloc(sizeof(int32_t) * cpad16);
	float	   *err = Alloc(sizeof(float) * cpad16);
	float	   *full = Alloc(sizeof(float) * cpad16);
	float	   *slack = Alloc(sizeof(float) * cpad16);
	int32_t    *qd = Alloc(sizeof(int32_t) * cpad16);
	uint16_t	m1[4],
				m2[4];
	bool		avx512 = tv_kernels_have_avx512f();
	int			bad_codes = 0,
				bad_norm = 0,
				missed = 0,
				rows = 0;
	long		candidates = 0;

	for (size_t di = 0; di < sizeof(dims) / sizeof(dims[0]); di++)
	{
		int			dim = dims[di];

		for (int metric = 0; metric < 2; metric++)
		{
			/* L2 (f = 2, norms) and inner product (f = 1) */
			double		f = metric == 0 ? 2 : 1;
			TvListBounds lb = {lists, norm, scale, sum, err, full, slack};

			TestSeed(9090 + dim * 2 + metric);
			memset(norm, 0, sizeof(float) * cpad16);
			memset(scale, 0, sizeof(float) * cpad16);
			memset(sum, 0, sizeof(int32_t) * cpad16);
			memset(err, 0, sizeof(float) * cpad16);
			memset(full, 0, sizeof(float) * cpad16);
			memset(slack, 0, sizeof(float) * cpad16);
			for (int j = 0; j < lists; j++)
			{
				float	   *cj = c + (size_t) j * dim;
				double		n2 = 0;
				TvListTerms t;

				FillNormal(cj, dim);
				/* some centroids nearly equal, so that some rows tie */
				if (j % 5 == 4)
					for (int i = 0; i < dim; i++)
						cj[i] = cj[i - (size_t) dim] + 1e-4f * cj[i];
				for (int i = 0; i < dim; i++)
					n2 += (double) cj[i] * cj[i];
				if (!tv_list_centroid_codes(cj, dim, (float) n2, metric == 0, 1e-30f, 1e15f,
											cq + (size_t) j * dim, &t))
					bad_codes++;
				norm[j] = t.norm;
				scale[j] = t.scale;
				sum[j] = t.sum;
				err[j] = t.err;
				full[j] = t.full;
				slack[j] = t.slack;
			}
			for (int trial = 0; trial < 200; trial++)
			{
				float		s1,
							s2,
							n1,
							n2;
				double		xx = 0,
							best = INFINITY;
				int			nearest = 0,
							c1,
							c2;

				/*
				 * rows near the midpoint of two centroids, whose exact
				 * ranks nearly tie while their 8-bit ones scatter; some
				 * near one centroid, some far from all
				 */
				FillNormal(x, dim);
				if (trial % 4 == 1)
					for (int i = 0; i < dim; i++)
						x[i] = c[(size_t) (trial % lists) * dim + i] + 0.05f * x[i];
				else if (trial % 4 != 0)
					for (int i = 0; i < dim; i++)
						x[i] = 0.5f * (c[(size_t) (trial % lists) * dim + i] +
									   c[(size_t) ((trial * 7 + 3) % lists) * dim + i]) +
							0.001f * x[i];
				if (!tv_list_row_codes_scalar(x, dim, 1e-30f, 1e15f, k1, &s1, &n1))
				{
					bad_codes++;
					continue;
				}
				if (avx512 && (!tv_list_row_codes_avx512(x, dim, 1e-30f, 1e15f, k2, &s2, &n2) ||
							   s1 != s2 || memcmp(k1, k2, dim) != 0))
					bad_codes++;
				for (int i = 0; i < dim; i++)
				{
					xx += (double) x[i] * x[i];
					if (fabs((double) x[i] / s1 - ((int) k1[i] - 128)) > 0.5 + 1e-4)
						bad_codes++;
				}
				if (n1 < sqrt(xx) || n1 > sqrt(xx) * 1.001 + 1e-30 ||
					(avx512 && (n2 < sqrt(xx) || n2 > sqrt(xx) * 1.001 + 1e-30)))
					bad_norm++;
				for (int j = 0; j < lists; j++)
				{
					int32_t		dot = 0;
					double		exact = 0;

					for (int i = 0; i < dim; i++)
					{
						dot += (int32_t) k1[i] * cq[(size_t) j * dim + i];
						exact += (double) x[i] * c[(size_t) j * dim + i];
					}
					qd[j] = dot;
					exact = (metric == 0 ? norm[j] : 0) - f * exact;
					if (exact < best)
					{
						best = exact;
						nearest = j;
					}
				}
				c1 = tv_list_candidates_scalar(&lb, qd, s1, n1, s1 * (float) ((0.5 + 1e-4) * sqrt((double) dim) * (1 + 1e-6)), m1);
				if (c1 < 1 || !(m1[nearest / 16] & (1u << (nearest % 16))))
					missed++;
				if (avx512)
				{
					c2 = tv_list_candidates_avx512(&lb, qd, s1, n1, s1 * (float) ((0.5 + 1e-4) * sqrt((double) dim) * (1 + 1e-6)), m2);
					if (c2 < 1 || !(m2[nearest / 16] & (1u << (nearest % 16))))
						missed++;
					/* padding lanes are never candidates */
					if (m2[lists / 16] >> (lists % 16))
						missed++;
				}
				candidates += c1;
				rows++;
			}
		}
	}
	Check(bad_codes == 0, "list first pass: %d bad row codes", bad_codes);
	Check(bad_norm == 0, "list first pass: %d norms below ||x|| or far above", bad_norm);
	Check(missed == 0, "list first pass: the nearest list was not a candidate %d times", missed);
	Check(candidates < (long) rows * lists / 2,
		  "list first pass: %ld candidates for %d rows of %d lists", candidates, rows, lists);
	/* past the limit, below the least, or a NaN: no codes; zeros: codes */
	x[0] = 2e15f;
	Check(!tv_list_row_codes_scalar(x, 16, 1e-30f, 1e15f, k1, &norm[0], &norm[1]) &&
		  (!avx512 || !tv_list_row_codes_avx512(x, 16, 1e-30f, 1e15f, k1, &norm[0], &norm[1])),
		  "list first pass: a row past the limit got codes");
	x[0] = NAN;
	Check(!tv_list_row_codes_scalar(x, 16, 1e-30f, 1e15f, k1, &norm[0], &norm[1]) &&
		  (!avx512 || !tv_list_row_codes_avx512(x, 16, 1e-30f, 1e15f, k1, &norm[0], &norm[1])),
		  "list first pass: a row with a NaN got codes");
	memset(x, 0, sizeof(float) * 16);
	x[3] = 1e-35f;
	Check(!tv_list_row_codes_scalar(x, 16, 1e-30f, 1e15f, k1, &norm[0], &norm[1]) &&
		  (!avx512 || !tv_list_row_codes_avx512(x, 16, 1e-30f, 1e15f, k1, &norm[0], &norm[1])),
		  "list first pass: a row below the least got codes");
	x[3] = 0;
	Check(tv_list_row_codes_scalar(x, 16, 1e-30f, 1e15f, k1, &norm[0], &norm[1]) &&
		  (!avx512 || tv_list_row_codes_avx512(x, 16, 1e-30f, 1e15f, k1, &norm[0], &norm[1])) &&
		  norm[0] == 0 && norm[1] == 0 && k1[0] == 128 && k1[15] == 128,
		  "list first pass: a zero row got no codes or wrong ones");
	free(x);
	free(c);
	free(k1);
	free(k2);
	free(cq);
	free(norm);
	free(scale);
	free(sum);
	free(err);
	free(full);
	free(slack);
	free(qd);
}

/*
 * The AVX2 quantization of a query's LUT against the scalar one: the same
 * bytes, for queries of ordinary, tiny and huge coordinates, zeros and a
 * single non-zero coordinate, at every bit width and many dimensions.  And
 * the rotated query tv_query_prepare leaves in work gives the refinement
 * the same query as tv_refine_prepare (the scan relies on it).
 */
static void
TestLutKernels(void)
{
	static const int extra[] = {63, 64, 65, 100, 255, 256, 257, 784, 1000, 1536, 4096};
	int			k,
				b;

	if (!tv_kernels_have_avx2())
	{
		printf("note: CPU lacks AVX2, scalar/AVX2 LUT quantization not compared\n");
		return;
	}
	Check(tv_quantize_lut == tv_quantize_lut_avx2,
		  "LUT quantization after init is not the AVX2 one");
	for (k = 0; k < 24 + 11; k++)
	{
		int			dim = k < 24 ? k + 1 : extra[k - 24];

		for (b = 0; b < 3; b++)
		{
			TvCodec    *c = MakeCodec(dim, bits_list[b]);
			TvQueryLut *lut = Alloc(tv_query_lut_size(c));
			uint8_t    *ref = Alloc((size_t) c->ngroups * 16);
			float	   *q = Alloc(sizeof(float) * dim);
			float	   *work = Alloc(sizeof(float) * tv_codec_work_floats(c));
			int			bad = 0,
						bad_rotation = 0;

			TestSeed(31337 + dim * 3 + b);
			for (int t = 0; t < 6; t++)
			{
				static const float scales[6] = {1.0f, 1e-30f, 1e30f, 1.0f, 0.0f, 1.0f};

				FillNormal(q, dim);
				for (int i = 0; i < dim; i++)
					q[i] = (t == 5 && i > 0) ? 0.0f : q[i] * scales[t] + (t == 3 ? 2.0f : 0.0f);
				tv_query_prepare(c, q, lut, work);
				/* the rotation tv_query_prepare leaves is the refinement's */
				{
					float	   *qr1 = Alloc(sizeof(float) * dim);
					float	   *qr2 = Alloc(sizeof(float) * dim);

					tv_refine_prepare(c, q, qr1);
					tv_refine_scale(c, work, qr2);
					if (memcmp(qr1, qr2, sizeof(float) * dim) != 0)
						bad_rotation++;
					free(qr1);
					free(qr2);
				}
				if (lut->scale > 0)
				{
					double		inv = 1.0 / sqrt((double) dim);
					double		rstep = 1.0 / (double) lut->scale;

					/* work holds the rotated query after tv_query_prepare */
					tv_quantize_lut_scalar(c, work, inv, rstep, ref);
					if (memcmp(ref, lut->lut, (size_t) c->ngroups * 16) != 0)
						bad++;
				}
			}
			Check(bad == 0, "LUT AVX2 dim %d bits %d: %d of 6 queries differ from scalar",
				  dim, bits_list[b], bad);
			Check(bad_rotation == 0, "dim %d bits %d: %d of 6 rotated queries differ "
				  "from tv_refine_prepare's", dim, bits_list[b], bad_rotation);
			free(c);
			free(lut);
			free(ref);
			free(q);
			free(work);
		}
	}
}

int
main(int argc, char **argv)
{
	bool		verbose = argc > 1 && strcmp(argv[1], "-v") == 0;

	if (argc > 1 && strcmp(argv[1], "bench") == 0)
	{
		tv_kernels_init();
		Bench();
		return 0;
	}

	TestRotation();
	TestDeterminism(verbose);
	TestZeroVector();
	TestReconstruction(verbose);
	TestInnerProduct(verbose);
	TestBlockRoundTrip();
	TestKernels();
	TestEncoderKernels();
	TestKmeansKernels();
	TestSplitSums();
	TestOverflow();
	TestQuantization();
	TestRefine(verbose);
	TestRefineKernels();
	TestLutKernels();
	TestRankKernels();
	TestRankLists();
	TestListFirstPass();
	TestFloatKernels();

	printf("codec: %d passed, %d failed\n", npassed, nfailed);
	return nfailed ? 1 : 0;
}
