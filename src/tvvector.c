/*
 * tvvector.c
 *	  Vectors as real[]: validation and the SQL distance functions, and
 *	  pgvector's vector and halfvec as floats for their operator classes.
 *
 * A vector is a one-dimensional real[] with 1 to TV_CODEC_MAX_DIM elements,
 * no NULL elements and only finite values.  Every entry point that accepts a
 * vector goes through TvArrayGetFloats (or, for pgvector's vector, read in
 * place, PgVectorFloats), both ending in CheckFloats, so the index, the
 * operators and the encoder reject the same inputs with the same errors.
 *
 * Distances are accumulated in double: they are what exact re-ranking
 * compares, and they must not disagree with a sequential scan's ordering.
 */
#include "postgres.h"

#include <math.h>

#include "access/genam.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "turbovec.h"

/*
 * No fused multiply-adds in the exact distances (gcc gets -ffp-contract=off;
 * clang, which compiles the JIT inlining bitcode, fuses by default): the
 * index scan and an expression evaluating the operator must agree.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/*
 * Whether no element is NaN or infinite: an element is when its exponent
 * bits are all ones.  Chunks of 8 with integer ORs, so gcc's -O2 vectorizer
 * takes the loop; this check ran element by element on every exact
 * distance and cost 6 % of a Fashion-MNIST query.  Callers find the first
 * bad element, for the message, only when this says there is one.
 */
static inline bool
AllFinite(const float *x, int n)
{
	uint32		bad = 0;
	int			i = 0;

	for (; i + 8 <= n; i += 8)
	{
		uint32		b[8];

		memcpy(b, x + i, sizeof(b));
		for (int k = 0; k < 8; k++)
			bad |= (b[k] & 0x7f800000u) == 0x7f800000u;
	}
	for (; i < n; i++)
	{
		uint32		b;

		memcpy(&b, x + i, sizeof(b));
		bad |= (b & 0x7f800000u) == 0x7f800000u;
	}
	return bad == 0;
}

/* A vector's dimension count and elements, as any vector must have them */
static void
CheckFloats(const float *x, int n)
{
	if (n < 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vector must have at least 1 dimension")));
	if (n > TV_CODEC_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("vector cannot have more than %d dimensions, not %d",
						TV_CODEC_MAX_DIM, n)));
	if (likely(AllFinite(x, n)))
		return;
	for (int i = 0; i < n; i++)
	{
		if (unlikely(isnan(x[i])))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("NaN not allowed in vector (element %d)", i + 1)));
		if (unlikely(isinf(x[i])))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("infinite value not allowed in vector (element %d)", i + 1)));
	}
}

/*
 * Validate a real[] and return a pointer to its dim floats.  The pointer
 * may point into the (detoasted) array itself.
 */
float *
TvArrayGetFloats(ArrayType *array, int *dim)
{
	int			ndim = ARR_NDIM(array);
	int			n;
	float	   *x;

	if (ARR_ELEMTYPE(array) != FLOAT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("vector must be an array of real")));
	if (ndim > 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vector must be a one-dimensional array, not %d-dimensional", ndim)));
	n = (ndim == 0) ? 0 : ARR_DIMS(array)[0];
	if (ARR_HASNULL(array) && array_contains_nulls(array))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("vector must not contain NULL elements")));
	x = (float *) ARR_DATA_PTR(array);
	CheckFloats(x, n);
	*dim = n;
	return x;
}

/*
 * pgvector's vector, as its varlena lies on disk: an int16 count of
 * dimensions, an int16 reserved (zero), then that many float4 values.  Like
 * halfvec's (below), this is pgvector's storage format, which it cannot
 * change under existing tables.
 */
typedef struct TvPgVector
{
	int32		vl_len_;		/* varlena header */
	int16		dim;
	int16		unused;
	float		x[FLEXIBLE_ARRAY_MEMBER];
} TvPgVector;

