#!/usr/bin/python3
"""turbovec benchmark: build time, index size, recall@10, QPS and latency.

For each data set (glove100, fmnist; see bench/datasets.py) against a running
server (PG* env or --host/--port/--dbname/--user; bench/server.sh starts one):

  1. load the table `(id int PRIMARY KEY, v real[])` with COPY, VACUUM ANALYZE
  2. time CREATE INDEX ... USING turbo (v real_<metric>_ops) WITH (bits = B)
     (plus `lists = N` with --lists N > 0: the IVF layout)
  3. read the index size (pg_relation_size)
  4. for each turbovec.probes value (--probes; default: the GUC default only)
     and, inside it, each turbovec.candidates value: run the 1,000 held-out
     queries, one client, one prepared statement
       PREPARE q(real[]) AS SELECT id FROM t ORDER BY v <op> $1 LIMIT 10
     after a short untimed warm-up, and measure recall@10 against the exact
     float64 ground truth, QPS (queries / wall time) and p50/p99 latency
     (execute + fetch, client side).  The query vector goes as a text
     literal, or with --protocol binary in the type's binary format.

One JSON line per measurement on stdout:
  {"dataset","index":"turbo","bits","build_s","index_mb","knob","value",
   "recall","qps","p50_ms","p99_ms","rows","dim","lists","probes","residual",
   "column","protocol"}
("value" is turbovec.candidates; "lists" is 0 for the flat layout; "probes" is
the turbovec.probes value in effect; "residual" is "on"/"off" for IVF;
"column" is "real[]", or "vector" for pgvector's indexes and --column vector;
"protocol" is how the query vectors were sent, --protocol text or binary.)
Progress and human-readable notes go to stderr, ending with the recall/QPS
frontier: for recall 0.90/0.95/0.99 the fastest (probes, candidates)
reaching it.  `run.py --summarize FILE...` prints
that frontier for saved JSON lines.

--exact measures the plain sequential scan instead (no index; a few queries;
recall should be 1.0).  --no-extension (with --exact) computes the distance
with a SQL expression, to check the data path on a server without turbovec.
"""

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets  # noqa: E402
import numpy as np  # noqa: E402

OPS = {"cosine": ("<=>", "real_cosine_ops"),
       "l2": ("<->", "real_l2_ops"),
       "ip": ("<#>", "real_ip_ops")}

# exact distances in plain SQL (for --exact --no-extension)
SQL_DIST = {
    "l2": "(SELECT sqrt(sum((a::float8 - b::float8) ^ 2)) FROM unnest(v, $1) u(a, b))",
    "cosine": "(SELECT 1 - sum(a::float8 * b) / (sqrt(sum(a::float8 * a)) * sqrt(sum(b::float8 * b)))"
              " FROM unnest(v, $1) u(a, b))",
    "ip": "(SELECT -sum(a::float8 * b) FROM unnest(v, $1) u(a, b))",
}

DEFAULT_CANDIDATES = "10,20,40,80,160,320,640"
FRONTIER_RECALLS = (0.90, 0.95, 0.99)


def note(msg):
    print("[run] " + msg, file=sys.stderr, flush=True)


def dsn_from_args(a):
    parts = []
    for key, val in (("host", a.host), ("port", a.port), ("dbname", a.dbname),
                     ("user", a.user)):
        if val:
            parts.append("%s=%s" % (key, val))
    return " ".join(parts)


def scalar(cur, sql, args=None):
    cur.execute(sql, args)
    row = cur.fetchone()
    return row[0] if row else None


def table_ready(cur, table, rows, dim, vector=False):
    """True when `table` exists with the expected row count and dimension
    (vector: a pgvector `vector` column, else real[])."""
    if scalar(cur, "SELECT to_regclass(%s) IS NOT NULL", (table,)) is not True:
        return False
    if scalar(cur, "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid"
                   " = %s::regclass AND attname = 'v'", (table,)) != (
                       "vector" if vector else "real[]"):
        return False
    if scalar(cur, "SELECT count(*) FROM %s" % table) != rows:
        return False
    dims = "vector_dims(v)" if vector else "array_length(v, 1)"
    return scalar(cur, "SELECT %s FROM %s LIMIT 1" % (dims, table)) == dim


