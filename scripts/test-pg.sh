#!/usr/bin/env bash
# turbovec: the whole test suite against one PostgreSQL major version
# (TV_PG_MAJOR, default 15, the one Debian 12 ships).  `bash scripts/test.sh`
# runs it for 15 here and for 17 and 18 in Debian roots (scripts/pgchroot.sh).
#
# Steps, in order:
#   0. install missing Debian packages (only when something is missing)
#   1. build with -Werror (`make TV_WERROR=1`) and install the extension
#   2. codec    -- standalone codec unit test (`make -C test/codec check`)
#   3. snapshot -- .tv snapshot parser unit test (`make -C test/fuzz check`)
#   4. fuzz     -- bounded libFuzzer run of the snapshot parser
#                  (`make -C test/fuzz fuzz FUZZ_TIME=...`); skipped, and
#                  reported as such, when clang or libFuzzer is missing
#   5. regress  -- pg_regress (`make installcheck`) against a throwaway server
#   6. vendor   -- build (or take from the cache) and install pgvector and
#                  Citus from ../shared/vendor (scripts/vendor.sh), which the
#                  TAP tests t/010_pgvector.pl and t/071_citus.pl need; Citus
#                  only where it supports the major (15 to 17)
#   7. tap      -- TAP tests in t/ (prove, through PGXS) as the postgres user;
#                  for a failed file it prints the tail of its regress log and
#                  of each of its servers' logs
#   8. upgrade  -- build and install the previous release (from git), make
#                  indexes with it, reinstall this tree, ALTER EXTENSION UPDATE
#                  and check the old indexes (test/upgrade/run.sh)
#
# PostgreSQL refuses to run as root, so when this script runs as root (as in
# CI) every server runs as the `postgres` OS user, in a temporary data
# directory with a private unix socket directory and no TCP listener.  The
# TAP tests create their own clusters, so prove runs as postgres on a copy of
# the tree it can write to.  Servers and temporary directories are always
# cleaned up (trap), and the script exits non-zero if any step failed.
#
# Environment knobs:
#   TV_TEST_PORT   port of the pg_regress server (default 55433)
#   TV_KEEP_TMP=1  keep the temporary directory (data dirs, logs) for a post-mortem
#   PROVE_FLAGS    extra flags for prove (default --timer)
#   PROVE_TESTS    run only these TAP files, e.g. "t/001_crash_recovery.pl"
#   TV_PG_MAJOR    PostgreSQL major version to build and test against (default 15)
#   TV_FUZZ_TIME   seconds of fuzzing (default 20; 0 leaves the step out)
#   TV_PREV_RELEASE  git revision of the release the upgrade step starts from
#   TV_PREV_TREE   a directory holding that release's source instead (chroot legs)
#   TV_SKIP_UPGRADE=1  leave the upgrade step out (while developing only)

set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$(pwd)

