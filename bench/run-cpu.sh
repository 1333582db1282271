#!/bin/sh
# Records a CPU benchmark of margingate on the default model.
#
# usage: bench/run-cpu.sh [--worktree] [BENCH ARGS...]
#
# Builds the committed HEAD in a scratch copy (git archive), so the record
# names exactly the code it measured; --worktree measures ./build/margingate
# from the working tree instead (the record then says "working tree").
# Waits (up to IDLE_WAIT seconds, default 600) for the machine to be idle,
# then runs `margingate bench` with its defaults (plus BENCH ARGS) on all
# CPUs, timed by the wall clock. On a machine that other processes keep busy
# OpenMP's barriers make wall times meaningless (a decode step was measured
# 250x slower), so if it is still busy after the wait the run falls back to
# one thread timed by the process's CPU time (--threads 1 --clock cpu), and
# the record says so. Writes bench/results/cpu-<UTC date>.md and .json (a
# second run on the same day gets -2, -3, ...).
#
# Environment: MODEL (default ../shared/models/mg-llama-27m), IDLE_WAIT,
# THREADS (default: all CPUs), CLOCK (wall or cpu: no fallback).
set -eu

cd "$(dirname "$0")/.."
root=$(pwd)
worktree=0
if [ "${1:-}" = "--worktree" ]; then worktree=1; shift; fi
model=${MODEL:-../shared/models/mg-llama-27m}
[ -e "$model" ] || { echo "run-cpu.sh: model not found at $model (set MODEL)" >&2; exit 1; }
model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")
threads=${THREADS:-$(nproc)}
idle_wait=${IDLE_WAIT:-600}
clock=${CLOCK:-}

commit=$(git rev-parse HEAD)
subject=$(git log -1 --format=%s HEAD)
if [ $worktree = 1 ]; then
    make -s build/margingate
    bin=$root/build/margingate
    dirty=$(git status --porcelain --untracked-files=no | wc -l)
    source_desc="working tree at $commit ($dirty modified tracked files)"
else
    tmp=$(mktemp -d /tmp/margingate-bench.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    trap 'exit 1' INT TERM
    git archive HEAD | tar -x -C "$tmp"
    echo "run-cpu.sh: building $commit in $tmp" >&2
    make -s -j"$(nproc)" -C "$tmp" build/margingate CUDA=0 >&2
    bin=$tmp/build/margingate
    source_desc="$commit (clean build of HEAD)"
fi

# Percentage of CPU time not idle over 2 seconds, from /proc/stat.
busy_pct() {
    a=$(head -n 1 /proc/stat); sleep 2; b=$(head -n 1 /proc/stat)
    echo "$a
$b" | awk '{ idle = $5 + $6; tot = 0; for (i = 2; i <= NF; i++) tot += $i
             if (NR == 1) { i0 = idle; t0 = tot } else { printf "%d", 100 * (1 - (idle - i0) / (tot - t0)) } }'
}

waited=0
while :; do
    busy=$(busy_pct)
    [ "$busy" -lt 10 ] && break
    if [ $waited -ge "$idle_wait" ]; then
        if [ -z "$clock" ]; then
            echo "run-cpu.sh: the machine is still ${busy}% busy after ${idle_wait}s; measuring one thread's CPU time" >&2
            clock=cpu
            threads=1
        else
            echo "run-cpu.sh: the machine is still ${busy}% busy after ${idle_wait}s; measuring anyway" >&2
        fi
        break
    fi
    echo "run-cpu.sh: machine ${busy}% busy; waiting for it to be idle" >&2
    sleep 10; waited=$((waited + 12))
done

day=$(date -u +%Y-%m-%d)
mkdir -p bench/results
base=bench/results/cpu-$day
n=1
while [ -e "$base.md" ]; do n=$((n + 1)); base=bench/results/cpu-$day-$n; done
json=$base.json
md=$base.md
txt=$(mktemp /tmp/margingate-bench-out.XXXXXX)

clock=${clock:-wall}
cmd="margingate bench -m $model --device cpu --threads $threads --clock $clock --json $(basename "$json")${*:+ $*}"
start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t0=$(date +%s)
"$bin" bench -m "$model" --device cpu --threads "$threads" --clock "$clock" --json "$json" "$@" >"$txt"
t1=$(date +%s)
busy_after=$(busy_pct)

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
cpus=$(nproc)
cores=$(lscpu | sed -n 's/^Core(s) per socket: *//p' | head -n 1)
sockets=$(lscpu | sed -n 's/^Socket(s): *//p' | head -n 1)
tpc=$(lscpu | sed -n 's/^Thread(s) per core: *//p' | head -n 1)
hyp=$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -n 1)
mem=$(free -g | awk '/^Mem:/ { print $2 " GiB" }')
cc_version=$(${CC:-cc} --version | head -n 1)

{
    echo "# CPU benchmark: \`margingate bench\`, $day"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| machine | $cpu, $cpus CPUs ($sockets socket x $cores cores, $tpc thread per core)${hyp:+, $hyp guest}, $mem RAM |"
    echo "| threads | $threads |"
    if [ "$clock" = cpu ]; then
        echo "| clock | **process CPU time, not wall time** (\`--clock cpu\`): the machine was busy with other work |"
    else
        echo "| clock | wall time |"
    fi
    echo "| date (UTC) | $start, $((t1 - t0)) s |"
    echo "| commit | $source_desc: $subject |"
    echo "| compiler | $cc_version, \`-O2 -march=native -fopenmp -ffp-contract=off\` |"
    echo "| model | $(basename "$model") |"
    echo "| command | \`bench/run-cpu.sh${*:+ $*}\`, i.e. \`$cmd\` |"
    echo "| machine busy (other processes) | ${busy}% before the run (after waiting ${waited} s), ${busy_after}% after; the cpu column below shows the run's own share |"
    echo
    sed -n '2p' "$txt"
    echo
    echo "| mode | batch | prefill tok/s | decode ms/step | decode tok/s | increment ms/step | increment % | trigger % | repairs | rolled back % | verify rows | preemptions | cpu % |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    awk 'NF == 13 && $2 ~ /^[0-9]+$/ { line = "|"; for (i = 1; i <= NF; i++) line = line " " $i " |"; print line }' "$txt"
    echo
    grep -E '^(increment reduction|prefill of one)' "$txt" | sed 's/^/- /'
    echo
    echo "Definitions (from the tool):"
    echo
    sed -n '/^prefill tok\/s:/,$p' "$txt" | sed 's/^/> /'
    echo
    echo "Raw JSON: [$(basename "$json")]($(basename "$json"))."
} >"$md"
rm -f "$txt"
echo "run-cpu.sh: wrote $md and $json" >&2
