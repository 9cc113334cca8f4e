# The two commands a newcomer needs:
#   make run    installs dependencies, builds, runs the main job on the bundled model
#   make test   installs dependencies, builds, runs every test
BUILD ?= build
JOBS ?= $(shell nproc)
TSAN_TESTS ?= thread_pool_test|detect_batcher_test|batch_engine_test|chat_session_test|batch_cli_test|serve_openai_client|serve_hostile
FUZZ_SECONDS ?= 60
# The trained model once it is in the repository, else the seeded random one
# that the build makes.
MODEL ?= $(if $(wildcard models/tiny-moe/config.json),models/tiny-moe,models/tiny-random-moe)
PROMPT ?= Once upon a time

.PHONY: all deps build run test test-asan test-tsan bench bench-batch bench-corpus bench-serve bench-families compare-bundled bench-plan fuzz clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

# The bundled default model is made by the build (seeded, reproducible) until
# the trained model lands in models/tiny-moe.
models/tiny-random-moe/config.json: | build
	$(BUILD)/epwa synth --preset tiny-random-moe --out models/tiny-random-moe --force

run: build $(MODEL)/config.json
	@bash scripts/demo.sh $(BUILD)/epwa $(MODEL) "$(PROMPT)"

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: build
	$(BUILD)/epwa bench --out-dir $(BUILD)/bench-model

# Continuous batching: 1, 2, 4 and 8 sequences together on the OLMoE shape
# (4 layers, about 3.8 GB of disk; a few minutes). Not part of `make test`.
bench-batch: build
	bash scripts/bench-batch.sh $(BUILD)/epwa $(BUILD)/bench-batch

bench-serve: build
	bash scripts/bench-serve.sh $(BUILD)/epwa $(BUILD)/bench-batch

# The two bundled models side by side (eval quant + eval watermark, one protocol).
compare-bundled: build
	bash scripts/compare-bundled.sh $(BUILD)/epwa

# Corpus detection: the CLI against python3 -m epwa.detect_corpus on a Dask
# LocalCluster of 1 and 2 worker processes (2,000 texts; about 2 minutes).
bench-corpus: build
	bash scripts/bench-detect-corpus.sh $(BUILD) models/tiny-qwen3-moe 2000

# Every level on the real shapes of Qwen3-MoE (4 of 48 layers) and OLMoE (all
# 16 layers): about 20 GB of disk, several minutes.
bench-families: build
	bash scripts/bench-families.sh $(BUILD)/epwa $(BUILD)/bench-families

# The memory plan against measured peak RSS on bigger synthetic models (several
# GB of disk and RAM, minutes): PLAN_MODELS lists preset:layers pairs.
PLAN_MODELS ?= olmoe-1b-7b:4 mixtral-8x7b:1 llama-3-8b:2
bench-plan: build
	EPWA_PLAN_BENCH_MODELS="$(PLAN_MODELS)" $(BUILD)/tests/plan_accuracy_test --gtest_filter='*BiggerModels*'

# Every libFuzzer target under ASan/UBSan (clang): FUZZ_SECONDS each (or
# FUZZ_RUNS executions), FUZZ_TARGETS="tokenizer npy" for some only.
fuzz:
	@bash scripts/install-deps.sh --fuzz
	CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEPWA_FUZZ=ON -DEPWA_BUILD_TESTS=OFF -DEPWA_BUILD_BENCH=OFF
	cmake --build build-fuzz -j $(JOBS) --target fuzz_targets
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

# The whole test suite under AddressSanitizer and UndefinedBehaviorSanitizer
# (build-asan/, optimised with debug info: UBSan's checks are inserted before
# optimisation, so an optimised build still reports misaligned loads, and the
# watermark evaluation takes minutes instead of over half an hour at -O0).
# Run before every release. plan_accuracy_test is left out: it compares the
# memory plan with the process's measured peak RSS, which ASan's shadow,
# redzones and quarantine inflate by 15-20 % (and at ASan speed it runs past
# its 20-minute limit); `make test` runs it.
test-asan: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEPWA_SANITIZE=ON -DEPWA_BUILD_BENCH=OFF
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ctest --output-on-failure -j $(JOBS) -E '^plan_accuracy_test$$'

# The threaded parts under ThreadSanitizer: the thread pool, the batch
# engine, the scheduler, and the server with real clients (no suppressions:
# every report halts the test).
test-tsan: deps
	cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEPWA_TSAN=ON -DEPWA_BUILD_BENCH=OFF
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
	  ctest --output-on-failure -j $(JOBS) -R '$(TSAN_TESTS)'

clean:
	rm -rf $(BUILD) build-fuzz build-asan build-tsan
