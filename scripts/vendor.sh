#!/usr/bin/env bash
# turbovec: build third-party extensions the tests need (pgvector, Citus)
# from the source archives in ../shared/vendor (beside the repository; see
# its README.md), cache the installed files, and install them into the
# PostgreSQL the tests use.
#
#   bash scripts/vendor.sh pgvector citus
#
# Their code is never copied into this repository: each archive is unpacked
# and built in a scratch directory, `make install DESTDIR=...` captures what
# the build installs, and that tree is kept in a cache under /var/tmp, keyed
# by the archive's sha256 (and the patch's, when one applies), the
# PostgreSQL major and exact server version and the machine, so a second run
# only copies the cached tree into place (no Citus build every time).  A
# cache entry appears atomically once complete; concurrent runs wait on a
# lock instead of building twice.
#
# Citus 13.2.2 supports PostgreSQL 15 to 17: for another major it is not
# built, and the script says so and exits 0 (the Citus test skips there,
# naming the reason).  Citus is patched only where the server headers
# declare have_createdb_privilege() on PostgreSQL 15 (Debian's 15.20 exports
# it and Citus would define it again); the Debian -dev packages its build
# needs are installed when missing.  pgvector builds with OPTFLAGS="" (no
# -march=native) so a cached build runs on any machine of the architecture.
#
# Environment: PG_CONFIG (default /usr/lib/postgresql/$TV_PG_MAJOR/bin/pg_config,
# TV_PG_MAJOR default 15), TV_VENDOR_DIR (default ../shared/vendor relative to
# the repository), TV_VENDOR_CACHE (default /var/tmp/turbovec-vendor).
# Runs as root (it installs into the server's directories), as the tests do.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENDOR=${TV_VENDOR_DIR:-$REPO/../shared/vendor}
CACHE=${TV_VENDOR_CACHE:-/var/tmp/turbovec-vendor}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/${TV_PG_MAJOR:-15}/bin/pg_config}

# The archives this tree is tested with, and their sha256.
declare -A ARCHIVE=(
	[pgvector]=pgvector-0.8.6.tar.gz
	[citus]=citus-13.2.2.tar.gz
)
declare -A SHA256=(
	[pgvector]=b4eb8abc425b465082ae5955d13df5338c32ec1bd441f0eb86d780e3958766a6
	[citus]=c8fc76dc8294636a52b1a0dd75a20d8b4a36937df6443e30ca84d8d0464a6bb9
)
CITUS_PATCH=citus-13.2.2-debian12-pg15.patch
CITUS_PATCH_SHA256=5971b017e38b468f8431132e2491a36e8469cae3b89126aee15730e212a909de
CITUS_MAJORS="15 16 17"
CITUS_DEBS=(liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libxslt1-dev libicu-dev
	libpam0g-dev libreadline-dev patch)

die() {
	echo "vendor: $*" >&2
	exit 1
}

