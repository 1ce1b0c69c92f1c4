-- IVF scans rank lists on 8-bit centroids and recompute the nearest
-- probes + 16 exactly (tvscan.c, OrderLists).  100 tight clusters far
-- apart, 100 lists, 3 probes: a query near one cluster must probe that
-- cluster's lists, so its answer equals a sequential scan's, under L2 and
-- cosine.  (With 100 lists the ranking is approximate: 3 + 16 < 100.
-- Under inner product k-means lists do not follow the clusters: a list
-- holds the rows whose dot product with its centroid is largest, and the
-- rows nearest by inner product may lie in lists ranked lower, with exact
-- ranking as well.)
SET client_min_messages = warning;
CREATE TABLE lr (id int, v real[]);
INSERT INTO lr
SELECT c * 100 + r,
       (SELECT array_agg((10 * sin(c * 7.1 + i * 3.3) + 0.05 * sin(r * 1.7 + i * 0.9 + c))::real
                         ORDER BY i)
          FROM generate_series(1, 16) i)
  FROM generate_series(0, 99) c, generate_series(0, 39) r;
CREATE INDEX lr_l2 ON lr USING turbo (v real_l2_ops) WITH (lists = 100);
CREATE INDEX lr_cos ON lr USING turbo (v real_cosine_ops) WITH (lists = 100);
SELECT lists FROM turbo_index_info('lr_l2');
-- queries near clusters 5, 37 and 91
CREATE TABLE lrq (c int, q real[]);
INSERT INTO lrq
SELECT c, (SELECT array_agg((10 * sin(c * 7.1 + i * 3.3) + 0.03 * cos(i * 2.3 + c))::real
                            ORDER BY i)
             FROM generate_series(1, 16) i)
  FROM unnest(ARRAY[5, 37, 91]) c;
CREATE FUNCTION lr_top(op text, q real[], use_index bool) RETURNS int[]
LANGUAGE plpgsql AS $$
DECLARE
	r int[];
BEGIN
	PERFORM set_config('enable_seqscan', CASE WHEN use_index THEN 'off' ELSE 'on' END, true);
	PERFORM set_config('enable_indexscan', CASE WHEN use_index THEN 'on' ELSE 'off' END, true);
	PERFORM set_config('enable_bitmapscan', 'off', true);
	EXECUTE format('SELECT array_agg(id) FROM (SELECT id FROM lr ORDER BY v %s $1 LIMIT 10) s', op)
		INTO r USING q;
	RETURN r;
END $$;
SET turbovec.probes = 3;
SELECT c, op, lr_top(op, q, true) = lr_top(op, q, false) AS same_as_seqscan,
       (SELECT count(*) FROM unnest(lr_top(op, q, true)) id WHERE id / 100 = c) AS from_its_cluster
  FROM lrq, unnest(ARRAY['<->', '<=>']) op
 ORDER BY c, op;
-- the plan is an index scan
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM lr ORDER BY v <-> '{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}' LIMIT 10;
RESET enable_seqscan;
RESET turbovec.probes;
-- Past sixteen times the exactly ranked lists, the nearest are selected
-- below a bound taken from a sample of the ranks (tvscan.c,
-- SelectNearestLists).  320 clusters at scattered centres, 320 lists,
-- 1 probe (17 lists ranked exactly): each query's 8 nearest rows are its
-- cluster's, and a scan that probed another list would miss them.
CREATE TABLE lr2 (id int, v real[]);
CREATE FUNCTION lr2_centre(c int, i int) RETURNS float8
LANGUAGE sql IMMUTABLE AS
$$ SELECT 20 * (x - floor(x)) FROM (SELECT sin(c * 12.9898 + i * 78.233) * 43758.5453 AS x) s $$;
INSERT INTO lr2
SELECT c * 100 + r,
       (SELECT array_agg((lr2_centre(c, i) + 0.05 * sin(r * 1.7 + i * 0.9 + c))::real ORDER BY i)
          FROM generate_series(1, 16) i)
  FROM generate_series(0, 319) c, generate_series(0, 7) r;
CREATE INDEX lr2_l2 ON lr2 USING turbo (v real_l2_ops) WITH (lists = 320);
SELECT lists FROM turbo_index_info('lr2_l2');
CREATE TABLE lrq2 (c int, q real[]);
INSERT INTO lrq2
SELECT c, (SELECT array_agg((lr2_centre(c, i) + 0.03 * cos(i * 2.3 + c))::real ORDER BY i)
             FROM generate_series(1, 16) i)
  FROM generate_series(0, 319, 7) c;
SET turbovec.probes = 1;
SET enable_seqscan = off;
SELECT count(*) AS queries,
       count(*) FILTER (WHERE (SELECT count(*)
                                 FROM (SELECT id FROM lr2 ORDER BY v <-> q LIMIT 8) s
                                WHERE id / 100 = c) = 8) AS all_from_its_cluster
  FROM lrq2;
EXPLAIN (COSTS OFF) SELECT id FROM lr2 ORDER BY v <-> '{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}' LIMIT 8;
RESET enable_seqscan;
RESET turbovec.probes;
DROP TABLE lr, lrq, lr2, lrq2;
DROP FUNCTION lr_top;
DROP FUNCTION lr2_centre;
