#!/usr/bin/env bash
# Debian packages the project needs: Open MPI (for Horovod and mpirun) and the
# Fashion-MNIST data set (the default training job's data). Idempotent.
set -euo pipefail
pkgs=(openmpi-bin libopenmpi-dev dataset-fashion-mnist)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_system.sh: missing Debian packages ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "install_system.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
