# strictmx - the two commands a newcomer needs: `make run` and `make test`.
BUILD      ?= build
TEST_BUILD ?= build-test
FUZZ_BUILD ?= build-fuzz
FUZZ_TIME  ?= 60
CMAKE_GEN   = -G Ninja

.PHONY: all build run test unit fuzz fuzz-regress bench format format-check clean deps deps-test

all: build

deps:
	scripts/deps.sh build

deps-test:
	scripts/deps.sh test

build: deps
	cmake -S . -B $(BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=RelWithDebInfo
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

clean:
	rm -rf $(BUILD) $(TEST_BUILD) $(FUZZ_BUILD)
