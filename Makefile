# strictmx - the two commands a newcomer needs: `make run` and `make test`.
BUILD      ?= build
TEST_BUILD ?= build-test
FUZZ_BUILD ?= build-fuzz
FUZZ_TIME  ?= 60
CMAKE_GEN   = -G Ninja

.PHONY: all build run test unit fuzz fuzz-regress bench format format-check clean deps deps-test memcheck

all: build

deps:
	scripts/deps.sh build

deps-test:
	scripts/deps.sh test

build: deps
	cmake -S . -B $(BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRICTMX_WERROR=ON
	cmake --build $(BUILD)

# Starts the daemon in the foreground on the embedded default (127.0.0.1:2525).
run: build
	./$(BUILD)/strictmxd $(ARGS)

# Every test (unit, fuzz-corpus replay, integration with real peers) under ASan+UBSan.
test: deps-test
	cmake -S . -B $(TEST_BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Debug -DSTRICTMX_SANITIZE=ON
	cmake --build $(TEST_BUILD)
	cd $(TEST_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure --timeout 900 $(CTEST_ARGS)

unit: deps-test
	cmake -S . -B $(TEST_BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Debug -DSTRICTMX_SANITIZE=ON
	cmake --build $(TEST_BUILD)
	cd $(TEST_BUILD) && ctest --output-on-failure -L 'unit|fuzz'

# libFuzzer: each target runs FUZZ_TIME seconds on its corpus (tests/fuzz/corpus/NAME).
fuzz: deps-test
	CC=clang cmake -S . -B $(FUZZ_BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Debug -DSTRICTMX_FUZZ=ON
	cmake --build $(FUZZ_BUILD)
	scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_TIME)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

# strictmxd vs Postfix on loopback, tables into docs/BENCHMARKS.md (a few minutes;
# settings in bench/bench.py). BENCH_BUILD_ONLY=1 only builds.
bench:
	BUILD=$(BUILD) bench/run.sh
	BUILD=$(BUILD) BENCH_NO_BUILD=1 bench/scan-bench.sh

# Valgrind memcheck: a non-sanitized debug build, and integration tests whose daemon runs
# under valgrind (smxtest.py honours STRICTMXD_WRAPPER); a valgrind error exits 99, which
# the tests report as a bad daemon exit code (--vgdb=no: no FIFOs left in /tmp once the
# daemon has dropped root). MEMCHECK_TESTS: a ctest -R regex.
MEMCHECK_BUILD ?= build-memcheck
MEMCHECK_TESTS ?= swaks|injection|smuggling|queue
memcheck: deps-test
	cmake -S . -B $(MEMCHECK_BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Debug -DSTRICTMX_SANITIZE=OFF
	cmake --build $(MEMCHECK_BUILD)
	printf '#!/bin/sh\nexec valgrind --error-exitcode=99 --leak-check=full --track-fds=no --vgdb=no -q "$$@"\n' \
		> $(MEMCHECK_BUILD)/valgrind-strictmxd
	chmod +x $(MEMCHECK_BUILD)/valgrind-strictmxd
	cd $(MEMCHECK_BUILD) && STRICTMXD_WRAPPER=$(CURDIR)/$(MEMCHECK_BUILD)/valgrind-strictmxd \
		ctest --output-on-failure --timeout 1800 -L integration -R '$(MEMCHECK_TESTS)' $(CTEST_ARGS)

clean:
	rm -rf $(BUILD) $(TEST_BUILD) $(FUZZ_BUILD)
