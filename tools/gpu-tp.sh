#!/usr/bin/env bash
# tools/gpu-tp.sh - issue 7's checks and figures on a machine with 2+ GPUs (kind
# nvidia-h200-x2), in one call of about 8 minutes:
#   ckpt       Llama-3.1-8B- and Qwen2.5-14B-shaped checkpoints with random weights
#              (tools/make_checkpoint.py, in the background from the start; reused
#              when present in /tmp)
#   ops        test_cuda_ops: matmul_groups + fold == invariant matmul, bitwise
#   tp-27m     test_cuda_tp on mg-llama-27m: the determinism modes on 2 GPUs
#   tp-8b      test_cuda_tp on the 8B shapes: invariant logits bitwise = 1 GPU,
#              engine tokens (invariant, llm42) = 1 GPU, fast logits close
#   generate   `generate --kernels invariant` on 1 and 2 GPUs: same tokens (with
#              MG_CUDA_INVARIANT_GEMM=tc: the 1-GPU order that TP's group fold
#              reproduces; docs/tensor-parallel.md)
#   bench-8b   cuda_bench decode TPOT at TP 1 and 2 (fast, invariant), and TP 2 with
#              MG_TP_SKIP_COMM=1 (collectives skipped: their time per step)
#   bench-14b  the same at TP 2 on the Qwen2.5-14B shapes
# Prepare here: tools/gpu-prep.sh; on the device, carrying gpu-carry:
#   OUT=$OUT tools/gpu-tp.sh
# Environment: MG_TP_BUDGET_S (default 560) seconds by which every step must end;
# MG_TP_BATCHES (default 1,8,32,64), MG_TP_CTX (default 512); MG_TP_TESTS_ONLY=1: the checks
# only (8B checkpoint, no benchmarks, no 14B: about 4 minutes).
set -u
cd "$(dirname "$0")/.." || exit 1
START=$(date +%s)
BUDGET=${MG_TP_BUDGET_S:-560}
BATCHES=${MG_TP_BATCHES:-1,8,32,64}
CTX=${MG_TP_CTX:-512}
CARRY=gpu-carry
CK8=/tmp/mg-llama8b-random
CK14=/tmp/mg-qwen14b-random
RESULTS=${OUT:-}
W=$(mktemp -d /tmp/gpu-tp.XXXXXX)
if [ -n "$RESULTS" ]; then
    mkdir -p "$RESULTS"
    exec > >(tee "$RESULTS/gpu-tp.log") 2>&1
fi
el() { echo $(($(date +%s) - START)); }
SUMMARY=()
stage() { SUMMARY+=("$(printf '%-10s %-4s %s' "$1" "$2" "$3")"); echo "[$(el)s] $1: $2 $3"; }
left() { echo $((BUDGET - $(el))); }
# boxed SECONDS LOG CMD...: runs CMD with a cap (at most what is left), RC = its status
boxed() {
    local cap=$1 log=$2
    shift 2
    local l
    l=$(left)
    [ "$cap" -gt "$l" ] && cap=$l
    [ "$cap" -lt 5 ] && { RC=124; echo "no time left" > "$log"; return; }
    timeout -k 5 "$cap" "$@" > "$log" 2>&1
    RC=$?
}
criterion_line() { grep 'Synthesis:' "$1" | tail -n 1 | sed 's/.*Synthesis: //'; }

echo "gpu-tp: $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"
nvidia-smi topo -m 2>/dev/null | head -n 4

# ---- checkpoints (background) ------------------------------------------------------
make_ckpt() { # DIR ARGS...
    local dir=$1
    shift
    if [ -f "$dir/.complete" ]; then return 0; fi
    rm -rf "$dir"
    python3 tools/make_checkpoint.py "$@" --shards 4 --seed 1 --tokenizer "$CARRY/mg-llama-27m/tokenizer.json" \
        --out "$dir" && touch "$dir/.complete"
}
(make_ckpt $CK8 --preset llama-3.1-8b > "$W/ck8.log" 2>&1; echo $? > "$W/ck8.rc") &
TESTS_ONLY=${MG_TP_TESTS_ONLY:-0}
[ "$TESTS_ONLY" = 1 ] || (make_ckpt $CK14 --preset qwen2.5-14b > "$W/ck14.log" 2>&1; echo $? > "$W/ck14.rc") &
wait_ckpt() { # NAME -> 0 when ready
    while [ ! -f "$W/$1.rc" ] && [ "$(left)" -gt 10 ]; do sleep 2; done
    [ -f "$W/$1.rc" ] && [ "$(cat "$W/$1.rc")" = 0 ]
}

# ---- binaries ----------------------------------------------------------------------
B=build-gpu
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
rm -rf $B && mkdir -p $B && tar -xf "$CARRY"/prebuilt.tar.* -C $B
if ! $B/margingate --help > /dev/null 2>&1; then
    make -j"$(nproc)" CUDA=1 BUILD=$B $B/margingate $B/cuda_bench $B/tests/test_cuda_ops $B/tests/test_cuda_tp \
        > "$W/build.log" 2>&1 || { stage build FAIL "$(grep -m1 error "$W/build.log")"; }
fi
stage build PASS "binaries of $(cat "$CARRY/prebuilt.commit" 2>/dev/null)"

SHARED=$(mktemp -d /tmp/mgshared.XXXXXX)
mkdir -p "$SHARED/models"
ln -sfn "$(realpath "$CARRY/mg-llama-27m")" "$SHARED/models/mg-llama-27m"
export MG_SHARED_DIR=$SHARED

