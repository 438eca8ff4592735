#!/usr/bin/env bash
# Every classification method on resnet32x4 -> resnet8x4 (results.md §1), with the reference
# settings, TRIALS trials per method. distill_cifar100_cross.sh runs the cross-family pairs
# (§2) through this script.
#
#   bash scripts/distill_cifar100.sh [extra train_student.py flags...]
#
# Settings: a token's published cell has a config, configs/cifar100/<row>/<teacher>_<student>.yaml
# (written by scripts/make_configs.py from the references: weights, options, per-pair values such
# as DKD's beta or CAT-KD's weight); the run gets --config <it> --path_t <the pair's teacher>.
# A token is a method, or a results.md row: "crd+kd" -> configs/cifar100/crd_kd/, "kd+ls" -> kd_ls/,
# "dkd+ls" -> dkd_ls/, "ctkd+ls" -> ctkd_ls/, "mlkd+ls" -> mlkd_ls/ (logit standardisation), "kd+dot" -> kd_dot/ (the DOT optimiser). Without a config for the pair, a plain method runs
# with its registered reference values (e.g. CRD-queue, KDSVD, SRRL, SemCKD, SimKD, WSLD, NKD,
# ICKD, MGD, SRD: no published cell in results.md §1-2), "+kd" adds the KD term with -a 1, and any
# other "+row" is skipped with a note (no published recipe for that pair). Every checkpoint
# records its weights and options; scripts/collect_results.py prints them per cell.
# MLKD, MLKD+LS and CRLD read a weak and a strong view of each image (the data path serves both; not
# with --dali). KD+DOT's config sets the DOT optimiser (--dot). DeiT and ViTKD are left out: they
# need timm ViT students (ViTKD ViTs on both sides), which no CIFAR pair here has.
#
# Environment (all optional):
#   DATA_ROOT     CIFAR-100 folder (default: $DISTILLERS_DATA or ~/.cache/distillers/data)
#   SAVE_ROOT     run folders go to $SAVE_ROOT/students/ (default: save)
#   TEACHER_ROOT  where the teachers are (default: $SAVE_ROOT/teachers): <arch>_vanilla/ (train_cifar100_teachers.sh),
#                 a run folder of the README's train_teacher.py command (<arch>_<dataset>_lr_..._trial_0/), or
#                 RepDistiller's <arch>_vanilla/ckpt_epoch_240.pth
#   TEACHER_<ARCH> one teacher by path, run folder or zoo name, e.g. TEACHER_resnet32x4=resnet32x4@cifar100
#                 (the teacher-output store of a teacher is <SAVE_ROOT>/teacher_store/<key>, where
#                 scripts/fill_teacher_store.py --save_root <SAVE_ROOT> fills it)
#   GPU           CUDA devices, e.g. 0 (passed as --gpu_id)
#   TRIALS        trials per (pair, method) (default 3; results.md asks for >= 3, preferably 5);
#                 trial i runs with --seed i (the trial id alone only names the run)
#   PAIRS         teacher:student pairs (default: resnet32x4:resnet8x4)
#   METHODS       space-separated tokens method[+row][,option=value...], e.g. "kd kd+ls crd+kd simkd,factor=4"
#                 (default: every classification method, plus CRD+KD, DCD+KD, RRD+KD, KD+LS, DKD+LS, CTKD+LS,
#                 MLKD+LS);
#                 option=value pairs come after the config on the command line, so they win
#   CONFIG_ROOT   the configs' folder (default: configs/cifar100)
#   DATASET       dataset plugin (default cifar100; "synthetic" for a dry run without data)
#   EPOCHS        override the recipe's 240 epochs (e.g. for a quick check)
#   DRY_RUN=1     print the commands instead of running them
# A folder that already has latest.pth is resumed (--resume; a finished run resumes to a no-op).
# A failed run does not stop the others; the failures are listed at the end (exit status 1).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SAVE_ROOT=${SAVE_ROOT:-save}
TEACHER_ROOT=${TEACHER_ROOT:-$SAVE_ROOT/teachers}
DATASET=${DATASET:-cifar100}
TRIALS=${TRIALS:-3}
PAIRS=${PAIRS:-"resnet32x4:resnet8x4"}
CONFIG_ROOT=${CONFIG_ROOT:-configs/cifar100}
METHODS=${METHODS:-"kd kd+ls kd+dot fitnet at sp cc vid rkd pkt ab ft fsp nst crd crd+kd crd_queue dcd dcd+kd rrd rrd+kd kdsvd ofd reviewkd dkd dkd+ls ctkd ctkd+ls dist mlkd mlkd+ls crld wsld nkd ickd catkd mgd itrd srd fcfd ofa srrl semckd simkd ttm wttm sdd_kd sdd_dkd sdd_nkd kdpp dkdpp"}

