-- golden codes: the same vector gives the same bytes on every run and
-- machine (seed 0x7155_8807_FED4_2913).  A change here changes every index.

SELECT bits, turbo_encode('{1,2,3,4,5,6,7,8}', bits) AS code
	FROM generate_series(2, 4) bits;
SELECT bits, turbo_encode(ARRAY[0.25, -1.5, 3, 0, 0.125, -7, 2.5]::real[], bits) AS code
	FROM generate_series(2, 4) bits;
SELECT bits, md5(turbo_encode(v, bits)) AS code_md5
	FROM (SELECT array_agg(sin(i * 0.37)::real ORDER BY i) AS v FROM generate_series(1, 100) i) s,
		 generate_series(2, 4) bits;
SELECT bits, md5(turbo_encode(v, bits)) AS code_md5
	FROM (SELECT array_agg(cos(i * 1.1)::real ORDER BY i) AS v FROM generate_series(1, 784) i) s,
		 generate_series(2, 4) bits;
-- one dimension: a code is the sign of the vector
SELECT turbo_encode('{5}', 4), turbo_encode('{-5}', 4);

-- code size is ceil(dim * bits / 8)
SELECT bits, length(turbo_encode(array_fill(1::real, ARRAY[101]), bits)) AS bytes
	FROM generate_series(2, 4) bits;

-- scale does not change the code (codes are of the direction)
SELECT turbo_encode('{1,2,3,4,5,6,7,8}') = turbo_encode('{10,20,30,40,50,60,70,80}') AS scale_free;
-- another seed, another rotation
SELECT turbo_encode('{1,2,3,4,5,6,7,8}', 4, 42) <> turbo_encode('{1,2,3,4,5,6,7,8}', 4) AS seed_matters;
-- the zero vector has the all-zero code
SELECT turbo_encode('{0,0,0}');

-- decode gives back an approximation of the unit vector
SELECT turbo_decode(turbo_encode('{1,2,3,4,5,6,7,8}'), 8);
SELECT bits, round(cosine_distance(turbo_decode(turbo_encode(v, bits), 100, bits), v)::numeric, 2) < 0.1 AS close
	FROM (SELECT array_agg(sin(i * 0.37)::real ORDER BY i) AS v FROM generate_series(1, 100) i) s,
		 generate_series(2, 4) bits;
-- more bits, smaller error
SELECT (SELECT cosine_distance(turbo_decode(turbo_encode(v, 4), 100, 4), v)) <
	   (SELECT cosine_distance(turbo_decode(turbo_encode(v, 2), 100, 2), v)) AS four_beats_two
	FROM (SELECT array_agg(sin(i * 0.37)::real ORDER BY i) AS v FROM generate_series(1, 100) i) s;

-- the kernel in use is reported; its answers equal the scalar reference's
-- (test/codec checks them bit for bit)
SELECT turbo_kernel() IN ('avx2', 'scalar') AS known_kernel;