def explain_uses(cur, stmt, index_name):
    """EXPLAIN the prepared statement; returns (uses_index, plan text)."""
    cur.execute("EXPLAIN " + stmt)
    plan = "\n".join(r[0] for r in cur.fetchall())
    plan = re.sub(r"'\{[^}]*\}'", "'{...}'", plan)
    return (index_name in plan and "Index" in plan), plan


class NotReady(Exception):
    pass


class QueryError(Exception):
    """A failed query of the binary path, with its SQLSTATE."""

    def __init__(self, pgcode, message):
        super().__init__(message)
        self.pgcode, self.pgerror = pgcode, message


class TextQueries:
    """--protocol text: EXECUTE q('literal') through psycopg2, the query
    vector sent as text and parsed by the server (the 768 floats of an
    embedding are about 0.1 ms of strtof and lexing a query)."""

    def __init__(self, conn, queries, vec):
        self.cur = conn.cursor()
        lits = [datasets.array_literal(q) for q in queries]
        self.params = ["[" + l[1:-1] + "]" for l in lits] if vec else lits

    def run(self, i):
        import psycopg2
        try:
            self.cur.execute("EXECUTE q(%s)", (self.params[i],))
        except psycopg2.Error as e:
            raise QueryError(e.pgcode, e.pgerror or str(e))
        return [r[0] for r in self.cur.fetchall()]


class BinaryQueries:
    """--protocol binary: the prepared statement q run with libpq's
    PQexecPrepared on psycopg2's own connection, the query vector sent in
    the type's binary format (the method of ann-benchmarks' pgvector
    module: binary parameters, prepared statements).  vector: int16 dim,
    int16 0, dim float4; real[]: the one-dimensional array header, then
    (int32 4, float4) per element; all big-endian."""

    def __init__(self, conn, queries, vec):
        import ctypes
        import ctypes.util
        import struct
        name = ctypes.util.find_library("pq")
        if not name:
            sys.exit("FATAL: --protocol binary needs libpq (libpq5)")
        pq = ctypes.CDLL(name)
        vp, cp, ip = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for fn, res, args in (
                ("PQexecPrepared", vp, [vp, cp, ip, ctypes.POINTER(cp),
                                        ctypes.POINTER(ip), ctypes.POINTER(ip), ip]),
                ("PQresultStatus", ip, [vp]), ("PQntuples", ip, [vp]),
                ("PQgetvalue", cp, [vp, ip, ip]), ("PQclear", None, [vp]),
                ("PQresultErrorField", cp, [vp, ip]),
                ("PQresultErrorMessage", cp, [vp])):
            f = getattr(pq, fn)
            f.restype, f.argtypes = res, args
        self.pq, self.pgconn = pq, vp(conn.pgconn_ptr)
        self.params = []
        for q in queries:
            q = np.asarray(q, dtype=">f4")
            if vec:
                self.params.append(struct.pack(">hh", len(q), 0) + q.tobytes())
            else:
                elems = np.empty(len(q), dtype=[("len", ">i4"), ("val", ">f4")])
                elems["len"], elems["val"] = 4, q
                self.params.append(struct.pack(">iiIii", 1, 0, 700, len(q), 1)
                                   + elems.tobytes())
        self.values = (cp * 1)()
        self.lengths = (ip * 1)()
        self.formats = (ip * 1)(1)

    def run(self, i):
        pq, p = self.pq, self.params[i]
        self.values[0], self.lengths[0] = p, len(p)
        res = pq.PQexecPrepared(self.pgconn, b"q", 1, self.values, self.lengths,
                                self.formats, 0)
        try:
            if pq.PQresultStatus(res) != 2:  # PGRES_TUPLES_OK
                code = pq.PQresultErrorField(res, ord("C"))
                raise QueryError(code.decode() if code else None,
                                 (pq.PQresultErrorMessage(res) or b"").decode())
            return [int(pq.PQgetvalue(res, j, 0)) for j in range(pq.PQntuples(res))]
        finally:
            pq.PQclear(res)