common=(--dataset "$DATASET")
[[ -n "${DATA_ROOT:-}" ]] && common+=(--data_root "$DATA_ROOT")
[[ -n "${GPU:-}" ]] && common+=(--gpu_id "$GPU")
[[ -n "${EPOCHS:-}" ]] && common+=(--epochs "$EPOCHS")
EXTRA=("$@")

teacher_ckpt() {  # teacher_ckpt <arch>: the checkpoint path, or an error saying where it looked
    local arch=$1 f given
    given="TEACHER_${arch}"
    if [[ -n "${!given:-}" ]]; then  # TEACHER_<ARCH>: a path, a run folder or a zoo name, taken as given
        echo "${!given}"
        return 0
    fi
    for f in "$TEACHER_ROOT/${arch}_vanilla/latest.pth" "$TEACHER_ROOT/${arch}_vanilla/ckpt_epoch_240.pth" \
             "$TEACHER_ROOT/${arch}_${DATASET}"_lr_*_trial_0/best.pth; do
        if [[ -f "$f" ]]; then
            echo "$f"
            return 0
        fi
    done
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        echo "$TEACHER_ROOT/${arch}_vanilla/latest.pth"
        return 0
    fi
    echo "no teacher checkpoint for $arch: looked for $TEACHER_ROOT/${arch}_vanilla/{latest.pth,ckpt_epoch_240.pth}" \
         "and $TEACHER_ROOT/${arch}_${DATASET}_lr_*_trial_0/best.pth; train it with scripts/train_cifar100_teachers.sh" \
         "(or the README's train_teacher.py command), set TEACHER_ROOT, or TEACHER_${arch}=<path or zoo name>" >&2
    return 1
}

failed=()
skipped=()
for pair in $PAIRS; do
    t_arch=${pair%%:*}
    s_arch=${pair##*:}
    if ! path_t=$(teacher_ckpt "$t_arch"); then
        failed+=("$pair (no teacher)")
        continue
    fi
    for token in $METHODS; do
        IFS=, read -r -a parts <<< "$token"
        row=${parts[0]}
        method=${row%%+*}
        config="$CONFIG_ROOT/${row//+/_}/${t_arch}_${s_arch}.yaml"
        flags=()
        if [[ -f "$config" ]]; then
            flags+=(--config "$config")
        elif [[ "$row" == "$method+kd" ]]; then
            flags+=(-a 1)
        elif [[ "$row" != "$method" ]]; then
            echo "skipped $row on $t_arch -> $s_arch: no config $config (no published recipe for this pair)" >&2
            skipped+=("$row on $t_arch -> $s_arch")
            continue
        fi
        for option in "${parts[@]:1}"; do
            flags+=("--${option%%=*}" "${option#*=}")
        done
        label=${token//+/_}
        label=${label//[,=]/_}
        for ((trial = 0; trial < TRIALS; trial++)); do
            dir="$SAVE_ROOT/students/S_${s_arch}_T_${t_arch}_${DATASET}_${label}_trial_${trial}"
            cmd=("$PYTHON" train_student.py --model_s "$s_arch" --path_t "$path_t" --distill "$method"
                 ${flags[@]+"${flags[@]}"} --trial "$trial" --seed "$trial" "${common[@]}" --save_dir "$dir"
                 --save_root "$SAVE_ROOT")
            [[ -f "$dir/latest.pth" ]] && cmd+=(--resume)
            cmd+=(${EXTRA[@]+"${EXTRA[@]}"})
            echo "+ ${cmd[*]}"
            [[ "${DRY_RUN:-0}" == 1 ]] && continue
            if ! "${cmd[@]}"; then
                failed+=("$dir")
            fi
        done
    done
done

if ((${#skipped[@]})); then
    printf 'skipped (no config): %s\n' "${skipped[@]}" >&2
fi
if ((${#failed[@]})); then
    printf 'failed run: %s\n' "${failed[@]}" >&2
    exit 1
fi
