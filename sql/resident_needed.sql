-- turbo_resident_needed() and turbo_indexes.resident_bytes_needed: the
-- shared memory a resident copy would take (docs/RESIDENT.md), computed from
-- the metapage whether or not the server is preloaded.  100 rows of 16
-- dimensions, flat, 4 bits: 4 blocks of 720 bytes, room for 20 blocks
-- (4 + at least 16), so 56 bytes of copy header + 20 * 720 bytes of
-- stream + 640 slots * 12 bytes of refinement codes (a float and 8 bytes
-- of nibbles) = 22136.
CREATE TABLE rn (id int, v real[]);
INSERT INTO rn SELECT i, array_fill((i % 7 + 1)::real, ARRAY[16]) FROM generate_series(1, 100) i;
CREATE INDEX rn_v ON rn USING turbo (v real_l2_ops);
SELECT turbo_resident_needed('rn_v');
SELECT resident_bytes_needed FROM turbo_indexes WHERE index = 'rn_v'::regclass;
-- 768 dimensions: d + 18.5 bytes a row with the stream, then headroom
TRUNCATE rn;
INSERT INTO rn SELECT i, array_fill((i % 7 + 1)::real, ARRAY[768]) FROM generate_series(1, 3200) i;
SELECT turbo_resident_needed('rn_v') AS bytes,
       round(turbo_resident_needed('rn_v') / (3200 * 1.25), 1) AS per_row_with_headroom;
-- no SELECT on the table: NULL, as turbo_index_layout
CREATE ROLE rn_nobody;
SET ROLE rn_nobody;
SELECT turbo_resident_needed('rn_v') IS NULL AS hidden;
RESET ROLE;
DROP ROLE rn_nobody;
SELECT turbo_resident_needed('rn'::regclass);
DROP TABLE rn;
-- the view filtered by table, when the table also has indexes of other
-- access methods: only turbo indexes reach turbo_index_layout()
CREATE TABLE rn2 (id int PRIMARY KEY, v real[]);
CREATE INDEX rn2_id_btree ON rn2 (id, v);
INSERT INTO rn2 SELECT i, ARRAY[i, 1, 2]::real[] FROM generate_series(1, 50) i;
CREATE INDEX rn2_v ON rn2 USING turbo (v real_l2_ops);
SELECT index, dim, rows FROM turbo_indexes WHERE "table" = 'rn2'::regclass;
SELECT count(*) FROM turbo_indexes WHERE "table" = 'rn2'::regclass AND dim = 3;
DROP TABLE rn2;
