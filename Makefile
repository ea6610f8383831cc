# Thin wrapper over CMake. The two README commands:
#   make demo   set up, build and run the default job
#   make test   set up, build and run the whole test suite
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: setup build demo test test-fast test-fault sanitize clean

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

# Unit tests once under AddressSanitizer + UndefinedBehaviorSanitizer (CPU only).
sanitize: setup
	@cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMUONLAB_SANITIZE=ON -DMUONLAB_CUDA=OFF >/dev/null
	@cmake --build $(BUILD)-asan -j $(JOBS) --target muonlab_tests
	@cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS) -L unit

clean:
	rm -rf $(BUILD) $(BUILD)-asan
