#!/usr/bin/env bash
# CNN <-> ViT distillation on real data at a short budget (the evidence of the README's
# "Across architectures on real data"): a ViT-Tiny student from a resnet56 teacher, and a
# resnet20 student from a ViT-Tiny teacher, on the first 20 Tiny-ImageNet classes (all their 10,000
# train and 1,000 val images) at 32x32.
#
#   python scripts/sort_val.py /data/tiny-imagenet-200
#   python scripts/subset_folder.py /data/tiny-imagenet-200 /data/tiny20 --classes 20
#   DATA_ROOT=/data/tiny20 SAVE_ROOT=/tmp/cross bash scripts/cross_arch_tiny_imagenet.sh
#   distillers-collect '/tmp/cross/students/*'
#
# The ViTs are unmodified timm models given img_size=32 and patch_size=8 (a 4x4 grid of 8x8 patches),
# trained with AdamW at lr 5e-4, weight decay 0.05; the ResNets with SGD at lr 0.05; all with a
# cosine schedule and one warm-up epoch, batch 64, seed SEED. Students of each direction:
# vanilla, KD, OFA-KD and FitNet (its hint through `--adapter auto`), plus DeiT's distillation token for the ViT
# student (timm's deit_tiny_distilled with the same options); every method at its registered
# defaults. Interrupted runs resume; finished runs are skipped.
#
# Environment: DATA_ROOT (required), SAVE_ROOT (default ./save/cross_arch), TEACHER_EPOCHS (10),
# STUDENT_EPOCHS (5), SEED (0), THREADS (torch threads, default: torch's), DIRECTIONS (default
# "resnet_to_vit vit_to_resnet"; one of them runs one direction, e.g. on another machine beside it),
# DRY_RUN=1 prints the commands.
set -euo pipefail

: "${DATA_ROOT:?set DATA_ROOT to an imagefolder root (see the header of this script)}"
SAVE_ROOT=${SAVE_ROOT:-./save/cross_arch}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-10}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-5}
DIRECTIONS=${DIRECTIONS:-"resnet_to_vit vit_to_resnet"}
SEED=${SEED:-0}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${THREADS:-}" ]; then export OMP_NUM_THREADS=$THREADS; fi

DATA=(--dataset imagefolder --data-root "$DATA_ROOT" --num_workers 1 --batch_size 64 --seed "$SEED"
      --scheduler cosine --warmup_epochs 1 --no_tensorboard)
VIT_OPTS=(--model_opt img_size=32 --model_opt patch_size=8)
VIT_RECIPE=(--optimizer adamw --learning_rate 5e-4 --weight_decay 0.05)
CNN_RECIPE=(--optimizer sgd --learning_rate 0.05 --weight_decay 5e-4)

run() {  # run DIR SCRIPT FLAGS...: a fresh run, or the continuation of an interrupted or finished one
    local dir=$1 script=$2; shift 2
    local cmd=(python "$HERE/$script" "$@" --save_dir "$dir")
    if [ -e "$dir/latest.pth" ]; then cmd+=(--resume); fi
    echo "+ ${cmd[*]}"
    if [ "${DRY_RUN:-0}" != 1 ]; then "${cmd[@]}"; fi
}

adapter() {  # FitNet's hint across a 4x4 token grid and a 16x16 or 8x8 map needs the generic adapter
    if [ "$1" = fitnet ]; then echo "--adapter auto"; fi
}

T=$SAVE_ROOT/teachers
S=$SAVE_ROOT/students
run "$T/resnet56" train_teacher.py --model resnet56 "${CNN_RECIPE[@]}" "${DATA[@]}" --epochs "$TEACHER_EPOCHS"
run "$T/vit_tiny" train_teacher.py --model timm:vit_tiny_patch16_224 "${VIT_OPTS[@]}" "${VIT_RECIPE[@]}" \
    "${DATA[@]}" --epochs "$TEACHER_EPOCHS"

# the vanilla students: trained alone, as the teachers are
run "$S/vit_tiny_vanilla" train_teacher.py --model timm:vit_tiny_patch16_224 "${VIT_OPTS[@]}" "${VIT_RECIPE[@]}" \
    "${DATA[@]}" --epochs "$STUDENT_EPOCHS"
run "$S/resnet20_vanilla" train_teacher.py --model resnet20 "${CNN_RECIPE[@]}" "${DATA[@]}" --epochs "$STUDENT_EPOCHS"

wants() { [[ " $DIRECTIONS " == *" $1 "* ]]; }

# resnet56 -> ViT-Tiny
if wants resnet_to_vit; then for method in kd ofa fitnet deit; do
    student=timm:vit_tiny_patch16_224
    if [ "$method" = deit ]; then student=timm:deit_tiny_distilled_patch16_224; fi
    run "$S/resnet56_vit_tiny_$method" train_student.py --path_t "$T/resnet56/best.pth" --distill "$method" \
        $(adapter "$method") --model_s "$student" "${VIT_OPTS[@]}" "${VIT_RECIPE[@]}" "${DATA[@]}" --epochs "$STUDENT_EPOCHS"
done; fi
# ViT-Tiny -> resnet20
if wants vit_to_resnet; then for method in kd ofa fitnet; do
    run "$S/vit_tiny_resnet20_$method" train_student.py --path_t "$T/vit_tiny/best.pth" --distill "$method" \
        $(adapter "$method") --model_s resnet20 "${CNN_RECIPE[@]}" "${DATA[@]}" --epochs "$STUDENT_EPOCHS"
done; fi
