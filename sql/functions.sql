-- distance functions and operators on real[]

SELECT l2_distance('{0,0}', '{3,4}');
SELECT '{0,0}'::real[] <-> '{3,4}';
SELECT inner_product('{1,2,3}', '{4,5,6}');
SELECT negative_inner_product('{1,2,3}', '{4,5,6}');
SELECT '{1,2,3}'::real[] <#> '{4,5,6}';
SELECT cosine_distance('{1,0}', '{0,1}');
SELECT cosine_distance('{1,1}', '{2,2}');
SELECT cosine_distance('{1,1}', '{-1,-1}');
SELECT '{1,0}'::real[] <=> '{1,1}';
SELECT vector_norm('{3,4}');
SELECT vector_norm('{0,0,0}');

-- cosine distance to a zero vector is NaN (as in pgvector), which sorts last
SELECT cosine_distance('{0,0}', '{1,1}');
SELECT cosine_distance('{1,1}', '{0,0}');

-- STRICT: NULL in, NULL out
SELECT l2_distance(NULL, '{1}') IS NULL AS is_null;
SELECT vector_norm(NULL) IS NULL AS is_null;

-- any dimension from 1 to 16000
SELECT l2_distance('{1}', '{2}');
SELECT vector_norm(array_fill(1::real, ARRAY[16000]));

-- bad input
SELECT l2_distance('{1,2}', '{1,2,3}');
SELECT '{1,2}'::real[] <=> '{1,2,3}';
SELECT l2_distance('{}', '{}');
SELECT vector_norm('{}');
SELECT vector_norm(array_fill(1::real, ARRAY[16001]));
SELECT l2_distance('{1,NULL}', '{1,2}');
SELECT inner_product('{{1,2},{3,4}}', '{{1,2},{3,4}}');
SELECT l2_distance('{NaN,1}', '{1,2}');
SELECT l2_distance('{1,2}', '{1,Infinity}');
SELECT cosine_distance('{-Infinity,2}', '{1,2}');