PG_MAJOR=${TV_PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
PORT=${TV_TEST_PORT:-55433}
PROVE_FLAGS=${PROVE_FLAGS:---timer}
PG_OS_USER=postgres

# Upper bounds per step, so that a hung server cannot stall CI for hours.
BUILD_TIMEOUT=900
CODEC_TIMEOUT=300
SNAPSHOT_TIMEOUT=300
FUZZ_TIME=${TV_FUZZ_TIME:-20}
FUZZ_TIMEOUT=$((FUZZ_TIME + 300))
REGRESS_TIMEOUT=480
TAP_TIMEOUT=1800
UPGRADE_TIMEOUT=600
# The release the upgrade step starts from (v0.1.0), by commit so that a
# clone without tags finds it.
PREV_RELEASE=${TV_PREV_RELEASE:-7bdcfa07345ec951ff3e6caa8fd75c7eceb9a5f5}
# ... or its source tree, where there is no git history (chroot legs)
[ -n "${TV_PREV_TREE:-}" ] && PREV_RELEASE=$TV_PREV_TREE
# The majors that release builds against (0.1.0 predates PostgreSQL 18)
PREV_RELEASE_MAJORS="15 17"

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

TMP=
REGRESS_DATA=
declare -A RESULT=()
declare -A ELAPSED=()
STEPS=(codec snapshot fuzz regress vendor tap upgrade)

log() { printf '\n=== %s ===\n' "$*"; }

# Run a command as the PostgreSQL OS user (as ourselves when not root).
as_pg() {
	if [ "$IS_ROOT" -eq 1 ]; then
		runuser -u "$PG_OS_USER" -- "$@"
	else
		"$@"
	fi
}

# Run a command as root (directly, or through sudo when we are not root).
as_root() {
	if [ "$IS_ROOT" -eq 1 ]; then
		"$@"
	else
		sudo "$@"
	fi
}

# Stop every server whose data directory lives under our temporary directory
# (the pg_regress server, and TAP nodes left behind by a killed prove), then
# remove the directory.  Only servers we started are touched.
# shellcheck disable=SC2317  # invoked through trap
cleanup() {
	local rc=$? pidfile
	trap - EXIT INT TERM
	if [ -n "$TMP" ] && [ -d "$TMP" ]; then
		while IFS= read -r pidfile; do
			as_pg "$PG_BIN/pg_ctl" -D "$(dirname "$pidfile")" -m immediate -w stop \
				>/dev/null 2>&1 || true
		done < <(find "$TMP" -name postmaster.pid -type f 2>/dev/null)
		if [ "${TV_KEEP_TMP:-0}" = 1 ]; then
			echo "kept temporary directory $TMP"
		else
			rm -rf "$TMP"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Print the closing summary and exit with its verdict.
finish() {
	local passed=0 failed=0 s
	log "summary"
	local skipped=0
	for s in "${STEPS[@]}"; do
		printf '%-8s %-5s %s\n' "$s" "${RESULT[$s]:-FAIL}" \
			"${ELAPSED[$s]:+(${ELAPSED[$s]}s)}"
		case "${RESULT[$s]:-FAIL}" in
		ok) passed=$((passed + 1)) ;;
		skip) skipped=$((skipped + 1)) ;;
		*) failed=$((failed + 1)) ;;
		esac
	done
	# A skipped step (fuzz without clang/libFuzzer) neither passes nor fails.
	if [ "$skipped" -gt 0 ]; then
		echo "suite: $passed passed, $failed failed, $skipped skipped"
	else
		echo "suite: $passed passed, $failed failed"
	fi
	[ "$failed" -eq 0 ]
	exit $?
}

# ---------------------------------------------------------------------------
# 0. packages
# ---------------------------------------------------------------------------
PACKAGES=(
	"postgresql-$PG_MAJOR"
	"postgresql-server-dev-$PG_MAJOR"
	build-essential
	make
	gcc
	perl
	libipc-run-perl
)

