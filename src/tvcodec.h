/*
 * tvcodec.h
 *	  TurboQuant codec: seeded structured rotation, Gaussian Lloyd-Max
 *	  scalar codebooks (2, 3 or 4 bits per coordinate), length
 *	  renormalisation, and the 32-lane block layout the scan kernels read.
 *
 * This header and tvcodec.c/tvkernels.c use no PostgreSQL headers, so the
 * codec can be tested on its own (test/codec).  Everything here is a pure
 * function of (seed, dimension, bits): the same vector gives byte-identical
 * codes on every run and machine.  tvcodec.c is compiled with
 * -ffp-contract=off so no fused multiply-add changes a rounding.
 *
 * Two code layouts exist:
 *	- the row code: one vector's code, coordinate i's code in bits
 *	  [i*bits, i*bits+bits) of a little-endian bit string (LSB first),
 *	  TvCodec.code_bytes = ceil(dim*bits/8) bytes.  This is what the SQL
 *	  encoder returns and what snapshots store.
 *	- the block layout: 32 vectors ("lanes") interleaved so one SIMD
 *	  instruction scores all 32; TvCodec.block_code_bytes bytes, made of
 *	  ngroups groups of group_bytes bytes each.  See docs/CODEC.md.
 */
#ifndef TVCODEC_H
#define TVCODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TV_CODEC_DEFAULT_SEED	UINT64_C(0x71558807FED42913)
#define TV_CODEC_MIN_DIM		1
#define TV_CODEC_MAX_DIM		16000
#define TV_CODEC_MIN_BITS		2
#define TV_CODEC_MAX_BITS		4
#define TV_LANES				32

/* Per-vector factors kept beside each code */
typedef struct TvFactors
{
	float		norm;			/* ||v|| */
	float		ipscale;		/* ||v|| / <x, xhat>, x = v/||v||; 0 for v = 0 */
} TvFactors;

/*
 * The codec for one (seed, dim, bits).  Allocate tv_codec_size(dim) bytes
 * and call tv_codec_init; the struct owns no pointers, so it may be copied
 * with memcpy or placed in shared memory.
 */
typedef struct TvCodec
{
	int			dim;
	int			bits;
	uint64_t	seed;
	int			code_bytes;		/* row code size */
	int			ngroups;		/* kernel groups per block */
	int			group_bytes;	/* bytes of one group in a 32-lane block */
	int			block_code_bytes;	/* ngroups * group_bytes */
	int			window;			/* Walsh-Hadamard window (power of two <= dim) */
	int			rounds;			/* rotation rounds */
	float		levels[16];		/* codebook, ascending, N(0,1) scale */
	float		thresholds[16];	/* decision boundaries between levels */
	/* the refinement's values, by code << 4 | step, and each code's step */
	float		refine_value[256];
	float		refine_step[16];
	/* rotation signs, then permutation swaps; see tvcodec.c */
	char		tables[];
} TvCodec;

/* A prepared query: quantized lookup tables for the block kernels */
typedef struct TvQueryLut
{
	int			ngroups;
	int			bits;			/* code bits: tells the kernels the layout */
	float		bias;			/* estimate = bias + scale * integer sum */
	float		scale;
	uint8_t		lut[];			/* ngroups * 16 entries */
} TvQueryLut;

extern size_t tv_codec_size(int dim);
extern void tv_codec_init(TvCodec *codec, int dim, int bits, uint64_t seed);
extern int	tv_codec_block_code_bytes(int dim, int bits);

/* Scratch floats the functions below need (work arguments) */
extern size_t tv_codec_work_floats(const TvCodec *codec);

/*
 * a = H diag(signs) a * s (n a power of two; signs NULL or n of +-1): the
 * rotation's Walsh-Hadamard steps, with the sign step before one folded
 * into the scale.  The AVX2 and AVX-512 versions (tvkernels.c) do the same
 * additions in the same order on more lanes at once, so they are
 * bit-identical; tv_kernels_init picks the widest the CPU has.
 */
typedef void (*TvFwhtFn) (float *a, int n, float s, const float *signs);
extern TvFwhtFn tv_fwht;
extern void tv_fwht_scalar(float *a, int n, float s, const float *signs);
extern void tv_fwht_avx2(float *a, int n, float s, const float *signs);
extern void tv_fwht_avx512(float *a, int n, float s, const float *signs);

