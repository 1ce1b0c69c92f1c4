#!/bin/bash
# Throwaway Citus cluster for bench/scaleout.py: a coordinator and two
# workers on this machine, each a PostgreSQL 15 cluster run as the postgres
# user on a private unix socket directory (no TCP listener), preloading
# citus and turbovec.
#
#   bench/citus.sh start    initdb three clusters, start them, join the workers
#                           to the coordinator; print the coordinator's PG* env
#   bench/citus.sh stop     stop them and delete the temp dir
#
# `eval "$(bench/citus.sh start)"` sets PGHOST/PGPORT/PGUSER/PGDATABASE.
# Citus must be installed first: `bash scripts/vendor.sh citus` (as root)
# builds it from ../shared/vendor (Citus 13.2.2 supports PostgreSQL 15-17).
#
# Environment:
#   TURBOVEC_PORT            coordinator port (default 55440); workers +1, +2
#   TURBOVEC_SHARED_BUFFERS  per node, default 1GB
#   TURBOVEC_RESIDENT        turbovec.resident_memory per node, default 1GB
#   PG_BINDIR                server binaries (default /usr/lib/postgresql/15/bin)
#
# Only a directory this script created (it carries a marker file) is deleted.
set -euo pipefail

PORT=${TURBOVEC_PORT:-55440}
STATE=/var/tmp/turbovec-citus-$PORT.dir
MARK=.turbovec-citus
BIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}

say() { echo "[citus.sh] $*" >&2; }
die() { say "error: $*"; exit 1; }
as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi; }

current_dir() {
	[ -f "$STATE" ] || return 1
	local d
	d=$(cat "$STATE")
	[ -n "$d" ] && [ -f "$d/$MARK" ] || return 1
	echo "$d"
}

psql_on() {
	local d=$1 port=$2
	shift 2
	as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$d/socket" -p "$port" -U postgres -d postgres "$@"
}

cmd_start() {
	[ "$(id -u)" = 0 ] || [ "$(id -un)" = postgres ] || die "run as root (or postgres)"
	local sharedir d i port
	sharedir=$("$BIN/pg_config" --sharedir)
	[ -f "$sharedir/extension/citus.control" ] ||
		die "Citus is not installed: bash scripts/vendor.sh citus (as root)"
	if d=$(current_dir); then
		say "already running in $d"
	else
		d=$(mktemp -d /var/tmp/turbovec-citus.XXXXXX)
		touch "$d/$MARK"
		mkdir -p "$d/socket"
		chown -R postgres: "$d"
		echo "$d" >"$STATE"
		for i in 0 1 2; do
			port=$((PORT + i))
			as_pg "$BIN/initdb" -D "$d/node$i" -U postgres -A trust --no-sync -E UTF8 \
				--no-locale >"$d/initdb$i.log" 2>&1 || die "initdb failed: $d/initdb$i.log"
			cat >>"$d/node$i/postgresql.conf" <<-EOF
				port = $port
				listen_addresses = ''
				unix_socket_directories = '$d/socket'
				shared_preload_libraries = 'citus,turbovec'
				shared_buffers = ${TURBOVEC_SHARED_BUFFERS:-1GB}
				turbovec.resident_memory = ${TURBOVEC_RESIDENT:-1GB}
				maintenance_work_mem = 1GB
				max_parallel_maintenance_workers = 1
				max_worker_processes = 32
				wal_level = logical
				jit = off
				fsync = off
				citus.local_hostname = '$d/socket'
			EOF
			as_pg "$BIN/pg_ctl" -D "$d/node$i" -l "$d/node$i.log" -w start >/dev/null ||
				die "node $i did not start: $d/node$i.log"
			psql_on "$d" "$port" -c 'CREATE EXTENSION citus'
		done
		psql_on "$d" "$PORT" -c "SELECT citus_set_coordinator_host('$d/socket', $PORT)" >/dev/null
		for i in 1 2; do
			psql_on "$d" "$PORT" -c "SELECT citus_add_node('$d/socket', $((PORT + i)))" >/dev/null
		done
		say "coordinator on port $PORT, workers on $((PORT + 1)) and $((PORT + 2)), in $d"
	fi
	echo "export PGHOST=$d/socket"
	echo "export PGPORT=$PORT"
	echo "export PGUSER=postgres"
	echo "export PGDATABASE=postgres"
}

cmd_stop() {
	local d i
	d=$(current_dir) || { say "not running"; return 0; }
	for i in 0 1 2; do
		as_pg "$BIN/pg_ctl" -D "$d/node$i" -m fast -w stop >/dev/null 2>&1 || true
	done
	rm -rf "$d" "$STATE"
	say "stopped, removed $d"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
*) die "usage: citus.sh start|stop" ;;
esac