def run_queries(runner, nq, warmup, ready_wait):
    """Run the prepared statement q for each of the first nq queries;
    returns (ids per query, latencies s, wall s).  Warm-up queries retry
    while the index reports not ready (55000)."""
    deadline = time.time() + ready_wait
    for i in range(warmup):
        while True:
            try:
                runner.run(i)
                break
            except QueryError as e:
                if e.pgcode == "55000" and time.time() < deadline:
                    note("index not ready yet (%s); waiting" % e.pgerror.strip().splitlines()[0])
                    time.sleep(1.0)
                    continue
                raise
    results = []
    lat = np.empty(nq)
    t_start = time.perf_counter()
    for i in range(nq):
        t0 = time.perf_counter()
        results.append(runner.run(i))
        lat[i] = time.perf_counter() - t0
    wall = time.perf_counter() - t_start
    return results, lat, wall


def recall_at(results, gt, k=10):
    hits = 0
    for res, truth in zip(results, gt):
        hits += len(set(res[:k]) & set(truth[:k].tolist()))
    return hits / (k * len(results))


def measurement(ds, index, bits, build_s, index_mb, knob, value, results, lat, wall, gt,
                lists=None, probes=None, residual=None, column="real[]", protocol="text"):
    return {
        "dataset": ds.name, "index": index, "bits": bits,
        "build_s": None if build_s is None else round(build_s, 2),
        "index_mb": None if index_mb is None else round(index_mb, 1),
        "knob": knob, "value": value,
        "recall": round(recall_at(results, gt), 4),
        "qps": round(len(results) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 3),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 3),
        "rows": ds.rows, "dim": ds.dim,
        "lists": lists, "probes": probes,
        "residual": residual, "column": column, "protocol": protocol,
    }


def emit(rec):
    print(json.dumps(rec), flush=True)
    ivf = "" if rec.get("probes") is None else " lists %s probes %s" % (rec.get("lists"),
                                                                      rec["probes"])
    note("%-8s %-5s%s knob %s=%s  recall@10 %.4f  %.1f QPS  p50 %.3f ms  p99 %.3f ms"
         % (rec["dataset"], rec["index"], ivf, rec["knob"], rec["value"], rec["recall"],
            rec["qps"], rec["p50_ms"], rec["p99_ms"]))


def frontier_lines(recs):
    """Human-readable frontier: per (dataset, index, bits, lists) and recall
    threshold, the highest-QPS measurement reaching it."""
    groups = {}
    for r in recs:
        if r.get("recall") is None or r.get("qps") is None:
            continue
        key = (r.get("dataset"), r.get("index"), r.get("bits"), r.get("lists"),
               r.get("residual"))
        groups.setdefault(key, []).append(r)
    out = []
    for (dsname, index, bits, lists, residual), rs in sorted(groups.items(),
                                                             key=lambda kv: str(kv[0])):
        head = "%s %s bits %s lists %s%s (%d measurements, best recall %.4f)" % (
            dsname, index, bits, lists,
            "" if residual is None else " residual %s" % residual,
            len(rs), max(r["recall"] for r in rs))
        out.append(head)
        for thr in FRONTIER_RECALLS:
            ok = [r for r in rs if r["recall"] >= thr]
            if not ok:
                out.append("  recall >= %.2f: not reached" % thr)
                continue
            b = max(ok, key=lambda r: r["qps"])
            if index == "turbo":
                where = "probes %s, candidates %s" % (b.get("probes"), b.get("value"))
            else:
                where = "%s %s" % (b.get("knob"), b.get("value"))
            out.append("  recall >= %.2f: %s -> recall %.4f, %.1f QPS,"
                       " p50 %.3f ms, p99 %.3f ms" % (thr, where, b["recall"], b["qps"],
                                                      b["p50_ms"], b["p99_ms"]))
    return out


