#!/usr/bin/env bash
# tools/gpu-prep.sh [CARRY_DIR] - run HERE (no GPU needed) before a GPU call:
# builds the CUDA binaries (make CUDA=1 BUILD=build-gpu-prep) and packs them,
# stripped, with the shared libraries they need that a bare CUDA image may
# lack (cJSON, PCRE2, Criterion and its dependencies, libgomp), into
# CARRY_DIR/prebuilt.tar.xz (default gpu-carry/, which .git/info/exclude
# should list). tools/gpu-check.sh uses it when its binaries start on the GPU
# machine, and builds there otherwise. Also copies ../shared's mg-llama-27m
# into CARRY_DIR unless it is there already.
#
# Then, on the GPU machine: tools/gpu-check.sh gpu-carry/mg-llama-27m
# (carry: gpu-carry). The whole carry must stay under the device's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${1:-gpu-carry}
BUILD=build-gpu-prep
mkdir -p "$CARRY"
# x86-64-v3 (AVX2 + FMA) instead of -march=native: the GPU machine's CPU may
# lack what this one has (same results: the C code orders its arithmetic).
make -j"$(nproc)" CUDA=1 BUILD=$BUILD OPT="-O2 -march=x86-64-v3" $BUILD/margingate $BUILD/cuda_bench $BUILD/tests/test_cuda_ops \
    $BUILD/tests/test_cuda_model
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/tests" "$STAGE/lib"
for b in margingate cuda_bench tests/test_cuda_ops tests/test_cuda_model; do
    strip -o "$STAGE/$b" "$BUILD/$b"
done
# Shared libraries outside glibc, the compiler runtime, CUDA and OpenSSL.
for b in margingate tests/test_cuda_ops; do ldd "$BUILD/$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -vE '/(ld-linux[^/]*|libc|libm|libpthread|libdl|librt|libresolv|libgcc_s|libstdc\+\+|libcuda[^/]*|libcublas[^/]*|libcudart[^/]*|libcrypto|libssl)\.so' |
    while read -r lib; do cp -L "$lib" "$STAGE/lib/"; done
tar -C "$STAGE" -cf - . | xz -9 -T0 > "$CARRY/prebuilt.tar.xz"
if [ ! -d "$CARRY/mg-llama-27m" ] && [ -d ../shared/models/mg-llama-27m ]; then
    mkdir -p "$CARRY/mg-llama-27m"
    for f in config.json generation_config.json golden.json tokenizer.json tokenizer_config.json; do
        cp ../shared/models/mg-llama-27m/$f "$CARRY/mg-llama-27m/"
    done
    # MG_PREP_XZ=1: carry the weights xz-compressed (about 13 MB smaller);
    # gpu-check.sh unpacks them.
    if [ "${MG_PREP_XZ:-0}" = 1 ]; then
        xz -9 -T0 -c ../shared/models/mg-llama-27m/model.safetensors > "$CARRY/mg-llama-27m/model.safetensors.xz"
    else
        cp ../shared/models/mg-llama-27m/model.safetensors "$CARRY/mg-llama-27m/"
    fi
fi
echo "gpu-prep: $(du -sh "$CARRY/prebuilt.tar.xz" | cut -f1) prebuilt, $(ls "$STAGE/lib" | wc -l) libraries;" \
    "carry total $(du -sh "$CARRY" | cut -f1)"
