# Thin wrapper over CMake. The two README commands:
#   make demo   set up, build and run the default job
#   make test   set up, build and run the whole test suite
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: setup build demo test test-fast test-fault sanitize fuzz clean

setup:
	@bash scripts/setup-deps.sh

build: setup
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	@$(BUILD)/bin/muonlab demo

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-fast: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -L unit

# The fault suite alone (also part of `make test`): kill -9 and resume, signals, corrupt
# checkpoints, two writers, a full disk; about 30 s on 2 cores.
test-fault: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -L fault

# Unit tests and the fuzz harness (tests/test_fuzz.cpp: every parser of outside input on seeded
# mutations, at most 5 s each) once under AddressSanitizer + UndefinedBehaviorSanitizer (CPU only).
sanitize: setup
	@cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMUONLAB_SANITIZE=ON -DMUONLAB_CUDA=OFF >/dev/null
	@cmake --build $(BUILD)-asan -j $(JOBS) --target muonlab_tests
	@cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS) -L 'unit|fuzz'

# The fuzz harness alone, in the sanitizer build; FUZZ_SECONDS per parser (CI: 5).
FUZZ_SECONDS ?= 60
fuzz: setup
	@cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMUONLAB_SANITIZE=ON -DMUONLAB_CUDA=OFF >/dev/null
	@cmake --build $(BUILD)-asan -j $(JOBS) --target muonlab_tests
	@cd $(BUILD)-asan && MUONLAB_FUZZ_SECONDS=$(FUZZ_SECONDS) MUONLAB_FUZZ_ITERATIONS=100000000 \
	  ./bin/muonlab_tests --gtest_filter='Fuzz*'

clean:
	rm -rf $(BUILD) $(BUILD)-asan
