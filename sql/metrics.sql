-- one block per metric: the index returns the same rows, in the same order,
-- as a sequential scan, NULL vectors are never returned, and EXPLAIN shows
-- the index for ORDER BY ... LIMIT

CREATE TABLE items (id int PRIMARY KEY, v real[]);
INSERT INTO items
	SELECT i, ARRAY[sin(i), cos(i * 0.7), sin(i * 1.3) + 0.1, cos(i * 2.1)]::real[]
	FROM generate_series(1, 60) i;
INSERT INTO items VALUES (61, NULL), (62, '{0,0,0,0}');

-- exact answers from a sequential scan, for comparison
-- ids(order by clause, via index?): the top 20 ids in order
CREATE FUNCTION ids(orderby text, via_index bool) RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE r int[];
BEGIN
	PERFORM set_config('enable_seqscan', CASE WHEN via_index THEN 'off' ELSE 'on' END, true);
	PERFORM set_config('enable_indexscan', CASE WHEN via_index THEN 'on' ELSE 'off' END, true);
	EXECUTE 'SELECT array_agg(id) FROM (SELECT id FROM items ORDER BY ' || orderby || ' LIMIT 20) s' INTO r;
	RETURN r;
END $$;

-- L2
CREATE INDEX items_l2 ON items USING turbo (v real_l2_ops);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <-> '{0.5,0.5,0.5,0.5}' LIMIT 5;
SELECT id, round((v <-> '{0.5,0.5,0.5,0.5}')::numeric, 4) AS dist
	FROM items ORDER BY v <-> '{0.5,0.5,0.5,0.5}' LIMIT 5;
RESET enable_seqscan;
SELECT ids($$v <-> '{0.5,0.5,0.5,0.5}'$$, true) = ids($$v <-> '{0.5,0.5,0.5,0.5}'$$, false) AS same_as_seqscan;
-- without LIMIT, every non-NULL vector once, NULL never
SET enable_seqscan = off;
SELECT count(*), count(DISTINCT id), bool_and(id <> 61) AS no_null
	FROM (SELECT id FROM items ORDER BY v <-> '{1,0,0,0}') s;
SELECT * FROM turbo_index_info('items_l2');
DROP INDEX items_l2;
RESET enable_seqscan;

-- inner product
CREATE INDEX items_ip ON items USING turbo (v real_ip_ops);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <#> '{1,2,3,4}' LIMIT 5;
SELECT id, round((v <#> '{1,2,3,4}')::numeric, 4) AS dist
	FROM items ORDER BY v <#> '{1,2,3,4}' LIMIT 5;
RESET enable_seqscan;
SELECT ids($$v <#> '{1,2,3,4}'$$, true) = ids($$v <#> '{1,2,3,4}'$$, false) AS same_as_seqscan;
SELECT metric, live_rows FROM turbo_index_info('items_ip');
DROP INDEX items_ip;

-- cosine: the zero vector (id 62) has no direction and is not indexed
CREATE INDEX items_cos ON items USING turbo (v real_cosine_ops);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <=> '{1,-1,1,-1}' LIMIT 5;
SELECT id, round((v <=> '{1,-1,1,-1}')::numeric, 4) AS dist
	FROM items ORDER BY v <=> '{1,-1,1,-1}' LIMIT 5;
SELECT count(*), bool_and(id NOT IN (61, 62)) AS no_null_no_zero
	FROM (SELECT id FROM items ORDER BY v <=> '{1,-1,1,-1}') s;
RESET enable_seqscan;
SELECT ids($$v <=> '{1,-1,1,-1}'$$, true) = ids($$v <=> '{1,-1,1,-1}'$$, false) AS same_as_seqscan;
SELECT metric, live_rows FROM turbo_index_info('items_cos');

-- a zero query vector has no cosine distance to anything
SET enable_seqscan = off;
SELECT id FROM items ORDER BY v <=> '{0,0,0,0}' LIMIT 1;
-- a NULL query orders nothing: rows come back in index order, all of them
SELECT count(*) FROM (SELECT id FROM items ORDER BY v <=> NULL) s;
SELECT count(*) FROM (SELECT id FROM items ORDER BY v <=> NULL LIMIT 3) s;
RESET enable_seqscan;
DROP INDEX items_cos;

-- bits 2 and 3 give the same exact top rows after re-ranking on a small table
CREATE INDEX items_l2_b2 ON items USING turbo (v real_l2_ops) WITH (bits = 2);
CREATE INDEX items_cos_b3 ON items USING turbo (v real_cosine_ops) WITH (bits = 3);
SELECT ids($$v <-> '{0.5,0.5,0.5,0.5}'$$, true) = ids($$v <-> '{0.5,0.5,0.5,0.5}'$$, false) AS b2_same;
SELECT ids($$v <=> '{1,-1,1,-1}'$$, true) = ids($$v <=> '{1,-1,1,-1}'$$, false) AS b3_same;
SELECT bits FROM turbo_index_info('items_l2_b2');
SELECT bits FROM turbo_index_info('items_cos_b3');

-- queries that cannot use a turbo index do not
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM items WHERE v <-> '{1,1,1,1}' < 1;
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <#> '{1,1,1,1}' LIMIT 3;
RESET enable_seqscan;

DROP TABLE items;
DROP FUNCTION ids(text, bool);
