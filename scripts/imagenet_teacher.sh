#!/usr/bin/env bash
# An ImageNet teacher: train one from scratch, or save torchvision's pretrained weights as
# a teacher checkpoint (the standard ResNet34 and ResNet50 teachers are torchvision's).
#
#   DATA_ROOT=/data/imagenet scripts/imagenet_teacher.sh train ResNet34 [args...]
#   scripts/imagenet_teacher.sh pretrained ResNet34         # -> save/teachers/ResNet34_torchvision.pth
#
# Models: ResNet18, ResNet34, ResNet50, MobileNetV1, MobileNetV2,
# ShuffleV2, or torchvision:<name> / timm:<name>. `train` runs through
# scripts/imagenet_launch.sh (see there for GPUS, NNODES, LAUNCHER, DALI, ...).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 train|pretrained MODEL [args...]" >&2
    exit 2
fi
MODE="$1"
MODEL="$2"
shift 2
cd "$(dirname "$0")/.."

case "$MODE" in
    train)
        exec scripts/imagenet_launch.sh train_teacher.py --model "$MODEL" --trial "${TRIAL:-0}" "$@" ;;
    pretrained)
        OUT="${OUT:-save/teachers/${MODEL//[:\/]/-}_torchvision.pth}"
        mkdir -p "$(dirname "$OUT")"
        "${PYTHON:-python}" - "$MODEL" "$OUT" <<'EOF'
import sys

import torch

from models import create_model

name, out = sys.argv[1], sys.argv[2]
try:
    model = create_model(name, num_classes=1000, family=None if ":" in name else "imagenet", pretrained=True)
except (RuntimeError, ValueError, KeyError) as err:
    sys.exit(f"imagenet_teacher.sh: error: {err}")
torch.save({"arch": name, "num_classes": 1000, "model": model.state_dict()}, out)
print(f"{name} with pretrained weights saved to {out}; use it as --path_t {out}")
EOF
        ;;
    *)
        echo "first argument must be train or pretrained, got '$MODE'" >&2
        exit 2 ;;
esac
