#!/usr/bin/env bash
# Single-node launcher: launch/torchrun.sh NPROC megatron-ads-args...
#   e.g. launch/torchrun.sh 8 verify parity --hf /ckpt/deepseek-r1 --pp 2 --ep 4
# On CPU machines, `megatron-ads ... --nproc N` starts gloo workers itself instead.
set -euo pipefail
NPROC=${1:?usage: launch/torchrun.sh NPROC megatron-ads-args...}
shift
# megatron-core's tensor-parallel linears want one CUDA work queue so communication overlaps in order
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
exec torchrun --standalone --nproc-per-node "$NPROC" -m megatron_ads "$@"
