#!/usr/bin/python3
"""Two indexes on one table, measured in alternation.

    bench/alternate.py DATASET --table T --index A --index B \\
        --settings A 'turbovec.probes=7,turbovec.candidates=20' \\
        --settings B 'hnsw.ef_search=45' [--rounds 8] [--protocol binary]

On a shared machine the speed of the host moves by a third from one minute
to the next, so two runs of run.py a minute apart can disagree on the
ratio of two indexes by more than the difference being measured.  This
runs the data set's queries (one client, a prepared statement, as run.py
does) through each index in turn, round after round, each index's round
right after the other's, and reports every round's QPS, recall@10 and the
ratio, then the median ratio.

Both indexes are on the same table and column, so the planner would pick
one of them: the other is hidden for the time being by clearing its
pg_index.indisvalid (the benchmark's own server, a superuser connection;
both indexes must be valid at the start), and both are valid again on
exit.  Each index's settings are SET in its own session.  The first
--warmup queries run untimed after each switch; they do not bring a large
cold index into the buffer pool, so load both first (pg_prewarm), or the
first round measures a cold one (right after a restart, 300 warm-up
queries left HNSW's first round at 1M x 768 ten times slower than its
second).  One JSON line per round and index on stdout; the summary goes
to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets  # noqa: E402
import run  # noqa: E402


def set_valid(cur, index, valid):
    cur.execute("UPDATE pg_index SET indisvalid = %s WHERE indexrelid = %s::regclass",
                (valid, index))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="data set (bench/datasets.py), e.g. embed768")
    ap.add_argument("--table", required=True)
    ap.add_argument("--index", action="append", required=True,
                    help="an index on the table's v column; give two")
    ap.add_argument("--settings", nargs=2, action="append", default=[],
                    metavar=("INDEX", "NAME=VALUE,..."),
                    help="settings SET in the index's session")
    ap.add_argument("--column", choices=("real[]", "vector"), default="vector")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--protocol", choices=("text", "binary"), default="binary")
    ap.add_argument("--host")
    ap.add_argument("--port")
    ap.add_argument("--dbname")
    ap.add_argument("--user")
    a = ap.parse_args(argv)
    if len(a.index) != 2 or a.index[0] == a.index[1]:
        ap.error("give two different --index")
    if a.rounds < 1 or a.warmup < 0:
        ap.error("--rounds must be at least 1 and --warmup at least 0")
    settings = {ix: [] for ix in a.index}
    for ix, spec in a.settings:
        if ix not in settings:
            ap.error("--settings for %s, which is not an --index" % ix)
        for item in spec.split(","):
            name, _, value = item.partition("=")
            if not name.strip() or not value.strip():
                ap.error("--settings wants NAME=VALUE,...: %r" % item)
            settings[ix].append((name.strip(), value.strip()))

    ds = datasets.get(a.dataset)
    gt = ds.gt
    dsn = run.dsn_from_args(a)
    admin = datasets.connect(dsn)
    acur = admin.cursor()
    for ix in a.index:
        if run.scalar(acur, "SELECT indrelid = %s::regclass FROM pg_index WHERE indexrelid"
                            " = %s::regclass", (a.table, ix)) is not True:
            sys.exit("FATAL: %s is not an index of %s" % (ix, a.table))
        # only a valid index may be hidden and shown again: marking a failed
        # concurrent build valid would let queries use a broken index
        if run.scalar(acur, "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass",
                      (ix,)) is not True:
            sys.exit("FATAL: %s is not valid (a failed CREATE INDEX CONCURRENTLY?)" % ix)
    op = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}[ds.metric]
    vec = a.column == "vector"
    runner_class = run.BinaryQueries if a.protocol == "binary" else run.TextQueries
    sessions = {}
    for ix in a.index:
        conn = datasets.connect(dsn)
        cur = conn.cursor()
        for name, value in settings[ix]:
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))
        cur.execute("PREPARE q(%s) AS SELECT id FROM %s ORDER BY v %s $1 LIMIT 10"
                    % ("vector" if vec else "real[]", a.table, op))
        sessions[ix] = (conn, cur, runner_class(conn, ds.queries, vec))
    literal = datasets.array_literal(ds.queries[0])
    if vec:
        literal = "[" + literal[1:-1] + "]"

    ratios = []
    try:
        for r in range(1, a.rounds + 1):
            qps = {}
            for ix in a.index:
                other = [o for o in a.index if o != ix][0]
                set_valid(acur, other, False)
                set_valid(acur, ix, True)
                conn, cur, runner = sessions[ix]
                uses, plan = run.explain_uses(
                    cur, "EXECUTE q(%s)" % cur.mogrify("%s", (literal,)).decode(), ix)
                if not uses or (" using %s " % ix) not in plan:
                    sys.exit("FATAL: the query does not use %s:\n%s" % (ix, plan))
                results, lat, wall = run.run_queries(runner, len(gt), min(a.warmup, len(gt)), 0)
                rec = {"round": r, "index": ix, "protocol": a.protocol,
                       "settings": dict(settings[ix]),
                       "recall": round(run.recall_at(results, gt), 4),
                       "qps": round(len(results) / wall, 1),
                       "time": time.strftime("%H:%M:%S")}
                print(json.dumps(rec), flush=True)
                qps[ix] = rec["qps"]
                run.note("round %d %-28s recall@10 %.4f %8.1f QPS"
                         % (r, ix, rec["recall"], rec["qps"]))
            ratios.append(qps[a.index[0]] / qps[a.index[1]])
            run.note("round %d %s / %s = %.2f" % (r, a.index[0], a.index[1], ratios[-1]))
    finally:
        for ix in a.index:
            set_valid(acur, ix, True)
    run.note("%s / %s over %d rounds: median %.2f, range %.2f-%.2f (%s protocol)"
             % (a.index[0], a.index[1], len(ratios), statistics.median(ratios),
                min(ratios), max(ratios), a.protocol))


if __name__ == "__main__":
    main()