/* A one-dimensional real[] of dim elements, for the caller to fill */
static ArrayType *
NewFloatArray(int dim)
{
	Size		nbytes = ARR_OVERHEAD_NONULLS(1) + (Size) dim * sizeof(float4);
	ArrayType  *result = (ArrayType *) palloc(nbytes);

	SET_VARSIZE(result, nbytes);
	result->ndim = 1;
	result->dataoffset = 0;
	result->elemtype = FLOAT4OID;
	ARR_DIMS(result)[0] = dim;
	ARR_LBOUND(result)[0] = 1;
	return result;
}

/* The floats of a pgvector vector where they lie, after checking its size */
static float *
PgVectorFloats(Datum value, int *dim)
{
	TvPgVector *v = (TvPgVector *) PG_DETOAST_DATUM(value);
	Size		size = VARSIZE(v);
	int			n = (size < offsetof(TvPgVector, x)) ? 0 : v->dim;

	if (n < 1 || size != offsetof(TvPgVector, x) + (Size) n * sizeof(float))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("invalid vector of %zu bytes", size)));
	CheckFloats(v->x, n);
	*dim = n;
	return v->x;
}

/*
 * Support function 3 of the vector operator classes, pgvector's cast
 * vector_to_float4, builds its array a Datum per element: with the array
 * checks and copies, a tenth of a Fashion-MNIST build.  An index whose
 * function 3 is that cast calls this instead (TvGetToArrayProc), which
 * makes the same array directly, and TvDatumGetFloats skips the array
 * altogether.
 */
static Datum
PgVectorToArray(PG_FUNCTION_ARGS)
{
	int			dim;
	float	   *x = PgVectorFloats(PG_GETARG_DATUM(0), &dim);
	ArrayType  *result = NewFloatArray(dim);

	memcpy(ARR_DATA_PTR(result), x, sizeof(float) * dim);
	PG_RETURN_ARRAYTYPE_P(result);
}

/*
 * The floats of an indexed value or query.  Columns of another type (such
 * as pgvector's vector) have a support function that turns them into a
 * real[], which is then checked like any other.  The pointer may point
 * into the value itself.
 */
float *
TvDatumGetFloats(FmgrInfo *toarray, Datum value, int *dim)
{
	if (toarray != NULL && toarray->fn_addr == PgVectorToArray)
		return PgVectorFloats(value, dim);
	if (toarray != NULL)
		value = FunctionCall3(toarray, value, Int32GetDatum(-1), BoolGetDatum(false));
	return TvArrayGetFloats(DatumGetArrayTypeP(value), dim);
}

/* Whether procid is pgvector's C function vector_to_float4 */
static bool
IsPgVectorToFloat4(Oid procid)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(procid));
	Form_pg_proc proc;
	bool		result = false;

	if (!HeapTupleIsValid(tuple))
		return false;
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	if (proc->prolang == ClanguageId && proc->pronargs == 3)
	{
		Datum		src;
		Datum		bin;
		bool		srcnull;
		bool		binnull;

		src = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_prosrc, &srcnull);
		bin = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_probin, &binnull);
		result = !srcnull && !binnull &&
			strcmp(TextDatumGetCString(src), "vector_to_float4") == 0 &&
			strcmp(TextDatumGetCString(bin), "$libdir/vector") == 0;
	}
	ReleaseSysCache(tuple);
	return result;
}

/* The opclass's optional conversion function, copied into cxt */
FmgrInfo *
TvGetToArrayProc(Relation index, MemoryContext cxt)
{
	Oid			procid = index_getprocid(index, 1, TV_TOARRAY_PROC);
	FmgrInfo   *finfo;

	if (!OidIsValid(procid))
		return NULL;
	finfo = MemoryContextAlloc(cxt, sizeof(FmgrInfo));
	fmgr_info_copy(finfo, index_getprocinfo(index, 1, TV_TOARRAY_PROC), cxt);
	if (IsPgVectorToFloat4(procid))
		finfo->fn_addr = PgVectorToArray;
	return finfo;
}

