#!/usr/bin/env bash
# turbovec: upgrade test from the previous release.
#
#   bash test/upgrade/run.sh PREV TMPDIR PORT
#
# Builds the previous release (PREV: a git revision of this repository, or a
# directory holding that release's source),
# installs it, and on a preloaded throwaway server creates the extension at
# that version, flat and IVF indexes, their resident copies and .tv
# snapshots, and records exact answers.  Then it installs the current tree
# (already built by the caller), starts the same cluster on the new library
# and checks, before and after ALTER EXTENSION turbovec UPDATE: the server
# starts without a crash, the old indexes answer as before and as a
# sequential scan does (from the pages and from the resident copy),
# turbo_verify is clean, writes go on, and the views work.
#
# Runs as root (installs) and starts the server as the postgres OS user.
# Prints "upgrade: N passed, M failed" and exits non-zero on any failure.
set -uo pipefail

PREV_REV=$1
WORK=$2
PORT=$3
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)
DATA=$WORK/data
SOCK=$WORK/sock
PASSED=0
FAILED=0

as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}
as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
psql_q() {
	as_pg "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres "$@"
}
check() {
	# check NAME EXPECTED ACTUAL
	if [ "$2" == "$3" ]; then
		PASSED=$((PASSED + 1))
		echo "ok - $1"
	else
		FAILED=$((FAILED + 1))
		echo "not ok - $1"
		echo "    expected: $2"
		echo "    got:      $3"
	fi
}
server() {
	as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w -t 120 "$@" >/dev/null
}
finish() {
	server -m fast stop 2>/dev/null
	echo "upgrade: $PASSED passed, $FAILED failed"
	[ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
	exit $?
}

# --- the previous release, from git or a source tree ----------------------
mkdir -p "$WORK/prev" "$SOCK"
if [ -d "$PREV_REV" ]; then
	cp -a "$PREV_REV/." "$WORK/prev/"
elif git -C "$REPO" cat-file -e "$PREV_REV^{commit}" 2>/dev/null; then
	git -C "$REPO" archive "$PREV_REV" | tar -x -C "$WORK/prev" || { FAILED=1; finish; }
else
	echo "upgrade: the previous release ($PREV_REV) is not in this clone's history" >&2
	FAILED=1
	finish
fi
prev_version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$WORK/prev/turbovec.control")
new_version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$REPO/turbovec.control")
echo "previous release: $PREV_REV (turbovec $prev_version); this tree: turbovec $new_version"
if ! make -s -C "$WORK/prev" -j2 PG_CONFIG="$PG_CONFIG" >"$WORK/prev-build.log" 2>&1 ||
	! as_root make -s -C "$WORK/prev" install PG_CONFIG="$PG_CONFIG" >>"$WORK/prev-build.log" 2>&1; then
	cat "$WORK/prev-build.log"
	FAILED=1
	finish
fi
chown -R postgres: "$WORK" 2>/dev/null || true

# --- phase 1: the previous release builds indexes ------------------------
as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres -A trust --no-sync -E UTF8 --no-locale \
	>"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log"; FAILED=1; finish; }
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$SOCK'
listen_addresses = ''
shared_preload_libraries = 'turbovec'
turbovec.worker_naptime = 200ms
EOF
server start || { tail -n 30 "$WORK/server.log"; FAILED=1; finish; }

psql_q <<EOF || { FAILED=1; finish; }
CREATE EXTENSION turbovec VERSION '$prev_version';
CREATE TABLE fl (id int PRIMARY KEY, v real[]);
CREATE TABLE iv (id int PRIMARY KEY, v real[]);
SELECT setseed(0.5);
INSERT INTO fl SELECT i, (SELECT array_agg((random() * 2 - 1)::real)
	FROM generate_series(1, 24) WHERE i > 0) FROM generate_series(1, 3000) i;
INSERT INTO iv SELECT i, (SELECT array_agg((random() * 2 - 1)::real)
	FROM generate_series(1, 24) WHERE i > 0) FROM generate_series(1, 3000) i;
CREATE INDEX fl_v ON fl USING turbo (v real_l2_ops);
CREATE INDEX iv_v ON iv USING turbo (v real_cosine_ops) WITH (lists = 8);
DELETE FROM fl WHERE id % 10 = 0;
VACUUM fl;
SELECT turbo_wait_ready('fl_v', 60000), turbo_wait_ready('iv_v', 60000);
SELECT turbo_snapshot_now('fl_v') > 0, turbo_snapshot_now('iv_v') > 0;
EOF

