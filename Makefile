# margingate build. `make` builds build/margingate (and the CUDA backend when
# nvcc is present; CUDA=0 skips it). `make test` builds and runs every test.
# `make asan` runs the test suite under AddressSanitizer + UBSan.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2 -march=native
# -ffp-contract=off: the compiler must not fuse a*b+c differently in two code
# paths, or a row could round differently at batch 1 and batch N.
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter $(OPT) -g -fopenmp -ffp-contract=off $(SANFLAGS) -Iinclude -Isrc
LDLIBS  += -lcjson -lpcre2-8 -lz -lmicrohttpd -lpthread -lm -fopenmp $(SANFLAGS)

LIB_SRC := $(sort $(wildcard src/util/*.c src/model/*.c src/tokenizer/*.c src/backend/*.c \
                             src/backend/cpu/*.c src/backend/tp/*.c src/engine/*.c src/determinism/*.c src/sched/*.c \
                             src/study/*.c src/server/*.c))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TOOL_BIN := $(BUILD)/cuda_bench

# ---- CUDA backend (src/backend/cuda) ---------------------------------------
# CUDA=1 builds it (an error without nvcc), CUDA=0 skips it, unset: built when
# nvcc is found (on the PATH or in /usr/local/cuda/bin). The CPU-only build
# has no CUDA dependency. Targets: sm_90 machine code (H100/H200) plus
# compute_80 PTX that the driver compiles for other GPUs (sm_80+); override
# with CUDA_ARCH. --fmad=false keeps a*b+c as two roundings unless a kernel
# asks for fmaf, as the CPU reference is compiled (-ffp-contract=off).
NVCC ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
ifeq ($(origin CUDA),undefined)
CUDA := $(if $(NVCC),1,0)
endif
ifeq ($(CUDA),1)
ifeq ($(NVCC),)
$(error CUDA=1 but nvcc was not found (set NVCC=/path/to/nvcc))
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80
NVCCFLAGS ?= -O3 -std=c++17 --fmad=false $(CUDA_ARCH) -Xcompiler -Wall,-Wextra,-Wno-unused-parameter -Iinclude -Isrc
CU_SRC   := $(sort $(wildcard src/backend/cuda/*.cu))
LIB_OBJ  += $(CU_SRC:%.cu=$(BUILD)/%.o)
CFLAGS   += -DMG_HAVE_CUDA
LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart_static -ldl -lrt -lpthread -lstdc++
# The pinned-cuBLASLt probe (a standalone tool, bench/results/lt-pin-*.md) and
# the probe of a tensor-core GEMV against the pinned kernels' bits.
TOOL_BIN += $(BUILD)/lt_pin_probe $(BUILD)/mma_gemv_probe
endif

.PHONY: all test asan clean deps FORCE
all: $(BUILD)/margingate $(TOOL_BIN)

$(BUILD)/libmargingate.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(BUILD)/margingate: $(CLI_OBJ) $(BUILD)/libmargingate.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# Objects that depend on whether the CUDA backend is in: rebuilt when CUDA
# changes between two builds in one BUILD directory.
$(BUILD)/cuda.stamp: FORCE
	@mkdir -p $(dir $@)
	@echo $(CUDA) | cmp -s - $@ || echo $(CUDA) > $@
$(BUILD)/src/backend/backend.o: $(BUILD)/cuda.stamp

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/lt_pin_probe: tools/lt_pin_probe.cu tools/lt_probe_util.cuh
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -o $@ $< -lcublasLt

$(BUILD)/mma_gemv_probe: tools/mma_gemv_probe.cu tools/lt_probe_util.cuh src/backend/cuda/cuda_common.cuh
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -o $@ $< -lcublasLt

$(BUILD)/cuda_bench: tools/cuda_bench.c $(BUILD)/libmargingate.a
	$(CC) $(CFLAGS) -MMD -MP -o $@ $< $(BUILD)/libmargingate.a $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmargingate.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -o $@ $< $(BUILD)/libmargingate.a -lcriterion $(LDLIBS)

ASAN_OPT   := -O1 -fno-omit-frame-pointer
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined

# The bad-input tests (malformed safetensors, configs, checkpoints,
# tokenizers) run a second time under AddressSanitizer + UBSan in `make test`.
BAD_INPUT_TESTS := test_model_safetensors test_model_config test_model_load test_tokenizer_bad
ifeq ($(SANFLAGS),)
SANITIZED_BIN := $(BAD_INPUT_TESTS:%=build-asan/tests/%)
endif

$(SANITIZED_BIN): FORCE
	@$(MAKE) --no-print-directory BUILD=build-asan OPT="$(ASAN_OPT)" SANFLAGS="$(ASAN_FLAGS)" CUDA=0 $@

# Runs every test binary; Criterion prints its own summary per binary and
# tools/run-tests.sh prints the overall "N passed, N failed" line.
test: $(BUILD)/margingate $(TOOL_BIN) $(TEST_BIN) $(SANITIZED_BIN)
	@BUILD=$(BUILD) sh tools/run-tests.sh $(TEST_BIN) $(SANITIZED_BIN)

# The whole suite under AddressSanitizer + UBSan.
asan:
	$(MAKE) test BUILD=build-asan OPT="$(ASAN_OPT)" SANFLAGS="$(ASAN_FLAGS)" CUDA=0

FORCE:

clean:
	rm -rf build build-asan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_BIN:=.d) $(TOOL_BIN:=.d)