missing=()
for p in "${PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if [ "${#missing[@]}" -gt 0 ]; then
	log "installing packages: ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || exit 2
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "${missing[@]}" || exit 2
fi
# The libFuzzer run needs clang and its runtime: installed when missing, but
# optional (the fuzz step is skipped, and says so, if they cannot be had).
# The fuzz target is the .tv parser, which does not depend on the server
# version: the other majors' legs set TV_FUZZ_TIME=0.
FUZZ_PACKAGES=(clang-14 libclang-rt-14-dev)
[ "$FUZZ_TIME" -eq 0 ] && FUZZ_PACKAGES=()
missing=()
for p in "${FUZZ_PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if [ "${#missing[@]}" -gt 0 ]; then
	log "installing packages for the fuzz step: ${missing[*]}"
	if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends "${missing[@]}"; }; then
		echo "could not install ${missing[*]}: the fuzz step will be skipped"
	fi
fi
if ! id "$PG_OS_USER" >/dev/null 2>&1 && [ "$IS_ROOT" -eq 1 ]; then
	echo "no $PG_OS_USER OS user (is postgresql-$PG_MAJOR installed?)" >&2
	exit 2
fi

export PG_CONFIG
export PATH="$PG_BIN:$PATH"

TMP=$(mktemp -d /tmp/turbovec-test.XXXXXX) || exit 2
chmod 755 "$TMP"
[ "$IS_ROOT" -eq 1 ] && chown "$PG_OS_USER": "$TMP"

# ---------------------------------------------------------------------------
# 1. build and install
# ---------------------------------------------------------------------------
log "build (make TV_WERROR=1) and install"
t0=$SECONDS
if ! timeout "$BUILD_TIMEOUT" make -j2 TV_WERROR=1 PG_CONFIG="$PG_CONFIG"; then
	echo "build FAILED: nothing can be tested" >&2
	finish
fi
if ! as_root make install PG_CONFIG="$PG_CONFIG"; then
	echo "make install FAILED: nothing can be tested" >&2
	finish
fi
echo "build and install took $((SECONDS - t0))s"

# ---------------------------------------------------------------------------
# 2. codec unit test
# ---------------------------------------------------------------------------
log "codec: make -C test/codec check"
t0=$SECONDS
codec_out=$TMP/codec.out
timeout "$CODEC_TIMEOUT" make -C test/codec check PG_CONFIG="$PG_CONFIG" 2>&1 | tee "$codec_out"
codec_rc=${PIPESTATUS[0]}
codec_line=$(grep -E '^codec: [0-9]+ passed, [0-9]+ failed' "$codec_out" | tail -n 1)
if [ "$codec_rc" -eq 0 ] && [ -n "$codec_line" ] &&
	[[ "$codec_line" =~ ^codec:\ ([0-9]+)\ passed,\ 0\ failed ]] &&
	[ "${BASH_REMATCH[1]}" -gt 0 ]; then
	RESULT[codec]=ok
else
	RESULT[codec]=FAIL
	echo "codec FAILED (exit status $codec_rc, summary: ${codec_line:-none})"
fi
ELAPSED[codec]=$((SECONDS - t0))

# ---------------------------------------------------------------------------
# 3. snapshot parser unit test
# ---------------------------------------------------------------------------
log "snapshot: make -C test/fuzz check"
t0=$SECONDS
snapshot_out=$TMP/snapshot.out
timeout "$SNAPSHOT_TIMEOUT" make -C test/fuzz check 2>&1 | tee "$snapshot_out"
snapshot_rc=${PIPESTATUS[0]}
snapshot_line=$(grep -E '^snapshot: [0-9]+ passed, [0-9]+ failed' "$snapshot_out" | tail -n 1)
if [ "$snapshot_rc" -eq 0 ] && [ -n "$snapshot_line" ] &&
	[[ "$snapshot_line" =~ ^snapshot:\ ([0-9]+)\ passed,\ 0\ failed ]] &&
	[ "${BASH_REMATCH[1]}" -gt 0 ]; then
	RESULT[snapshot]=ok
else
	RESULT[snapshot]=FAIL
	[ "$snapshot_rc" -eq 124 ] && echo "snapshot timed out after ${SNAPSHOT_TIMEOUT}s"
	echo "snapshot FAILED (exit status $snapshot_rc, summary: ${snapshot_line:-none})"
fi
ELAPSED[snapshot]=$((SECONDS - t0))

# ---------------------------------------------------------------------------
# 4. bounded libFuzzer run of the snapshot parser
# ---------------------------------------------------------------------------
log "fuzz: make -C test/fuzz fuzz FUZZ_TIME=$FUZZ_TIME"
t0=$SECONDS
if [ "$FUZZ_TIME" -eq 0 ]; then
	RESULT[fuzz]=skip
	echo "fuzz SKIPPED (TV_FUZZ_TIME=0)"
else
	fuzz_out=$TMP/fuzz.out
	timeout "$FUZZ_TIMEOUT" make -C test/fuzz fuzz FUZZ_TIME="$FUZZ_TIME" 2>&1 | tee "$fuzz_out"
	fuzz_rc=${PIPESTATUS[0]}
	if [ "$fuzz_rc" -eq 0 ] && grep -q '^fuzz: skipped' "$fuzz_out"; then
		RESULT[fuzz]=skip
		echo "fuzz SKIPPED: $(grep '^fuzz: skipped' "$fuzz_out" | head -n 1)"
	elif [ "$fuzz_rc" -eq 0 ] && grep -qE '^Done [0-9]+ runs' "$fuzz_out"; then
		RESULT[fuzz]=ok
	else
		RESULT[fuzz]=FAIL
		[ "$fuzz_rc" -eq 124 ] && echo "fuzz timed out after ${FUZZ_TIMEOUT}s"
		echo "fuzz FAILED (exit status $fuzz_rc)"
		ls test/fuzz/crash-* test/fuzz/leak-* test/fuzz/timeout-* test/fuzz/oom-* 2>/dev/null
	fi
fi
ELAPSED[fuzz]=$((SECONDS - t0))

# ---------------------------------------------------------------------------
# 5. pg_regress against a throwaway server
# ---------------------------------------------------------------------------
log "regress: make installcheck (pg_regress) on a throwaway server, port $PORT"
t0=$SECONDS
REGRESS_DATA=$TMP/regress/data
SOCK=$TMP/regress/sock
as_pg mkdir -p "$REGRESS_DATA" "$SOCK"
RESULT[regress]=FAIL
if as_pg "$PG_BIN/initdb" -D "$REGRESS_DATA" -U postgres -A trust --no-sync \
	-E UTF8 --no-locale >"$TMP/regress/initdb.log" 2>&1 &&
	as_pg "$PG_BIN/pg_ctl" -D "$REGRESS_DATA" -l "$TMP/regress/server.log" -w -t 60 \
		-o "-p $PORT -k $SOCK -c listen_addresses='' -c fsync=off -c max_connections=20" \
		start >/dev/null; then
	# The TAP tests run separately below, as the postgres user: TAP_TESTS=
	# keeps PGXS's installcheck to pg_regress only.
	regress_out=$TMP/regress/make.out
	PGHOST=$SOCK PGPORT=$PORT PGUSER=postgres \
		timeout "$REGRESS_TIMEOUT" make installcheck TAP_TESTS= PG_CONFIG="$PG_CONFIG" \
		2>&1 | tee "$regress_out"
	regress_rc=${PIPESTATUS[0]}
	if [ "$regress_rc" -eq 0 ] && grep -q 'tests passed' "$regress_out"; then
		RESULT[regress]=ok
	else
		[ "$regress_rc" -eq 124 ] && echo "regress timed out after ${REGRESS_TIMEOUT}s"
		echo "regress FAILED (exit status $regress_rc)"
		if [ -s regression.diffs ]; then
			echo "----- regression.diffs -----"
			cat regression.diffs
			echo "----- end of regression.diffs -----"
		fi
		echo "----- tail of the server log -----"
		tail -n 50 "$TMP/regress/server.log" 2>/dev/null
	fi
	as_pg "$PG_BIN/pg_ctl" -D "$REGRESS_DATA" -m fast -w stop >/dev/null ||
		{ echo "could not stop the regress server"; RESULT[regress]=FAIL; }
else
	echo "regress FAILED: could not start a server"
	cat "$TMP/regress/initdb.log" "$TMP/regress/server.log" 2>/dev/null | tail -n 50
fi
ELAPSED[regress]=$((SECONDS - t0))

# ---------------------------------------------------------------------------
# 6. third-party extensions for the TAP tests, built from ../shared/vendor
#    (cached under /var/tmp between runs)
# ---------------------------------------------------------------------------
log "vendor: scripts/vendor.sh pgvector citus"
t0=$SECONDS
if as_root env PG_CONFIG="$PG_CONFIG" timeout "$BUILD_TIMEOUT" bash scripts/vendor.sh pgvector citus; then
	RESULT[vendor]=ok
else
	RESULT[vendor]=FAIL
	echo "vendor FAILED: the pgvector and Citus tests cannot run"
fi
ELAPSED[vendor]=$((SECONDS - t0))

# ---------------------------------------------------------------------------
# 7. TAP tests, as the postgres user, on a copy of the tree
# ---------------------------------------------------------------------------
log "tap: prove t/*.pl as $PG_OS_USER"
t0=$SECONDS
RESULT[tap]=FAIL
TAPDIR=$TMP/tap
mkdir -p "$TAPDIR"
# Copy without .git and build products; prove only needs the Makefile and t/.
tar -C "$REPO" --exclude=.git --exclude='*.o' --exclude='*.bc' --exclude='*.so' \
	--exclude=results --exclude=tmp_check --exclude=test/fuzz -cf - . | tar -C "$TAPDIR" -xf - || true
[ "$IS_ROOT" -eq 1 ] && chown -R "$PG_OS_USER": "$TAPDIR"
if ! ls "$TAPDIR"/t/*.pl >/dev/null 2>&1; then
	echo "tap FAILED: no t/*.pl found"
else
	tap_out=$TMP/tap.out
	make_args=(installcheck REGRESS= PG_CONFIG="$PG_CONFIG" PROVE_FLAGS="$PROVE_FLAGS")
	[ -n "${PROVE_TESTS:-}" ] && make_args+=(PROVE_TESTS="$PROVE_TESTS")
	# REGRESS= keeps PGXS's installcheck to the TAP tests only (pg_regress ran
	# above); the PG* variables would otherwise leak into the TAP clusters.
	(
		cd "$TAPDIR" &&
			as_pg env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE \
				PATH="$PATH" HOME="$TAPDIR" \
				timeout "$TAP_TIMEOUT" make "${make_args[@]}"
	) 2>&1 | tee "$tap_out"
	tap_rc=${PIPESTATUS[0]}
	if [ "$tap_rc" -eq 0 ] && grep -q '^Result: PASS' "$tap_out"; then
		RESULT[tap]=ok
	else
		[ "$tap_rc" -eq 124 ] && echo "tap timed out after ${TAP_TIMEOUT}s"
		echo "tap FAILED (exit status $tap_rc)"
		# Logs of the failed files (prove's summary names them), else of all.
		failed_tap=$(grep -oE '^t/[^ ]+\.pl \(Wstat' "$tap_out" | sed 's/ (Wstat//')
		if [ -z "$failed_tap" ]; then
			failed_tap=$(cd "$TAPDIR" && ls t/*.pl)
		fi
		for t in $failed_tap; do
			f=$TAPDIR/tmp_check/log/regress_log_$(basename "$t" .pl)
			[ -f "$f" ] || continue
			echo "----- tail of $(basename "$f") -----"
			tail -n 80 "$f"
			# The servers' own logs: the test's output rarely says why a
			# node stopped answering, its log does.  Crashes, lost WAL and
			# dropped connections first, then the last lines.
			for s in "$TAPDIR"/tmp_check/log/"$(basename "$t" .pl)"_*.log; do
				[ -f "$s" ] || continue
				echo "----- $(basename "$s"): failures and connections -----"
				grep -E 'PANIC|FATAL|TRAP|terminated by signal|was terminated|requested WAL|could not receive|timeout|started streaming|restart point|crash' "$s" | tail -n 40
				echo "----- tail of $(basename "$s") -----"
				tail -n 30 "$s"
			done
		done
	fi
fi
ELAPSED[tap]=$((SECONDS - t0))

# ---------------------------------------------------------------------------
# 8. upgrade from the previous release: build and install it, make indexes
#    with it, then reinstall this tree and ALTER EXTENSION ... UPDATE
# ---------------------------------------------------------------------------
t0=$SECONDS
if [ "${TV_SKIP_UPGRADE:-0}" = 1 ]; then
	RESULT[upgrade]=skip
	echo "upgrade SKIPPED (TV_SKIP_UPGRADE=1)"
elif [[ " $PREV_RELEASE_MAJORS " != *" $PG_MAJOR "* ]]; then
	RESULT[upgrade]=skip
	echo "upgrade SKIPPED: the previous release does not build against PostgreSQL $PG_MAJOR, so there is nothing to upgrade from"
else
	log "upgrade: from $PREV_RELEASE (test/upgrade/run.sh)"
	upgrade_out=$TMP/upgrade.out
	mkdir -p "$TMP/upgrade"
	[ "$IS_ROOT" -eq 1 ] && chown "$PG_OS_USER": "$TMP/upgrade"
	timeout "$UPGRADE_TIMEOUT" bash test/upgrade/run.sh "$PREV_RELEASE" "$TMP/upgrade" "$((PORT + 1))" \
		2>&1 | tee "$upgrade_out"
	upgrade_rc=${PIPESTATUS[0]}
	upgrade_line=$(grep -E '^upgrade: [0-9]+ passed, [0-9]+ failed' "$upgrade_out" | tail -n 1)
	if [ "$upgrade_rc" -eq 0 ] && [[ "$upgrade_line" =~ ^upgrade:\ ([0-9]+)\ passed,\ 0\ failed ]]; then
		RESULT[upgrade]=ok
	else
		RESULT[upgrade]=FAIL
		[ "$upgrade_rc" -eq 124 ] && echo "upgrade timed out after ${UPGRADE_TIMEOUT}s"
		echo "upgrade FAILED (exit status $upgrade_rc)"
		tail -n 40 "$TMP/upgrade/server.log" 2>/dev/null
	fi
	# whatever happened, leave this tree's build installed
	as_root make -s install PG_CONFIG="$PG_CONFIG" >/dev/null || RESULT[upgrade]=FAIL
fi
ELAPSED[upgrade]=$((SECONDS - t0))

finish
