"""Liu et al., "Function-Consistent Feature Distillation" (FCFD, ICLR 2023)."""
from contextlib import contextmanager
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from distillers.base import Distiller, NotApplicable, Option, register_distiller
from distillers.reference import GoldenEntry, PublishedRow, register_golden, register_row

#: What the stage taps are (the reference's ``stage_input``): after a ReLU, or not.
STAGE_INPUTS = ("afterrelu", "beforerelu")
#: Mixed paths the reference samples from: both directions, student-to-teacher, teacher-to-student, none.
EXTRA_TYPES = ("bi", "s2t", "t2s", "nomix")
#: The reference's CIFAR-100 configs (``classification/experiments/cifar/<student>-<teacher>.yaml``) per
#: (teacher, student): (T, weight_l2, weight of the mixed paths' KL to the teacher).
SETTINGS_PER_PAIR = {
    ("resnet32x4", "resnet8x4"): (4.0, 5.0, 1.0), ("resnet56", "resnet20"): (4.0, 0.02, 1.0),
    ("wrn_40_2", "wrn_16_2"): (4.0, 5.0, 0.2), ("wrn_40_2", "wrn_40_1"): (4.0, 5.0, 1.0),
    ("vgg13", "vgg8"): (4.0, 5.0, 1.0), ("resnet32x4", "ShuffleV1"): (8.0, 5.0, 1.0),
    ("wrn_40_2", "ShuffleV1"): (4.0, 5.0, 1.0), ("vgg13", "MobileNetV2"): (4.0, 5.0, 1.0),
    ("ResNet50", "MobileNetV2"): (8.0, 5.0, 1.0), ("resnet32x4", "ShuffleV2"): (8.0, 5.0, 1.0),
}


def _bridge(c_in: int, c_out: int, hw_in, hw_out, leaky: bool, where: str) -> nn.Sequential:
    """The reference's bridge: 3x3 conv (no bias) + BN, a stride-2 conv (with bias) when the source map
    is twice as large, a 4x4 stride-2 transposed conv when it is half as large; LeakyReLU(0.1) last
    when the target's stages are post-ReLU."""
    if tuple(hw_in) == tuple(hw_out):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    elif all(a == 2 * b for a, b in zip(hw_in, hw_out)):
        conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
    elif all(2 * a == b for a, b in zip(hw_in, hw_out)):
        conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
    else:
        raise ValueError(f"fcfd bridges {where}: maps of {hw_in[0]}x{hw_in[1]} and {hw_out[0]}x{hw_out[1]} are "
                         "neither equal nor a factor 2 apart")
    if isinstance(conv, nn.Conv2d):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), *([nn.LeakyReLU(negative_slope=0.1)] if leaky else []))


@contextmanager
def _running_stats_kept(module: nn.Module):
    """Run ``module`` without moving its BatchNorm running statistics (the reference's ghost BN trace):
    the buffers are swapped for copies and put back, never written in place (autograd saved them)."""
    saved = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            saved.append((m, m.running_mean, m.running_var, m.num_batches_tracked))
            m.running_mean, m.running_var = m.running_mean.clone(), m.running_var.clone()
            m.num_batches_tracked = m.num_batches_tracked.clone()
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a - b).abs().max() <= 1e-3 * (1.0 + b.abs().max())).item())


