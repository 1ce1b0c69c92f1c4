#!/usr/bin/env bash
# turbovec: run the test suite against another PostgreSQL major version, in a
# Debian root made with debootstrap from the mirror this machine's apt
# sources name.
#
#   bash scripts/pgchroot.sh MAJOR          # 17 (Debian trixie) or 18 (sid)
#
# The root is made once and kept under /var/tmp/turbovec-chroot/SUITE; each
# run refreshes its package lists and upgrades PostgreSQL to the newest point
# release the mirror serves (so a new point release is what gets tested), and
# records the versions it ran against.  The tree is copied in (work tree as
# it is, plus the previous release from git for the upgrade step), built and
# tested there with `scripts/test-pg.sh`, as root inside the root, servers as
# its postgres user.  Mounts (proc, dev) live in a private mount namespace
# and vanish with it.  Anything that cannot be done (no root, no mount
# permission, the mirror unreachable) fails the run: nothing is skipped.
#
# Environment: TV_CHROOT_DIR (default /var/tmp/turbovec-chroot), and every
# TV_* and PROVE_* knob of scripts/test-pg.sh, passed through.
set -euo pipefail

MAJOR=${1:?usage: pgchroot.sh MAJOR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${TV_CHROOT_DIR:-/var/tmp/turbovec-chroot}

case "$MAJOR" in
17) SUITE=trixie ;;
18) SUITE=sid ;;
*)
	echo "pgchroot: no Debian suite with PostgreSQL $MAJOR is known here" >&2
	exit 2
	;;
esac

if [ "$(id -u)" -ne 0 ]; then
	echo "pgchroot: must run as root (debootstrap, chroot, mounts)" >&2
	exit 2
fi

# The Debian mirror of this machine's apt sources (deb822 or one-line form).
mirror() {
	local m
	m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources |
		awk '{print $2}' | grep -v -- '-security' | head -n 1)
	if [ -z "$m" ]; then
		m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
			awk '{print $2}' | grep -v -- '-security' | head -n 1)
	fi
	[ -n "$m" ] || { echo "pgchroot: no Debian mirror in the apt sources" >&2; exit 2; }
	echo "$m"
}

# sid's Release file may be past its Valid-Until date on the mirror.
APT_OPTS=(-q -y -o Acquire::Retries=3)
[ "$SUITE" = sid ] && APT_OPTS+=(-o Acquire::Check-Valid-Until=false)

PACKAGES=(postgresql-"$MAJOR" postgresql-server-dev-"$MAJOR" build-essential make gcc libc6-dev
	perl libipc-run-perl ca-certificates)
# What Citus's build needs (scripts/vendor.sh; Citus 13.2.2 supports up to 17)
[ "$MAJOR" -le 17 ] && PACKAGES+=(liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev
	libxslt1-dev libicu-dev libpam0g-dev libreadline-dev patch)

ROOT=$BASE/$SUITE
MIRROR=$(mirror)

if ! command -v debootstrap >/dev/null; then
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
fi

t0=$SECONDS
if [ ! -f "$ROOT/.turbovec-root-complete" ]; then
	echo "pgchroot: making a $SUITE root in $ROOT from $MIRROR"
	rm -rf "$ROOT"
	mkdir -p "$BASE"
	debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$BASE/debootstrap-$SUITE.log" 2>&1 ||
		{ tail -n 30 "$BASE/debootstrap-$SUITE.log"; echo "pgchroot: debootstrap failed" >&2; exit 1; }
	# no services start inside the root
	printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
	chmod 755 "$ROOT/usr/sbin/policy-rc.d"
	touch "$ROOT/.turbovec-root-complete"
fi

# Copy the tree in: the work tree as it is, without build products, the
# previous release (for the upgrade step) from git, and ../shared/vendor.
rm -rf "$ROOT/build"
mkdir -p "$ROOT/build/turbovec"
tar -C "$REPO" --exclude=.git --exclude='*.o' --exclude='*.bc' --exclude='*.so' \
	--exclude=results --exclude=tmp_check --exclude=log -cf - . |
	tar -C "$ROOT/build/turbovec" -xf -
# The third-party archives the tests build (scripts/vendor.sh), where the
# tree expects them: ../shared/vendor beside it.
VENDOR=${TV_VENDOR_DIR:-$REPO/../shared/vendor}
if [ -d "$VENDOR" ]; then
	mkdir -p "$ROOT/build/shared/vendor"
	cp -R "$VENDOR/." "$ROOT/build/shared/vendor/"
fi
PREV=${TV_PREV_RELEASE:-$(sed -n 's/^PREV_RELEASE=.*:-\([0-9a-f]*\)}$/\1/p' "$REPO/scripts/test-pg.sh")}
if [ -n "$PREV" ] && git -C "$REPO" cat-file -e "$PREV^{commit}" 2>/dev/null; then
	mkdir -p "$ROOT/build/prev-release"
	git -C "$REPO" archive "$PREV" | tar -x -C "$ROOT/build/prev-release"
fi

# What runs inside: the settings (PostgreSQL major, apt options, packages,
# the caller's TV_* and PROVE_* knobs) in a file, then the inner script.
{
	declare -p MAJOR PACKAGES APT_OPTS
	for v in $(compgen -e | grep -E '^(TV_|PROVE_)' | grep -vx TV_VENDOR_DIR || true); do
		declare -p "$v"
	done
} >"$ROOT/build/settings.sh"
cat >"$ROOT/build/run.sh" <<'INNER'
set -euo pipefail
. /build/settings.sh
export DEBIAN_FRONTEND=noninteractive
apt-get "${APT_OPTS[@]}" update >/tmp/apt-update.log 2>&1 ||
	{ tail -n 20 /tmp/apt-update.log; echo "pgchroot: apt-get update failed" >&2; exit 1; }
# install, or upgrade to the newest point release the mirror has
apt-get "${APT_OPTS[@]}" install --no-install-recommends "${PACKAGES[@]}" >/tmp/apt-install.log 2>&1 ||
	{ tail -n 20 /tmp/apt-install.log; echo "pgchroot: apt-get install failed" >&2; exit 1; }
echo "pgchroot: $(. /etc/os-release && echo "$PRETTY_NAME"), $(dpkg-query -W -f='${Package} ${Version}' "postgresql-$MAJOR")"
cd /build/turbovec
if [ -d /build/prev-release ]; then
	export TV_PREV_TREE=/build/prev-release
fi
export TV_PG_MAJOR=$MAJOR
exec bash scripts/test-pg.sh
INNER

# Mounts in a private namespace: gone when the run ends, however it ends.
exec unshare -m --propagation private bash -euo pipefail -c '
	mount -t proc proc "$1/proc"
	mount --rbind /dev "$1/dev"
	exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 bash /build/run.sh' _ "$ROOT"
