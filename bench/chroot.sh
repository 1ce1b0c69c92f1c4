#!/usr/bin/env bash
# Run bench/run.py against another PostgreSQL major, inside the Debian root
# that scripts/pgchroot.sh made for it (run the test leg once first).
#
#   bash bench/chroot.sh 17 glove100 --candidates 20,40
#
# The data cache (/var/tmp/turbovec-data, made by bench/datasets.py on the
# host) is bind-mounted into the root; the extension is built and installed
# there for that major; the cluster is bench/server.sh's, on port 55441.
set -euo pipefail

MAJOR=${1:?usage: bench/chroot.sh MAJOR [run.py arguments]}
shift
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "$MAJOR" in
17) SUITE=trixie ;;
18) SUITE=sid ;;
*) echo "bench/chroot.sh: no root for PostgreSQL $MAJOR" >&2; exit 2 ;;
esac
ROOT=${TV_CHROOT_DIR:-/var/tmp/turbovec-chroot}/$SUITE
DATA=${TURBOVEC_DATA:-/var/tmp/turbovec-data}
[ -f "$ROOT/.turbovec-root-complete" ] ||
	{ echo "bench/chroot.sh: no root at $ROOT (run: bash scripts/pgchroot.sh $MAJOR)" >&2; exit 2; }
[ -d "$DATA" ] || { echo "bench/chroot.sh: no data cache at $DATA (bench/datasets.py prepare)" >&2; exit 2; }

rm -rf "$ROOT/build/bench"
mkdir -p "$ROOT/build/bench" "$ROOT/var/tmp/turbovec-data"
tar -C "$REPO" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . |
	tar -C "$ROOT/build/bench" -xf -
{
	declare -p MAJOR
	printf 'ARGS=('; printf '%q ' "$@"; printf ')\n'
} >"$ROOT/build/bench-settings.sh"
cat >"$ROOT/build/bench.sh" <<'INNER'
set -euo pipefail
. /build/bench-settings.sh
export DEBIAN_FRONTEND=noninteractive
apt-get -q -y install --no-install-recommends python3-numpy python3-psycopg2 >/tmp/apt-bench.log 2>&1 ||
	{ tail -n 20 /tmp/apt-bench.log; exit 1; }
cd /build/bench
PG_CONFIG=/usr/lib/postgresql/$MAJOR/bin/pg_config
make -s -j2 PG_CONFIG=$PG_CONFIG >/dev/null && make -s install PG_CONFIG=$PG_CONFIG >/dev/null
export TURBOVEC_PORT=55441 PG_BINDIR=/usr/lib/postgresql/$MAJOR/bin
eval "$(bench/server.sh start)"
trap 'bench/server.sh stop' EXIT
python3 bench/run.py "${ARGS[@]}"
INNER
exec unshare -m --propagation private bash -c '
	mount -t proc proc "$1/proc"
	mount --rbind /dev "$1/dev"
	mount --bind "$2" "$1/var/tmp/turbovec-data"
	exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		bash /build/bench.sh' _ "$ROOT" "$DATA"
