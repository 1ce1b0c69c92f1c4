-- Blocks that cross page boundaries (docs/FORMAT.md): at these dimensions a
-- 32-lane block is larger than a page, and the scan scores each page's part
-- of it where it lies.  Placements covered: a boundary inside the block
-- header, inside the codes between two groups and cutting a group (3 bits:
-- 12-byte groups; 4 bits after an IVF list area of 8 mod 16 bytes), and
-- blocks starting exactly at a page start (991-d at 4 bits: 16,320-byte
-- blocks, two pages each).  Checks: the index answers what a sequential
-- scan does when every row is re-ranked; the codes-only answer (estimates
-- alone pick the rows) is the same from a flat index and from a one-list
-- IVF index on the same codes, whose blocks sit at other offsets and so
-- cross pages elsewhere; turbo_verify is clean.

CREATE TABLE pc (id int PRIMARY KEY, d int, v real[]);
SELECT setseed(0.25);
INSERT INTO pc
	SELECT d * 10000 + i, d,
		(SELECT array_agg((random() - 0.5)::real) FROM generate_series(1, d))
	FROM (VALUES (768), (991), (1002), (1536)) AS dims(d), generate_series(1, 800) i
	ORDER BY d, i;
-- queries: 8 rows of each dimension, moved a little
CREATE TABLE pcq AS
	SELECT d, id AS qid, (SELECT array_agg(x + 0.01::real) FROM unnest(v) x) AS q
	FROM pc WHERE id % 100 = 7;

-- the ids a scan returns for each of the first nq queries of dimension dd,
-- in order
CREATE FUNCTION pcids(dd int, k int, via_index bool, nq int DEFAULT 8) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	r text := '';
	qq real[];
	ids int[];
BEGIN
	PERFORM set_config('enable_seqscan', CASE WHEN via_index THEN 'off' ELSE 'on' END, true);
	PERFORM set_config('enable_indexscan', CASE WHEN via_index THEN 'on' ELSE 'off' END, true);
	PERFORM set_config('enable_bitmapscan', 'off', true);
	FOR qq IN SELECT q FROM pcq WHERE d = dd ORDER BY qid LIMIT nq LOOP
		EXECUTE format('SELECT array_agg(id) FROM (SELECT id FROM pc WHERE d = %s ORDER BY v %s $1 LIMIT %s) s',
					   dd, CASE current_setting('pc.metric') WHEN 'l2' THEN '<->' ELSE '<=>' END, k)
			INTO ids USING qq;
		r := r || ids::text || ';';
	END LOOP;
	RETURN r;
END $$;

-- flat against one list, codes only; then both against exact order
CREATE FUNCTION pccheck(dd int, nbits int, metric_name text) RETURNS TABLE (
	dim int, bits int, metric text, codes_same bool, flat_exact bool, ivf_exact bool,
	verify_clean bool) LANGUAGE plpgsql AS $$
DECLARE
	ops text := CASE metric_name WHEN 'l2' THEN 'real_l2_ops' ELSE 'real_cosine_ops' END;
	flat text;
	one text;
BEGIN
	PERFORM set_config('pc.metric', metric_name, true);
	EXECUTE format('CREATE INDEX pc_flat ON pc USING turbo (v %s) WITH (bits = %s) WHERE d = %s',
				   ops, nbits, dd);
	PERFORM set_config('turbovec.candidates', '40', true);
	flat := pcids(dd, 40, true);
	EXECUTE 'DROP INDEX pc_flat';
	EXECUTE format('CREATE INDEX pc_one ON pc USING turbo (v %s) WITH (bits = %s, lists = 1, residual = off) WHERE d = %s',
				   ops, nbits, dd);
	one := pcids(dd, 40, true);
	dim := dd;
	bits := nbits;
	metric := metric_name;
	codes_same := (flat = one);
	PERFORM set_config('turbovec.candidates', '800', true);
	ivf_exact := (pcids(dd, 10, true, 3) = pcids(dd, 10, false, 3));
	verify_clean := NOT EXISTS (SELECT FROM turbo_verify('pc_one'));
	EXECUTE 'DROP INDEX pc_one';
	EXECUTE format('CREATE INDEX pc_flat ON pc USING turbo (v %s) WITH (bits = %s) WHERE d = %s',
				   ops, nbits, dd);
	flat_exact := (pcids(dd, 10, true, 3) = pcids(dd, 10, false, 3));
	verify_clean := verify_clean AND NOT EXISTS (SELECT FROM turbo_verify('pc_flat'));
	EXECUTE 'DROP INDEX pc_flat';
	RETURN NEXT;
END $$;

SELECT * FROM pccheck(768, 4, 'cosine');
SELECT * FROM pccheck(991, 4, 'l2');
SELECT * FROM pccheck(1002, 4, 'cosine');
SELECT * FROM pccheck(1536, 3, 'l2');

-- an IVF index with residual codes over several lists, every list probed
SET turbovec.probes = 3;
SET turbovec.candidates = 800;
SET pc.metric = 'cosine';
CREATE INDEX pc_ivf ON pc USING turbo (v real_cosine_ops) WITH (lists = 3) WHERE d = 1536;
SELECT pcids(1536, 10, true, 3) = pcids(1536, 10, false, 3) AS ivf_residual_exact;
SELECT count(*) AS verify_problems FROM turbo_verify('pc_ivf');
-- pages pinned through the backend's buffer hints count as hits in the
-- statistics, as ReadBuffer's would: three scans of every list hit every
-- data page at least three times
SET turbovec.candidates = 10;
SELECT pg_stat_reset_single_table_counters('pc_ivf'::regclass);
SELECT pcids(1536, 10, true) <> '' AS scanned, pcids(1536, 10, true) <> '' AS scanned,
	pcids(1536, 10, true) <> '' AS scanned;
SELECT pg_stat_force_next_flush();
SELECT idx_blks_hit >= 3 * 8 * (pg_relation_size('pc_ivf') / current_setting('block_size')::int - 1)
	AS hits_counted
	FROM pg_statio_user_indexes WHERE indexrelname = 'pc_ivf';
RESET turbovec.probes;
RESET turbovec.candidates;
DROP TABLE pc, pcq;
DROP FUNCTION pcids(int, int, bool, int);
DROP FUNCTION pccheck(int, int, text);
