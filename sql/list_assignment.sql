-- From 1,024 lists on, builds assign vectors to lists through groups of
-- lists (tvivf.c, "Grouped assignment"): the nearest 16 groups of about
-- sqrt(lists) centroids each, then the nearest member of those.  1,200
-- tight clusters far apart, 1,200 lists, 2 probes: a query near one
-- cluster must find all ten of its rows in the lists it probes, so its
-- answer equals a sequential scan's, under L2 and cosine.  (Assigning
-- through the farthest groups instead answers 2-3 of the 172 queries
-- right.)
SET client_min_messages = warning;
CREATE TABLE la (id int, v real[]);
-- cluster c's centre: 16 pseudo-random coordinates in [0, 10)
INSERT INTO la
SELECT c * 100 + r,
       (SELECT array_agg((10 * (x - floor(x)) + 0.05 * sin(r * 1.7 + i * 0.9 + c))::real
                         ORDER BY i)
          FROM (SELECT i, sin(c * 12.9898 + i * 78.233) * 43758.5453 AS x
                  FROM generate_series(1, 16) i) s)
  FROM generate_series(0, 1199) c, generate_series(0, 9) r;
CREATE INDEX la_l2 ON la USING turbo (v real_l2_ops) WITH (lists = 1200);
CREATE INDEX la_cos ON la USING turbo (v real_cosine_ops) WITH (lists = 1200);
SELECT lists, live_rows FROM turbo_index_info('la_l2');
SELECT lists, live_rows FROM turbo_index_info('la_cos');
-- queries near every seventh cluster
CREATE TABLE laq (c int, q real[]);
INSERT INTO laq
SELECT c, (SELECT array_agg((10 * (x - floor(x)) + 0.03 * cos(i * 2.3 + c))::real ORDER BY i)
             FROM (SELECT i, sin(c * 12.9898 + i * 78.233) * 43758.5453 AS x
                     FROM generate_series(1, 16) i) s)
  FROM generate_series(0, 1199, 7) c;
CREATE FUNCTION la_top(op text, q real[], use_index bool) RETURNS int[]
LANGUAGE plpgsql AS $$
DECLARE
	r int[];
BEGIN
	PERFORM set_config('enable_seqscan', CASE WHEN use_index THEN 'off' ELSE 'on' END, true);
	PERFORM set_config('enable_indexscan', CASE WHEN use_index THEN 'on' ELSE 'off' END, true);
	PERFORM set_config('enable_bitmapscan', 'off', true);
	EXECUTE format('SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM la ORDER BY v %s $1 LIMIT 10) s', op)
		INTO r USING q;
	RETURN r;
END $$;
SET turbovec.probes = 2;
SELECT op, count(*) AS queries,
       count(*) FILTER (WHERE la_top(op, q, true) = la_top(op, q, false)) AS same_as_seqscan,
       count(*) FILTER (WHERE (SELECT count(*) FROM unnest(la_top(op, q, true)) id
                                WHERE id / 100 = c) = 10) AS whole_cluster
  FROM laq, unnest(ARRAY['<->', '<=>']) op
 GROUP BY op ORDER BY op;
RESET turbovec.probes;
-- automatic probes (TvProbes): one list in 16, at least 16, but no more
-- than 1.5 sqrt(lists) (1,200 lists: 52, not 75); a setting wins.  No
-- JIT: its messages would join the scan's
SET enable_seqscan = off;
SET jit = off;
SET client_min_messages = debug1;
SELECT count(*) FROM (SELECT id FROM la ORDER BY v <-> (SELECT q FROM laq LIMIT 1) LIMIT 3) s;
SET turbovec.probes = 80;
SELECT count(*) FROM (SELECT id FROM la ORDER BY v <-> (SELECT q FROM laq LIMIT 1) LIMIT 3) s;
RESET turbovec.probes;
-- 400 lists: one in 16 (25) is below 1.5 sqrt(400) = 30
SET client_min_messages = warning;
DROP INDEX la_l2;
CREATE INDEX la_400 ON la USING turbo (v real_l2_ops) WITH (lists = 400);
SET client_min_messages = debug1;
SELECT count(*) FROM (SELECT id FROM la ORDER BY v <-> (SELECT q FROM laq LIMIT 1) LIMIT 3) s;
SET client_min_messages = warning;
RESET jit;
RESET enable_seqscan;
DROP TABLE la, laq;
DROP FUNCTION la_top;
