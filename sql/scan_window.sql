-- scans past the first window: turbovec.iterative_scan orders the rows of
-- later windows (strict_order skips rows nearer than one already returned,
-- relaxed_order returns them), and turbovec.max_scan_tuples bounds how many
-- candidates one scan takes

CREATE TABLE sw (id int PRIMARY KEY, v real[], tag int);
SELECT setseed(0.8);
INSERT INTO sw SELECT i, (SELECT array_agg((random() * 2 - 1)::real) FROM generate_series(1, 16) WHERE i > 0), i % 10
	FROM generate_series(1, 3000) i;
CREATE INDEX sw_flat ON sw USING turbo (v real_l2_ops) WITH (bits = 2);

-- the ids a query returns, through the index or by a sequential scan
CREATE FUNCTION swids(q real[], k int, via_index bool) RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE r int[];
BEGIN
	PERFORM set_config('enable_seqscan', CASE WHEN via_index THEN 'off' ELSE 'on' END, true);
	PERFORM set_config('enable_indexscan', CASE WHEN via_index THEN 'on' ELSE 'off' END, true);
	PERFORM set_config('enable_bitmapscan', 'off', true);
	SELECT array_agg(id ORDER BY n) INTO r
		FROM (SELECT id, row_number() OVER () AS n FROM
			(SELECT id FROM sw WHERE tag = 3 ORDER BY v <-> q LIMIT k) s) t;
	RETURN r;
END $$;

-- rows returned nearer than the row before them
CREATE FUNCTION inversions(q real[], ids int[]) RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FILTER (WHERE d < prev) FROM
		(SELECT sw.v <-> q AS d, lag(sw.v <-> q) OVER (ORDER BY a.n) AS prev
		 FROM unnest(ids) WITH ORDINALITY a(id, n) JOIN sw USING (id)) s
$$;

CREATE TABLE swq (qid int, q real[]);
SELECT setseed(0.9);
INSERT INTO swq SELECT j, (SELECT array_agg((random() * 2 - 1)::real) FROM generate_series(1, 16) WHERE j > 0)
	FROM generate_series(1, 5) j;

-- a window of 10 and a filter that keeps one row in ten: LIMIT 300 asks
-- for every row with tag 3, found over many windows (custom plans only: a
-- generic plan, not knowing the LIMIT, may sort the table instead)
SET plan_cache_mode = force_custom_plan;
SET turbovec.candidates = 10;
SET enable_seqscan = off;
-- whether a plan scans an index (EXPLAIN's text differs across majors)
CREATE FUNCTION plan_uses(query text, idx text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	line text;
BEGIN
	FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
		IF line LIKE '%Index Scan using ' || idx || ' on %' THEN
			RETURN true;
		END IF;
	END LOOP;
	RETURN false;
END $$;
SELECT plan_uses('SELECT id FROM sw WHERE tag = 3 ORDER BY v <-> (SELECT q FROM swq WHERE qid = 1) LIMIT 300', 'sw_flat');
RESET enable_seqscan;
SHOW turbovec.iterative_scan;
SHOW turbovec.max_scan_tuples;

-- relaxed_order: every row with tag 3 (as a sequential scan finds), some
-- after a farther one
SET turbovec.iterative_scan = relaxed_order;
SELECT qid, cardinality(r.ids) AS rows,
	(SELECT array_agg(x ORDER BY x) FROM unnest(r.ids) x) = (SELECT array_agg(x ORDER BY x) FROM unnest(swids(q, 300, false)) x) AS same_rows,
	inversions(q, r.ids) > 0 AS out_of_order
	FROM swq, LATERAL (SELECT swids(q, 300, true) AS ids) r ORDER BY qid;

-- strict_order (the default): in distance order, each row one a sequential
-- scan returns too (rows nearer than one already returned are left out;
-- holding back the rows a next window may undercut keeps them few)
RESET turbovec.iterative_scan;
SELECT qid, inversions(q, r.ids) AS inversions,
	r.ids <@ swids(q, 300, false) AS subset,
	cardinality(r.ids) >= 270 AS most_rows
	FROM swq, LATERAL (SELECT swids(q, 300, true) AS ids) r ORDER BY qid;

-- max_scan_tuples: 50 candidates hold few rows with tag 3, and the scan
-- stops without error; the default bound finds them all
SET turbovec.iterative_scan = relaxed_order;
SET turbovec.max_scan_tuples = 50;
SELECT qid, cardinality(swids(q, 300, true)) < 50 AS fewer FROM swq ORDER BY qid;
SET turbovec.max_scan_tuples = 20000;
SELECT qid, cardinality(swids(q, 300, true)) AS rows FROM swq ORDER BY qid;
-- the first window is always taken whole
SET turbovec.max_scan_tuples = 1;
SET turbovec.candidates = 3000;
SELECT qid, cardinality(swids(q, 300, true)) AS rows FROM swq ORDER BY qid;
RESET turbovec.candidates;
RESET turbovec.max_scan_tuples;

-- the same with an IVF index, whose later windows also probe more lists
DROP INDEX sw_flat;
CREATE INDEX sw_ivf ON sw USING turbo (v real_l2_ops) WITH (lists = 16, bits = 2);
SET turbovec.candidates = 10;
SET turbovec.probes = 2;
SET turbovec.iterative_scan = relaxed_order;
SELECT qid, cardinality(r.ids) AS rows,
	(SELECT array_agg(x ORDER BY x) FROM unnest(r.ids) x) = (SELECT array_agg(x ORDER BY x) FROM unnest(swids(q, 300, false)) x) AS same_rows,
	inversions(q, r.ids) > 0 AS out_of_order
	FROM swq, LATERAL (SELECT swids(q, 300, true) AS ids) r ORDER BY qid;
RESET turbovec.iterative_scan;
SELECT qid, inversions(q, r.ids) AS inversions,
	r.ids <@ swids(q, 300, false) AS subset,
	cardinality(r.ids) BETWEEN 1 AND 300 AS some_rows
	FROM swq, LATERAL (SELECT swids(q, 300, true) AS ids) r ORDER BY qid;
RESET turbovec.probes;

SET turbovec.max_scan_tuples = 0;
RESET turbovec.max_scan_tuples;
RESET turbovec.candidates;
RESET turbovec.iterative_scan;
RESET plan_cache_mode;
SET turbovec.iterative_scan = unordered;

DROP TABLE sw, swq;
DROP FUNCTION swids(real[], int, bool), inversions(real[], int[]), plan_uses(text, text);
