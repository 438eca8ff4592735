#!/usr/bin/env bash
# The ImageNet commands of giakoumoglou/distillers' README (../shared/seeds/004_*): a ResNet18
# teacher, then SimKD from a ResNet50 teacher into ResNet18; 4 GPUs, spawned processes
# (--multiprocessing-distributed), DALI on the GPU. Extra arguments go to both commands.
#
#   DATA_ROOT=/data/imagenet scripts/imagenet_seed.sh [teacher|student|both] [args...]
#
# torchvision's ResNet50 weights stand in for the seed's Google Drive teacher:
#   scripts/imagenet_teacher.sh pretrained ResNet50
# A seed-layout checkpoint (save/teachers/models/ResNet50_vanilla/ResNet50_best.pth) holds no
# architecture; its folder name says ResNet50, which --dataset imagenet resolves to torchvision's.
set -euo pipefail

: "${DATA_ROOT:?set DATA_ROOT to the ImageNet folder (train/ and val/ inside)}"
WHAT="${1:-both}"
if [[ $# -gt 0 ]]; then
    shift
fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TEACHER="${TEACHER:-save/teachers/ResNet50_torchvision.pth}"
if [[ ! "$WHAT" =~ ^(teacher|student|both)$ ]]; then
    echo "first argument must be teacher, student or both, got '$WHAT'" >&2
    exit 2
fi

if [[ "$WHAT" == teacher || "$WHAT" == both ]]; then
    "$PYTHON" train_teacher.py --batch_size 256 --epochs 120 --dataset imagenet --data-root "$DATA_ROOT" \
        --model ResNet18 --learning_rate 0.1 --lr_decay_epochs 30,60,90 --weight_decay 1e-4 --num_workers 32 \
        --gpu_id 0,1,2,3 --dist-url tcp://127.0.0.1:23333 --multiprocessing-distributed --dali gpu --trial 0 "$@"
fi
if [[ "$WHAT" == student || "$WHAT" == both ]]; then
    "$PYTHON" train_student.py --path-t "$TEACHER" --batch_size 256 --epochs 120 \
        --dataset imagenet --data-root "$DATA_ROOT" --model_s ResNet18 --distill simkd -c 0 -d 0 -b 1 \
        --learning_rate 0.1 --lr_decay_epochs 30,60,90 --weight_decay 1e-4 --num_workers 32 --gpu_id 0,1,2,3 \
        --dist-url tcp://127.0.0.1:23444 --multiprocessing-distributed --dali gpu --trial 0 "$@"
fi