def print_frontier(recs, title="frontier"):
    lines = frontier_lines(recs)
    if not lines:
        return
    print("\n[run] %s (fastest (probes, candidates) per recall@10 threshold):" % title,
          file=sys.stderr)
    for line in lines:
        print("  " + line, file=sys.stderr)
    sys.stderr.flush()


def summarize(paths):
    """--summarize: the frontier of JSON lines saved from earlier runs ('-' = stdin)."""
    recs = []
    for p in paths:
        f = sys.stdin if p == "-" else open(p)
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                recs.append(json.loads(line))
        if f is not sys.stdin:
            f.close()
    print_frontier(recs, "frontier of %d measurements" % len(recs))


def parse_candidates(spec):
    vals = []
    for tok in spec.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok == "default" or tok.startswith("x"):
            vals.append(tok)
        else:
            vals.append(int(tok))
    return vals


def parse_probes(spec):
    vals = []
    for tok in spec.split(","):
        tok = tok.strip()
        if not tok:
            continue
        vals.append("default" if tok == "default" else int(tok))
    return vals


def show_example(cur, ds, table, op, word):
    """Print the 10 nearest words to `word` (GloVe only) through the index."""
    if ds.words is None:
        return
    try:
        i = ds.words.index(word)
        vec, where = ds.base[i], "base row %d" % i
    except ValueError:
        if word not in ds.query_words:
            note("example word %r not in the vocabulary" % word)
            return
        j = ds.query_words.index(word)
        vec, where = ds.queries[j], "held-out query %d" % j
    lit = datasets.array_literal(vec)
    cur.execute("EXPLAIN SELECT id FROM %s ORDER BY v %s %%s::real[] LIMIT 10" % (table, op), (lit,))
    plan = " / ".join(r[0].strip() for r in cur.fetchall())
    plan = re.sub(r"'\{[^}]*\}'", "'{...}'", plan)
    t0 = time.perf_counter()
    cur.execute("SELECT id, v %s %%s::real[] AS dist FROM %s ORDER BY v %s %%s::real[] LIMIT 10"
                % (op, table, op), (lit, lit))
    rows = cur.fetchall()
    ms = (time.perf_counter() - t0) * 1000
    print("\nExample: the 10 nearest words to %r (%s), cosine distance, %.2f ms:"
          % (word, where, ms), file=sys.stderr)
    print("  SELECT id, v <=> $1 AS dist FROM %s ORDER BY v <=> $1 LIMIT 10;" % table,
          file=sys.stderr)
    print("  plan: %s" % plan, file=sys.stderr)
    for rank, (rid, dist) in enumerate(rows, 1):
        print("  %2d. %-20s %.4f" % (rank, ds.words[rid], dist), file=sys.stderr)
    print("", file=sys.stderr, flush=True)