/* out = R in (orthonormal); in and out may be the same array */
extern void tv_codec_rotate(const TvCodec *codec, const float *in, float *out);
/* out = R^T in */
extern void tv_codec_unrotate(const TvCodec *codec, const float *in, float *out);

/*
 * The encoder's last step: quantize the rotated y[0..dim) into a row code,
 * replace each y by its level, and return <y, levels> summed in the fixed
 * order of tv_sum_squares.  The AVX2 version is bit-identical.
 */
typedef double (*TvQuantizeRowFn) (const TvCodec *codec, float *y, uint8_t *code);
extern TvQuantizeRowFn tv_quantize_row;
extern double tv_quantize_row_scalar(const TvCodec *codec, float *y, uint8_t *code);
extern double tv_quantize_row_avx2(const TvCodec *codec, float *y, uint8_t *code);

/*
 * Sum of squares of v[0..n) in double, in the encoder's fixed order.  The
 * AVX2 version keeps the same eight running sums: bit-identical.
 */
typedef double (*TvSumSquaresFn) (const float *v, int n);
extern TvSumSquaresFn tv_sum_squares;
extern double tv_sum_squares_scalar(const float *v, int n);
extern double tv_sum_squares_avx2(const float *v, int n);

/*
 * The encoder's scaling to about N(0, 1) per coordinate: dst[i] = (float)
 * ((double) v[i] * mult).  The AVX2 version does each element's IEEE
 * operations unchanged: bit-identical.
 */
typedef void (*TvScaleRowFn) (float *dst, const float *v, double mult, int n);
extern TvScaleRowFn tv_scale_row;
extern void tv_scale_row_scalar(float *dst, const float *v, double mult, int n);
extern void tv_scale_row_avx2(float *dst, const float *v, double mult, int n);

/*
 * Encode v (dim finite floats) into a row code.  Returns false (zero code,
 * zero factors) when v is the zero vector.
 */
extern bool tv_codec_encode(const TvCodec *codec, const float *v,
							uint8_t *code, TvFactors *factors, float *work);

/* Reconstruct a unit-length-scale vector from a row code, times scale */
extern void tv_codec_decode(const TvCodec *codec, const uint8_t *code,
							float scale, float *out, float *work);

/* Bytes of a TvQueryLut for this codec */
extern size_t tv_query_lut_size(const TvCodec *codec);

/*
 * Prepare q (dim floats) for scanning: afterwards a block's estimate for a
 * lane approximates <xhat, q>, where xhat is the lane's decoded unit vector,
 * and work's first dim floats hold the rotated query R q.
 */
extern void tv_query_prepare(const TvCodec *codec, const float *q,
							 TvQueryLut *lut, float *work);

/*
 * tv_query_prepare's quantization of the entries: ngroups * 16 bytes at
 * lut from the rotated query qr, inv = 1 / sqrt(dim) and the reciprocal
 * of the LUT's step.  Both versions give the same bytes.
 */
typedef void (*TvQuantizeLutFn) (const TvCodec *codec, const float *qr,
								 double inv, double rstep, uint8_t *lut);

extern TvQuantizeLutFn tv_quantize_lut;
extern void tv_quantize_lut_scalar(const TvCodec *codec, const float *qr,
								   double inv, double rstep, uint8_t *lut);
extern void tv_quantize_lut_avx2(const TvCodec *codec, const float *qr,
								 double inv, double rstep, uint8_t *lut);

/* Exact float <xhat, q> of one row code (reference, for tests and docs) */
extern float tv_code_inner_product(const TvCodec *codec, const uint8_t *code,
								   const float *q, float *work);

/* Move one row code into / out of lane 0..31 of a block's code area */
extern void tv_block_put_code(const TvCodec *codec, uint8_t *block_codes,
							  int lane, const uint8_t *code);
/* Lanes 0..n-1 of a zeroed block from n row codes: n tv_block_put_code calls */
extern void tv_block_put_codes(const TvCodec *codec, uint8_t *block_codes,
							   const uint8_t *const *rows, int n);
extern void tv_block_get_code(const TvCodec *codec, const uint8_t *block_codes,
							  int lane, uint8_t *code);

