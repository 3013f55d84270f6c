#!/bin/sh
# fuzz.sh - run every built libFuzzer target for a while.
#
#   scripts/fuzz.sh BUILD_DIR SECONDS
#
# BUILD_DIR is a tree configured with -DSTRICTMX_FUZZ=ON (CC=clang). Each
# BUILD_DIR/tests/fuzz/fuzz_* binary runs for SECONDS on a work copy of its
# corpus (BUILD_DIR/fuzz-work/NAME/corpus, seeded from tests/fuzz/corpus/NAME
# and kept between runs) with tests/fuzz/NAME.dict when there is one. Prints
# the executions per target; exits 1 if any target crashed (a crash-, leak-,
# timeout- or oom- file in BUILD_DIR/fuzz-work/NAME/artifacts/).
set -eu

if [ $# -ne 2 ]; then
	echo "usage: $0 BUILD_DIR SECONDS" >&2
	exit 2
fi
build=$(cd "$1" && pwd)
secs=$2
case $secs in
'' | *[!0-9]*)
	echo "$0: SECONDS must be a number" >&2
	exit 2
	;;
esac
src=$(cd "$(dirname "$0")/.." && pwd)

found=0
failed=0
for bin in "$build"/tests/fuzz/fuzz_*; do
	[ -f "$bin" ] && [ -x "$bin" ] || continue
	name=$(basename "$bin")
	case $name in *_replay) continue ;; esac
	found=$((found + 1))

	work=$build/fuzz-work/$name
	mkdir -p "$work/corpus"
	rm -rf "$work/artifacts"
	mkdir -p "$work/artifacts"
	if [ -d "$src/tests/fuzz/corpus/$name" ]; then
		cp -R "$src/tests/fuzz/corpus/$name/." "$work/corpus/"
	fi
	set -- -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$work/artifacts/"
	if [ -f "$src/tests/fuzz/$name.dict" ]; then
		set -- "$@" -dict="$src/tests/fuzz/$name.dict"
	fi

	rc=0
	"$bin" "$@" "$work/corpus" >"$work/log" 2>&1 || rc=$?

	execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$work/log" | tail -n 1)
	if [ -z "$execs" ]; then
		execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$work/log" | tail -n 1)
	fi
	crashes=$(find "$work/artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' \
		-o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
	echo "$name: ${execs:-?} executions in ${secs}s, corpus $(ls "$work/corpus" | wc -l) files"
	if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
		echo "$name: FAILED (exit $rc, $crashes crash files in $work/artifacts; log $work/log)" >&2
		tail -n 40 "$work/log" >&2
		failed=$((failed + 1))
	fi
done

if [ "$found" -eq 0 ]; then
	echo "$0: no fuzz_* binaries in $build/tests/fuzz (configure with -DSTRICTMX_FUZZ=ON)" >&2
	exit 1
fi
[ "$failed" -eq 0 ]
