#!/usr/bin/python3
"""turbovec on one node versus a Citus cluster: recall@10 and latency.

Against the coordinator of a Citus cluster (bench/citus.sh; PG* env or
--host/--port/--dbname/--user), for one data set (default glove100, see
bench/datasets.py):

  1. load the base vectors into a local table on the coordinator
     (`glove100`, the one-node case) and into a distributed table with the
     same rows (`glove100_dist`, distributed by id over --shards shards,
     spread over the workers);
  2. build the same turbo index on both (bits 4, flat or --lists N) and
     wait until every resident copy is ready (the coordinator's, and each
     shard's through run_command_on_workers);
  3. for each turbovec.candidates value (--candidates), set it with
     ALTER DATABASE ... SET, which Citus propagates to the workers, so both
     cases run with the same setting in every scan; then on a new
     connection run the held-out queries one at a time through
       PREPARE q(real[]) AS SELECT id FROM <table> ORDER BY v <op> $1 LIMIT 10
     on each table, after a warm-up, and measure recall@10, QPS and p50/p99
     latency as bench/run.py does.

One JSON line per measurement on stdout (run.py's fields plus "layout":
"one node" or "citus", and "shards").  The workers share this machine's
cores with the coordinator: the difference is the cost of coordination,
not a speed-up.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets  # noqa: E402
import run  # noqa: E402


def wait_shards_ready(cur, index, timeout_s=600):
    """Every shard index of `index` on every worker ready."""
    deadline = time.time() + timeout_s
    sql = ("SELECT coalesce(bool_and(turbo_wait_ready(c.oid, 1000)), false) FROM pg_class c "
           "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'turbo' "
           "AND c.relname ~ '^%s_[0-9]+$'" % index)
    while time.time() < deadline:
        cur.execute("SELECT bool_and(success AND result = 't') FROM run_command_on_workers(%s)",
                    (sql,))
        if cur.fetchone()[0]:
            return
    sys.exit("FATAL: shard indexes of %s not ready after %d s" % (index, timeout_s))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", nargs="?", default="glove100")
    ap.add_argument("--candidates", default="40,100",
                    help="comma list of turbovec.candidates values (default 40,100)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--lists", type=int, default=0)
    ap.add_argument("--slice", type=int)
    ap.add_argument("--queries", type=int)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--host")
    ap.add_argument("--port")
    ap.add_argument("--dbname")
    ap.add_argument("--user")
    a = ap.parse_args(argv)

    dsn = run.dsn_from_args(a)
    conn = datasets.connect(dsn)
    cur = conn.cursor()
    ds = datasets.get(a.dataset, a.slice)
    op, opclass = run.OPS[ds.metric]
    nq = min(a.queries or len(ds.queries), len(ds.queries))
    literals = [datasets.array_literal(q) for q in ds.queries[:nq]]
    gt = ds.gt[:nq]
    local = a.dataset if not a.slice else "%s_%d" % (a.dataset, a.slice)
    dist = local + "_dist"
    db = run.scalar(cur, "SELECT current_database()")

    cur.execute("CREATE EXTENSION IF NOT EXISTS turbovec")
    if run.table_ready(cur, local, ds.rows, ds.dim):
        run.note("reusing %s" % local)
    else:
        run.note("loading %d rows into %s" % (ds.rows, local))
        datasets.load_table(conn, ds, local)
        cur.execute("VACUUM ANALYZE %s" % local)
    if run.table_ready(cur, dist, ds.rows, ds.dim):
        run.note("reusing %s" % dist)
    else:
        run.note("distributing %s over %d shards as %s" % (local, a.shards, dist))
        t0 = time.time()
        cur.execute("DROP TABLE IF EXISTS %s" % dist)
        cur.execute("CREATE TABLE %s (id int PRIMARY KEY, v real[])" % dist)
        cur.execute("SET citus.shard_count = %d" % a.shards)
        cur.execute("SELECT create_distributed_table(%s, 'id')", (dist,))
        cur.execute("INSERT INTO %s SELECT id, v FROM %s" % (dist, local))
        cur.execute("VACUUM ANALYZE %s" % dist)
        run.note("distributed in %.1f s" % (time.time() - t0))
    cur.execute("SELECT nodeport, count(*) FROM citus_shards WHERE table_name = %s::regclass "
                "GROUP BY 1 ORDER BY 1", (dist,))
    run.note("shards per worker port: %s" % dict(cur.fetchall()))

    with_clause = "bits = 4, lists = %d" % a.lists
    build = {}
    for table in (local, dist):
        index = "%s_turbo" % table
        cur.execute("DROP INDEX IF EXISTS %s" % index)
        t0 = time.perf_counter()
        cur.execute("CREATE INDEX %s ON %s USING turbo (v %s) WITH (%s)"
                    % (index, table, opclass, with_clause))
        build[table] = time.perf_counter() - t0
        run.note("%s: CREATE INDEX %.2f s" % (table, build[table]))
    if run.scalar(cur, "SELECT turbo_wait_ready(%s, 600000)", (local + "_turbo",)) is not True:
        sys.exit("FATAL: %s_turbo not ready" % local)
    wait_shards_ready(cur, dist + "_turbo")
    run.note("every resident copy is ready")

    try:
        for val in run.parse_candidates(a.candidates):
            if val == "default":
                cur.execute("ALTER DATABASE %s RESET turbovec.candidates" % db)
            else:
                cur.execute("ALTER DATABASE %s SET turbovec.candidates = %d" % (db, val))
            for table, layout in ((local, "one node"), (dist, "citus")):
                # a new session: the database setting, on new worker connections too
                qconn = datasets.connect(dsn)
                qcur = qconn.cursor()
                value = int(run.scalar(qcur, "SHOW turbovec.candidates"))
                qcur.execute("PREPARE q(real[]) AS SELECT id FROM %s ORDER BY v %s $1 LIMIT 10"
                             % (table, op))
                stmt = "EXECUTE q(%s)" % qcur.mogrify("%s", (literals[0],)).decode()
                uses, plan = run.explain_uses(qcur, stmt, table + "_turbo")
                if not uses:
                    sys.exit("FATAL: %s does not use its index:\n%s" % (table, plan))
                results, lat, wall = run.run_queries(qconn, qcur, literals, min(a.warmup, nq), 60)
                rec = run.measurement(ds, "turbo", 4, build[table], None, "turbovec.candidates",
                                      value, results, lat, wall, gt, lists=a.lists)
                rec["layout"] = layout
                rec["shards"] = a.shards if layout == "citus" else 1
                print(json.dumps(rec), flush=True)
                run.note("%-8s %-8s candidates %-4d recall@10 %.4f  %.1f QPS  p50 %.3f ms  "
                         "p99 %.3f ms" % (layout, ds.name, value, rec["recall"], rec["qps"],
                                          rec["p50_ms"], rec["p99_ms"]))
                qconn.close()
    finally:
        cur.execute("ALTER DATABASE %s RESET turbovec.candidates" % db)


if __name__ == "__main__":
    main()