[ $# -gt 0 ] || die "usage: vendor.sh NAME... (pgvector, citus)"
[ "$(id -u)" -eq 0 ] || die "must run as root (installs into the server's directories)"
[ -x "$PG_CONFIG" ] || die "no pg_config at $PG_CONFIG"
[ -d "$VENDOR" ] || die "no vendor directory $VENDOR (../shared/vendor beside the repository)"
VENDOR=$(cd "$VENDOR" && pwd)

PG_VERSION=$("$PG_CONFIG" --version)
PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
INCLUDEDIR_SERVER=$("$PG_CONFIG" --includedir-server)
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
SHAREDIR=$("$PG_CONFIG" --sharedir)
OS_ID=$(. /etc/os-release && echo "${ID:-linux}-${VERSION_CODENAME:-${VERSION_ID:-unknown}}")
JOBS=$(nproc 2>/dev/null || echo 2)

# Install the Debian packages in $@ that are missing (apt-get update first).
install_debs() {
	local p missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	echo "vendor: installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
		die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"${missing[@]}" >/dev/null || die "could not install ${missing[*]}"
}

# Does Citus need the patch here: PostgreSQL 15 whose headers already
# declare have_createdb_privilege() (Citus defines it for 15 only).
citus_needs_patch() {
	[ "$PG_MAJOR" -lt 16 ] &&
		grep -qs 'have_createdb_privilege' "$INCLUDEDIR_SERVER/commands/dbcommands.h"
}

# Build $name into the DESTDIR tree $dest/root from the unpacked $src.
build_pgvector() {
	local src=$1 dest=$2
	make -C "$src" -j"$JOBS" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >"$dest/build.log" 2>&1 &&
		make -C "$src" install PG_CONFIG="$PG_CONFIG" OPTFLAGS="" DESTDIR="$dest/root" \
			>>"$dest/build.log" 2>&1
}

build_citus() {
	local src=$1 dest=$2
	if citus_needs_patch; then
		echo "vendor: applying $CITUS_PATCH (the server headers declare have_createdb_privilege)" >&2
		patch -d "$src" -p1 <"$VENDOR/$CITUS_PATCH" >"$dest/build.log" 2>&1 || return 1
	fi
	(cd "$src" && ./configure --without-libcurl PG_CONFIG="$PG_CONFIG") >>"$dest/build.log" 2>&1 &&
		make -C "$src" -j"$JOBS" >>"$dest/build.log" 2>&1 &&
		make -C "$src" install DESTDIR="$dest/root" >>"$dest/build.log" 2>&1
}

# The cache entry for $name: built now when missing.  Prints its directory.
cache_entry() {
	local name=$1 archive key digest entry tmp src
	archive=$VENDOR/${ARCHIVE[$name]}
	[ -f "$archive" ] || die "no $archive"
	local sha
	sha=$(sha256sum "$archive" | awk '{print $1}')
	[ "$sha" = "${SHA256[$name]}" ] ||
		die "$archive has sha256 $sha, expected ${SHA256[$name]} (update scripts/vendor.sh with the archive)"
	key="archive=${ARCHIVE[$name]} sha256=$sha"
	if [ "$name" = citus ] && citus_needs_patch; then
		[ -f "$VENDOR/$CITUS_PATCH" ] || die "no $VENDOR/$CITUS_PATCH"
		local psha
		psha=$(sha256sum "$VENDOR/$CITUS_PATCH" | awk '{print $1}')
		[ "$psha" = "$CITUS_PATCH_SHA256" ] || die "$CITUS_PATCH has sha256 $psha, expected $CITUS_PATCH_SHA256"
		key="$key patch=$CITUS_PATCH sha256=$psha"
	fi
	key="$key server=\"$PG_VERSION\" major=$PG_MAJOR os=$OS_ID arch=$(uname -m)"
	digest=$(printf '%s\n' "$key" | sha256sum | cut -c1-16)
	entry=$CACHE/${ARCHIVE[$name]%.tar.gz}-pg$PG_MAJOR-$digest

	mkdir -p "$CACHE"
	exec 9>"$CACHE/.lock-$digest"
	flock 9
	if [ ! -f "$entry/complete" ]; then
		echo "vendor: building ${ARCHIVE[$name]} for $PG_VERSION (cache: $entry)" >&2
		[ "$name" = citus ] && install_debs "${CITUS_DEBS[@]}" >&2
		local t0=$SECONDS
		tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
		mkdir -p "$tmp/src" "$tmp/root"
		tar -xzf "$archive" -C "$tmp/src" --strip-components=1
		src=$tmp/src
		if ! "build_$name" "$src" "$tmp"; then
			tail -n 40 "$tmp/build.log" >&2
			rm -rf "$tmp"
			die "building ${ARCHIVE[$name]} failed"
		fi
		rm -rf "$src"
		printf '%s\n' "$key" >"$tmp/key"
		(cd "$tmp/root" && find . -type f -o -type l | sort) >"$tmp/files"
		touch "$tmp/complete"
		rm -rf "$entry"
		mv "$tmp" "$entry"
		echo "vendor: built ${ARCHIVE[$name]} in $((SECONDS - t0))s" >&2
	else
		echo "vendor: ${ARCHIVE[$name]} for $PG_VERSION from the cache ($entry)" >&2
	fi
	flock -u 9
	exec 9>&-
	echo "$entry"
}

for name in "$@"; do
	[ -n "${ARCHIVE[$name]:-}" ] || die "unknown name $name (pgvector, citus)"
	if [ "$name" = citus ] && [[ " $CITUS_MAJORS " != *" $PG_MAJOR "* ]]; then
		echo "vendor: Citus 13.2.2 supports PostgreSQL 15 to 17, not $PG_MAJOR: not built"
		continue
	fi
	entry=$(cache_entry "$name")
	# Copy the captured tree into place file by file.  Directories are only
	# created where missing, never touched where they exist: GNU tar, even
	# with --no-overwrite-dir, sets each existing directory it extracts into
	# to 0700 until it is done, and for / that locks every other user (the
	# postgres servers of running tests) out of the whole file system.
	(
		cd "$entry/root" &&
			find . -mindepth 1 -type d -print0 | while IFS= read -r -d '' d; do
				[ -d "/$d" ] || install -d -m 755 "/$d" || exit 1
			done &&
			find . ! -type d -print0 | while IFS= read -r -d '' f; do
				cp -a --remove-destination "$f" "/$f" || exit 1
			done
	) || die "installing ${ARCHIVE[$name]} failed"
	control=$(grep -m1 '/extension/[^/]*\.control$' "$entry/files" || true)
	[ -n "$control" ] && [ -f "/${control#./}" ] ||
		die "${ARCHIVE[$name]}: no extension control file installed"
	echo "vendor: installed $(wc -l <"$entry/files") files of ${ARCHIVE[$name]} into $PKGLIBDIR and $SHAREDIR/extension"
done
