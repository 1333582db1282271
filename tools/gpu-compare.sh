#!/usr/bin/env bash
# tools/gpu-compare.sh - decode TPOT at Llama-3.1-8B shapes under several
# environment settings, one cuda_bench run each, in one device call, from the
# prebuilt binaries of tools/gpu-prep.sh (for A/B runs of the tunables).
# Environment:
#   MG_COMPARE          settings separated by ';', each "VAR=value VAR2=value"
#                       (an empty one: the defaults), e.g. ";MG_CUDA_X=1"
#   MG_COMPARE_KERNELS  cuda_bench --kernels (fast,invariant)
#   MG_COMPARE_BATCH    (1,8,32,64,128)     MG_COMPARE_CTX (512)
#   CKPT                the 8B-shaped checkpoint (made when absent)
# Prints one table per setting; with OUT set, $OUT/compare.md too.
set -u
cd "$(dirname "$0")/.."
. tools/gpu-env.sh
gpu_unpack || exit 1
gpu_ckpt8b || exit 1
REPORT=/tmp/compare.md
: > "$REPORT"
IFS=';' read -r -a SETTINGS <<< "${MG_COMPARE:-}"
[ ${#SETTINGS[@]} -eq 0 ] && SETTINGS=("")
for s in "${SETTINGS[@]}"; do
    echo "### ${s:-defaults}" >> "$REPORT"
    # shellcheck disable=SC2086  # word splitting of the settings is intended
    env $s timeout 150 "$B/cuda_bench" -m "$CKPT" --kernels "${MG_COMPARE_KERNELS:-fast,invariant}" \
        --batch "${MG_COMPARE_BATCH:-1,8,32,64,128}" --ctx "${MG_COMPARE_CTX:-512}" --steps 6 --prefill 0 \
        --out /tmp/cmp.md > /tmp/cmp.log 2>&1 || tail -3 /tmp/cmp.log >> "$REPORT"
    grep -E '^\| (fast|invariant)|^invariant GEMMs' /tmp/cmp.md >> "$REPORT"
    echo >> "$REPORT"
done
cat "$REPORT"
[ -n "${OUT:-}" ] && cp "$REPORT" "$OUT/"
exit 0
