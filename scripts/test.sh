#!/usr/bin/env bash
# turbovec: the whole test suite, as the README runs it (`bash scripts/test.sh`),
# on every supported PostgreSQL major version:
#
#   15  natively, from Debian 12's own packages (scripts/test-pg.sh)
#   17  in a Debian trixie root (scripts/pgchroot.sh 17)
#   18  in a Debian sid root (scripts/pgchroot.sh 18)
#
# Each leg builds with -Werror and runs the codec and snapshot unit tests,
# pg_regress, the TAP tests and (where the previous release builds) the
# upgrade test; the 15 leg also runs the bounded fuzz of the .tv parser, which
# does not depend on the server.  A leg that cannot run fails: nothing is
# skipped silently.  Prints each leg's verdict and time, then
# "matrix: N passed, M failed".
#
# Environment: TV_PG_MAJORS (default "15 17 18") picks legs; every knob of
# scripts/test-pg.sh applies to each leg.  The 17 and 18 legs run the soak
# test for TV_SOAK_SECONDS (default 60 there, 120 on 15).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

MAJORS=${TV_PG_MAJORS:-15 17 18}
declare -A VERDICT=()
declare -A TOOK=()
passed=0
failed=0

for major in $MAJORS; do
	printf '\n##### PostgreSQL %s #####\n' "$major"
	t0=$SECONDS
	if [ "$major" = 15 ]; then
		TV_PG_MAJOR=15 bash scripts/test-pg.sh
	else
		TV_FUZZ_TIME=0 TV_SOAK_SECONDS=${TV_SOAK_SECONDS:-60} \
			bash scripts/pgchroot.sh "$major"
	fi
	rc=$?
	TOOK[$major]=$((SECONDS - t0))
	if [ "$rc" -eq 0 ]; then
		VERDICT[$major]=ok
		passed=$((passed + 1))
	else
		VERDICT[$major]=FAIL
		failed=$((failed + 1))
	fi
done

printf '\n##### matrix #####\n'
for major in $MAJORS; do
	printf 'pg%-3s %-5s %ss\n' "$major" "${VERDICT[$major]}" "${TOOK[$major]}"
done
echo "matrix: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
