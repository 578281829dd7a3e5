#!/usr/bin/env bash
# Single-node training with torchrun: one process per GPU (or per CPU rank with gloo).
#
#   launch/torchrun.sh NPROC [hydra overrides...]
#   launch/torchrun.sh 2 parallelism=tp2 training.max_steps=20           # 2 CPU ranks, TP=2
#   launch/torchrun.sh 8 --config-name nano_30b_a3b data.root=/data/tt   # one 8-GPU node
#
# `kill -TERM <torchrun pid>` (SIGTERM, forwarded by torchrun) makes the ranks finish the current
# step, write a checkpoint and the report, and exit 0. Ctrl-C (SIGINT, which the terminal sends to
# every process of the job) does the same but exits 130; a second Ctrl-C aborts at once. Either
# way re-running the same command resumes from <checkpoint.dir>/latest.
set -euo pipefail
cd "$(dirname "$0")/.."

NPROC="${1:?usage: launch/torchrun.sh NPROC [overrides...]}"
shift

if ! command -v nvidia-smi >/dev/null 2>&1; then
  # CPU: Megatron's jit_fuser would compile with Inductor on first use (~10 s, no gain).
  export TORCHDYNAMO_DISABLE="${TORCHDYNAMO_DISABLE:-1}"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONUNBUFFERED=1

exec .venv/bin/python -m torch.distributed.run \
  --standalone --nnodes=1 --nproc-per-node="$NPROC" \
  -m twotower_train.training "$@"
