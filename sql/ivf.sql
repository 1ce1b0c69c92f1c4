-- IVF layout: WITH (lists = N) trains N centroids and scans the
-- turbovec.probes nearest lists; answers match a sequential scan when the
-- probes cover the neighbours, and a scan that needs more rows probes more

CREATE TABLE iv (id int PRIMARY KEY, v real[], tag int);
-- eight well separated clusters of 200 points in 16 dimensions
INSERT INTO iv
	SELECT i, array_agg(((i % 8) * 10 + sin(i * 7.1 + j) * 0.5)::real ORDER BY j), i % 10
	FROM generate_series(1, 1600) i, generate_series(1, 16) j GROUP BY i;
INSERT INTO iv VALUES (0, NULL, 0);

CREATE FUNCTION ivids(q real[], k int, via_index bool) RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE r int[];
BEGIN
	PERFORM set_config('enable_seqscan', CASE WHEN via_index THEN 'off' ELSE 'on' END, true);
	PERFORM set_config('enable_indexscan', CASE WHEN via_index THEN 'on' ELSE 'off' END, true);
	SELECT array_agg(id) INTO r FROM (SELECT id FROM iv ORDER BY v <-> q LIMIT k) s;
	RETURN r;
END $$;

CREATE INDEX iv_l2 ON iv USING turbo (v real_l2_ops) WITH (lists = 8);
SELECT dim, lists, live_rows, slots % 32 AS partial_slots FROM turbo_index_info('iv_l2');
SELECT * FROM turbo_verify('iv_l2');

SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM iv ORDER BY v <-> array_fill(30::real, ARRAY[16]) LIMIT 10;
RESET enable_seqscan;

-- one probe finds the cluster a query sits in: with every lane of the
-- probed list re-ranked, the answer is exact exactly when routing is right
SET turbovec.probes = 1;
SET turbovec.candidates = 1000;
SELECT ivids(array_fill(30::real, ARRAY[16]), 10, true) = ivids(array_fill(30::real, ARRAY[16]), 10, false) AS same_one_probe;
SELECT ivids(array_fill(70::real, ARRAY[16]), 10, true) = ivids(array_fill(70::real, ARRAY[16]), 10, false) AS same_one_probe;
-- asking for more rows than the probed lists hold goes on to more lists
SET enable_seqscan = off;
SELECT count(*), count(DISTINCT id) FROM (SELECT id FROM iv ORDER BY v <-> array_fill(30::real, ARRAY[16]) LIMIT 500) s;
-- a filter that keeps one row in ten still gets its rows
SELECT count(*) FROM (SELECT id FROM iv WHERE tag = 3 ORDER BY v <-> array_fill(30::real, ARRAY[16]) LIMIT 50) s;
-- every indexed row exactly once, the NULL never
SELECT count(*), count(DISTINCT id), bool_and(id <> 0) AS no_null FROM (SELECT id FROM iv ORDER BY v <-> array_fill(0::real, ARRAY[16])) s;
SELECT count(*) FROM (SELECT id FROM iv ORDER BY v <-> NULL) s;
RESET enable_seqscan;
RESET turbovec.probes;
RESET turbovec.candidates;

-- inserts go to their nearest list; VACUUM frees lanes that inserts reuse
INSERT INTO iv
	SELECT i, array_agg(((i % 8) * 10 + cos(i * 3.3 + j) * 0.5)::real ORDER BY j), i % 10
	FROM generate_series(1601, 1700) i, generate_series(1, 16) j GROUP BY i;
SELECT live_rows FROM turbo_index_info('iv_l2');
SELECT * FROM turbo_verify('iv_l2');
DELETE FROM iv WHERE id % 4 = 0;
VACUUM iv;
SELECT live_rows, slots AS slots_before FROM turbo_index_info('iv_l2');
INSERT INTO iv
	SELECT i, array_agg(((i % 8) * 10 + sin(i * 1.7 + j) * 0.5)::real ORDER BY j), i % 10
	FROM generate_series(2001, 2200) i, generate_series(1, 16) j GROUP BY i;
SELECT live_rows, slots AS slots_after FROM turbo_index_info('iv_l2');
SELECT * FROM turbo_verify('iv_l2');
SET turbovec.probes = 2;
SET turbovec.candidates = 1000;
SELECT ivids(array_fill(50::real, ARRAY[16]), 10, true) = ivids(array_fill(50::real, ARRAY[16]), 10, false) AS same_after_churn;
RESET turbovec.probes;
RESET turbovec.candidates;

