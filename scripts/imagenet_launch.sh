#!/usr/bin/env bash
# Run train_teacher.py or train_student.py on an ImageNet-style tree, on one node or many.
#
#   DATA_ROOT=/data/imagenet scripts/imagenet_launch.sh train_student.py --model_s ResNet18 ...
#
# Environment (defaults in brackets):
#   DATA_ROOT    tree with train/<wnid>/... and val/<wnid>/... (sort a flat val/ with
#                scripts/sort_val.py)                                          [required]
#   LAUNCHER     torchrun | spawn: spawn is the seed's --multiprocessing-distributed form [torchrun]
#   GPUS         processes (GPUs) per node                         [all visible GPUs, at least 1]
#   NNODES       nodes [1];  NODE_RANK  this node's rank [0]
#   MASTER_ADDR  address of node 0 [127.0.0.1];  MASTER_PORT  its port [23456]
#   DALI         gpu | cpu | none (torchvision DataLoader)                                [gpu]
#   WORKERS      DataLoader workers or DALI threads per process                            [8]
# Arguments after the script name are passed on; the recipe (120 epochs, lr 0.1 per 256
# images, x0.1 at 30/60/90, wd 1e-4, batch 256) fills whatever they leave unset.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: DATA_ROOT=... $0 train_teacher.py|train_student.py [args...]" >&2
    exit 2
fi
: "${DATA_ROOT:?set DATA_ROOT to the ImageNet folder (train/ and val/ inside)}"
SCRIPT="$(cd "$(dirname "$0")/.." && pwd)/$1"
shift
PYTHON="${PYTHON:-python}"
LAUNCHER="${LAUNCHER:-torchrun}"
GPUS="${GPUS:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-23456}"
DALI="${DALI:-gpu}"
WORKERS="${WORKERS:-8}"

ARGS=(--dataset imagenet --data-root "$DATA_ROOT" --num_workers "$WORKERS")
if [[ "$DALI" != none ]]; then
    ARGS+=(--dali "$DALI")
fi

case "$LAUNCHER" in
    torchrun)
        exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
            --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
            "$SCRIPT" "${ARGS[@]}" "$@" ;;
    spawn)
        exec "$PYTHON" "$SCRIPT" "${ARGS[@]}" --multiprocessing-distributed --nprocs "$GPUS" \
            --dist-url "tcp://$MASTER_ADDR:$MASTER_PORT" --world-size "$NNODES" --rank "$NODE_RANK" "$@" ;;
    *)
        echo "LAUNCHER must be torchrun or spawn, got '$LAUNCHER'" >&2
        exit 2 ;;
esac
