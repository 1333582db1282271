#!/usr/bin/env bash
# tools/gpu-quick.sh - a short GPU iteration: the CUDA op tests, then decode
# timing at 8B shapes (fast, invariant, and fast with the own tensor-core GEMMs
# instead of cuBLASLt), from the prebuilt binaries of tools/gpu-prep.sh.
# Environment: MG_QUICK_BATCH (default 1,8,64), MG_QUICK_CTX (512,4096),
# MG_QUICK_TESTS (criterion filter, default all op tests), CKPT.
set -u
cd "$(dirname "$0")/.."
. tools/gpu-env.sh
gpu_unpack || exit 1
gpu_ckpt8b &
timeout 200 "$B/tests/test_cuda_ops" ${MG_QUICK_TESTS:+--filter "$MG_QUICK_TESTS"} > /tmp/ops.log 2>&1
echo "ops rc $?: $(grep Synthesis /tmp/ops.log)"
grep -E "FAIL|fail|Assert" /tmp/ops.log | head -20
if [ -z "${MG_QUICK_NO_MODEL:-}" ]; then
    SHARED=$(mktemp -d /tmp/mgshared.XXXXXX)
    mkdir -p "$SHARED/models" && ln -sfn "$(realpath gpu-carry/mg-llama-27m)" "$SHARED/models/mg-llama-27m"
    for t in test_cuda_model test_cuda_modes; do
        [ -x "$B/tests/$t" ] || continue
        MG_SHARED_DIR=$SHARED timeout 200 "$B/tests/$t" --jobs 1 > /tmp/$t.log 2>&1
        echo "$t rc $?: $(grep Synthesis /tmp/$t.log)"
        grep -E "FAIL|fail|Assert|^cuda " /tmp/$t.log | head -12 | cut -c1-220
    done
fi
wait
BATCH=${MG_QUICK_BATCH:-1,8,64}
CTX=${MG_QUICK_CTX:-512,4096}
timeout 200 "$B/cuda_bench" -m "$CKPT" --batch "$BATCH" --ctx "$CTX" --steps 6 --prefill 2048 --out /tmp/b.md > /tmp/b.log 2>&1 || tail -3 /tmp/b.log
[ -n "${MG_QUICK_COMPARE:-}" ] && env $MG_QUICK_COMPARE timeout 100 "$B/cuda_bench" -m "$CKPT" --batch "$BATCH" \
    --ctx 512 --steps 6 --prefill 0 --out /tmp/bcmp.md > /tmp/bcmp.log 2>&1
MG_CUDA_FAST_GEMM=tc timeout 100 "$B/cuda_bench" -m "$CKPT" --kernels fast --batch "$BATCH" --ctx 512 --steps 6 \
    --prefill 0 --out /tmp/btc.md > /tmp/btc.log 2>&1 || tail -3 /tmp/btc.log
cat /tmp/b.md
echo "fast with MG_CUDA_FAST_GEMM=tc (the own tensor-core GEMMs, fast attention):"
grep '^| fast' /tmp/btc.md
if [ -n "${MG_QUICK_COMPARE:-}" ]; then echo "with $MG_QUICK_COMPARE:"; grep '^| ' /tmp/bcmp.md | grep -v kernels; fi
[ -n "${OUT:-}" ] && cp /tmp/ops.log /tmp/b.md "$OUT/" 2>/dev/null
exit 0