/*
 * Codes keep the norm and scale factors as float4, and estimates square the
 * norm: past TV_MAX_NORM they overflow to infinity and ordering breaks.
 * Such vectors (elements near the float4 limit) cannot go into, or be
 * searched in, a turbo index.
 */
void
TvCheckNorm(Relation index, const float *x, int dim)
{
	double		norm;

	/*
	 * ||x|| <= sqrt(dim) max |x[i]|: with room for the sum's rounding, that
	 * clears nearly every vector without the norm, a serial sum in double
	 * (NaN and infinities fall through, to what the norm says of them)
	 */
	if ((double) TvMaxAbs(x, dim) * sqrt((double) dim) <= TV_MAX_NORM / 2)
		return;
	norm = TvNorm(x, dim);
	if (norm > TV_MAX_NORM)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vector norm %.3g is too large for turbo index \"%s\"",
						norm, RelationGetRelationName(index)),
				 errdetail("A turbo index holds vectors whose norm is at most %.0e.", TV_MAX_NORM)));
}

/* A vector of an index must have the index's dimension */
void
TvCheckDimensions(Relation index, int expected, int actual)
{
	if (expected != actual)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("expected %d dimensions, not %d", expected, actual),
				 errdetail("Turbo index \"%s\" holds vectors of %d dimensions.",
						   RelationGetRelationName(index), expected)));
}

/*
 * The largest |x[i]|, by the floats' bits: without the sign bit, the bits
 * of two floats order like their values (NaN above infinity), and an
 * integer maximum vectorizes.  Zero exactly when TvNorm is: a float's
 * square never underflows in double.
 */
float
TvMaxAbs(const float *x, int dim)
{
	uint32		lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	uint32		m = 0;
	int			i = 0;
	float		f;

	for (; i + 8 <= dim; i += 8)
	{
		for (int k = 0; k < 8; k++)
		{
			uint32		a;

			memcpy(&a, x + i + k, sizeof(a));
			a &= 0x7fffffffu;
			lane[k] = a > lane[k] ? a : lane[k];
		}
	}
	for (int k = 0; k < 8; k++)
		m = lane[k] > m ? lane[k] : m;
	for (; i < dim; i++)
	{
		uint32		a;

		memcpy(&a, x + i, sizeof(a));
		a &= 0x7fffffffu;
		m = a > m ? a : m;
	}
	memcpy(&f, &m, sizeof(f));
	return f;
}

double
TvNorm(const float *x, int dim)
{
	double		s = 0.0;

	for (int i = 0; i < dim; i++)
		s += (double) x[i] * x[i];
	return sqrt(s);
}

/* Fetch two argument vectors of equal dimension */
static int
GetTwoVectors(FunctionCallInfo fcinfo, float **a, float **b)
{
	int			da;
	int			db;

	*a = TvArrayGetFloats(PG_GETARG_ARRAYTYPE_P(0), &da);
	*b = TvArrayGetFloats(PG_GETARG_ARRAYTYPE_P(1), &db);
	if (da != db)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("different vector dimensions %d and %d", da, db)));
	return da;
}

/*
 * The exact distances sum in double over four interleaved accumulators,
 * added (s0 + s1) + (s2 + s3) at the end: a product of two floats is exact
 * in double, and four chains of additions instead of one let them overlap
 * (the single chain was about 4 % of a 768-d cosine query).  The order is
 * fixed, so every CPU and both scan paths get the same bits.
 */
static double
Dot(const float *a, const float *b, int dim)
{
	double		s0 = 0.0,
				s1 = 0.0,
				s2 = 0.0,
				s3 = 0.0;
	int			i;

	for (i = 0; i + 4 <= dim; i += 4)
	{
		s0 += (double) a[i] * b[i];
		s1 += (double) a[i + 1] * b[i + 1];
		s2 += (double) a[i + 2] * b[i + 2];
		s3 += (double) a[i + 3] * b[i + 3];
	}
	for (; i < dim; i++)
		s0 += (double) a[i] * b[i];
	return (s0 + s1) + (s2 + s3);
}