-- cosine and inner product lists
CREATE INDEX iv_cos ON iv USING turbo (v real_cosine_ops) WITH (lists = 4, bits = 2);
CREATE INDEX iv_ip ON iv USING turbo (v real_ip_ops) WITH (lists = 4, bits = 3);
SELECT metric, lists, bits FROM turbo_index_info('iv_cos');
SELECT metric, lists, bits FROM turbo_index_info('iv_ip');
SELECT * FROM turbo_verify('iv_cos');
SELECT * FROM turbo_verify('iv_ip');
SET turbovec.probes = 4;
SET enable_seqscan = off;
SELECT count(*) FROM (SELECT id FROM iv ORDER BY v <=> array_fill(1::real, ARRAY[16]) LIMIT 20) s;
SELECT count(*) FROM (SELECT id FROM iv ORDER BY v <#> array_fill(1::real, ARRAY[16]) LIMIT 20) s;
RESET enable_seqscan;
RESET turbovec.probes;
DROP INDEX iv_cos, iv_ip;

-- codes of the residual to the list's centroid (the default) and of the
-- vector itself (residual = off) must both rank rows across lists: with
-- every list probed and only ten candidates re-ranked, most of the index's
-- ten nearest are the exact ten (overlap out of 200 over 20 queries; here
-- residual codes find about 100, codes of the vector about 60, and an
-- estimate that lost the centroid's term finds none).  Inner product is
-- harder on this data: about 25 for both before the inserts.
CREATE TABLE ivr (id int PRIMARY KEY, v real[]);
INSERT INTO ivr
	SELECT i, array_agg((3 * sin((i % 8) * 1.3 + j) + 0.8 * sin(i * 7.7 + j * 3.1))::real ORDER BY j)
	FROM generate_series(1, 2000) i, generate_series(1, 32) j GROUP BY i;
CREATE FUNCTION ivr_overlap(op text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
	total int := 0;
	q real[];
	a int[];
	b int[];
BEGIN
	FOR qi IN 1..20 LOOP
		q := ARRAY(SELECT (3 * sin((qi % 8) * 1.3 + j) + 0.8 * cos(qi * 5.3 + j * 1.7))::real
				   FROM generate_series(1, 32) j);
		PERFORM set_config('enable_seqscan', 'off', true);
		PERFORM set_config('enable_indexscan', 'on', true);
		EXECUTE format('SELECT array_agg(id) FROM (SELECT id FROM ivr ORDER BY v %s $1 LIMIT 10) s', op)
			INTO a USING q;
		PERFORM set_config('enable_seqscan', 'on', true);
		PERFORM set_config('enable_indexscan', 'off', true);
		EXECUTE format('SELECT array_agg(id) FROM (SELECT id FROM ivr ORDER BY v %s $1 LIMIT 10) s', op)
			INTO b USING q;
		total := total + (SELECT count(*) FROM unnest(a) x WHERE x = ANY (b));
	END LOOP;
	RETURN total;
END $$;
SET turbovec.probes = 8;
SET turbovec.candidates = 10;
CREATE INDEX ivr_res ON ivr USING turbo (v real_l2_ops) WITH (lists = 8);
SELECT lists, residual FROM turbo_index_info('ivr_res');
SELECT ivr_overlap('<->') >= 80 AS l2_residual;
-- the reloption changes nothing until a rebuild; turbo_index_info tells
ALTER INDEX ivr_res SET (residual = off);
SELECT lists, residual FROM turbo_index_info('ivr_res');
REINDEX INDEX ivr_res;
SELECT lists, residual FROM turbo_index_info('ivr_res');
DROP INDEX ivr_res;
CREATE INDEX ivr_vec ON ivr USING turbo (v real_l2_ops) WITH (lists = 8, residual = off);
SELECT lists, residual FROM turbo_index_info('ivr_vec');
SELECT ivr_overlap('<->') >= 40 AS l2_vector;
DROP INDEX ivr_vec;
CREATE INDEX ivr_res ON ivr USING turbo (v real_cosine_ops) WITH (lists = 8);
SELECT ivr_overlap('<=>') >= 70 AS cosine_residual;
DROP INDEX ivr_res;
CREATE INDEX ivr_vec ON ivr USING turbo (v real_cosine_ops) WITH (lists = 8, residual = off);
SELECT ivr_overlap('<=>') >= 40 AS cosine_vector;
DROP INDEX ivr_vec;
CREATE INDEX ivr_res ON ivr USING turbo (v real_ip_ops) WITH (lists = 8);
SELECT ivr_overlap('<#>') >= 15 AS ip_residual;
-- inserts after the build are coded for their list too
INSERT INTO ivr
	SELECT i, array_agg((3 * sin((i % 8) * 1.3 + j) + 0.8 * sin(i * 2.9 + j * 1.1))::real ORDER BY j)
	FROM generate_series(2001, 2500) i, generate_series(1, 32) j GROUP BY i;
SELECT * FROM turbo_verify('ivr_res');
SELECT ivr_overlap('<#>') >= 150 AS ip_residual_after_inserts;
DROP INDEX ivr_res;
CREATE INDEX ivr_vec ON ivr USING turbo (v real_ip_ops) WITH (lists = 8, residual = off);
SELECT ivr_overlap('<#>') >= 150 AS ip_vector_after_inserts;
RESET turbovec.probes;
RESET turbovec.candidates;
-- residual is a boolean reloption
CREATE INDEX ivr_bad ON ivr USING turbo (v real_l2_ops) WITH (lists = 8, residual = maybe);
DROP TABLE ivr;
DROP FUNCTION ivr_overlap(text);

-- wide vectors: each 32-lane block spans several pages, which list scans
-- assemble page by page.  A build keeps the vectors in memory when they fit
-- in maintenance_work_mem; when they do not it reads the table again and
-- keeps only the codes; either way it writes the lists one after the other,
-- so the pages are the same.  When even the codes outgrow the memory, the
-- rest of the lists' blocks interleave.  Parallel workers code the vectors
-- with the leader (rounds of a quarter of maintenance_work_mem) and change
-- no byte.  Pages are compared after the page header, which holds the LSN.
CREATE TABLE wide (id int PRIMARY KEY, v real[]);
INSERT INTO wide
	SELECT i, array_agg(((i % 4) * 3 + sin(i * 3.7 + j * 0.01))::real ORDER BY j)
	FROM generate_series(1, 300) i, generate_series(1, 2000) j GROUP BY i;
CREATE FUNCTION wideids(q real[]) RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE r int[];
BEGIN
	SELECT array_agg(id) INTO r FROM (SELECT id FROM wide ORDER BY v <-> q LIMIT 10) s;
	RETURN r;
END $$;
CREATE EXTENSION pageinspect;
CREATE FUNCTION wide_pages(idx regclass) RETURNS text LANGUAGE sql AS $$
	SELECT md5(string_agg(substr(get_raw_page(idx::text, b), 25), '' ORDER BY b))
	FROM generate_series(0, (pg_relation_size(idx) / current_setting('block_size')::int - 1)::int) b
$$;
CREATE TEMP TABLE wide_builds (build text, pages text);
CREATE TEMP TABLE wide_answers AS SELECT id, NULL::text AS build, NULL::int[] AS ids FROM wide WHERE false;
CREATE FUNCTION wide_record(build text, idx regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO wide_builds VALUES (build, wide_pages(idx));
	PERFORM set_config('enable_seqscan', 'off', true);
	INSERT INTO wide_answers SELECT q.id, build, wideids(q.v) FROM wide q WHERE q.id % 50 = 1;
END $$;
SET turbovec.probes = 8;
SET turbovec.candidates = 1000;
-- the vectors fit
CREATE INDEX wide_idx ON wide USING turbo (v real_l2_ops) WITH (lists = 4);
SELECT lists, live_rows FROM turbo_index_info('wide_idx');
SELECT * FROM turbo_verify('wide_idx');
SELECT wide_record('memory', 'wide_idx');
DROP INDEX wide_idx;
-- they do not, the codes do
SET maintenance_work_mem = '3MB';
SET client_min_messages = debug1;
CREATE INDEX wide_idx ON wide USING turbo (v real_l2_ops) WITH (lists = 4);
RESET client_min_messages;
SELECT * FROM turbo_verify('wide_idx');
SELECT wide_record('codes', 'wide_idx');
DROP INDEX wide_idx;
-- not even the codes: 67 vectors laid out by list, then the rest as they come
SET maintenance_work_mem = '1MB';
SET client_min_messages = debug1;
CREATE INDEX wide_idx ON wide USING turbo (v real_l2_ops) WITH (lists = 8);
RESET client_min_messages;
SELECT lists, live_rows FROM turbo_index_info('wide_idx');
SELECT * FROM turbo_verify('wide_idx');
SELECT wide_record('interleaved', 'wide_idx');
DROP INDEX wide_idx;
-- parallel workers, two rounds
SET maintenance_work_mem = '12MB';
SET min_parallel_table_scan_size = 0;
SET max_parallel_maintenance_workers = 2;
SET client_min_messages = debug1;
CREATE INDEX wide_idx ON wide USING turbo (v real_l2_ops) WITH (lists = 4);
RESET client_min_messages;
RESET max_parallel_maintenance_workers;
RESET min_parallel_table_scan_size;
RESET maintenance_work_mem;
SELECT * FROM turbo_verify('wide_idx');
SELECT wide_record('parallel', 'wide_idx');
DROP INDEX wide_idx;
SELECT b.build, b.pages = m.pages AS same_pages_as_memory
	FROM wide_builds b, wide_builds m
	WHERE m.build = 'memory' AND b.build <> 'interleaved' ORDER BY b.build;
SET enable_indexscan = off;
SELECT a.build, count(*) AS queries, count(*) FILTER (WHERE a.ids = wideids(q.v)) AS exact
	FROM wide_answers a JOIN wide q USING (id) GROUP BY a.build ORDER BY a.build;
RESET enable_indexscan;
RESET turbovec.probes;
RESET turbovec.candidates;
DROP TABLE wide, wide_builds, wide_answers;
DROP FUNCTION wideids(real[]), wide_record(text, regclass);

-- a build that reads its table twice (here because the vectors lie in their
-- rows) reads and codes the second pass with parallel workers (a parallel
-- heap scan), and writes the pages of a serial build
CREATE TABLE nar (id int PRIMARY KEY, v real[]);
INSERT INTO nar
	SELECT i, array_agg(((i % 4) * 3 + sin(i * 3.7 + j * 0.1))::real ORDER BY j)
	FROM generate_series(1, 3000) i, generate_series(1, 64) j GROUP BY i;
SET max_parallel_maintenance_workers = 0;
CREATE INDEX nar_idx ON nar USING turbo (v real_l2_ops) WITH (lists = 4);
CREATE TEMP TABLE nar_builds AS SELECT 'serial, in memory' AS build, wide_pages('nar_idx') AS pages;
DROP INDEX nar_idx;
SET maintenance_work_mem = '1MB';
SET min_parallel_table_scan_size = 0;
SET max_parallel_maintenance_workers = 2;
CREATE INDEX nar_idx ON nar USING turbo (v real_l2_ops) WITH (lists = 4);
INSERT INTO nar_builds SELECT 'parallel, read twice', wide_pages('nar_idx');
RESET max_parallel_maintenance_workers;
RESET min_parallel_table_scan_size;
RESET maintenance_work_mem;
SELECT * FROM turbo_verify('nar_idx');
SELECT count(DISTINCT pages) AS distinct_pages, count(*) AS builds FROM nar_builds;
DROP TABLE nar, nar_builds;
DROP FUNCTION wide_pages(regclass);
DROP EXTENSION pageinspect;

-- too few rows for the lists asked: fewer lists, and a NOTICE
CREATE TABLE few (v real[]);
INSERT INTO few VALUES ('{1,2}'), ('{2,1}'), ('{5,5}');
CREATE INDEX few_idx ON few USING turbo (v real_l2_ops) WITH (lists = 10);
SELECT lists, live_rows FROM turbo_index_info('few_idx');
-- an empty table gets the flat layout
TRUNCATE few;
SELECT lists, dim FROM turbo_index_info('few_idx');
INSERT INTO few VALUES ('{1,2}');
SELECT lists, dim, live_rows FROM turbo_index_info('few_idx');
DROP TABLE few;

-- REINDEX retrains
REINDEX INDEX iv_l2;
SELECT lists, live_rows, slots % 32 AS partial_slots FROM turbo_index_info('iv_l2');
SELECT * FROM turbo_verify('iv_l2');

-- With 2 lists the sample is 128 vectors, so the sampling pass counts most
-- of the 1,600 rows without reading them (their vectors lie in the rows,
-- which the encoding pass reads again; the last row is one of those): a
-- bad vector among them is still refused, by the encoding pass
CREATE TABLE ivs (LIKE iv);
INSERT INTO ivs SELECT * FROM iv WHERE id > 0 ORDER BY id;
BEGIN;
INSERT INTO ivs VALUES (5000, array_fill(1::real, ARRAY[15]) || 'NaN'::real, 0);
CREATE INDEX ivs_nan ON ivs USING turbo (v real_l2_ops) WITH (lists = 2);
ROLLBACK;
BEGIN;
INSERT INTO ivs VALUES (5000, array_fill(1::real, ARRAY[15]), 0);
CREATE INDEX ivs_dim ON ivs USING turbo (v real_l2_ops) WITH (lists = 2);
ROLLBACK;
DROP TABLE ivs;

DROP TABLE iv;
DROP FUNCTION ivids(real[], int, bool);
