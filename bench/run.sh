#!/bin/sh
# bench/run.sh - `make bench`: build the release strictmxd and smtp-load, then run
# strictmxd against a private Postfix in alternation (bench/bench.py) and write the
# tables into docs/BENCHMARKS.md. Settings: see the head of bench/bench.py
# (ROUNDS, DUR, CONNS, HS_DUR, IDLE_K, PF_IDLE_K, PERF) and bench/relay.py
# (RELAY_*; BENCH_ONLY=relay runs only the outbound relay part). Loopback only; takes a
# few minutes with the defaults; BENCH_BUILD_ONLY=1 stops after the build.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
cd "$ROOT"

# The release daemon (build/strictmxd). `make build` is -O2 with -Werror; when GCC's
# -O2-only diagnostics (maybe-uninitialized, format-truncation) stop it, build the
# same sources again with warnings not fatal rather than not benchmarking; say so.
LOG=${TMPDIR:-/tmp}/smx-bench-build.$$.log
if ! make --no-print-directory build BUILD="$BUILD" >"$LOG" 2>&1; then
	echo "bench: 'make build' failed; the errors:" >&2
	grep -E 'error:|Error ' "$LOG" | head -8 >&2 || true
	echo "bench: building $BUILD again with -DSTRICTMX_WERROR=OFF (warnings kept)" >&2
	cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DCMAKE_C_FLAGS= -DSTRICTMX_WERROR=OFF >/dev/null
	if ! cmake --build "$BUILD" >"$LOG" 2>&1; then
		cat "$LOG" >&2
		rm -f "$LOG"
		exit 1
	fi
fi
rm -f "$LOG"
make --no-print-directory -C bench
[ -n "${BENCH_BUILD_ONLY:-}" ] && exit 0

# BENCH_ONLY names parts of bench/bench.py (throughput,handshake,memory,perf) and/or
# "relay" (bench/relay.py, the outbound relay benchmark); empty: everything.
inbound=yes relay=yes
if [ -n "${BENCH_ONLY:-}" ]; then
	case ",$BENCH_ONLY," in *,relay,*) ;; *) relay=no ;; esac
	[ -z "$(echo ",$BENCH_ONLY," | sed 's/,relay,/,/g; s/^,*//; s/,*$//')" ] && inbound=no
fi
export STRICTMXD=${STRICTMXD:-$ROOT/$BUILD/strictmxd} SMTP_LOAD=$ROOT/bench/smtp-load \
	TLS_SINK=$ROOT/bench/tls-sink
rc=0
[ "$inbound" = yes ] && { python3 "$ROOT/bench/bench.py" || rc=$?; }
[ "$relay" = yes ] && { python3 "$ROOT/bench/relay.py" || rc=$?; }
exit $rc