static double
L2Distance(const float *a, const float *b, int dim)
{
	double		s0 = 0.0,
				s1 = 0.0,
				s2 = 0.0,
				s3 = 0.0;
	int			i;

	for (i = 0; i + 4 <= dim; i += 4)
	{
		double		d0 = (double) a[i] - b[i];
		double		d1 = (double) a[i + 1] - b[i + 1];
		double		d2 = (double) a[i + 2] - b[i + 2];
		double		d3 = (double) a[i + 3] - b[i + 3];

		s0 += d0 * d0;
		s1 += d1 * d1;
		s2 += d2 * d2;
		s3 += d3 * d3;
	}
	for (; i < dim; i++)
	{
		double		d = (double) a[i] - b[i];

		s0 += d * d;
	}
	return sqrt((s0 + s1) + (s2 + s3));
}

static double
CosineDistance(const float *a, const float *b, int dim)
{
	double		aa[4] = {0},
				bb[4] = {0},
				ab[4] = {0};
	double		na,
				nb,
				sim;
	int			i;

	/* Dot(a, a), Dot(b, b) and Dot(a, b) in one pass, each in Dot's order */
	for (i = 0; i + 4 <= dim; i += 4)
	{
		for (int k = 0; k < 4; k++)
		{
			double		x = a[i + k];
			double		y = b[i + k];

			aa[k] += x * x;
			bb[k] += y * y;
			ab[k] += x * y;
		}
	}
	for (; i < dim; i++)
	{
		aa[0] += (double) a[i] * a[i];
		bb[0] += (double) b[i] * b[i];
		ab[0] += (double) a[i] * b[i];
	}
	na = sqrt((aa[0] + aa[1]) + (aa[2] + aa[3]));
	nb = sqrt((bb[0] + bb[1]) + (bb[2] + bb[3]));
	if (na == 0.0 || nb == 0.0)
		return get_float8_nan();
	sim = ((ab[0] + ab[1]) + (ab[2] + ab[3])) / (na * nb);
	/* rounding can push |sim| past 1 */
	if (sim > 1.0)
		sim = 1.0;
	else if (sim < -1.0)
		sim = -1.0;
	return 1.0 - sim;
}

/*
 * The distance the metric's SQL function returns, for the resident path:
 * the same arithmetic, so both paths order rows alike.
 */
double
TvExactDistance(TvMetric metric, const float *a, const float *b, int dim)
{
	switch (metric)
	{
		case TV_METRIC_L2:
			return L2Distance(a, b, dim);
		case TV_METRIC_IP:
			return -Dot(a, b, dim);
		case TV_METRIC_COSINE:
			return CosineDistance(a, b, dim);
	}
	return 0;
}

PG_FUNCTION_INFO_V1(turbo_l2_distance);
Datum
turbo_l2_distance(PG_FUNCTION_ARGS)
{
	float	   *a;
	float	   *b;
	int			dim = GetTwoVectors(fcinfo, &a, &b);

	PG_RETURN_FLOAT8(L2Distance(a, b, dim));
}

PG_FUNCTION_INFO_V1(turbo_inner_product);
Datum
turbo_inner_product(PG_FUNCTION_ARGS)
{
	float	   *a;
	float	   *b;
	int			dim = GetTwoVectors(fcinfo, &a, &b);

	PG_RETURN_FLOAT8(Dot(a, b, dim));
}

PG_FUNCTION_INFO_V1(turbo_negative_inner_product);
Datum
turbo_negative_inner_product(PG_FUNCTION_ARGS)
{
	float	   *a;
	float	   *b;
	int			dim = GetTwoVectors(fcinfo, &a, &b);

	PG_RETURN_FLOAT8(-Dot(a, b, dim));
}

/*
 * Cosine distance is NaN when either vector is zero, as in pgvector: the
 * angle is undefined, and NaN sorts after every number in PostgreSQL.
 */
