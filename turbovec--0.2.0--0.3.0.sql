-- turbovec 0.2.0 -> 0.3.0 (ALTER EXTENSION turbovec UPDATE)
--
-- The page format is unchanged: indexes built by 0.2.0 are read as they
-- are, no REINDEX needed.  .tv snapshots are version 2 from 0.3.0 on
-- (refinement codes instead of float vectors): 0.2.0's files are refused
-- with a WARNING and the resident copies rebuilt from the indexes.

\echo Use "ALTER EXTENSION turbovec UPDATE TO '0.3.0'" to load this file. \quit

-- turbo_indexes says how much shared memory each copy needs
CREATE FUNCTION turbo_resident_needed(index regclass) RETURNS bigint
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

CREATE OR REPLACE VIEW turbo_indexes AS
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