def bench_dataset(conn, name, a):
    cur = conn.cursor()
    ds = datasets.get(name, a.slice, with_words=bool(a.example))
    pgv = a.method != "turbo"
    # a vector(d) column: pgvector's indexes, or turbo with --column vector
    vec = pgv or a.column == "vector"
    table = a.table or ((name if not a.slice else "%s_%d" % (name, a.slice))
                        + ("_vec" if pgv else "_tvec" if vec else ""))
    op, opclass = OPS[ds.metric]
    if vec:
        # turbovec_pgvector's operator classes carry pgvector's names
        opclass = opclass.replace("real_", "vector_")
    nq = min(a.queries or len(ds.queries), len(ds.queries))
    queries = ds.queries[:nq]
    gt = ds.gt[:nq]
    runner = (BinaryQueries if a.protocol == "binary" else TextQueries)(conn, queries, vec)
    # the first query as a literal, for EXPLAIN
    literals = [datasets.array_literal(queries[0])]
    if vec:
        literals = ["[" + literals[0][1:-1] + "]"]

    if a.reuse and table_ready(cur, table, ds.rows, ds.dim, vector=vec):
        note("%s: reusing table %s (%d rows)" % (name, table, ds.rows))
    else:
        note("%s: loading %d rows x %d dims into %s via %s COPY"
             % (name, ds.rows, ds.dim, table, "text" if a.text_copy else "binary"))
        secs = datasets.load_table(conn, ds, table, storage=a.storage,
                                   coltype="vector" if vec else "real[]",
                                   binary=not a.text_copy)
        note("%s: loaded in %.1f s; VACUUM ANALYZE" % (name, secs))
        cur.execute("VACUUM ANALYZE %s" % table)
    note("%s: table %s, %s, v storage %s" % (name, table, scalar(
        cur, "SELECT pg_size_pretty(pg_total_relation_size(%s))", (table,)), scalar(
        cur, "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass"
             " AND attname = 'v'", (table,))))

    if a.exact:
        nq = min(nq, a.exact_queries)
        dist = SQL_DIST[ds.metric] if a.no_extension else "v %s $1" % op
        cur.execute("SET enable_indexscan = off")
        cur.execute("SET enable_bitmapscan = off")
        cur.execute("DEALLOCATE ALL")
        cur.execute("PREPARE q(real[]) AS SELECT id FROM %s ORDER BY %s LIMIT 10" % (table, dist))
        uses, plan = explain_uses(cur, "EXECUTE q(%s)" % cur.mogrify("%s", (literals[0],)).decode(),
                                  "\x00")
        note("%s: exact plan: %s" % (name, " / ".join(l.strip() for l in plan.splitlines())))
        results, lat, wall = run_queries(runner, nq, min(2, nq), 0)
        rec = measurement(ds, "exact", None, None, None, None, None, results, lat, wall, gt[:nq],
                          protocol=a.protocol)
        emit(rec)
        cur.execute("RESET enable_indexscan")
        cur.execute("RESET enable_bitmapscan")
        return [rec]

    if pgv:
        return bench_pgvector(conn, cur, ds, table, op, literals, runner, gt, a)

    index = "%s_turbo_idx" % table
    # lists = 0 spelled out: without it the build chooses lists itself
    with_clause = "bits = %d, lists = %d" % (a.bits, a.lists)
    if a.lists:
        if a.residual:
            with_clause += ", residual = %s" % a.residual
    create = "CREATE INDEX %s ON %s USING turbo (v %s) WITH (%s)" % (
        index, table, opclass, with_clause)
    if a.reuse and a.keep_index and scalar(
            cur, "SELECT to_regclass(%s) IS NOT NULL", (index,)):
        # measure a kept index again (its definition is the caller's business)
        note("%s: reusing index %s (build time not measured): %s" % (
            name, index, scalar(cur, "SELECT pg_get_indexdef(%s::regclass)", (index,))))
        build_s = None
    else:
        cur.execute("DROP INDEX IF EXISTS %s" % index)
        cur.execute("CHECKPOINT")
        note("%s: %s" % (name, create))
        t0 = time.perf_counter()
        cur.execute(create)
        build_s = time.perf_counter() - t0
    index_mb = scalar(cur, "SELECT pg_relation_size(%s)", (index,)) / (1 << 20)
    note("%s: built in %s s, index %.1f MB (table %s)" % (
        name, "?" if build_s is None else "%.2f" % build_s, index_mb,
        scalar(cur, "SELECT pg_size_pretty(pg_total_relation_size(%s))", (table,))))
    try:
        cur.execute("SELECT row_to_json(i) FROM turbo_index_info(%s::regclass) i", (index,))
        info = cur.fetchone()[0]
        note("%s: turbo_index_info %s" % (name, json.dumps(info)))
        if "lists" in info and (info["lists"] or 0) != a.lists:
            note("%s: WARNING: turbo_index_info says lists = %s, asked for %d"
                 % (name, info["lists"], a.lists))
    except Exception as e:  # informational only
        note("%s: turbo_index_info failed: %s" % (name, str(e).strip()))
    cur.execute("ANALYZE %s" % table)

    default_cand = scalar(cur, "SHOW turbovec.candidates")
    default_probes = scalar(cur, "SELECT current_setting('turbovec.probes', true)")
    note("%s: turbovec.candidates default = %s, turbovec.probes default = %s"
         % (name, default_cand, default_probes))
    if a.probes and default_probes is None:
        sys.exit("FATAL: --probes given but the server has no turbovec.probes setting")
    if a.example:
        show_example(cur, ds, table, op, a.example)

    if a.no_seqscan:
        cur.execute("SET enable_seqscan = off")
    cur.execute("DEALLOCATE ALL")
    cur.execute("PREPARE q(%s) AS SELECT id FROM %s ORDER BY v %s $1 LIMIT 10"
                % ("vector" if vec else "real[]", table, op))
    explain_stmt = "EXECUTE q(%s)" % cur.mogrify("%s", (literals[0],)).decode()
    uses, plan = explain_uses(cur, explain_stmt, index)
    if not uses:
        sys.exit("FATAL: %s: the query does not use index %s (--no-seqscan sets "
                 "enable_seqscan = off):\n%s" % (name, index, plan))
    note("%s: plan: %s" % (name, " / ".join(l.strip() for l in plan.splitlines())))

    recs = []
    for pval in (parse_probes(a.probes) if a.probes else [None]):
        if pval is None or pval == "default":
            if default_probes is not None:
                cur.execute("RESET turbovec.probes")
        else:
            cur.execute("SET turbovec.probes = %d" % pval)
        probes = scalar(cur, "SELECT current_setting('turbovec.probes', true)")
        probes = None if probes is None else int(probes)
        for val in parse_candidates(a.candidates):
            if val == "default":
                cur.execute("RESET turbovec.candidates")
            elif isinstance(val, str):  # "x4" = 4 x default
                cur.execute("SET turbovec.candidates = %d" % (int(default_cand) * int(val[1:])))
            else:
                cur.execute("SET turbovec.candidates = %d" % val)
            value = int(scalar(cur, "SHOW turbovec.candidates"))
            results, lat, wall = run_queries(runner, nq, min(a.warmup, nq), a.ready_wait)
            rec = measurement(ds, "turbo", a.bits, build_s, index_mb, "turbovec.candidates",
                              value, results, lat, wall, gt, lists=a.lists, probes=probes,
                              residual=(a.residual or "on") if a.lists else None,
                              column="vector" if vec else "real[]", protocol=a.protocol)
            emit(rec)
            recs.append(rec)
            # the plan cache may have switched to a generic plan: it must use the index too
            uses, plan = explain_uses(cur, explain_stmt, index)
            if not uses:
                sys.exit("FATAL: %s: the (generic) plan no longer uses %s:\n%s"
                         % (name, index, plan))
    cur.execute("RESET turbovec.candidates")
    if default_probes is not None:
        cur.execute("RESET turbovec.probes")
    cur.execute("RESET enable_seqscan")
    if not a.keep_index:
        cur.execute("DROP INDEX %s" % index)
    return recs


