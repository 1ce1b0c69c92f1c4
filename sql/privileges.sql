-- Privileges of the SQL functions, checked before any lock is taken:
-- SELECT on the table to read an index's information or wait for it,
-- ownership (or superuser) to verify, rebuild or dump it.
CREATE ROLE regress_tv_owner;
CREATE ROLE regress_tv_reader;
CREATE ROLE regress_tv_nobody;
CREATE TABLE priv_t (id int, v real[]);
INSERT INTO priv_t VALUES (1, '{1,2,3}'), (2, '{3,2,1}');
CREATE INDEX priv_i ON priv_t USING turbo (v real_l2_ops);
ALTER TABLE priv_t OWNER TO regress_tv_owner;
GRANT SELECT ON priv_t TO regress_tv_reader;

-- no privilege at all
SET ROLE regress_tv_nobody;
SELECT * FROM turbo_index_info('priv_i');
\echo :LAST_ERROR_SQLSTATE
SELECT turbo_wait_ready('priv_i', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM turbo_verify('priv_i');
\echo :LAST_ERROR_SQLSTATE
SELECT turbo_rebuild('priv_i');
\echo :LAST_ERROR_SQLSTATE
SELECT turbo_snapshot_now('priv_i');
\echo :LAST_ERROR_SQLSTATE
-- the layout is NULL, and no lock on the table is left behind
BEGIN;
SELECT * FROM turbo_index_layout('priv_i');
SELECT index, dim, layout, lists FROM turbo_indexes WHERE index = 'priv_i'::regclass;
SELECT count(*) FROM pg_locks
	WHERE relation IN ('priv_t'::regclass, 'priv_i'::regclass) AND pid = pg_backend_pid();
COMMIT;
RESET ROLE;

-- SELECT on the table
SET ROLE regress_tv_reader;
SELECT dim, live_rows FROM turbo_index_info('priv_i');
SELECT turbo_wait_ready('priv_i', 0);
SELECT * FROM turbo_index_layout('priv_i');
SELECT * FROM turbo_verify('priv_i');
\echo :LAST_ERROR_SQLSTATE
SELECT turbo_rebuild('priv_i');
\echo :LAST_ERROR_SQLSTATE
SELECT turbo_snapshot_now('priv_i');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- the owner
SET ROLE regress_tv_owner;
SELECT count(*) FROM turbo_verify('priv_i');
SELECT turbo_rebuild('priv_i');		-- not preloaded here
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- bad arguments
SELECT * FROM turbo_index_info(0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM turbo_index_info('priv_t');
\echo :LAST_ERROR_SQLSTATE
-- the wait is capped at 10 minutes
SELECT turbo_wait_ready('priv_i', 600001);
\echo :LAST_ERROR_SQLSTATE
SELECT turbo_wait_ready('priv_i', -1);
SELECT turbo_wait_ready('priv_i', 600000);

DROP TABLE priv_t;
DROP ROLE regress_tv_owner;
DROP ROLE regress_tv_reader;
DROP ROLE regress_tv_nobody;
