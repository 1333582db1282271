#!/usr/bin/env bash
# tools/gpu-prep.sh [CARRY_DIR] - run HERE (no GPU needed) before a GPU call:
# builds the CUDA binaries (make CUDA=1 BUILD=build-gpu-prep) and packs them,
# stripped, with the shared libraries they need that a bare CUDA image may
# lack (cJSON, PCRE2, Criterion and its dependencies, libgomp), into
# CARRY_DIR/prebuilt.tar.xz (default gpu-carry/, which .git/info/exclude
# should list). tools/gpu-check.sh uses it when its binaries start on the GPU
# machine, and builds there otherwise. Also copies ../shared's mg-llama-27m
# into CARRY_DIR unless it is there already, and writes CARRY_DIR/datasets:
# the first MG_PREP_PROMPTS (default 72) usable prompts of each of the four
# datasets `margingate flips --dataset all` reads, under their own file names
# (about 0.3 MB; ../shared does not travel to the GPU machine).
# tools/gpu-determinism.sh points MARGINGATE_DATASETS there.
#
# Then, on the GPU machine: tools/gpu-check.sh gpu-carry/mg-llama-27m and/or
# tools/gpu-determinism.sh (carry: gpu-carry). The whole carry must stay
# under the device's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${1:-gpu-carry}
BUILD=build-gpu-prep
mkdir -p "$CARRY"
# x86-64-v3 (AVX2 + FMA) instead of -march=native: the GPU machine's CPU may
# lack what this one has (same results: the C code orders its arithmetic).
make -j"$(nproc)" CUDA=1 BUILD=$BUILD OPT="-O2 -march=x86-64-v3" $BUILD/margingate $BUILD/cuda_bench $BUILD/tests/test_cuda_ops \
    $BUILD/tests/test_cuda_model $BUILD/tests/test_cuda_modes $BUILD/tests/test_cuda_tp $BUILD/mma_gemv_probe
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/tests" "$STAGE/lib"
for b in margingate cuda_bench tests/test_cuda_ops tests/test_cuda_model tests/test_cuda_modes tests/test_cuda_tp \
    mma_gemv_probe; do
    strip -o "$STAGE/$b" "$BUILD/$b"
done
# Shared libraries outside glibc, the compiler runtime, CUDA and OpenSSL.
for b in margingate tests/test_cuda_ops; do ldd "$BUILD/$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -vE '/(ld-linux[^/]*|libc|libm|libpthread|libdl|librt|libresolv|libgcc_s|libstdc\+\+|libcuda[^/]*|libcublas[^/]*|libcudart[^/]*|libcrypto|libssl)\.so' |
    while read -r lib; do cp -L "$lib" "$STAGE/lib/"; done
tar -C "$STAGE" -cf - . | xz -9 -T0 > "$CARRY/prebuilt.tar.xz"
# The commit the binaries were built from (-dirty: with uncommitted changes).
echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src include tests Makefile 2>/dev/null || echo -dirty)" \
    > "$CARRY/prebuilt.commit"
# MG_PREP_MODEL=0: only the tokenizer (for tools/gpu-ab.sh's variants, which
# make the 8B-shaped checkpoint with it and need no 27M weights).
if [ "${MG_PREP_MODEL:-1}" = 0 ] && [ ! -d "$CARRY/mg-llama-27m" ]; then
    mkdir -p "$CARRY/mg-llama-27m" && cp ../shared/models/mg-llama-27m/tokenizer.json "$CARRY/mg-llama-27m/"
fi
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
# Trimmed datasets: the loader takes a dataset's first usable records in file
# order, so the first N usable records of each file give the same prompts as
# the whole file. ShareGPT keeps only what the loader reads (the first human
# turn), cut at 3000 characters where the cut text still has at least 400
# tokens (the tools cut prompts to at most 256), else whole.
if [ -d ../shared/datasets ]; then
    mkdir -p "$CARRY/datasets"
    python3 - ../shared/datasets "$CARRY/datasets" "${MG_PREP_PROMPTS:-72}" "$BUILD/margingate" \
        ../shared/models/mg-llama-27m <<'PY'
import gzip, json, os, subprocess, sys
src, dst, n, binary, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]

def first_records(lines, field):
    out = []
    for line in lines:
        if len(out) == n:
            break
        if line.strip():
            rec = json.loads(line)
            if isinstance(rec.get(field), str) and rec[field]:
                out.append(line.rstrip("\n") + "\n")
    return "".join(out)

with open(f"{src}/gsm8k_test.jsonl", encoding="utf-8") as f:
    text = first_records(f, "question")
with open(f"{dst}/gsm8k_test.jsonl", "w", encoding="utf-8") as f:
    f.write(text)
with open(f"{src}/math500_test.jsonl", encoding="utf-8") as f:
    text = first_records(f, "problem")
with open(f"{dst}/math500_test.jsonl", "w", encoding="utf-8") as f:
    f.write(text)
with gzip.open(f"{src}/HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
    text = first_records(f, "prompt")
with open(f"{dst}/HumanEval.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
    gz.write(text.encode("utf-8"))

def n_tokens(text):
    r = subprocess.run([binary, "tokenize", "-m", model, text], capture_output=True, text=True)
    return len(r.stdout.split()) if r.returncode == 0 else 0

with open(f"{src}/sharegpt_sg90k_first_sampled_sorted.json", encoding="utf-8") as f:
    records = json.load(f)
recs = []
for rec in records:
    if len(recs) == n:
        break
    turn = next((t for t in rec.get("conversations") or [] if t.get("from") in ("human", "user")), None)
    if not turn or not isinstance(turn.get("value"), str) or not turn["value"]:
        continue
    value = turn["value"]
    if len(value) > 3000 and n_tokens(value[:3000]) >= 400:
        value = value[:3000]
    recs.append({"id": rec.get("id"), "conversations": [{"from": turn["from"], "value": value}]})
with open(f"{dst}/sharegpt_sg90k_first_sampled_sorted.json", "w", encoding="utf-8") as f:
    json.dump(recs, f, ensure_ascii=False)
sizes = {name: os.path.getsize(f"{dst}/{name}") for name in sorted(os.listdir(dst))}
print("gpu-prep: datasets, %d prompts each: %s" % (n, ", ".join(f"{k} {v // 1024} KiB" for k, v in sizes.items())))
PY
fi
echo "gpu-prep: $(du -sh "$CARRY/prebuilt.tar.xz" | cut -f1) prebuilt, $(ls "$STAGE/lib" | wc -l) libraries;" \
    "carry total $(du -sh "$CARRY" | cut -f1)"
