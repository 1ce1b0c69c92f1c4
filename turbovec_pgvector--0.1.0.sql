-- turbovec_pgvector 0.1.0: turbo operator classes for pgvector's vector.
-- Distances are pgvector's own functions and operators; support function 3
-- (pgvector's cast to real[]) hands the index the floats to encode.

\echo Use "CREATE EXTENSION turbovec_pgvector" to load this file. \quit

CREATE OPERATOR CLASS vector_l2_ops
	FOR TYPE vector USING turbo AS
	OPERATOR 1 <-> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 l2_distance(vector, vector),
	FUNCTION 2 turbo_metric_l2(internal),
	FUNCTION 3 vector_to_float4(vector, integer, boolean);

CREATE OPERATOR CLASS vector_ip_ops
	FOR TYPE vector USING turbo AS
	OPERATOR 1 <#> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 vector_negative_inner_product(vector, vector),
	FUNCTION 2 turbo_metric_ip(internal),
	FUNCTION 3 vector_to_float4(vector, integer, boolean);

CREATE OPERATOR CLASS vector_cosine_ops
	FOR TYPE vector USING turbo AS
	OPERATOR 1 <=> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 cosine_distance(vector, vector),
	FUNCTION 2 turbo_metric_cosine(internal),
	FUNCTION 3 vector_to_float4(vector, integer, boolean);
