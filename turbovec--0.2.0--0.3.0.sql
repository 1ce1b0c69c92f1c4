-- turbovec 0.2.0 -> 0.3.0 (ALTER EXTENSION turbovec UPDATE)
--
-- The page format is unchanged: indexes built by 0.2.0 are read as they
-- are, no REINDEX needed.

\echo Use "ALTER EXTENSION turbovec UPDATE TO '0.3.0'" to load this file. \quit