@register_distiller("fcfd")
class FCFD(Distiller):
    """Function-Consistent Feature Distillation (Liu et al., ICLR 2023): bridge each network's stage
    maps into the other and run them through its later stages.

    Follows LiuDongyang6/FCFD@2aefb7b ``classification/models/meta.py`` ``MetaModel`` (bridges,
    mixed paths) and ``classification/cifar/main.py`` ``Trainer.train_one_epoch`` (the losses). With
    stages 1..N on both sides (``stages``; the modules at their paths, ``stageK:module``, are the
    stage functions), a mixed path runs one network up to stage j (1 <= j < N), bridges its stage-j
    output into the other's space and finishes in the other network: its stages j+1..N and its own
    head (the mean over positions, then ``classifier``). Each step draws ``extra_paths`` of the
    candidate paths (``extra_type``) on the CPU from torch's global generator (the trainer seeds it
    and saves it in checkpoints, so a resumed run draws the same paths). Terms:

    * ``fcfd_app`` (L_app) = ``weight_l2`` * min(epoch / ``warmup``, 1) * sum over stages k of the MSE to the
      teacher's stage-k map of every student-born map in the teacher's space at k (the bridged
      student map, and the teacher stages' outputs on mixed student-to-teacher paths), plus at the
      last stage the MSE of their ReLU-pooled vectors;
    * ``fcfd_func`` (L_func) = ``weight_func`` * sum over the drawn paths of KL(teacher || path) at ``fcfd_T``
      (batch mean, times T^2).

    The student's own CE and KD terms are ``-r``/``-a`` (default 1 and 1, KD at ``--kd_T``; the
    reference uses its one T for both). Gradients reach the student through the frozen teacher's
    stages; the teacher's parameters get none. Student stages run on bridged teacher maps keep their
    BatchNorm running statistics unchanged, as the reference's ghost BN traces do.

    Where this follows the code rather than a general reading of the method: the code can weigh the
    KL of every output to every other (teacher, student, mixed paths) and the CE of the mixed
    paths; every CIFAR-100 config weighs only the mixed paths' KL to the teacher (plus the student's
    CE and KD), which is what is provided. Differences from the reference: the teacher runs in eval
    mode like every teacher here (the reference leaves the frozen teacher in train mode: batch
    statistics, running statistics updated by its own path); the reference's models are rewritten
    per family with their stages, here the stage taps must be chained stage modules and the last
    stage the map the classifier pools (ResNets, ShuffleNetV1, torchvision ResNets): a pair whose
    shapes say otherwise is refused at build, and the first step checks both exactly (stage K's
    module maps stage K-1 to stage K; ``pooled`` is the mean of stage N).
    """

    display_name = "FCFD"  # its row in published tables
    default_weights = {"gamma": 1.0, "alpha": 1.0, "beta": 1.0}
    options = {
        "extra_paths": Option(2, "mixed paths drawn per step (the reference's --extra_paths)", min=0),
        "extra_type": Option("bi", "candidate mixed paths: both directions, student-to-teacher only, "
                                   "teacher-to-student only, none (the reference's --extra_type)", choices=EXTRA_TYPES),
        "fcfd_T": Option(4.0, "temperature of the mixed paths' KL to the teacher (the config's T; its KD uses "
                              "the same T: set --kd_T alike)", above=0),
        "weight_l2": Option(5.0, "weight of the paper's appearance loss L_app, the L2 terms (the config's "
                                 "weight_l2)", min=0),
        "weight_func": Option(1.0, "weight of the paper's function loss L_func, each mixed path's KL to the "
                                   "teacher (the config's loss_mixture kl_student weight)", min=0),
        "warmup": Option(20, "epochs over which the appearance weight rises linearly to 1 (0: none)", min=0),
        "stage_input": Option("afterrelu", "what the stage taps are: post-ReLU maps (bridges end in "
                                           "LeakyReLU 0.1) or not (the reference's stage_input)", choices=STAGE_INPUTS),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        stages = {side: [tuple(x) for x in taps.get("stages", [])] for side, taps in
                  (("student", spec.student), ("teacher", spec.teacher))}
        for side, shapes in stages.items():
            if len(shapes) < 2 or any(len(x) != 3 for x in shapes):
                raise ValueError(f"fcfd runs one network's later stages on the other's maps: the {side} needs "
                                 f"two or more spatial stage taps (stage1..N), it has {len(shapes)}")
        if len(stages["student"]) != len(stages["teacher"]):
            raise ValueError(f"fcfd pairs stages one to one: the student has {len(stages['student'])} stages, "
                             f"the teacher {len(stages['teacher'])}")
        self.num_stages = n = len(stages["student"])
        classes = {}
        for side, taps in (("student", spec.student), ("teacher", spec.teacher)):
            last, fc = stages[side][-1], tuple(taps.get("classifier", ()))
            if "last_map" in taps and tuple(taps["last_map"]) != last:
                raise ValueError(f"fcfd classifies stage{n} through the {side}'s pool and classifier, but stage{n} "
                                 f"({'x'.join(map(str, last))}) is not the map they read (last_map, "
                                 f"{'x'.join(map(str, taps['last_map']))}): no stage module ends where the head starts")
            if len(fc) != 2 or fc[1] != last[0]:
                raise ValueError(f"fcfd classifies the last stage with the {side}'s classifier: stage{n} has "
                                 f"{last[0]} channels, the classifier weight is {fc or 'missing'}")
            classes[side] = fc[0]
        if classes["student"] != classes["teacher"]:
            raise ValueError(f"fcfd compares outputs over one set of classes: student {classes['student']}, "
                             f"teacher {classes['teacher']}")
        if self.extra_paths > len(self.candidates()):
            raise ValueError(f"fcfd: extra_paths={self.extra_paths} exceeds the {len(self.candidates())} candidate "
                             f"paths of extra_type {self.extra_type} with {n} stages")
        leaky = self.stage_input == "afterrelu"
        s, t = stages["student"], stages["teacher"]
        self.to_teacher = nn.ModuleList(
            _bridge(s[k][0], t[k][0], s[k][1:], t[k][1:], leaky, f"student stage{k + 1} into the teacher's")
            for k in range(n))
        self.to_student = nn.ModuleList(
            _bridge(t[k][0], s[k][0], t[k][1:], s[k][1:], leaky, f"teacher stage{k + 1} into the student's")
            for k in range(n - 1))
        modules = tuple(f"stage{k}:module" for k in range(2, n + 1))
        self.student_taps = ("stages",) + modules + ("classifier", "pooled")
        self.teacher_taps = self.student_taps + ("logits",)
        self._chain_checked = False

    def candidates(self) -> List[Tuple[str, int]]:
        """(direction, j): switch networks after stage j; the reference's order (teacher-to-student first)."""
        t2s = [("t2s", j) for j in range(1, self.num_stages)]
        s2t = [("s2t", j) for j in range(1, self.num_stages)]
        return {"bi": t2s + s2t, "s2t": s2t, "t2s": t2s, "nomix": []}[self.extra_type]

    def draw_paths(self) -> List[Tuple[str, int]]:
        candidates = self.candidates()
        return [candidates[i] for i in torch.randperm(len(candidates))[:self.extra_paths].tolist()]

    def check_chain(self, s, t) -> None:
        """Stage K's module must turn stage K-1 into stage K, and ``pooled`` must be the mean of stage N."""
        n = self.num_stages
        with torch.no_grad():
            for side, taps in (("student", s), ("teacher", t)):
                feats = taps["stages"]
                for k in range(2, n + 1):
                    module = taps[f"stage{k}:module"]
                    try:
                        with _running_stats_kept(module):
                            ok = _close(module(feats[k - 2]), feats[k - 1])
                    except RuntimeError:
                        ok = False
                    if not ok:
                        raise NotApplicable(f"fcfd calls the {side}'s module at stage{k}'s path "
                                         f"({type(module).__name__}) as its stage {k}, but it does not turn "
                                         f"stage{k - 1} into stage{k}: fcfd needs stage taps that are chained stage "
                                         "modules")
                if not _close(feats[-1].mean(dim=(2, 3)), taps["pooled"].flatten(1)):
                    raise NotApplicable(f"fcfd classifies stage{n} through the {side}'s pool and classifier, but the "
                                     f"{side}'s pooled vector is not the mean of stage{n} (a head such as a final "
                                     "BN-ReLU sits between them)")

    def forward(self, s, t, batch=None):
        if not self._chain_checked:
            self.check_chain(s, t)
            self._chain_checked = True
        n, s_maps, t_maps = self.num_stages, s["stages"], t["stages"]
        in_teacher_space = [[bridge(x)] for bridge, x in zip(self.to_teacher, s_maps)]
        func = []
        for direction, j in self.draw_paths():
            if direction == "s2t":
                x = in_teacher_space[j - 1][0]
                for k in range(j + 1, n + 1):
                    x = t[f"stage{k}:module"](x)
                    in_teacher_space[k - 1].append(x)
                out = t["classifier"](x.mean(dim=(2, 3)))
            else:
                x = self.to_student[j - 1](t_maps[j - 1])
                for k in range(j + 1, n + 1):
                    module = s[f"stage{k}:module"]
                    with _running_stats_kept(module):
                        x = module(x)
                out = s["classifier"](x.mean(dim=(2, 3)))
            func.append(self.kl_to_teacher(out, t["logits"]))
        app = []
        for k, maps in enumerate(in_teacher_space):
            target = t_maps[k].detach()
            app += [F.mse_loss(x, target) for x in maps]
            if k == n - 1:
                pooled = F.relu(target).mean(dim=(2, 3))
                app += [F.mse_loss(F.relu(x).mean(dim=(2, 3)), pooled) for x in maps]
        epoch = (batch or {}).get("epoch")
        warm = 1.0 if epoch is None or self.warmup == 0 else min(float(epoch) / self.warmup, 1.0)
        zero = s_maps[0].new_zeros(())
        return {"fcfd_app": self.weight_l2 * warm * torch.stack(app).sum(),
                "fcfd_func": self.weight_func * (torch.stack(func).sum() if func else zero)}

    def kl_to_teacher(self, logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        temp = self.fcfd_T
        return F.kl_div(F.log_softmax(logits / temp, dim=1), F.softmax(teacher.detach() / temp, dim=1),
                        reduction="batchmean") * temp * temp


#: The reference's bridges[stage][target][source] -> ours (to_teacher / to_student, one per stage).
_RENAMES = tuple(pair for k in range(1, 10) for pair in ((f"bridges.{k}.0.1.", f"to_teacher.{k - 1}."),
                                                        (f"bridges.{k}.1.0.", f"to_student.{k - 1}.")))
_STAGE_MODULES = {f"{side}_stage{k}_{attr}": f"{side}:stage{k}:module.{attr}"
                  for side in ("s", "t") for k in range(2, 4) for attr in ("weight", "bias")}

# The reference numbers this method reproduces (python -m distillers.golden; tests/golden): three stages
# a side, each later stage a 3x3 conv that the adapter rebuilds from its tensors; the paths the reference
# drew come back through the generator state recorded in the file (``rng_state``).
register_golden("fcfd", GoldenEntry(
    "fcfd", {"feats_s": "s:stages", "feats_t": "t:stages", **_STAGE_MODULES,
             "fc_s_weight": "s:classifier.weight", "fc_s_bias": "s:classifier.bias",
             "fc_t_weight": "t:classifier.weight", "fc_t_bias": "t:classifier.bias",
             "pooled_s": "s:pooled", "pooled_t": "t:pooled", "logit_t": "t:logits", "epoch": "batch:epoch"},
    hparam_options={"extra_paths": "extra_paths", "extra_type": "extra_type", "fcfd_T": "T",
                    "weight_l2": "weight_l2", "weight_func": "weight_func", "stage_input": "stage_input"},
    hparam_info=("epoch_from_0",),  # the reference's 0-based epoch; inputs.epoch gives it + 1 (the warm-up)
    diagnostics=("paths",),  # the drawn paths, named; rng_state replays them and the loss depends on them
    renames=_RENAMES))


def fcfd_options(pair) -> dict:
    temp, weight_l2, weight_func = SETTINGS_PER_PAIR[tuple(pair)]
    return {"kd_T": temp, "fcfd_T": temp, "weight_l2": weight_l2, "weight_func": weight_func}


#: Pairs of the reference's configs this implementation serves (chained stage modules, the last stage
#: pooled by the classifier); WRN (final BN-ReLU), VGG (stage taps at ReLUs), MobileNetV2 and ShuffleV2
#: (a conv after the last stage) are refused.
SERVED_PAIRS = (("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"), ("resnet32x4", "ShuffleV1"))

# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow(
    "FCFD", "fcfd", "fcfd",
    "LiuDongyang6/FCFD classification/experiments/cifar/<student>-<teacher>.yaml (T for KD and the mixed "
    "paths, weight_l2, the mixed paths' KL weight; CE 1, KD 1) and train_lr0.05/0.01.sh (its Nesterov "
    "momentum is not reproduced: the trainer's SGD)", per_pair=fcfd_options,
    note="no FCFD number in results.md or its README: the reference's settings, for runs of your own",
    extra_pairs=SERVED_PAIRS))
