-- bad input to a turbo index: each is an ERROR naming the problem

CREATE TABLE e (id int, v real[]);
CREATE INDEX e_idx ON e USING turbo (v real_l2_ops);

-- the first vector fixes the dimension of an empty index
INSERT INTO e VALUES (1, '{1,2,3}');
SELECT dim FROM turbo_index_info('e_idx');
INSERT INTO e VALUES (2, '{1,2}');
INSERT INTO e VALUES (3, '{1,2,3,4}');
INSERT INTO e VALUES (4, '{}');
INSERT INTO e VALUES (5, '{1,NULL,3}');
INSERT INTO e VALUES (6, '{{1,2,3},{4,5,6}}');
INSERT INTO e VALUES (7, '{NaN,1,2}');
INSERT INTO e VALUES (8, '{1,Infinity,2}');
INSERT INTO e VALUES (9, '{1,-Infinity,2}');
-- elements near the float4 limit: the norm would overflow the codes' factors
INSERT INTO e VALUES (11, '{3e38,1,1}');
SET enable_seqscan = off;
SELECT id FROM e ORDER BY v <-> '{3e38,3e38,1}' LIMIT 1;
-- near the limit, where the cheap bound (sqrt(dim) * max |x[i]|) does not
-- decide and the norm does: just past it, and just within it
INSERT INTO e VALUES (12, '{6e17,6e17,6e17}');
SELECT count(*) FROM (SELECT id FROM e ORDER BY v <-> '{5.7e17,5.7e17,5.7e17}' LIMIT 1) s;
RESET enable_seqscan;
-- NULL vectors are fine: not indexed
INSERT INTO e VALUES (10, NULL);
SELECT count(*) AS rows, (SELECT live_rows FROM turbo_index_info('e_idx')) AS indexed FROM e;

-- a query of another dimension, or with bad elements
SET enable_seqscan = off;
SELECT id FROM e ORDER BY v <-> '{1,2}' LIMIT 1;
SELECT id FROM e ORDER BY v <-> '{1,NULL,3}' LIMIT 1;
SELECT id FROM e ORDER BY v <-> '{1,NaN,3}' LIMIT 1;
SELECT id FROM e ORDER BY v <-> '{{1,2,3}}' LIMIT 1;
SELECT id FROM e ORDER BY v <-> '{1,2,3}' LIMIT 1;
RESET enable_seqscan;

-- a table whose rows disagree cannot be indexed
CREATE TABLE mixed (v real[]);
INSERT INTO mixed VALUES ('{1,2}'), ('{1,2,3}');
CREATE INDEX ON mixed USING turbo (v real_l2_ops);
DROP TABLE mixed;
CREATE TABLE toolong (v real[]);
INSERT INTO toolong VALUES (array_fill(1::real, ARRAY[16001]));
CREATE INDEX ON toolong USING turbo (v real_l2_ops);
DROP TABLE toolong;

-- reloptions
CREATE INDEX ON e USING turbo (v real_l2_ops) WITH (bits = 1);
CREATE INDEX ON e USING turbo (v real_l2_ops) WITH (bits = 5);
CREATE INDEX ON e USING turbo (v real_l2_ops) WITH (bits = 'four');
CREATE INDEX ON e USING turbo (v real_l2_ops) WITH (lists = -1);
CREATE INDEX ON e USING turbo (v real_l2_ops) WITH (lists = 32769);
CREATE INDEX ON e USING turbo (v real_l2_ops) WITH (probes = 4);
CREATE INDEX e_b3 ON e USING turbo (v real_l2_ops) WITH (bits = 3);
SELECT bits FROM turbo_index_info('e_b3');
ALTER INDEX e_b3 SET (bits = 9);
DROP INDEX e_b3;

-- GUCs
SHOW turbovec.candidates;
SET turbovec.candidates = 0;
SET turbovec.candidates = 100001;
SET turbovec.candidates = 'many';
SET turbovec.candidates = 1;
SHOW turbovec.candidates;
RESET turbovec.candidates;
SHOW turbovec.probes;
SET turbovec.probes = -1;
SET turbovec.probes = 32769;
SET turbovec.probes = 32768;
RESET turbovec.probes;
SET turbovec.no_such_setting = 1;

-- unsupported shapes
CREATE INDEX ON e USING turbo (v real_l2_ops, id);
CREATE INDEX ON e USING turbo (id);
CREATE UNIQUE INDEX ON e USING turbo (v real_l2_ops);
CREATE INDEX ON e USING turbo (v);

-- the encoder checks its arguments
SELECT turbo_encode('{1,2}', 1);
SELECT turbo_encode('{1,NaN}');
-- a bad element is named wherever it lies in a long vector (checked in
-- chunks of 8): first in a chunk, inside one, and in the tail past the last
-- full chunk
SELECT (array_fill(1::real, ARRAY[8]) || '-Infinity'::real || array_fill(1::real, ARRAY[11]))
	<-> array_fill(1::real, ARRAY[20]);
SELECT array_fill(1::real, ARRAY[20])
	<-> (array_fill(1::real, ARRAY[12]) || 'NaN'::real || array_fill(1::real, ARRAY[7]));
SELECT turbo_encode(array_fill(2::real, ARRAY[18]) || 'Infinity'::real);
SELECT (array_fill(1::real, ARRAY[19]) || 'Infinity'::real || 'NaN'::real)
	<-> array_fill(1::real, ARRAY[21]);
SELECT turbo_decode('\x00', 3);
SELECT turbo_decode('\x00', 0);
SELECT turbo_decode('\x00', 16001);

-- inspection functions want a turbo index
SELECT * FROM turbo_verify('e');
CREATE INDEX e_btree ON e (id);
SELECT * FROM turbo_verify('e_btree');
SELECT * FROM turbo_index_info('e_btree');

-- the SQLSTATE of each class of bad input
CREATE FUNCTION sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END $$;
SELECT stmt, sqlstate_of(stmt) FROM (VALUES
	($$INSERT INTO e VALUES (2, '{1,2}')$$),
	($$INSERT INTO e VALUES (4, '{}')$$),
	($$INSERT INTO e VALUES (5, '{1,NULL,3}')$$),
	($$INSERT INTO e VALUES (6, '{{1,2,3},{4,5,6}}')$$),
	($$INSERT INTO e VALUES (7, '{NaN,1,2}')$$),
	($$INSERT INTO e VALUES (8, '{1,Infinity,2}')$$),
	($$INSERT INTO e VALUES (11, '{3e38,1,1}')$$),
	($$SELECT vector_norm(array_fill(1::real, ARRAY[16001]))$$),
	($$SELECT l2_distance('{1,2}', '{1,2,3}')$$),
	($$SELECT turbo_encode('{1,2}', 7)$$),
	($$CREATE INDEX ON e USING turbo (v real_l2_ops) WITH (bits = 1)$$),
	($$SET turbovec.candidates = 0$$),
	($$CREATE INDEX ON e USING turbo (v real_l2_ops, id)$$),
	($$SELECT * FROM turbo_verify('e_btree')$$)
) AS t(stmt);
DROP FUNCTION sqlstate_of(text);

DROP TABLE e;
