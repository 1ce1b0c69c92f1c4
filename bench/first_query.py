#!/usr/bin/python3
"""turbovec benchmark: the first query of a backend, after a restart and on a
warm server, against the steady-state latency of one connection.

Against a running server with turbovec preloaded (bench/server.sh with
TURBOVEC_PRELOAD=turbovec; PG* env or --host/--port/--dbname/--user):

  1. load the data set's table if it is missing (as run.py does), build
     `<table>_first` USING turbo (v real_<metric>_ops) WITH (bits, lists)
     if it is missing, wait for its resident copy, CHECKPOINT and wait for
     its .tv snapshot
  2. steady: one connection, --warmup untimed queries, then --steady
     queries; p50 / p99
  3. fresh: --fresh times on the warm server, a new connection (not timed)
     and its first query, then its second
  4. restart: --restarts times `bench/server.sh restart` (--restart-cmd),
     a new connection (not timed) and its first query, then its second;
     whether the copy was ready at the first query
  5. baseline: the same for `SELECT id FROM <table> LIMIT 10` (a sequential
     scan that touches no turbo code), fresh and after a restart: what a
     new backend spends on PostgreSQL's own set-up (catalog, relcache)

Every query is sent as plain SQL text (no PREPARE: a first query cannot be
prepared), `SELECT id FROM t ORDER BY v <op> '<literal>' LIMIT 10`, a
different held-out vector each time.  Times are client-side (execute +
fetch, `*_ms`) and, when the server runs on this machine, the CPU time the
backend spent on the query (`cpu_*_ms`, from /proc/PID/schedstat), which
a busy machine disturbs much less than the wall clock.  One JSON line per
measurement on stdout, notes on stderr.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets  # noqa: E402

OPS = {"cosine": ("<=>", "real_cosine_ops"),
       "l2": ("<->", "real_l2_ops"),
       "ip": ("<#>", "real_ip_ops")}
HERE = os.path.dirname(os.path.abspath(__file__))


def note(msg):
    print("[first_query] " + msg, file=sys.stderr, flush=True)


def scalar(cur, sql, args=None):
    cur.execute(sql, args)
    row = cur.fetchone()
    return row[0] if row else None


def backend_cpu_ns(pid):
    """CPU time the backend has run so far (ns), from /proc/PID/schedstat;
    None when the server is not on this machine."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def timed(cur, sql):
    """(client-side ms, backend CPU ms or None) of one query"""
    pid = cur.connection.get_backend_pid()
    c0 = backend_cpu_ns(pid)
    t0 = time.perf_counter()
    cur.execute(sql)
    cur.fetchall()
    wall = (time.perf_counter() - t0) * 1000.0
    c1 = backend_cpu_ns(pid)
    return wall, (c1 - c0) / 1e6 if c0 is not None and c1 is not None else None


def summary(samples):
    ms = sorted(w for w, _ in samples)
    out = {"n": len(ms), "p50_ms": round(statistics.median(ms), 3),
           "min_ms": round(ms[0], 3), "max_ms": round(ms[-1], 3)}
    cpu = sorted(c for _, c in samples if c is not None)
    if cpu:
        out.update({"cpu_p50_ms": round(statistics.median(cpu), 3),
                    "cpu_min_ms": round(cpu[0], 3), "cpu_max_ms": round(cpu[-1], 3)})
    return out


def emit(rec):
    print(json.dumps(rec), flush=True)


