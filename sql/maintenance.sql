-- writes keep the index right: UPDATE, DELETE, VACUUM, TRUNCATE, REINDEX,
-- CREATE INDEX CONCURRENTLY, unlogged tables, expression and partial indexes

CREATE TABLE m (id int PRIMARY KEY, v real[], tag int);
INSERT INTO m SELECT i, ARRAY[sin(i), cos(i), sin(2 * i), cos(3 * i), sin(5 * i)]::real[], i % 10
	FROM generate_series(1, 500) i;
CREATE INDEX m_idx ON m USING turbo (v real_l2_ops);

-- exact top 10 by index and by sequential scan agree
CREATE FUNCTION topk(q real[], k int, via_index bool) RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE r int[];
BEGIN
	PERFORM set_config('enable_seqscan', CASE WHEN via_index THEN 'off' ELSE 'on' END, true);
	PERFORM set_config('enable_indexscan', CASE WHEN via_index THEN 'on' ELSE 'off' END, true);
	SELECT array_agg(id) INTO r FROM (SELECT id FROM m ORDER BY v <-> q LIMIT k) s;
	RETURN r;
END $$;
SELECT topk('{0,1,0,1,0}', 10, true) = topk('{0,1,0,1,0}', 10, false) AS agree;

-- UPDATE moves a row; the old version is no longer returned
UPDATE m SET v = '{9,9,9,9,9}' WHERE id = 7;
SET enable_seqscan = off;
SELECT id FROM m ORDER BY v <-> '{9,9,9,9,9}' LIMIT 1;
SELECT count(*) FROM (SELECT id FROM m ORDER BY v <-> '{0,0,0,0,0}') s;
RESET enable_seqscan;

-- DELETE + VACUUM frees lanes, and new rows reuse them
DELETE FROM m WHERE id > 250;
VACUUM m;
SELECT live_rows, slots FROM turbo_index_info('m_idx');
INSERT INTO m SELECT i, ARRAY[cos(i), sin(i), cos(2 * i), sin(3 * i), cos(5 * i)]::real[], i % 10
	FROM generate_series(1001, 1200) i;
SELECT live_rows, slots FROM turbo_index_info('m_idx');
SELECT * FROM turbo_verify('m_idx');
SELECT topk('{0,1,0,1,0}', 10, true) = topk('{0,1,0,1,0}', 10, false) AS agree;

-- a filter that keeps 10% of rows still gets its k rows
SET turbovec.candidates = 10;
SET enable_seqscan = off;
SELECT count(*) FROM (SELECT id FROM m WHERE tag = 3 ORDER BY v <-> '{1,0,1,0,1}' LIMIT 10) s;
-- and every row without a LIMIT, in relaxed_order (strict_order leaves out
-- rows a later window finds nearer than one already returned)
SET turbovec.iterative_scan = relaxed_order;
SELECT count(*) FROM (SELECT id FROM m WHERE tag = 3 ORDER BY v <-> '{1,0,1,0,1}') s;
RESET turbovec.iterative_scan;
SELECT count(*) FROM m WHERE tag = 3;
RESET enable_seqscan;
RESET turbovec.candidates;

-- REINDEX compacts and keeps answers
REINDEX INDEX m_idx;
SELECT live_rows, slots FROM turbo_index_info('m_idx');
SELECT topk('{0,1,0,1,0}', 10, true) = topk('{0,1,0,1,0}', 10, false) AS agree;

-- CREATE INDEX CONCURRENTLY
DROP INDEX m_idx;
CREATE INDEX CONCURRENTLY m_idx ON m USING turbo (v real_l2_ops);
SELECT indisvalid FROM pg_index WHERE indexrelid = 'm_idx'::regclass;
SELECT topk('{0,1,0,1,0}', 10, true) = topk('{0,1,0,1,0}', 10, false) AS agree;
REINDEX INDEX CONCURRENTLY m_idx;
SELECT * FROM turbo_verify('m_idx');

-- TRUNCATE empties the index; it takes the dimension of the next row
TRUNCATE m;
SELECT dim, live_rows FROM turbo_index_info('m_idx');
INSERT INTO m VALUES (1, '{1,2,3}', 0), (2, '{3,2,1}', 0);
SELECT dim, live_rows FROM turbo_index_info('m_idx');
SET enable_seqscan = off;
SELECT id FROM m ORDER BY v <-> '{3,2,1}' LIMIT 1;
RESET enable_seqscan;
DROP TABLE m;
DROP FUNCTION topk(real[], int, bool);

-- an unlogged table
CREATE UNLOGGED TABLE u (id int, v real[]);
CREATE INDEX u_idx ON u USING turbo (v real_cosine_ops);
INSERT INTO u SELECT i, ARRAY[i, 1, -i]::real[] FROM generate_series(1, 100) i;
SET enable_seqscan = off;
SELECT id FROM u ORDER BY v <=> '{50,1,-50}' LIMIT 1;
RESET enable_seqscan;
SELECT live_rows FROM turbo_index_info('u_idx');
DROP TABLE u;

-- an expression index re-ranks on the expression
CREATE TABLE x (id int, a real, b real);
INSERT INTO x SELECT i, i, -i FROM generate_series(1, 100) i;
CREATE INDEX x_idx ON x USING turbo ((ARRAY[a, b]) real_l2_ops);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM x ORDER BY ARRAY[a, b] <-> '{42,-42}' LIMIT 3;
SELECT id FROM x ORDER BY ARRAY[a, b] <-> '{42,-42}' LIMIT 3;
RESET enable_seqscan;
DROP TABLE x;

-- a partial index
CREATE TABLE p (id int, v real[], keep bool);
INSERT INTO p SELECT i, ARRAY[i, i]::real[], i % 2 = 0 FROM generate_series(1, 100) i;
CREATE INDEX p_idx ON p USING turbo (v real_l2_ops) WHERE keep;
SELECT live_rows FROM turbo_index_info('p_idx');
SET enable_seqscan = off;
SELECT id FROM p WHERE keep ORDER BY v <-> '{31,31}' LIMIT 2;
RESET enable_seqscan;
DROP TABLE p;

-- high dimensions: a block spans several pages
CREATE TABLE h (id int, v real[]);
INSERT INTO h SELECT i, array_agg(sin(i * j)::real) FROM generate_series(1, 70) i, generate_series(1, 3000) j GROUP BY i;
CREATE INDEX h_idx ON h USING turbo (v real_l2_ops);
INSERT INTO h SELECT i, array_agg(cos(i * j)::real) FROM generate_series(71, 100) i, generate_series(1, 3000) j GROUP BY i;
SELECT dim, live_rows, blocks, pages FROM turbo_index_info('h_idx');
SELECT * FROM turbo_verify('h_idx');
SET enable_seqscan = off;
SELECT id FROM h ORDER BY v <-> (SELECT v FROM h WHERE id = 77) LIMIT 1;
SELECT id FROM h ORDER BY v <-> (SELECT v FROM h WHERE id = 13) LIMIT 1;
RESET enable_seqscan;
DELETE FROM h WHERE id % 3 = 0;
VACUUM h;
INSERT INTO h SELECT i, array_agg(cos(i * j + 1)::real) FROM generate_series(101, 120) i, generate_series(1, 3000) j GROUP BY i;
SELECT live_rows FROM turbo_index_info('h_idx');
SELECT * FROM turbo_verify('h_idx');
SELECT count(*) FROM h;
DROP TABLE h;
