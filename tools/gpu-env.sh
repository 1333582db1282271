# tools/gpu-env.sh - sourced by the short GPU scripts (gpu-quick, gpu-compare,
# gpu-profile) from the repository root: the prebuilt binaries of
# tools/gpu-prep.sh in $B, their libraries on LD_LIBRARY_PATH, and the
# 8B-shaped random checkpoint $CKPT.
B=build-gpu
CARRY=${MG_CARRY:-gpu-carry}
CKPT=${CKPT:-/tmp/mg-llama8b-random}
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Unpacks $CARRY/prebuilt.tar.* into a fresh $B; non-zero on failure.
gpu_unpack() {
    rm -rf "$B" && mkdir -p "$B" && tar -xf "$CARRY"/prebuilt.tar.* -C "$B"
}

# Writes the Llama-3.1-8B-shaped checkpoint (seeded random weights) to $CKPT
# unless it is there; log in /tmp/ckpt.log. Run it with & to overlap.
gpu_ckpt8b() {
    [ -f "$CKPT/config.json" ] && return 0
    python3 tools/make_checkpoint.py --preset llama-3.1-8b --shards 4 --seed 1 \
        --tokenizer "$CARRY/mg-llama-27m/tokenizer.json" --out "$CKPT" > /tmp/ckpt.log 2>&1 ||
        { tail -n 3 /tmp/ckpt.log; return 1; }
}
