-- turbovec 0.3.0: the turbo index access method over real[] vectors.

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
	OUT change_count bigint, OUT seed bigint, OUT lists int,
	OUT residual boolean)
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

CREATE FUNCTION turbo_verify(index regclass) RETURNS SETOF text
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;


-- the resident index (needs shared_preload_libraries = 'turbovec')

CREATE FUNCTION turbo_preloaded() RETURNS boolean
	AS 'MODULE_PATHNAME' LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION turbo_wait_ready(index regclass, timeout_ms int DEFAULT 10000)
	RETURNS boolean
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

CREATE FUNCTION turbo_rebuild(index regclass) RETURNS boolean
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

CREATE FUNCTION turbo_snapshot_now(index regclass) RETURNS bigint
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

CREATE FUNCTION turbo_resident_status(
	OUT indexrelid oid, OUT state text, OUT rows_done bigint, OUT rows_total bigint,
	OUT resident_bytes bigint, OUT ready_since timestamptz, OUT change_count bigint,
	OUT from_snapshot boolean, OUT snapshot_lsn pg_lsn, OUT snapshot_time timestamptz,
	OUT snapshot_bytes bigint)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

CREATE FUNCTION turbo_index_layout(index regclass,
	OUT dim int, OUT bits int, OUT metric text, OUT layout text, OUT lists int)
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

-- Shared memory a resident copy of the index would take now (with room
-- for inserts), to compare with turbovec.resident_memory.
CREATE FUNCTION turbo_resident_needed(index regclass) RETURNS bigint
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

-- The persisted shadow of the live state, written by the background worker
-- (never on a standby).  The live state in shared memory is authoritative.
CREATE TABLE turbovec_index_state (
	indexrelid oid PRIMARY KEY,
	ready boolean NOT NULL,
	ready_since timestamptz,
	rows bigint,
	resident_bytes bigint,
	snapshot_lsn pg_lsn,
	snapshot_time timestamptz,
	snapshot_bytes bigint,
	snapshot_path text,
	updated timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW turbo_indexes AS
	SELECT c.oid::regclass AS index,
		   c.indrelid::regclass AS "table",
		   'turbo'::text AS kind,
		   CASE WHEN NOT turbo_preloaded() OR c.relpersistence = 't' THEN true
				ELSE coalesce(r.state = 'ready', false) END AS ready,
		   CASE WHEN NOT turbo_preloaded() OR c.relpersistence = 't' THEN 'extent'
				ELSE coalesce(r.state, 'not loaded') END AS resident_state,
		   r.rows_done, r.rows_total,
		   c.reltuples::bigint AS rows,
		   l.bits, l.dim, l.metric, l.layout, l.lists,
		   coalesce(r.resident_bytes, 0) AS resident_bytes,
		   r.from_snapshot,
		   r.snapshot_time, r.snapshot_lsn, r.snapshot_bytes,
		   s.ready AS persisted_ready, s.ready_since AS persisted_ready_since,
		   s.snapshot_time AS persisted_snapshot_time, s.snapshot_lsn AS persisted_snapshot_lsn,
		   s.snapshot_bytes AS persisted_snapshot_bytes, s.snapshot_path AS persisted_snapshot_path,
		   turbo_resident_needed(c.oid) AS resident_bytes_needed
	FROM (SELECT c.oid, c.relpersistence, c.reltuples, i.indrelid
		  FROM pg_class c
		  JOIN pg_index i ON i.indexrelid = c.oid
		  JOIN pg_am a ON a.oid = c.relam AND a.amname = 'turbo'
		  WHERE c.relkind = 'i' AND i.indisvalid
			AND (c.relpersistence <> 't' OR c.relnamespace = pg_my_temp_schema())
		  -- a fence: the functions below refuse other indexes, so no filter
		  -- of the caller's may run them before this one has kept only turbo's
		  OFFSET 0) c
	CROSS JOIN LATERAL turbo_index_layout(c.oid) l
	LEFT JOIN turbo_resident_status() r ON r.indexrelid = c.oid
	LEFT JOIN turbovec_index_state s ON s.indexrelid = c.oid;

REVOKE ALL ON turbovec_index_state FROM PUBLIC;
GRANT SELECT ON turbovec_index_state TO PUBLIC;
GRANT SELECT ON turbo_indexes TO PUBLIC;
