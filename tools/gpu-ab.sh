#!/usr/bin/env bash
# tools/gpu-ab.sh ROOT - A/B of builds (e.g. git branches) in one device call:
# ROOT/<name>/ holds one tools/gpu-prep.sh output each (made here with
# `MG_PREP_MODEL=0 tools/gpu-prep.sh ROOT/<name>` on each branch; carry ROOT).
# For each variant, in name order: the op tests (MG_AB_TESTS, a Criterion
# filter; default all), then cuda_bench decode TPOT at 8B shapes
# (MG_AB_KERNELS fast, MG_AB_BATCH 1,64, MG_AB_CTX 512), twice in turn so
# that drift between the runs shows. Prints one table row per variant and run.
set -u
cd "$(dirname "$0")/.."
ROOT=${1:?usage: tools/gpu-ab.sh ROOT}
VARIANTS=$(cd "$ROOT" && ls -d */ | tr -d /)
REPORT=/tmp/ab.md
: > "$REPORT"
first=$(echo "$VARIANTS" | head -n1)
for v in $VARIANTS; do
    MG_CARRY=$ROOT/$v
    . tools/gpu-env.sh
    B=build-gpu-$v
    export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64"
    gpu_unpack || { echo "$v: unpack failed" >> "$REPORT"; continue; }
    [ "$v" = "$first" ] && gpu_ckpt8b &
    timeout 300 "$B/tests/test_cuda_ops" ${MG_AB_TESTS:+--filter "$MG_AB_TESTS"} > /tmp/ops-$v.log 2>&1
    rc=$?
    echo "$v ($(cat "$ROOT/$v/prebuilt.commit")): ops rc $rc: $(grep Synthesis /tmp/ops-$v.log)" >> "$REPORT"
    grep -E "FAIL|Assert" /tmp/ops-$v.log | head -10 >> "$REPORT"
done
wait
for round in 1 2; do
    for v in $VARIANTS; do
        export LD_LIBRARY_PATH="$PWD/build-gpu-$v/lib:/usr/local/cuda/lib64"
        timeout 150 "build-gpu-$v/cuda_bench" -m "$CKPT" --kernels "${MG_AB_KERNELS:-fast}" \
            --batch "${MG_AB_BATCH:-1,64}" --ctx "${MG_AB_CTX:-512}" --steps 6 --prefill 0 \
            --out /tmp/ab-$v.md > /tmp/ab-$v.log 2>&1 || tail -3 /tmp/ab-$v.log >> "$REPORT"
        grep -E '^\| (fast|invariant)' /tmp/ab-$v.md | sed "s/^/$v r$round /" >> "$REPORT"
    done
done
grep -m1 -E '^\| kernels' /tmp/ab-"$first".md
cat "$REPORT"
[ -n "${OUT:-}" ] && cp "$REPORT" /tmp/ops-*.log "$OUT/" 2>/dev/null
exit 0
