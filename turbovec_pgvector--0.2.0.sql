-- turbovec_pgvector 0.2.0: turbo operator classes for pgvector's vector and
-- halfvec (halfvec needs pgvector 0.7.0 or later).
-- Distances are pgvector's own functions and operators, so re-ranking agrees
-- with a sequential scan to the bit; support function 3 (a cast to real[]:
-- pgvector's for vector, turbovec's for halfvec) hands the index the floats
-- to encode.

\echo Use "CREATE EXTENSION turbovec_pgvector" to load this file. \quit

CREATE OPERATOR CLASS vector_l2_ops
	FOR TYPE vector USING turbo AS
	OPERATOR 1 <-> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 l2_distance(vector, vector),
	FUNCTION 2 turbo_metric_l2(internal),
	FUNCTION 3 vector_to_float4(vector, integer, boolean);

CREATE OPERATOR CLASS vector_ip_ops
	FOR TYPE vector USING turbo AS
	OPERATOR 1 <#> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 vector_negative_inner_product(vector, vector),
	FUNCTION 2 turbo_metric_ip(internal),
	FUNCTION 3 vector_to_float4(vector, integer, boolean);

CREATE OPERATOR CLASS vector_cosine_ops
	FOR TYPE vector USING turbo AS
	OPERATOR 1 <=> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 cosine_distance(vector, vector),
	FUNCTION 2 turbo_metric_cosine(internal),
	FUNCTION 3 vector_to_float4(vector, integer, boolean);

-- halfvec as real[] for the index to encode: pgvector's cast gives the same
-- array (half floats widen to float4 exactly) but builds it a Datum per
-- element; this one writes the floats directly.
CREATE FUNCTION turbo_halfvec_to_float4(halfvec, integer, boolean) RETURNS real[]
	AS '$libdir/turbovec', 'turbo_halfvec_to_float4'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OPERATOR CLASS halfvec_l2_ops
	FOR TYPE halfvec USING turbo AS
	OPERATOR 1 <-> (halfvec, halfvec) FOR ORDER BY float_ops,
	FUNCTION 1 l2_distance(halfvec, halfvec),
	FUNCTION 2 turbo_metric_l2(internal),
	FUNCTION 3 turbo_halfvec_to_float4(halfvec, integer, boolean);

CREATE OPERATOR CLASS halfvec_ip_ops
	FOR TYPE halfvec USING turbo AS
	OPERATOR 1 <#> (halfvec, halfvec) FOR ORDER BY float_ops,
	FUNCTION 1 halfvec_negative_inner_product(halfvec, halfvec),
	FUNCTION 2 turbo_metric_ip(internal),
	FUNCTION 3 turbo_halfvec_to_float4(halfvec, integer, boolean);

CREATE OPERATOR CLASS halfvec_cosine_ops
	FOR TYPE halfvec USING turbo AS
	OPERATOR 1 <=> (halfvec, halfvec) FOR ORDER BY float_ops,
	FUNCTION 1 cosine_distance(halfvec, halfvec),
	FUNCTION 2 turbo_metric_cosine(internal),
	FUNCTION 3 turbo_halfvec_to_float4(halfvec, integer, boolean);
