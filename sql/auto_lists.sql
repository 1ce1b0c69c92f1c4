-- Without the lists reloption, CREATE INDEX chooses the lists from the
-- vectors it indexes and their dimension (README, TvAutoLists): flat below
-- 50,000 vectors, about sqrt(rows) lists up to 128 dimensions.  lists = 0
-- is an explicit flat index.

CREATE TABLE al (id int PRIMARY KEY, v real[]);
INSERT INTO al
	SELECT i, ARRAY[sin(i), cos(i * 1.3), (i % 97) / 97.0]::real[]
	FROM generate_series(1, 49999) i;

-- 49,999 vectors: flat
CREATE INDEX al_l2 ON al USING turbo (v real_l2_ops);
SELECT lists, live_rows FROM turbo_index_info('al_l2');

-- 50,000 vectors: round(sqrt(50000)) = 224 lists
INSERT INTO al VALUES (50000, '{0,0,0}');
REINDEX INDEX al_l2;
SELECT lists, live_rows FROM turbo_index_info('al_l2');
SELECT * FROM turbo_verify('al_l2');

-- the count is of indexed vectors: cosine leaves out the zero vector
CREATE INDEX al_cos ON al USING turbo (v real_cosine_ops);
SELECT lists, live_rows FROM turbo_index_info('al_cos');

-- lists = 0 stays flat, whatever the table
CREATE INDEX al_flat ON al USING turbo (v real_l2_ops) WITH (lists = 0);
SELECT lists, live_rows FROM turbo_index_info('al_flat');
-- RESET makes it automatic again at the next build
ALTER INDEX al_flat RESET (lists);
REINDEX INDEX al_flat;
SELECT lists, live_rows FROM turbo_index_info('al_flat');
SELECT reloptions FROM pg_class WHERE relname = 'al_flat';

-- "not given" has no value a user can type
CREATE INDEX al_bad ON al USING turbo (v real_l2_ops) WITH (lists = -1);

-- the chosen lists answer like any IVF index
SET turbovec.probes = 224;
SET turbovec.candidates = 50;
SET enable_seqscan = off;
SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM al ORDER BY v <-> '{0.1,0.2,0.3}' LIMIT 5) s;
RESET enable_seqscan;
SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM al ORDER BY v <-> '{0.1,0.2,0.3}' LIMIT 5) s;
RESET turbovec.probes;
RESET turbovec.candidates;

DROP TABLE al;
