#!/usr/bin/env bash
# tools/gpu-profile.sh [CKPT_DIR] - where a decode step's time goes, per kernel,
# on a GPU machine: ncu measures every kernel of about three decode steps of
# build-gpu/cuda_bench (kernels serialised, so the sum shows kernel time
# without launch gaps) at batch 1 and 64, context 512, fast and invariant,
# and prints per kernel name: launches per step, microseconds per step.
# The step's wall TPOT (cuda_bench without ncu) is printed beside it, so
# TPOT - sum(kernels) is the time lost between kernels. MG_PROFILE_NCU_ARGS adds
# ncu options (e.g. "--cache-control none": caches kept warm between kernels,
# as in a real run; by default ncu flushes them before each kernel);
# MG_PROFILE_CONFIGS picks kernels:batch pairs (default "fast:1 invariant:1
# fast:64 invariant:64"). The pinned invariant GEMMs are tuned at load (a few
# thousand launches): fast configs run with MG_CUDA_INVARIANT_GEMM=tc, which
# skips that; invariant configs skip MG_PROFILE_INV_SKIP launches (default
# 12000) before the measured window instead of 2200.
# Needs the prebuilt binaries (tools/gpu-prep.sh) or a build in build-gpu,
# and an 8B-shaped checkpoint (written with tools/make_checkpoint.py if absent).
set -u
cd "$(dirname "$0")/.."
CKPT=${1:-${CKPT:-/tmp/mg-llama8b-random}}
. tools/gpu-env.sh
if [ ! -x "$B/cuda_bench" ]; then gpu_unpack || exit 1; fi
gpu_ckpt8b || exit 1
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
for cfg in ${MG_PROFILE_CONFIGS:-fast:1 invariant:1 fast:64 invariant:64}; do
    kern=${cfg%%:*} batch=${cfg##*:}
    skip=2200 igemm=tc
    [ "$kern" = invariant ] && skip=${MG_PROFILE_INV_SKIP:-12000} igemm=lt
    export MG_CUDA_INVARIANT_GEMM=$igemm
    "$B/cuda_bench" -m "$CKPT" --kernels "$kern" --batch "$batch" --ctx 512 --steps 8 --prefill 0 \
        > /tmp/prof-bench.log 2>&1
    tpot=$(grep -E "^\| $kern \| $batch \| 512 " /tmp/prof-bench.log | awk -F'|' '{print $5}' | tr -d ' ')
    # about 420 kernels per step; skip load, fill and warm-up, measure ~3 steps
    timeout 240 "$NCU" --clock-control none ${MG_PROFILE_NCU_ARGS:-} --metrics gpu__time_duration.sum --csv --print-units base \
        --launch-skip "$skip" --launch-count 1300 \
        "$B/cuda_bench" -m "$CKPT" --kernels "$kern" --batch "$batch" --ctx 512 --steps 8 --prefill 0 \
        > /tmp/prof-ncu.csv 2> /tmp/prof-ncu.err
    [ -n "${OUT:-}" ] && cp /tmp/prof-ncu.csv "$OUT/ncu-$kern-$batch.csv"
    echo "== $kern batch $batch ctx 512: TPOT ${tpot:-?} ms (without ncu)"
    python3 - "$kern" "$batch" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open('/tmp/prof-ncu.csv')) if len(r) > 10]
if not rows:
    print('  no ncu rows:', open('/tmp/prof-ncu.err').read()[-400:]); sys.exit()
h = rows[0]; ki = h.index('Kernel Name'); vi = h.index('Metric Value')
seq = [(r[ki].replace('void ', '').split('(')[0].split('<')[0][:40], float(r[vi].replace(',', '')) / 1e3)
       for r in rows[1:]]
# whole steps only: from after the first argmax to the last one
marks = [i for i, (name, _) in enumerate(seq) if 'argmax' in name]
if len(marks) < 2:
    print('  fewer than two steps in the window'); sys.exit()
steps = len(marks) - 1
t = collections.defaultdict(float); n = collections.Counter()
for name, us in seq[marks[0] + 1:marks[-1] + 1]:
    t[name] += us; n[name] += 1
tot = sum(t.values()) / steps
print(f'  {steps} steps measured; kernel time per step {tot:.0f} us, {sum(n.values()) / steps:.0f} kernels')
for k, v in sorted(t.items(), key=lambda kv: -kv[1]):
    print(f'  {k:40s} {n[k] / steps:6.1f}/step {v / steps:9.1f} us  {100 * v / steps / tot:5.1f}%')
PY
done
