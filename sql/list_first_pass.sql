-- Builds with 32 lists or more search a vector's list in two passes where
-- the CPU has AVX512-VNNI (tvivf.c, "A first pass in 8 bits"): 8-bit
-- products drop the lists that cannot be the nearest, and floats decide
-- among the rest.  The lists chosen must be those of the full float search
-- (turbovec.test_full_list_search), so the pages are the same byte for
-- byte: under L2, inner product and cosine, at a dimension that is a
-- multiple of 16 and one that is not, with duplicate rows and small
-- integer coordinates (exact ties), and with parallel workers.  On a CPU
-- without the instruction both builds take the full search.
SET client_min_messages = warning;
CREATE EXTENSION pageinspect;
CREATE FUNCTION lfp_pages(idx regclass) RETURNS text LANGUAGE sql AS $$
	SELECT md5(string_agg(substr(get_raw_page(idx::text, b), 25), '' ORDER BY b))
	FROM generate_series(0, (pg_relation_size(idx) / current_setting('block_size')::int - 1)::int) b
$$;
-- no clusters: pseudo-random coordinates in [0, 4), so that many rows lie
-- nearly as close to two or more centroids; a third of the rows have
-- integer coordinates, and every fifth row is repeated
CREATE TABLE lfp (id int, v48 real[], v37 real[]);
INSERT INTO lfp
SELECT i,
	(SELECT array_agg(CASE WHEN i % 3 = 0 THEN floor(x) ELSE x END::real ORDER BY d)
	   FROM (SELECT d, 4 * (h - floor(h)) AS x
			   FROM (SELECT d, sin(i * 12.9898 + d * 78.233) * 43758.5453 AS h
					   FROM generate_series(1, 48) d) r) s),
	(SELECT array_agg(CASE WHEN i % 3 = 0 THEN floor(x) ELSE x END::real ORDER BY d)
	   FROM (SELECT d, 4 * (h - floor(h)) AS x
			   FROM (SELECT d, sin(i * 4.1414 + d * 39.346) * 24634.6345 AS h
					   FROM generate_series(1, 37) d) r) s)
FROM generate_series(1, 4000) i;
INSERT INTO lfp SELECT id + 10000, v48, v37 FROM lfp WHERE id % 5 = 0;

CREATE TEMP TABLE lfp_builds (idx text, full_search bool, pages text);
CREATE FUNCTION lfp_build(label text, col text, opclass text, lists int, full_search bool)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('turbovec.test_full_list_search', full_search::text, true);
	EXECUTE format('CREATE INDEX lfp_idx ON lfp USING turbo (%I %s) WITH (lists = %s)',
				   col, opclass, lists);
	INSERT INTO lfp_builds VALUES (label || col || ' ' || opclass || ' ' || lists,
								   full_search, lfp_pages('lfp_idx'));
	DROP INDEX lfp_idx;
END $$;
SELECT lfp_build('', c, o, l, f)
  FROM (VALUES ('v48'), ('v37')) cols(c),
	   (VALUES ('real_l2_ops'), ('real_ip_ops'), ('real_cosine_ops')) ops(o),
	   (VALUES (32), (45)) lists(l),
	   (VALUES (true), (false)) fs(f);
-- parallel workers reading the table a second time assign in batches of
-- their own
SET max_parallel_maintenance_workers = 2;
SET min_parallel_table_scan_size = 0;
SET maintenance_work_mem = '1MB';
SELECT lfp_build('parallel ', 'v48', 'real_l2_ops', 45, f) FROM (VALUES (true), (false)) fs(f);
RESET max_parallel_maintenance_workers;
RESET min_parallel_table_scan_size;
RESET maintenance_work_mem;
SELECT f.idx, o.pages = f.pages AS same_pages
  FROM lfp_builds f JOIN lfp_builds o ON o.idx = f.idx AND NOT o.full_search
 WHERE f.full_search
 ORDER BY f.idx;
DROP TABLE lfp, lfp_builds;
DROP FUNCTION lfp_build(text, text, text, int, bool), lfp_pages(regclass);
DROP EXTENSION pageinspect;