def bench_pgvector(conn, cur, ds, table, op, literals, runner, gt, a):
    """pgvector's ivfflat (lists = --lists, sweep ivfflat.probes over --probes)
    or hnsw (m, ef_construction; sweep hnsw.ef_search over --ef-search) on the
    vector(d) table, measured like the turbo index."""
    name = ds.name
    opclass = {"<=>": "vector_cosine_ops", "<->": "vector_l2_ops",
               "<#>": "vector_ip_ops"}[op]
    index = "%s_%s_idx" % (table, a.method)
    if a.method == "ivfflat":
        with_clause = "lists = %d" % a.lists
        knob = "ivfflat.probes"
        values = [int(v) for v in (a.probes or "1,2,4,8,16,32").split(",") if v.strip()]
    else:
        with_clause = "m = %d, ef_construction = %d" % (a.m, a.ef_construction)
        knob = "hnsw.ef_search"
        values = [int(v) for v in a.ef_search.split(",") if v.strip()]
    if a.reuse and a.keep_index and scalar(
            cur, "SELECT to_regclass(%s) IS NOT NULL", (index,)):
        build_s = None
        note("%s: reusing index %s (build time not measured)" % (name, index))
    else:
        cur.execute("DROP INDEX IF EXISTS %s" % index)
        cur.execute("CHECKPOINT")
        create = "CREATE INDEX %s ON %s USING %s (v %s) WITH (%s)" % (
            index, table, a.method, opclass, with_clause)
        note("%s: %s" % (name, create))
        t0 = time.perf_counter()
        cur.execute(create)
        build_s = time.perf_counter() - t0
    index_mb = scalar(cur, "SELECT pg_relation_size(%s)", (index,)) / (1 << 20)
    note("%s: %s built in %s s, index %.1f MB (table %s)" % (
        name, a.method, "?" if build_s is None else "%.2f" % build_s, index_mb,
        scalar(cur, "SELECT pg_size_pretty(pg_total_relation_size(%s))", (table,))))
    cur.execute("ANALYZE %s" % table)
    if a.no_seqscan:
        cur.execute("SET enable_seqscan = off")
    cur.execute("DEALLOCATE ALL")
    cur.execute("PREPARE q(vector) AS SELECT id FROM %s ORDER BY v %s $1 LIMIT 10"
                % (table, op))
    explain_stmt = "EXECUTE q(%s)" % cur.mogrify("%s", (literals[0],)).decode()
    uses, plan = explain_uses(cur, explain_stmt, index)
    if not uses:
        sys.exit("FATAL: %s: the query does not use index %s:\n%s" % (name, index, plan))
    recs = []
    for val in values:
        cur.execute("SET %s = %d" % (knob, val))
        results, lat, wall = run_queries(runner, len(gt), min(a.warmup, len(gt)),
                                         a.ready_wait)
        rec = measurement(ds, a.method, None, build_s, index_mb, knob, val, results, lat,
                          wall, gt, lists=a.lists if a.method == "ivfflat" else None,
                          column="vector", protocol=a.protocol)
        if a.method == "hnsw":
            rec["m"], rec["ef_construction"] = a.m, a.ef_construction
        emit(rec)
        recs.append(rec)
        uses, plan = explain_uses(cur, explain_stmt, index)
        if not uses:
            sys.exit("FATAL: %s: the (generic) plan no longer uses %s:\n%s"
                     % (name, index, plan))
        cur.execute("RESET %s" % knob)
    cur.execute("RESET enable_seqscan")
    if not a.keep_index:
        cur.execute("DROP INDEX %s" % index)
    return recs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", default=list(datasets.DATASETS),
                    help="glove100 and/or fmnist (default both), or generated sets "
                         "embedD[-N[k|m]] (e.g. embed768 = 1M x 768)")
    ap.add_argument("--method", choices=("turbo", "ivfflat", "hnsw"), default="turbo",
                    help="index: turbo (default) or pgvector's ivfflat / hnsw on a "
                         "vector(d) copy of the table (default name: <table>_vec)")
    ap.add_argument("--m", type=int, default=16, help="hnsw: m (default 16)")
    ap.add_argument("--ef-construction", type=int, default=64,
                    help="hnsw: ef_construction (default 64)")
    ap.add_argument("--ef-search", default="40,80,160,320,640",
                    help="hnsw: comma list of hnsw.ef_search values swept")
    ap.add_argument("--protocol", choices=("text", "binary"), default="text",
                    help="how each query vector is sent: text (a literal the server "
                         "parses; default) or binary (the type's binary format through "
                         "libpq, as ann-benchmarks' pgvector module sends it)")
    ap.add_argument("--text-copy", action="store_true",
                    help="load with text COPY instead of binary COPY")
    ap.add_argument("--column", choices=("real[]", "vector"), default="real[]",
                    help="turbo: the column type; vector (pgvector's, the type its own "
                         "indexes use) loads <table>_tvec and indexes it with "
                         "turbovec_pgvector's operator classes")
    ap.add_argument("--bits", type=int, default=4, choices=(2, 3, 4))
    ap.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                    help="comma list of turbovec.candidates values; 'default' = the "
                         "GUC's default, 'xN' = N times the default (default %s)"
                         % DEFAULT_CANDIDATES)
    ap.add_argument("--lists", type=int, default=0,
                    help="IVF lists in the CREATE INDEX WITH clause (default 0 = flat "
                         "layout)")
    ap.add_argument("--residual", choices=("on", "off"),
                    help="IVF: the residual reloption (default: not given, i.e. on)")
    ap.add_argument("--probes",
                    help="comma list of turbovec.probes values swept around the "
                         "candidates sweep; 'default' = the GUC's default (default: "
                         "not set, i.e. the GUC default only)")
    ap.add_argument("--summarize", nargs="+", metavar="FILE",
                    help="print the recall/QPS frontier of saved JSON lines and exit "
                         "('-' = stdin)")
    ap.add_argument("--slice", type=int, help="use only the first N base rows")
    ap.add_argument("--queries", type=int, help="use only the first N queries")
    ap.add_argument("--warmup", type=int, default=50,
                    help="untimed queries before each measurement (default 50)")
    ap.add_argument("--ready-wait", type=float, default=300,
                    help="seconds to wait for a not-ready index (SQLSTATE 55000)")
    ap.add_argument("--exact", action="store_true",
                    help="measure the sequential scan (no index) on a few queries")
    ap.add_argument("--exact-queries", type=int, default=50)
    ap.add_argument("--no-extension", action="store_true",
                    help="with --exact: SQL expression distances, no CREATE EXTENSION")
    ap.add_argument("--reuse", action="store_true",
                    help="keep an existing table with the right row count")
    ap.add_argument("--keep-index", action="store_true", help="don't drop the index at the end")
    ap.add_argument("--no-seqscan", action="store_true",
                    help="SET enable_seqscan = off for the index runs (when the "
                         "planner prefers a sequential scan)")
    ap.add_argument("--table", help="table name (default: data set name[_slice])")
    ap.add_argument("--example", metavar="WORD",
                    help="glove100: print the 10 nearest words to WORD")
    ap.add_argument("--storage", choices=("plain", "external", "extended", "main"),
                    help="storage of the v column when loading (default: extended, "
                         "PostgreSQL's default for real[]; pgvector's vector is external)")
    ap.add_argument("--host")
    ap.add_argument("--port")
    ap.add_argument("--dbname")
    ap.add_argument("--user")
    a = ap.parse_args(argv)
    if a.summarize:
        summarize(a.summarize)
        return
    if a.lists < 0:
        ap.error("--lists must be >= 0")
    for d in a.datasets:
        if not datasets.known(d):
            ap.error("unknown data set %r" % d)
    if a.no_extension and not a.exact:
        ap.error("--no-extension needs --exact")
    if a.example and a.table and len(a.datasets) > 1:
        ap.error("--table with more than one data set")

    conn = datasets.connect(dsn_from_args(a))
    cur = conn.cursor()
    if a.method != "turbo":
        if a.exact:
            ap.error("--exact measures the real[] table; use it without --method")
        if a.method == "ivfflat" and not a.lists:
            ap.error("--method ivfflat needs --lists")
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
    if a.method == "turbo" and a.column == "vector":
        if a.exact:
            ap.error("--exact measures the real[] table; use it without --column vector")
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
    if not a.no_extension:
        cur.execute("CREATE EXTENSION IF NOT EXISTS turbovec")
        if a.method == "turbo" and a.column == "vector":
            cur.execute("CREATE EXTENSION IF NOT EXISTS turbovec_pgvector")
    note("server %s; shared_buffers %s; maintenance_work_mem %s; preload '%s'" % (
        scalar(cur, "SHOW server_version"), scalar(cur, "SHOW shared_buffers"),
        scalar(cur, "SHOW maintenance_work_mem"),
        scalar(cur, "SHOW shared_preload_libraries")))
    recs = []
    for name in a.datasets:
        recs += bench_dataset(conn, name, a)
    conn.close()
    if not a.exact:
        print_frontier(recs)


if __name__ == "__main__":
    main()
