#!/usr/bin/env bash
# tools/gpu-timeline.sh [CKPT_DIR] - where a decode step's wall time goes, on
# a GPU machine, from an Nsight Systems trace of build-gpu/cuda_bench (CUDA
# graph nodes traced one by one, caches as in a real run, unlike ncu's
# serialised and flushed kernels): per kernel name, launches and
# microseconds per step, and the step's idle time (wall time between two
# steps' argmax kernels minus the kernels' busy time).
# Environment: MG_TIMELINE_CONFIGS (default "fast:1 fast:64"), kernels:batch
# pairs at context 512. Needs the prebuilt binaries (tools/gpu-prep.sh) or a
# build in build-gpu, and an 8B-shaped checkpoint (written if absent).
set -u
cd "$(dirname "$0")/.."
CKPT=${1:-/tmp/mg-llama8b-random}
B=build-gpu
CARRY=${MG_CARRY:-gpu-carry}
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -x "$B/cuda_bench" ]; then
    mkdir -p "$B" && tar -xf "$CARRY"/prebuilt.tar.* -C "$B" || exit 1
fi
if [ ! -f "$CKPT/config.json" ]; then
    python3 tools/make_checkpoint.py --preset llama-3.1-8b --shards 4 --seed 1 \
        --tokenizer "$CARRY/mg-llama-27m/tokenizer.json" --out "$CKPT" > /tmp/checkpoint.log 2>&1 ||
        { tail -n 3 /tmp/checkpoint.log; exit 1; }
fi
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n 1)
[ -n "$NSYS" ] || { echo "gpu-timeline: nsys not found"; exit 1; }
for cfg in ${MG_TIMELINE_CONFIGS:-fast:1 fast:64}; do
    kern=${cfg%%:*} batch=${cfg##*:}
    rm -f /tmp/tl.nsys-rep /tmp/tl.sqlite /tmp/tl_cuda_gpu_trace.csv
    timeout 200 "$NSYS" profile -o /tmp/tl --force-overwrite true --trace cuda --cuda-graph-trace node \
        "$B/cuda_bench" -m "$CKPT" --kernels "$kern" --batch "$batch" --ctx 512 --steps 12 --prefill 0 \
        > /tmp/tl-run.log 2>&1 || { tail -n 5 /tmp/tl-run.log; continue; }
    "$NSYS" stats --report cuda_gpu_trace --format csv --output /tmp/tl /tmp/tl.nsys-rep > /dev/null 2>&1
    [ -n "${OUT:-}" ] && cp /tmp/tl_cuda_gpu_trace.csv "$OUT/timeline-$kern-$batch.csv" 2>/dev/null
    echo "== $kern batch $batch ctx 512 ($(grep -E "^\| $kern \| $batch \| 512 " /tmp/tl-run.log | awk -F'|' '{print "TPOT " $5 " ms without nsys"}'))"
    python3 - /tmp/tl_cuda_gpu_trace.csv <<'PY'
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
if not rows:
    print('  no trace rows'); sys.exit()
def col(r, *names):
    for n in names:
        if n in r: return r[n]
    raise KeyError(names)
ev = []
for r in rows:
    name = col(r, 'Name')
    if name.startswith('[CUDA'):
        continue  # copies and memsets
    start = float(col(r, 'Start (ns)', 'Start')); dur = float(col(r, 'Duration (ns)', 'Duration'))
    ev.append((start, dur, name.replace('void ', '').split('(')[0].split('<')[0][:44]))
ev.sort()
ends = [s + d for s, d, n in ev if 'argmax' in n]
if len(ends) < 6:
    print('  fewer than 6 steps traced'); sys.exit()
lo, hi = ends[-5], ends[-1]  # the last 4 steps
steps = 4
per = collections.defaultdict(float); cnt = collections.Counter(); busy = 0.0; last_end = lo
for s, d, n in ev:
    if s < lo or s >= hi: continue
    per[n] += d; cnt[n] += 1
    busy += max(0.0, s + d - max(s, last_end)); last_end = max(last_end, s + d)
wall = (hi - lo) / steps / 1e3
print(f'  step {wall:.0f} us wall, kernels busy {busy / steps / 1e3:.0f} us, idle {wall - busy / steps / 1e3:.0f} us,'
      f' {sum(cnt.values()) / steps:.0f} kernels per step')
for n, t in sorted(per.items(), key=lambda kv: -kv[1]):
    print(f'  {n:44s} {cnt[n] / steps:6.1f}/step {t / steps / 1e3:9.1f} us  {100 * t / (hi - lo):5.1f}%')
PY
done
