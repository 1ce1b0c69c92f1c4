-- turbovec 0.1.0: the turbo index access method over real[] vectors.

\echo Use "CREATE EXTENSION turbovec" to load this file. \quit

-- distances on real[] (pgvector's names and meanings).  COST 25: a distance
-- over hundreds of elements costs far more than an ordinary operator, and a
-- planner that thinks otherwise sorts a sequential scan instead of using the
-- index.

CREATE FUNCTION l2_distance(real[], real[]) RETURNS float8
	AS 'MODULE_PATHNAME', 'turbo_l2_distance' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE COST 25;

CREATE FUNCTION inner_product(real[], real[]) RETURNS float8
	AS 'MODULE_PATHNAME', 'turbo_inner_product' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE COST 25;

CREATE FUNCTION negative_inner_product(real[], real[]) RETURNS float8
	AS 'MODULE_PATHNAME', 'turbo_negative_inner_product' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE COST 25;

CREATE FUNCTION cosine_distance(real[], real[]) RETURNS float8
	AS 'MODULE_PATHNAME', 'turbo_cosine_distance' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE COST 25;

CREATE FUNCTION vector_norm(real[]) RETURNS float8
	AS 'MODULE_PATHNAME', 'turbo_vector_norm' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE COST 25;

CREATE OPERATOR <-> (
	LEFTARG = real[], RIGHTARG = real[], PROCEDURE = l2_distance,
	COMMUTATOR = '<->'
);

CREATE OPERATOR <#> (
	LEFTARG = real[], RIGHTARG = real[], PROCEDURE = negative_inner_product,
	COMMUTATOR = '<#>'
);

CREATE OPERATOR <=> (
	LEFTARG = real[], RIGHTARG = real[], PROCEDURE = cosine_distance,
	COMMUTATOR = '<=>'
);

-- the access method

CREATE FUNCTION tvhandler(internal) RETURNS index_am_handler
	AS 'MODULE_PATHNAME' LANGUAGE C;

CREATE ACCESS METHOD turbo TYPE INDEX HANDLER tvhandler;

COMMENT ON ACCESS METHOD turbo IS 'TurboQuant codes with exact re-ranking';

-- support function 2: which metric an operator class estimates

CREATE FUNCTION turbo_metric_l2(internal) RETURNS int4
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION turbo_metric_ip(internal) RETURNS int4
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION turbo_metric_cosine(internal) RETURNS int4
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OPERATOR CLASS real_l2_ops
	FOR TYPE real[] USING turbo AS
	OPERATOR 1 <-> (real[], real[]) FOR ORDER BY float_ops,
	FUNCTION 1 l2_distance(real[], real[]),
	FUNCTION 2 turbo_metric_l2(internal);

CREATE OPERATOR CLASS real_ip_ops
	FOR TYPE real[] USING turbo AS
	OPERATOR 1 <#> (real[], real[]) FOR ORDER BY float_ops,
	FUNCTION 1 negative_inner_product(real[], real[]),
	FUNCTION 2 turbo_metric_ip(internal);

CREATE OPERATOR CLASS real_cosine_ops
	FOR TYPE real[] USING turbo AS
	OPERATOR 1 <=> (real[], real[]) FOR ORDER BY float_ops,
	FUNCTION 1 cosine_distance(real[], real[]),
	FUNCTION 2 turbo_metric_cosine(internal);

-- inspection

CREATE FUNCTION turbo_encode(vector real[], bits int DEFAULT 4,
							 seed bigint DEFAULT 8166583067227728147)
	RETURNS bytea
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION turbo_decode(code bytea, dim int, bits int DEFAULT 4,
							 seed bigint DEFAULT 8166583067227728147)
	RETURNS real[]
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION turbo_kernel() RETURNS text
	AS 'MODULE_PATHNAME' LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION turbo_index_info(index regclass,
	OUT dim int, OUT bits int, OUT metric text, OUT live_rows bigint,
	OUT slots bigint, OUT blocks bigint, OUT pages bigint,
	OUT change_count bigint, OUT seed bigint, OUT lists int)
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

CREATE FUNCTION turbo_verify(index regclass) RETURNS SETOF text
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

