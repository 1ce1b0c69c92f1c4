-- turbovec_pgvector 0.1.0 -> 0.2.0 (ALTER EXTENSION turbovec_pgvector UPDATE)
--
-- Adds the halfvec operator classes and their conversion function (pgvector
-- 0.7.0 or later); the vector operator classes and indexes built with them
-- are unchanged.

\echo Use "ALTER EXTENSION turbovec_pgvector UPDATE TO '0.2.0'" to load this file. \quit

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

-- the comment a fresh 0.2.0 install takes from the control file
COMMENT ON EXTENSION turbovec_pgvector IS
	'turbo index operator classes for the vector and halfvec types of pgvector';
