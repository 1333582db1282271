#!/usr/bin/env bash
# Installs the Debian packages margingate builds and tests with (idempotent;
# uses sudo when not root). nvcc is optional: without it the CUDA backend is
# skipped.
set -euo pipefail
pkgs=(build-essential pkg-config libcjson-dev libpcre2-dev zlib1g-dev libcriterion-dev libmicrohttpd-dev curl gnuplot-nox)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