criterion_stage() { # NAME LOG (tests outside --filter count as skipped: the skip report is not a failure)
    local line
    line=$(criterion_line "$2")
    if [ $RC = 0 ] && [ -n "$line" ] && ! grep -q 'Failing: [1-9]\|Crashing: [1-9]\|Passing: 0 ' "$2"; then
        stage "$1" PASS "$line"
    else
        stage "$1" FAIL "rc $RC; $line; $(grep -m2 -E 'differ|SKIPPED|assert|Error|error' "$2" | cut -c1-200 | xargs)"
    fi
}

boxed 120 "$W/ops.log" $B/tests/test_cuda_ops --filter 'cuda_ops/matmul_groups*'
criterion_stage ops "$W/ops.log"
boxed 240 "$W/tp27.log" $B/tests/test_cuda_tp --filter 'cuda_tp/+(invariant_bitwise|llm42|margingate)*' --jobs 1
criterion_stage tp-27m "$W/tp27.log"

if wait_ckpt ck8; then
    stage ckpt-8b PASS "$CK8 ($(du -sh $CK8 | cut -f1), ready at $(el)s)"
    export MG_TP_CKPT=$CK8
    boxed 240 "$W/tp8.log" $B/tests/test_cuda_tp --filter 'cuda_tp/+(invariant_logits|fast_logits|engine_tokens)*' \
        --jobs 1
    criterion_stage tp-8b "$W/tp8.log"
    grep 'prefill logits' "$W/tp8.log"
    P="The quick brown fox"
    MG_CUDA_INVARIANT_GEMM=tc boxed 60 "$W/gen1.log" $B/margingate generate -m $CK8 -p "$P" -n 32 \
        --kernels invariant --ignore-eos --json
    MG_CUDA_INVARIANT_GEMM=tc boxed 60 "$W/gen2.log" $B/margingate generate -m $CK8 -p "$P" -n 32 \
        --kernels invariant --ignore-eos --json --tensor-parallel 2
    ids1=$(grep -o '"token_ids":[^]]*\]' "$W/gen1.log" | tail -n 1)
    ids2=$(grep -o '"token_ids":[^]]*\]' "$W/gen2.log" | tail -n 1)
    if [ -n "$ids1" ] && [ "$ids1" = "$ids2" ]; then stage generate PASS "32 tokens equal on 1 and 2 GPUs (invariant)"
    else stage generate FAIL "1 GPU: ${ids1:0:80} / 2 GPUs: ${ids2:0:80} ($(tail -n 1 "$W/gen2.log" | cut -c1-120))"; fi
    for tp in 1 2; do
        [ "$TESTS_ONLY" = 1 ] && break
        boxed 120 "$W/b8-tp$tp.md" $B/cuda_bench -m $CK8 --tensor-parallel $tp --batch "$BATCHES" --ctx "$CTX" \
            --prefill 2048
        stage "bench-8b" "$([ $RC = 0 ] && echo PASS || echo FAIL)" "tp $tp (rc $RC)"
    done
    if [ "$TESTS_ONLY" != 1 ]; then
        MG_TP_SKIP_COMM=1 boxed 120 "$W/b8-tp2-nocomm.md" $B/cuda_bench -m $CK8 --tensor-parallel 2 \
            --batch "$BATCHES" --ctx "$CTX" --prefill 0
        stage "bench-8b" "$([ $RC = 0 ] && echo PASS || echo FAIL)" "tp 2, collectives skipped (rc $RC)"
    fi
else
    stage ckpt-8b FAIL "$(tail -n 2 "$W/ck8.log" | xargs)"
fi
if [ "$TESTS_ONLY" = 1 ]; then
    stage bench-14b SKIP "MG_TP_TESTS_ONLY=1"
elif wait_ckpt ck14; then
    stage ckpt-14b PASS "$CK14 ($(du -sh $CK14 | cut -f1), ready at $(el)s)"
    boxed 150 "$W/b14-tp2.md" $B/cuda_bench -m $CK14 --tensor-parallel 2 --batch "$BATCHES" --ctx "$CTX" --prefill 2048
    stage "bench-14b" "$([ $RC = 0 ] && echo PASS || echo FAIL)" "tp 2 (rc $RC)"
    MG_TP_SKIP_COMM=1 boxed 120 "$W/b14-tp2-nocomm.md" $B/cuda_bench -m $CK14 --tensor-parallel 2 --batch "$BATCHES" \
        --ctx "$CTX" --prefill 0
    stage "bench-14b" "$([ $RC = 0 ] && echo PASS || echo FAIL)" "tp 2, collectives skipped (rc $RC)"
else
    stage ckpt-14b FAIL "$(tail -n 2 "$W/ck14.log" | xargs)"
fi

for f in b8-tp1 b8-tp2 b8-tp2-nocomm b14-tp2 b14-tp2-nocomm; do
    [ -f "$W/$f.md" ] || continue
    echo
    echo "### $f"
    grep -v '^cuda_bench:' "$W/$f.md"
done
echo
echo "## gpu-tp summary ($(el)s)"
printf '%s\n' "${SUMMARY[@]}"
if [ -n "$RESULTS" ]; then
    cp "$W"/*.md "$RESULTS/" 2>/dev/null
    tar -C "$W" -cJf "$RESULTS/gpu-tp-logs.tar.xz" . 2>/dev/null
fi
