#!/bin/sh
# bench/scan-bench.sh - `strictmx scan` throughput (issue 5): builds the release binaries
# (`make build`), builds a population of loopback test domains with known ground truth
# (tests/integration/scanpop.py: NSD with 4 signed zones, 7 Postfix/strictmxd listeners on
# 127.0.2.1-7, ~1,000 domains), scans it with build/strictmx, checks every domain's
# classification, and prints for each run domains/s and the CPU time per domain of the
# scanner and of the population's servers (wall-clock rates on a shared machine vary with
# what else runs; the CPU times much less).
#
# Two populations, one after the other, each checked domain by domain:
#   1. unique-MX (the primary figure, comparable with earlier ones): every domain has its
#      own MX host names, so only the plaintext enforcement probe is shared between
#      domains; the population's servers need ~3.5 ms CPU per domain (server-bound).
#   2. shared-MX (SCAN_SHARED_MX, default 0.7): that fraction of the domains point their
#      MX records at a few providers' MX hosts (scanpop.py PROVIDERS: valid PKIX, enforcing,
#      DANE-EE, no STARTTLS, expired), as most real domains do; their TLS probes are shared.
#
# Settings (environment): BUILD (default build), SCAN_DOMAINS (1000), SCAN_RUNS (3),
# SCAN_CONCURRENCY (200), SCAN_PER_IP (0: the scan default, 4), SCAN_JOBS (0: the scan
# default, one worker process per core), SCAN_SHARED_MX (0.7; 0 or empty: run only the
# unique-MX population), BENCH_NO_BUILD=1 (use the binaries as they are).
# Needs root (private Postfix instances) and the test packages (scripts/deps.sh test).
# Loopback only; every step bounded; ~2 min with the defaults.
# Exit status: non-zero when a run of either population misclassified a domain or a scan
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
FRACTIONS=0
case ${SCAN_SHARED_MX-0.7} in
"" | 0 | 0.0 | 0.00) ;;
*) FRACTIONS="0 ${SCAN_SHARED_MX-0.7}" ;;
esac
rc=0
for frac in $FRACTIONS; do
	[ "$frac" = 0 ] && what="unique-MX population" || what="shared-MX population ($frac)"
	echo "scan-bench: --- $what ---"
	timeout 900 python3 "$ROOT/tests/integration/scanpop.py" \
		--domains "${SCAN_DOMAINS:-1000}" --runs "${SCAN_RUNS:-3}" \
		--concurrency "${SCAN_CONCURRENCY:-200}" --per-ip "${SCAN_PER_IP:-0}" \
		--jobs "${SCAN_JOBS:-0}" --shared-mx "$frac" \
		--strictmx "$ROOT/$BUILD/strictmx" --strictmxd "$ROOT/$BUILD/strictmxd" || {
		r=$?
		echo "scan-bench: $what: FAILED (exit $r: a misclassification or a failed scan)" >&2
		rc=1
	}
done
exit $rc
