#!/usr/bin/env bash
# Train the CIFAR-100 teachers of the literature (RepDistiller protocol: 240 epochs, batch 64,
# lr 0.05, x0.1 at 150/180/210, wd 5e-4; the recipe fills these in and prints them), and
# optionally the vanilla students (the "Student" rows of results.md), several trials each.
#
#   bash scripts/train_cifar100_teachers.sh [extra train_teacher.py flags...]
#
# Environment (all optional):
#   DATA_ROOT   CIFAR-100 folder (downloaded there if missing; default: $DISTILLERS_DATA or ~/.cache)
#   SAVE_ROOT   where run folders go (default: save); teachers land in
#               $SAVE_ROOT/teachers/<arch>_vanilla/{latest,best}.pth, which is where
#               distill_cifar100*.sh look for them
#   GPU         CUDA devices, e.g. 0 or 0,1 (passed as --gpu_id); unset: the trainer's default
#   TEACHERS    architectures to train (default: the six teachers of results.md §1-2)
#   STUDENTS    vanilla students to train as baselines, TRIALS trials each
#               (default: none; "all" = the nine students of results.md §1-2)
#   TRIALS      trials per vanilla student (default 3); trial i runs with --seed i
#   DATASET     dataset plugin (default cifar100; "synthetic" for a dry run without data)
#   EPOCHS      override the recipe's 240 epochs (e.g. for a quick check)
#   DRY_RUN=1   print the commands instead of running them
# Runs whose folder already has latest.pth are resumed (--resume), so the script can be re-run
# after an interruption; a finished run resumes to a no-op. A failed run does not stop the
# others; the script lists the failures at the end and exits 1.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SAVE_ROOT=${SAVE_ROOT:-save}
DATASET=${DATASET:-cifar100}
TRIALS=${TRIALS:-3}
TEACHERS=${TEACHERS:-"resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50"}
STUDENTS=${STUDENTS:-}
if [[ "$STUDENTS" == "all" ]]; then
    STUDENTS="resnet20 resnet32 resnet8x4 wrn_16_2 wrn_40_1 vgg8 MobileNetV2 ShuffleV1 ShuffleV2"
fi

common=(--dataset "$DATASET")
[[ -n "${DATA_ROOT:-}" ]] && common+=(--data_root "$DATA_ROOT")
[[ -n "${GPU:-}" ]] && common+=(--gpu_id "$GPU")
[[ -n "${EPOCHS:-}" ]] && common+=(--epochs "$EPOCHS")

failed=()
run() {  # run <run folder> <train_teacher.py flags...>
    local dir=$1; shift
    local cmd=("$PYTHON" train_teacher.py "$@" "${common[@]}" --save_dir "$dir")
    [[ -f "$dir/latest.pth" ]] && cmd+=(--resume)
    cmd+=(${EXTRA[@]+"${EXTRA[@]}"})
    echo "+ ${cmd[*]}"
    [[ "${DRY_RUN:-0}" == 1 ]] && return 0
    if ! "${cmd[@]}"; then
        failed+=("$dir")
    fi
}
EXTRA=("$@")

for arch in $TEACHERS; do
    run "$SAVE_ROOT/teachers/${arch}_vanilla" --model "$arch" --trial 0 --seed 0
done
for arch in $STUDENTS; do
    for ((trial = 0; trial < TRIALS; trial++)); do
        run "$SAVE_ROOT/teachers/${arch}_vanilla_trial_${trial}" --model "$arch" --trial "$trial" --seed "$trial"
    done
done

if ((${#failed[@]})); then
    printf 'failed run: %s\n' "${failed[@]}" >&2
    exit 1
fi