/*
 * Kernels (tvkernels.c).  tv_score_block writes, for each of the 32 lanes,
 * bias + scale * (sum over groups of the lane's lut entry): the estimate of
 * <xhat, q>.  The AVX2 and scalar versions give identical results (the sum
 * is an exact integer sum).  block_codes needs no alignment.
 */
typedef void (*TvScoreBlockFn) (const TvQueryLut *lut,
								const uint8_t *block_codes, float *out);

extern TvScoreBlockFn tv_score_block;

/*
 * Scoring a block whose codes are not contiguous (a block that crosses
 * index pages) in pieces.  tv_sum_groups adds, for each lane (in lane
 * order), the LUT entries of groups [g0, g0 + ngroups) to sums; codes
 * points at group g0's bytes, which run contiguously for the ngroups
 * groups.  Once every group has been summed exactly once, in any order and
 * any split, tv_finish_sums writes what tv_score_block would have: the
 * integer sums are the same, and so are the two float operations after.
 */
typedef void (*TvSumGroupsFn) (const TvQueryLut *lut, const uint8_t *codes,
							   int g0, int ngroups, uint32_t *sums);

extern TvSumGroupsFn tv_sum_groups;
extern void tv_sum_groups_scalar(const TvQueryLut *lut, const uint8_t *codes,
								 int g0, int ngroups, uint32_t *sums);
extern void tv_sum_groups_avx2(const TvQueryLut *lut, const uint8_t *codes,
							   int g0, int ngroups, uint32_t *sums);
extern void tv_finish_sums(const TvQueryLut *lut, const uint32_t *sums,
						   float *out);
extern void tv_score_block_scalar(const TvQueryLut *lut,
								  const uint8_t *block_codes, float *out);
extern bool tv_kernels_have_avx2(void);
extern void tv_score_block_avx2(const TvQueryLut *lut,
								const uint8_t *block_codes, float *out);

/*
 * Refinement codes: the resident copy's second stage (docs/CODEC.md).  Each
 * rotated coordinate's first-stage cell is cut into 16 equal steps and the
 * step is stored as a nibble, after a float scale (||v|| / <x, xtilde>, as
 * ipscale): tv_refine_bytes(dim) bytes.  With the lane's first-stage code
 * it gives an estimate of <v, q> about 16 times finer than the code alone.
 */
#define TV_REFINE_LIMIT		4.5f	/* outer cells end here (N(0,1) scale) */
#define TV_REFINE_BYTES(dim) \
	((((size_t) 4 + ((size_t) (dim) + 1) / 2) + 3) & ~(size_t) 3)

extern size_t tv_refine_bytes(int dim);
/* Each code's cell: its lower end lo[c] and its step (a sixteenth) */
extern void tv_refine_cells(const TvCodec *codec, float *lo, float *step);
/*
 * The refinement's nibbles (zeroed) of the rotated y[0..dim); returns
 * <y, ytilde> in the fixed order of tv_sum_squares.  AVX2: bit-identical.
 */
typedef double (*TvRefineRowFn) (const TvCodec *codec, const float *y, uint8_t *nib);
extern TvRefineRowFn tv_refine_row;
extern double tv_refine_row_scalar(const TvCodec *codec, const float *y, uint8_t *nib);
extern double tv_refine_row_avx2(const TvCodec *codec, const float *y, uint8_t *nib);
/* Refinement of v (false, all zero, for the zero vector); work as encode */
extern bool tv_codec_encode_refine(const TvCodec *codec, const float *v,
								   uint8_t *refine, float *work);
/* qr = R q / sqrt(dim), dim floats: the query side of tv_refine_block_ip */
extern void tv_refine_prepare(const TvCodec *codec, const float *q, float *qr);
/* The same from rq = R q (tv_query_prepare leaves it in work); may alias */
extern void tv_refine_scale(const TvCodec *codec, const float *rq, float *qr);
/*
 * Estimate of <v, q> from lane's code in a block and its refinement; *sd
 * is the standard deviation of its error (steps uniform, independent)
 */
typedef float (*TvRefineBlockIpFn) (const TvCodec *codec,
									const uint8_t *block_codes, int lane,
									const uint8_t *refine, const float *qr,
									float *sd);