def connect_retry(dsn, secs=60):
    import psycopg2
    deadline = time.time() + secs
    while True:
        try:
            return datasets.connect(dsn)
        except psycopg2.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", nargs="?", default="glove100")
    ap.add_argument("--lists", type=int, default=580)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--table")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--steady", type=int, default=500)
    ap.add_argument("--fresh", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--restart-cmd", default="bash %s restart" % os.path.join(HERE, "server.sh"),
                    help="shell command restarting the server (default: bench/server.sh restart)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait after a restart before connecting")
    ap.add_argument("--host")
    ap.add_argument("--port")
    ap.add_argument("--dbname")
    ap.add_argument("--user")
    a = ap.parse_args(argv)
    dsn = " ".join("%s=%s" % (k, v) for k, v in (("host", a.host), ("port", a.port),
                                                  ("dbname", a.dbname), ("user", a.user)) if v)

    ds = datasets.get(a.dataset)
    table = a.table or a.dataset
    index = "%s_first" % table
    op, opclass = OPS[ds.metric]
    literals = [datasets.array_literal(q) for q in ds.queries]
    qi = [0]

    def knn_sql():
        lit = literals[qi[0] % len(literals)]
        qi[0] += 1
        return "SELECT id FROM %s ORDER BY v %s '%s' LIMIT 10" % (table, op, lit)

    plain_sql = "SELECT id FROM %s LIMIT 10" % table

    conn = datasets.connect(dsn)
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS turbovec")
    if scalar(cur, "SELECT to_regclass(%s) IS NOT NULL", (table,)) is not True or \
            scalar(cur, "SELECT count(*) FROM %s" % table) != ds.rows:
        note("loading %s into %s" % (a.dataset, table))
        datasets.load_table(conn, ds, table)
        cur.execute("VACUUM ANALYZE %s" % table)
    if scalar(cur, "SELECT to_regclass(%s) IS NOT NULL", (index,)) is not True:
        with_ = "bits = %d" % a.bits + (", lists = %d" % a.lists if a.lists else "")
        note("building %s (%s)" % (index, with_))
        cur.execute("CREATE INDEX %s ON %s USING turbo (v %s) WITH (%s)"
                    % (index, table, opclass, with_))
    if not scalar(cur, "SELECT turbo_wait_ready(%s, 300000)", (index,)):
        sys.exit("%s: resident copy not ready (is turbovec preloaded?)" % index)
    cur.execute("CHECKPOINT")
    deadline = time.time() + 120
    while scalar(cur, "SELECT persisted_snapshot_time IS NOT NULL FROM turbo_indexes"
                      " WHERE index = %s::regclass", (index,)) is not True:
        if time.time() > deadline:
            sys.exit("%s: no snapshot after CHECKPOINT (turbovec.snapshots off?)" % index)
        time.sleep(0.2)
    explain = "\n".join(r[0] for r in (cur.execute("EXPLAIN " + knn_sql()) or cur.fetchall()))
    if index not in explain:
        sys.exit("the query does not use %s:\n%s" % (index, explain))
    common = {"dataset": a.dataset, "rows": ds.rows, "dim": ds.dim, "lists": a.lists,
              "bits": a.bits,
              "preload": scalar(cur, "SELECT current_setting('shared_preload_libraries')"),
              "probes": scalar(cur, "SELECT current_setting('turbovec.probes')"),
              "candidates": scalar(cur, "SELECT current_setting('turbovec.candidates')")}

    # steady state in one connection
    for _ in range(a.warmup):
        timed(cur, knn_sql())
    steady = [timed(cur, knn_sql()) for _ in range(a.steady)]
    plain_steady = [timed(cur, plain_sql) for _ in range(a.steady)]
    s = summary(steady)
    s["p99_ms"] = round(sorted(w for w, _ in steady)[int(0.99 * (len(steady) - 1))], 3)
    emit(dict(common, measure="steady", query="knn", **s))
    emit(dict(common, measure="steady", query="plain", **summary(plain_steady)))
    conn.close()

    def first_two(sql_fn):
        c = connect_retry(dsn)
        k = c.cursor()
        first = timed(k, sql_fn())
        second = timed(k, sql_fn())
        ready = scalar(k, "SELECT ready FROM turbo_indexes WHERE index = %s::regclass", (index,))
        c.close()
        return first, second, ready

    # a new backend on a warm server
    for query, fn in (("knn", knn_sql), ("plain", lambda: plain_sql)):
        firsts, seconds = [], []
        for _ in range(a.fresh):
            f, s2, _ = first_two(fn)
            firsts.append(f)
            seconds.append(s2)
        emit(dict(common, measure="fresh first", query=query, **summary(firsts)))
        emit(dict(common, measure="fresh second", query=query, **summary(seconds)))

    # the first backend after a restart
    for query, fn in (("knn", knn_sql), ("plain", lambda: plain_sql)):
        firsts, seconds, ready = [], [], []
        for _ in range(a.restarts):
            subprocess.run(a.restart_cmd, shell=True, check=True,
                           stdout=subprocess.DEVNULL)
            if a.settle:
                time.sleep(a.settle)
            f, s2, r = first_two(fn)
            firsts.append(f)
            seconds.append(s2)
            ready.append(bool(r))
        emit(dict(common, measure="restart first", query=query, ready_after=ready,
                  **summary(firsts)))
        emit(dict(common, measure="restart second", query=query, **summary(seconds)))


if __name__ == "__main__":
    main()
