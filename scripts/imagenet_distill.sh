#!/usr/bin/env bash
# The two ImageNet benchmark pairs with the methods' ImageNet settings.
#
#   DATA_ROOT=/data/imagenet scripts/imagenet_distill.sh r34_r18 kd [args...]
#   DATA_ROOT=/data/imagenet scripts/imagenet_distill.sh r50_mv1 all [args...]
#
# PAIR:   r34_r18 (ResNet34 -> ResNet18) | r50_mv1 (ResNet50 -> MobileNetV1)
# METHOD: kd crd srrl semckd simkd dkd reviewkd rrd dcd, or all (one after the other)
# TEACHER: the teacher checkpoint [save/teachers/<teacher>_torchvision.pth, made by
#          scripts/imagenet_teacher.sh pretrained <teacher>]
# Launch settings (GPUS, NNODES, LAUNCHER=torchrun|spawn, DALI, ...): scripts/imagenet_launch.sh.
# Method settings follow the ImageNet configs of mdistiller (KD, DKD), ReviewKD and SemCKD;
# the others use the methods' reference defaults. Later arguments override them.
# Memory: semckd builds one regressor per (student, teacher) stage pair, about 55M extra
# parameters for r34_r18 but about 860M for r50_mv1 (teacher stages up to 2048 channels).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: DATA_ROOT=... $0 r34_r18|r50_mv1 METHOD|all [args...]" >&2
    exit 2
fi
PAIR="$1"
METHODS="$2"
shift 2
cd "$(dirname "$0")/.."

case "$PAIR" in
    r34_r18) T=ResNet34; S=ResNet18; DKD_BETA=0.5; REVIEWKD_WEIGHT=1 ;;
    r50_mv1) T=ResNet50; S=MobileNetV1; DKD_BETA=2; REVIEWKD_WEIGHT=8 ;;
    *) echo "PAIR must be r34_r18 or r50_mv1, got '$PAIR'" >&2; exit 2 ;;
esac
TEACHER="${TEACHER:-save/teachers/${T}_torchvision.pth}"
if [[ ! -f "$TEACHER" ]]; then
    echo "no teacher checkpoint '$TEACHER': run scripts/imagenet_teacher.sh pretrained $T (or set TEACHER)" >&2
    exit 2
fi
if [[ "$METHODS" == all ]]; then
    METHODS="kd crd srrl semckd simkd dkd reviewkd rrd dcd"
fi

for METHOD in $METHODS; do
    case "$METHOD" in
        kd) FLAGS=(-r 0.5 -a 0.5 --kd_T 1) ;;
        semckd) FLAGS=(-b 50) ;;
        dkd) FLAGS=(--dkd_beta "$DKD_BETA" --kd_T 1 --warmup 1) ;;
        reviewkd) FLAGS=(--reviewkd_weight "$REVIEWKD_WEIGHT" --warmup 1) ;;
        crd | srrl | simkd | rrd | dcd) FLAGS=() ;;
        *) echo "unknown METHOD '$METHOD'" >&2; exit 2 ;;
    esac
    scripts/imagenet_launch.sh train_student.py --path_t "$TEACHER" --model_s "$S" \
        --distill "$METHOD" "${FLAGS[@]}" --trial "${TRIAL:-0}" "$@"
done