extern TvRefineBlockIpFn tv_refine_block_ip;
/*
 * Adds to *sum the coordinates from..dim-1 of <yhat, qr> (unscaled) and to
 * *var their sum of step^2 qr^2, in coordinate order
 */
extern void tv_refine_sums(const TvCodec *codec, const uint8_t *block_codes,
						   int lane, const uint8_t *refine, const float *qr,
						   int from, double *sum, double *var);
/* The reference; the AVX2 version sums 8 coordinates at a time */
extern float tv_refine_block_ip_scalar(const TvCodec *codec,
									   const uint8_t *block_codes, int lane,
									   const uint8_t *refine, const float *qr,
									   float *sd);
extern float tv_refine_block_ip_avx2(const TvCodec *codec,
									 const uint8_t *block_codes, int lane,
									 const uint8_t *refine, const float *qr,
									 float *sd);

/*
 * Ranking lists: sum k[i] * q[i] over dim coordinates, a centroid's 8-bit
 * code biased to k + 128 (1..255) against the query's int8 code (-127..127).
 * Exact in int32 up to TV_CODEC_MAX_DIM (255 * 127 * 16000 < 2^31), so
 * every kernel returns the same integer.
 */
typedef int32_t (*TvRankDotFn) (const uint8_t *k, const int8_t *q, int dim);

extern TvRankDotFn tv_rank_dot;
extern int32_t tv_rank_dot_scalar(const uint8_t *k, const int8_t *q, int dim);
/* 16 coordinates a step, widened to int16 */
extern int32_t tv_rank_dot_avx2(const uint8_t *k, const int8_t *q, int dim);
/* 32 a step with the u8 x s8 dot-product instruction (AVX-VNNI, VEX) */
extern int32_t tv_rank_dot_avxvnni(const uint8_t *k, const int8_t *q, int dim);
/* the same with AVX512-VNNI's 256-bit form (EVEX); 512 bits gained nothing:
 * 3 MB of centroids a query are read as fast as the caches deliver them */
extern int32_t tv_rank_dot_avx512vnni(const uint8_t *k, const int8_t *q, int dim);
extern bool tv_kernels_have_avxvnni(void);
extern bool tv_kernels_have_avx512vnni(void);

/*
 * The u8 x s8 products of nrows <= 4 rows (each ld bytes apart, read in
 * groups of 4 bytes) with nblocks * 16 centroids, into out[r * nblocks * 16
 * + j]: exact in int32 as tv_rank_dot's.  A block holds 16 centroids'
 * codes group by group, each group 64 bytes: centroid l's 4 codes of that
 * group at bytes 4l..4l+3.  The list search's first pass (tvivf.c) runs it
 * where the CPU has AVX512-VNNI.
 */
extern void tv_rank_lists_scalar(const uint8_t *rows, int nrows, int ld,
								 const int8_t *blocks, int nblocks, int groups,
								 int32_t *out);
extern void tv_rank_lists_avx512vnni(const uint8_t *rows, int nrows, int ld,
									 const int8_t *blocks, int nblocks, int groups,
									 int32_t *out);

/*
 * The rest of that first pass.  A row's codes: k[i] = 128 + round(x[i] /
 * scale), scale = max |x| / 127, and *norm >= ||x||; false when max |x|
 * exceeds limit, is below least but not 0, or a coordinate is not finite.  Then, from the row's
 * products with the centroids' codes (qd, one per list), each list's
 * interval for its rank value (tvivf.c, "A first pass in 8 bits"), and in
 * masks (a bit per list, 16 a mask) the lists whose interval starts at or
 * below the lowest end of any: returns how many, or -1 if no end is finite.
 */
typedef struct TvListBounds
{
	int			lists;
	/* per list, padded with zeros to a multiple of 16 */
	const float *norm;			/* ||c||^2 under L2, else 0 */
	const float *scale;			/* the codes' scale, times 2 under L2 */
	const int32_t *sum;			/* the sum of the codes */
	const float *err;			/* bound terms per unit of ||x|| */
	const float *full;			/* per unit of the row's rounding error */
	const float *slack;			/* and the rest */
} TvListBounds;

