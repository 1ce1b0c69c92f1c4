#!/bin/bash
# Throwaway PostgreSQL 15 cluster for turbovec benchmarks and the demo.
#
#   bench/server.sh start    initdb into a fresh temp dir, start, print the env
#   bench/server.sh env      print the connection env of the running cluster
#   bench/server.sh status   say whether it runs
#   bench/server.sh stop     stop it and delete its temp dir
#   bench/server.sh restart  restart it (fast shutdown), keeping its data
#
# `eval "$(bench/server.sh start)"` sets PGHOST/PGPORT/PGUSER/PGDATABASE.
# Messages go to stderr, only the export lines to stdout.
#
# The server runs as the `postgres` user (PostgreSQL refuses root) with trust
# authentication on a private unix socket directory only (no TCP listener),
# tuned like the pgvector baseline: shared_buffers 4GB, maintenance_work_mem
# 4GB, max_parallel_maintenance_workers 1, jit off; and 64MB of
# min_dynamic_shared_memory, where parallel builds get their segments
# without fresh page faults (README, "A build's memory").
#
# Environment:
#   TURBOVEC_PORT            port (default 55432); one cluster per port
#   TURBOVEC_PRELOAD         shared_preload_libraries (e.g. turbovec; default none)
#   TURBOVEC_SHARED_BUFFERS  default 4GB (lower it on small machines)
#   TURBOVEC_MWM             maintenance_work_mem, default 4GB
#   TURBOVEC_DSM             min_dynamic_shared_memory, default 64MB (0: none)
#   TURBOVEC_PGCONF          extra lines appended to postgresql.conf
#   TURBOVEC_KEEP=1          `stop` keeps the data directory
#   PG_BINDIR                server binaries (default: pg_config --bindir,
#                            else /usr/lib/postgresql/15/bin)
#
# Start and stop are idempotent: `start` on a running cluster only prints its
# env, `stop` on a stopped one does nothing.  Only a directory this script
# created (it carries a marker file) is ever deleted.

set -euo pipefail

PORT="${TURBOVEC_PORT:-55432}"
STATE="/var/tmp/turbovec-bench-${PORT}.dir"
MARK=".turbovec-bench"
SELF="$(basename "$0")"

say() { echo "[$SELF] $*" >&2; }
die() { say "error: $*"; exit 1; }

bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then echo "$PG_BINDIR"; return; fi
    for d in /usr/lib/postgresql/15/bin "$(pg_config --bindir 2>/dev/null || true)"; do
        if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
    done
    die "PostgreSQL server binaries not found (apt-get install postgresql-15, or set PG_BINDIR)"
}

as_pg() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# The temp dir of the cluster on $PORT, if the state file names one we made.
current_dir() {
    [ -f "$STATE" ] || return 1
    local d
    d="$(cat "$STATE")"
    [ -n "$d" ] && [ -f "$d/$MARK" ] || return 1
    echo "$d"
}

print_env() {
    local d="$1"
    echo "export PGHOST=$d/socket"
    echo "export PGPORT=$PORT"
    echo "export PGUSER=postgres"
    echo "export PGDATABASE=postgres"
}

running() {
    local d="$1"
    as_pg "$(bindir)/pg_ctl" -D "$d/data" status >/dev/null 2>&1
}

cmd_start() {
    [ "$(id -u)" = 0 ] || [ "$(id -un)" = postgres ] || die "run as root (or postgres)"
    id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql-15)"
    local bin d
    bin="$(bindir)"
    if d="$(current_dir)"; then
        if running "$d"; then
            say "already running on port $PORT (data in $d/data)"
            print_env "$d"
            return 0
        fi
        say "restarting the stopped cluster in $d"
    else
        d="$(mktemp -d /var/tmp/turbovec-pg.XXXXXX)"
        touch "$d/$MARK"
        mkdir "$d/data" "$d/socket"
        chown -R postgres: "$d"
        chmod 755 "$d"
        echo "$d" >"$STATE"
        say "initdb in $d/data"
        as_pg "$bin/initdb" -D "$d/data" -U postgres --auth=trust -E UTF8 \
            --locale=C.UTF-8 >"$d/initdb.log" 2>&1 \
            || { cat "$d/initdb.log" >&2; die "initdb failed"; }
        {
            echo "# turbovec bench settings (bench/server.sh)"
            echo "port = $PORT"
            echo "listen_addresses = ''"
            echo "unix_socket_directories = '$d/socket'"
            echo "shared_buffers = ${TURBOVEC_SHARED_BUFFERS:-4GB}"
            echo "maintenance_work_mem = ${TURBOVEC_MWM:-4GB}"
            echo "max_parallel_maintenance_workers = 1"
            echo "min_dynamic_shared_memory = ${TURBOVEC_DSM:-64MB}"
            echo "jit = off"
            echo "max_wal_size = 8GB"
            echo "checkpoint_timeout = 30min"
            echo "logging_collector = off"
            if [ -n "${TURBOVEC_PRELOAD:-}" ]; then
                echo "shared_preload_libraries = '${TURBOVEC_PRELOAD}'"
            fi
            if [ -n "${TURBOVEC_PGCONF:-}" ]; then
                printf '%s\n' "$TURBOVEC_PGCONF"
            fi
        } >>"$d/data/postgresql.conf"
    fi
    say "starting PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on port $PORT (socket $d/socket, log $d/server.log)"
    as_pg "$bin/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 120 start >/dev/null \
        || { tail -n 30 "$d/server.log" >&2; die "server did not start"; }
    print_env "$d"
}

cmd_stop() {
    local d
    if ! d="$(current_dir)"; then
        rm -f "$STATE"
        say "no cluster on port $PORT; nothing to stop"
        return 0
    fi
    if running "$d"; then
        say "stopping the cluster on port $PORT"
        as_pg "$(bindir)/pg_ctl" -D "$d/data" -m fast -w -t 120 stop >/dev/null \
            || as_pg "$(bindir)/pg_ctl" -D "$d/data" -m immediate -w stop >/dev/null || true
    fi
    if [ "${TURBOVEC_KEEP:-0}" = 1 ]; then
        say "kept $d (TURBOVEC_KEEP=1)"
    else
        case "$d" in
            /var/tmp/turbovec-pg.*) rm -rf -- "$d"; say "removed $d" ;;
            *) say "not removing unexpected directory $d" ;;
        esac
    fi
    rm -f "$STATE"
}

cmd_restart() {
    local d
    d="$(current_dir)" && running "$d" || die "no cluster running on port $PORT"
    as_pg "$(bindir)/pg_ctl" -D "$d/data" -l "$d/server.log" -m fast -w -t 120 restart >/dev/null \
        || { tail -n 30 "$d/server.log" >&2; die "server did not restart"; }
}

cmd_env() {
    local d
    d="$(current_dir)" && running "$d" || die "no cluster running on port $PORT"
    print_env "$d"
}

cmd_status() {
    local d
    if d="$(current_dir)" && running "$d"; then
        say "running on port $PORT, data in $d/data, log $d/server.log"
    else
        say "not running on port $PORT"
        return 3
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_restart ;;
    env) cmd_env ;;
    status) cmd_status ;;
    log) d="$(current_dir)" && cat "$d/server.log" ;;
    *) echo "usage: $SELF start|stop|restart|status|env|log" >&2; exit 2 ;;
esac
