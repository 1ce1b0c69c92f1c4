-- turbovec 0.1.0 -> 0.2.0 (ALTER EXTENSION turbovec UPDATE)
--
-- The page and .tv formats are unchanged: indexes built by 0.1.0 are read
-- as they are, no REINDEX needed.

\echo Use "ALTER EXTENSION turbovec UPDATE TO '0.2.0'" to load this file. \quit