/*
 * A centroid's codes (q[i] = round(c[i] / scale), scale = max |c| / 127)
 * and its terms of the intervals, from its ||c||^2 (used under L2 only):
 * false when max |c| exceeds limit, is below least but not 0, or a
 * coordinate or the norm is not finite
 */
typedef struct TvListTerms
{
	float		norm;
	float		scale;
	int32_t		sum;
	float		err;
	float		full;
	float		slack;
} TvListTerms;

extern bool tv_list_centroid_codes(const float *c, int dim, float norm2, bool l2,
								   float least, float limit, int8_t *q, TvListTerms *t);
extern bool tv_list_row_codes_scalar(const float *x, int dim, float least, float limit,
									 uint8_t *k, float *scale, float *norm);
extern bool tv_list_row_codes_avx512(const float *x, int dim, float least, float limit,
									 uint8_t *k, float *scale, float *norm);
extern int	tv_list_candidates_scalar(const TvListBounds *lb, const int32_t *qd, float sx,
									  float nx, float exb, uint16_t *masks);
extern int	tv_list_candidates_avx512(const TvListBounds *lb, const int32_t *qd, float sx,
									  float nx, float exb, uint16_t *masks);

/*
 * An 8-bit code from a value already rounded to an integer: clamped to
 * -127..127 as a float, so that no conversion overflows, and NaN gives 0
 */
static inline int
tv_clamp_code(float r)
{
	return r >= 127 ? 127 : r <= -127 ? -127 : r == r ? (int) r : 0;
}

/*
 * k-means (tvivf.c): sum[i] += (double) x[i], a list's running sums; and a
 * row's 8-bit approximation for seeding, k[i] = 128 + rint(x[i] / scale)
 * clamped to -127..127 (128 when scale is not positive), returning the sum
 * of squares of the integers.  The AVX2 versions are bit-identical.
 */
typedef void (*TvAccumulateFn) (double *sum, const float *x, int n);
typedef int64_t (*TvQuantizeI8Fn) (const float *x, int n, float scale, uint8_t *k);
extern TvAccumulateFn tv_accumulate;
extern TvQuantizeI8Fn tv_quantize_i8;
extern void tv_accumulate_scalar(double *sum, const float *x, int n);
extern void tv_accumulate_avx2(double *sum, const float *x, int n);
extern int64_t tv_quantize_i8_scalar(const float *x, int n, float scale, uint8_t *k);
extern int64_t tv_quantize_i8_avx2(const float *x, int n, float scale, uint8_t *k);

/*
 * Float products for lists (tvivf.c): <a, b> and ||a - b||^2 of two
 * vectors, and a tile of the products of 4 rows (x, stride dim) with 3
 * centroids (c, stride dim) into out[row * 3 + centroid].  A tile's value
 * for a pair does not depend on its other rows or centroids; versions may
 * round differently from each other.
 */
typedef float (*TvPairFn) (const float *a, const float *b, int dim);
typedef void (*TvTileFn) (const float *x, const float *c, int dim, float *out);

extern TvPairFn tv_dot;
extern TvPairFn tv_l2sq;
extern TvTileFn tv_dot_tile;
/*
 * The tile for rows that start on 64-byte boundaries (x, c and every row:
 * dim a multiple of 16), where AVX-512 is faster; elsewhere it is slower.
 * Which of the two a caller uses must not depend on where its data lies,
 * or the same pair could round differently from call to call.
 */
#define TV_TILE_ALIGN	64
extern TvTileFn tv_dot_tile_aligned;
extern float tv_dot_scalar(const float *a, const float *b, int dim);
extern float tv_l2sq_scalar(const float *a, const float *b, int dim);
extern float tv_dot_avx2(const float *a, const float *b, int dim);
extern float tv_l2sq_avx2(const float *a, const float *b, int dim);
extern void tv_dot_tile_scalar(const float *x, const float *c, int dim, float *out);
extern void tv_dot_tile_avx2(const float *x, const float *c, int dim, float *out);
extern void tv_dot_tile_avx512(const float *x, const float *c, int dim, float *out);
extern bool tv_kernels_have_avx512f(void);

/* Pick the fastest kernel this CPU supports; call once at load */
extern void tv_kernels_init(void);
extern const char *tv_kernels_name(void);

#endif							/* TVCODEC_H */