PG_FUNCTION_INFO_V1(turbo_cosine_distance);
Datum
turbo_cosine_distance(PG_FUNCTION_ARGS)
{
	float	   *a;
	float	   *b;
	int			dim = GetTwoVectors(fcinfo, &a, &b);

	PG_RETURN_FLOAT8(CosineDistance(a, b, dim));
}

PG_FUNCTION_INFO_V1(turbo_vector_norm);
Datum
turbo_vector_norm(PG_FUNCTION_ARGS)
{
	int			dim;
	float	   *a = TvArrayGetFloats(PG_GETARG_ARRAYTYPE_P(0), &dim);

	PG_RETURN_FLOAT8(TvNorm(a, dim));
}

/*
 * pgvector's halfvec, as its varlena lies on disk: an int16 count of
 * dimensions, an int16 reserved (zero), then that many IEEE 754 binary16
 * values.  This is pgvector's storage format, which it cannot change under
 * existing tables.  The reserved field is not read.
 */
typedef struct TvHalfVec
{
	int32		vl_len_;		/* varlena header */
	int16		dim;
	int16		unused;
	uint16		x[FLEXIBLE_ARRAY_MEMBER];
} TvHalfVec;

/*
 * A binary16 value as float4, exactly (every half is a float4).  Infinity
 * and NaN, which pgvector never stores, come out as such for
 * TvArrayGetFloats to refuse.
 */
static inline float
HalfToFloat(uint16 h)
{
	uint32		sign = (uint32) (h & 0x8000) << 16;
	uint32		exponent = (h >> 10) & 0x1f;
	uint32		fraction = h & 0x3ff;
	uint32		bits;
	float		f;

	if (exponent == 0)
	{
		/* zero or subnormal: fraction * 2^-24, exact in float4 */
		f = (float) fraction * (1.0f / 16777216.0f);
		return sign ? -f : f;
	}
	if (exponent == 0x1f)
		bits = sign | 0x7f800000 | (fraction << 13);
	else
		bits = sign | ((exponent + 127 - 15) << 23) | (fraction << 13);
	memcpy(&f, &bits, sizeof(f));
	return f;
}

/*
 * Support function 3 of the halfvec operator classes: a halfvec as real[].
 * pgvector's own cast (halfvec_to_float4) gives the same array but builds
 * it through a Datum per element, three to four times slower (about 70 us
 * a 3,072-dim row, a good part of encoding it); this writes the floats
 * straight into the array.  The arguments are those of a cast function
 * (value, typmod, explicit); only the value is used.
 */
PG_FUNCTION_INFO_V1(turbo_halfvec_to_float4);
Datum
turbo_halfvec_to_float4(PG_FUNCTION_ARGS)
{
	TvHalfVec  *hv = (TvHalfVec *) PG_DETOAST_DATUM(PG_GETARG_DATUM(0));
	Size		size = VARSIZE(hv);
	int			dim;
	ArrayType  *result;
	float	   *out;

	/* the dimension count must be there and match the size */
	dim = (size < offsetof(TvHalfVec, x)) ? 0 : hv->dim;
	if (dim < 1 || size != offsetof(TvHalfVec, x) + (Size) dim * sizeof(uint16))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("invalid halfvec of %zu bytes", size)));

	result = NewFloatArray(dim);
	out = (float *) ARR_DATA_PTR(result);
	for (int i = 0; i < dim; i++)
		out[i] = HalfToFloat(hv->x[i]);

	PG_RETURN_ARRAYTYPE_P(result);
}

/* Support function 2 of each opclass: which metric the codes estimate */
PG_FUNCTION_INFO_V1(turbo_metric_l2);
Datum
turbo_metric_l2(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(TV_METRIC_L2);
}

PG_FUNCTION_INFO_V1(turbo_metric_ip);
Datum
turbo_metric_ip(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(TV_METRIC_IP);
}

PG_FUNCTION_INFO_V1(turbo_metric_cosine);
Datum
turbo_metric_cosine(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(TV_METRIC_COSINE);
}
