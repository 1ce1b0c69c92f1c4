-- recall@10 on a committed slice of real vectors: 3,000 GloVe-100 words
-- and 50 held-out query words (bench/datasets.py export-slice), against
-- exact answers computed here by a sequential scan

CREATE TABLE g (id int PRIMARY KEY, v real[]);
\copy g FROM 'sql/data/glove3k.data'
CREATE TABLE q AS SELECT id, v FROM g WHERE id > 3000;
DELETE FROM g WHERE id > 3000;
SELECT count(*) AS base, (SELECT count(*) FROM q) AS queries FROM g;

-- exact top 10 of every query
CREATE TABLE truth AS
	SELECT q.id AS qid, q.v AS qv,
		ARRAY(SELECT g.id FROM g ORDER BY g.v <=> q.v, g.id LIMIT 10) AS ids
	FROM q;

-- mean recall@10 of the index (the plan must use it)
CREATE FUNCTION recall() RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE r numeric;
BEGIN
	PERFORM set_config('enable_seqscan', 'off', true);
	SELECT avg((SELECT count(*) FROM unnest(found.ids) i WHERE i = ANY (truth.ids)) / 10.0)
		INTO r
		FROM truth
		JOIN LATERAL (SELECT ARRAY(SELECT g.id FROM g ORDER BY g.v <=> truth.qv LIMIT 10) AS ids) found ON true;
	RETURN r;
END $$;

CREATE INDEX g_cos ON g USING turbo (v real_cosine_ops);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT ARRAY(SELECT g.id FROM g ORDER BY g.v <=> truth.qv LIMIT 10) FROM truth;
RESET enable_seqscan;

-- at the default number of candidates
SHOW turbovec.candidates;
SELECT recall() >= 0.95 AS recall_at_default;
-- re-ranking only as many candidates as rows asked for: the codes alone
SET turbovec.candidates = 10;
SELECT recall() >= 0.80 AS recall_codes_only;
SET turbovec.candidates = 200;
SELECT recall() >= 0.99 AS recall_high;
RESET turbovec.candidates;

-- fewer bits cost recall at the same candidates, and more candidates buy it back
DROP INDEX g_cos;
CREATE INDEX g_cos2 ON g USING turbo (v real_cosine_ops) WITH (bits = 2);
SELECT recall() >= 0.95 AS recall_2bit_default;
SET turbovec.candidates = 400;
SELECT recall() >= 0.99 AS recall_2bit_high;
RESET turbovec.candidates;
DROP INDEX g_cos2;
CREATE INDEX g_cos3 ON g USING turbo (v real_cosine_ops) WITH (bits = 3);
SELECT recall() >= 0.95 AS recall_3bit_default;
DROP INDEX g_cos3;

DROP FUNCTION recall();
DROP TABLE g, q, truth;