# Exact answers for five queries per table: the vector of a row, each
# element shifted, so the row itself is near but not the only answer.
# answers SETTINGS runs them under SETTINGS; answers_tables SETTINGS through
# the index, answers_seq through a sequential scan.  One line per query, ids
# comma-separated.
answers() {
	local settings=$1 out="" spec tbl op q
	for spec in "fl <->" "iv <=>"; do
		read -r tbl op <<<"$spec"
		for q in 11 22 33 44 55; do
			out+=$(psql_q -c "$settings" \
				-c "SELECT string_agg(id::text, ',') FROM (SELECT id FROM $tbl
					ORDER BY v $op (SELECT array_agg(x + 0.01) FROM unnest((SELECT v FROM $tbl WHERE id = $q)) x)
					LIMIT 10) s" 2>&1)
			out+=$'\n'
		done
	done
	printf '%s' "$out"
}
answers_tables() { answers "SET enable_seqscan = off; SET enable_bitmapscan = off; $1"; }
answers_seq() { answers "SET enable_indexscan = off; SET enable_bitmapscan = off;"; }

before=$(answers_tables "SET turbovec.candidates = 100000; SET turbovec.probes = 8;")
seq_before=$(answers_seq)
check "previous release: index answers equal a sequential scan's" "$seq_before" "$before"
info_before=$(psql_q -c "SELECT string_agg(format('%s %s %s %s %s %s', dim, bits, metric, live_rows, lists, change_count), ';')
	FROM (SELECT (turbo_index_info(i)).* FROM unnest(ARRAY['fl_v', 'iv_v']::regclass[]) i) s")
server -m fast stop || { FAILED=1; finish; }

# --- phase 2: this release on the same cluster --------------------------
if ! as_root make -s -C "$REPO" install PG_CONFIG="$PG_CONFIG" >"$WORK/install.log" 2>&1; then
	cat "$WORK/install.log"
	FAILED=1
	finish
fi
server start || { tail -n 30 "$WORK/server.log"; FAILED=1; finish; }
check "the new library starts on the old cluster" "$prev_version" \
	"$(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'turbovec'")"
check "index info reads the same before the update" "$info_before" \
	"$(psql_q -c "SELECT string_agg(format('%s %s %s %s %s %s', dim, bits, metric, live_rows, lists, change_count), ';')
	FROM (SELECT (turbo_index_info(i)).* FROM unnest(ARRAY['fl_v', 'iv_v']::regclass[]) i) s")"
check "old indexes answer as before, pages, before the update" "$before" \
	"$(answers_tables "SET turbovec.candidates = 100000; SET turbovec.probes = 8; SET turbovec.use_resident = off;")"

echo "# resident copies on the new library: $(psql_q -c "SELECT string_agg(format('%s %s from_snapshot=%s', index, resident_state, from_snapshot), '; ' ORDER BY index) FROM turbo_indexes")"
psql_q -c "ALTER EXTENSION turbovec UPDATE" || FAILED=$((FAILED + 1))
check "ALTER EXTENSION UPDATE reaches $new_version" "$new_version" \
	"$(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'turbovec'")"
check "turbo_wait_ready after the update" "t|t" \
	"$(psql_q -c "SELECT turbo_wait_ready('fl_v', 60000), turbo_wait_ready('iv_v', 60000)")"
check "old indexes answer as before, resident copy" "$before" \
	"$(answers_tables "SET turbovec.candidates = 100000; SET turbovec.probes = 8; SET turbovec.use_resident = on;")"
check "old indexes answer as before, pages" "$before" \
	"$(answers_tables "SET turbovec.candidates = 100000; SET turbovec.probes = 8; SET turbovec.use_resident = off;")"
check "turbo_verify is clean on both old indexes" "0" \
	"$(psql_q -c "SELECT count(*) FROM (SELECT turbo_verify('fl_v') UNION ALL SELECT turbo_verify('iv_v')) s")"
check "turbo_indexes lists both, ready" "fl_v|t
iv_v|t" "$(psql_q -c "SELECT index, ready FROM turbo_indexes ORDER BY 1")"

# writes after the upgrade land in the old indexes and are found
psql_q -c "INSERT INTO fl SELECT 10000 + i, (SELECT array_agg((random() * 2 - 1)::real)
	FROM generate_series(1, 24) WHERE i > 0) FROM generate_series(1, 200) i;
	INSERT INTO iv SELECT 10000 + i, (SELECT array_agg((random() * 2 - 1)::real)
	FROM generate_series(1, 24) WHERE i > 0) FROM generate_series(1, 200) i;" ||
	FAILED=$((FAILED + 1))
for spec in "fl <->" "iv <=>"; do
	read -r tbl op <<<"$spec"
	check "rows inserted after the update into $tbl find themselves" "0" \
		"$(psql_q -c "SET enable_seqscan = off; SET enable_bitmapscan = off;" \
			-c "SELECT count(*) FROM $tbl t WHERE id > 10000 AND NOT EXISTS (
				SELECT 1 FROM (SELECT s.id FROM $tbl s ORDER BY s.v $op t.v LIMIT 5) n WHERE n.id = t.id)")"
done
check "answers after the writes still equal a sequential scan's" "$(answers_seq)" \
	"$(answers_tables "SET turbovec.candidates = 100000; SET turbovec.probes = 8;")"
if grep -q "terminated by signal" "$WORK/server.log"; then
	check "no server process crashed" "no crash" "crash"
else
	check "no server process crashed" "no crash" "no crash"
fi
finish
