#!/bin/sh
# bench/scan-bench.sh - `strictmx scan` throughput (issue 5): builds the release binaries
# (`make build`), builds a population of loopback test domains with known ground truth
# (tests/integration/scanpop.py: NSD with 4 signed zones, 7 listeners on 127.0.2.x,
# ~1,000 domains), scans it with build/strictmx, checks every domain's
# classification, and prints for each run domains/s and the CPU time per domain of the
# scanner and of the population's servers (wall-clock rates on a shared machine vary with
# what else runs; the CPU times much less).
#
# Populations, one after the other, each checked domain by domain (SCAN_SETS):
#   pf1     unique-MX, served as in the earlier figures: 6 Postfix instances and one
#           strictmxd, each listener on ONE address (7 addresses for ~1,000 domains, so
#           the scan's per-address limit, 4, caps the connections per listener).
#   smx16   unique-MX (every domain its own MX host names), served by strictmxd
#           daemons (Postfix only for the no-STARTTLS scenario), each listener on 16
#           addresses over which the domains' MX hosts are spread ("a few listeners on
#           many 127.x addresses", issue 5): the servers cost less CPU, and the
#           per-address limit means what it means on the Internet.
#   shared  the same servers, SCAN_SHARED_MX (0.7) of the domains pointing their MX
#           records at a few providers' MX hosts (scanpop.py PROVIDERS), as most real
#           domains do; their TLS probes are shared.
#
# Settings (environment): BUILD (default build), SCAN_DOMAINS (1000), SCAN_RUNS (3),
# SCAN_WARMUP (1: scans before the measured runs, not counted), SCAN_CONCURRENCY (200), SCAN_PER_IP (0: the scan default, 4), SCAN_JOBS (0: the scan
# default, one worker process per core), SCAN_SETS ("pf1 smx16 shared"), SCAN_ADDRS (16:
# addresses per listener of smx16 and shared), SCAN_SHARED_MX (0.7), BENCH_NO_BUILD=1 (use
# the binaries as they are).
# Needs root (private Postfix instances) and the test packages (scripts/deps.sh test).
# Loopback only; every step bounded; ~3 min with the defaults.
# Exit status: non-zero when a run of any population misclassified a domain or a scan
# failed.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
cd "$ROOT"

if [ -z "${BENCH_NO_BUILD:-}" ]; then
	LOG=${TMPDIR:-/tmp}/smx-scan-bench-build.$$.log
	if ! make --no-print-directory build BUILD="$BUILD" >"$LOG" 2>&1; then
		cat "$LOG" >&2
		rm -f "$LOG"
		echo "scan-bench: 'make build' failed" >&2
		exit 1
	fi
	rm -f "$LOG"
fi
for b in strictmx strictmxd; do
	if [ ! -x "$BUILD/$b" ]; then
		echo "scan-bench: $BUILD/$b not found (make build)" >&2
		exit 1
	fi
done

echo "scan-bench: $(nproc) cores; binaries from $BUILD/ ($(grep -m1 CMAKE_BUILD_TYPE "$BUILD/CMakeCache.txt" 2>/dev/null || echo 'build type unknown'))"
ADDRS=${SCAN_ADDRS:-16}
rc=0
for set_ in ${SCAN_SETS:-pf1 smx16 shared}; do
	case $set_ in
	pf1) args="--servers postfix --addrs 1 --shared-mx 0" what="unique-MX, Postfix + strictmxd, 1 address per listener" ;;
	smx16) args="--servers strictmxd --addrs $ADDRS --shared-mx 0" what="unique-MX, strictmxd, $ADDRS addresses per listener" ;;
	shared) args="--servers strictmxd --addrs $ADDRS --shared-mx ${SCAN_SHARED_MX:-0.7}" what="shared-MX ${SCAN_SHARED_MX:-0.7}, strictmxd, $ADDRS addresses per listener" ;;
	*)
		echo "scan-bench: unknown set '$set_' in SCAN_SETS (pf1, smx16, shared)" >&2
		exit 2
		;;
	esac
	echo "scan-bench: --- $what ---"
	# shellcheck disable=SC2086 # args is a list of options
	timeout 900 python3 "$ROOT/tests/integration/scanpop.py" \
		--domains "${SCAN_DOMAINS:-1000}" --runs "${SCAN_RUNS:-3}" --warmup "${SCAN_WARMUP:-1}" \
		--concurrency "${SCAN_CONCURRENCY:-200}" --per-ip "${SCAN_PER_IP:-0}" \
		--jobs "${SCAN_JOBS:-0}" $args \
		--strictmx "$ROOT/$BUILD/strictmx" --strictmxd "$ROOT/$BUILD/strictmxd" || {
		r=$?
		echo "scan-bench: $what: FAILED (exit $r: a misclassification or a failed scan)" >&2
		rc=1
	}
done
exit $rc
