"""The metric-learning seeds' flags (lenscloth/RKD ``run.py``/``run_distill.py``, ahu-hpt/AOMD
``run_distill_aomd.py``) on ``train_teacher.py`` and ``train_student.py``.

Seed flag -> this project:

=======================================  ===============================================
``run.py --mode eval --load CKPT``        ``train_teacher.py --mode eval --load CKPT``
                                          (= ``--evaluate --path_s CKPT``)
``--load CKPT`` (training)               the starting weights of the trained network
``--base`` / ``--teacher_base``          ``--model`` (teacher) or ``--model_s`` / ``--model_t``
``--teacher_load``                        ``--path_t``
``--data``                                ``--data-root``
``--lr``, ``--batch``, ``--lr_decay_gamma``  existing aliases of ``--learning_rate``,
                                          ``--batch_size``, ``--lr_decay_rate``
``--sample`` / ``--triplet_sample``       the triplet sampler (``triplet_sample``)
``--margin`` / ``--triplet_margin``       the triplet/contrastive margin
``--*_ratio``, ``--dark_alpha/beta``      options of ``--distill metric`` (the default on metric
                                          datasets), see :mod:`distillers.methods.metric_objective`
=======================================  ===============================================

New flags: ``--aomd_mode 1|2``, ``--aomd_global``, ``--aomd_local`` (AOMD's mode and weights,
code edits in the reference), ``--sp_mode batch|per_sample``, ``--select val|test`` (model
selection split), ``--pretrained/--no-pretrained`` (ImageNet weights, default on as the seeds).
Student-only method options are added to the parser from the distiller registry (as every
method option); this module gives them their types and choices. Unset recipe values
(learning rate, epochs, schedule, batch, weight decay) come from :data:`METRIC_RECIPES`.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

SAMPLERS = ("all", "random", "hard", "semihard", "distance")
LOSSES = ("l2_triplet", "l1_triplet", "contrastive")

#: The seeds' CLI defaults (lenscloth/RKD run.py for teachers, run_distill.py for students):
#: Adam with weight decay 1e-5; MultiStepLR whose milestones count as in the reference (the
#: decayed rate applies from the milestone epoch on); batch 64, the scripts' ``--batch`` default
#: (the seeds' examples/*.sh pass ``--batch 128`` explicitly, which works here as typed).
METRIC_RECIPES: Dict[str, Dict[str, Any]] = {
    "teacher": dict(epochs=40, learning_rate=1e-5, lr_decay_epochs=[25, 30, 35], lr_decay_rate=0.5,
                    weight_decay=1e-5, momentum=0.9, batch_size=64),
    "student": dict(epochs=80, learning_rate=1e-4, lr_decay_epochs=[40, 60], lr_decay_rate=0.1,
                    weight_decay=1e-5, momentum=0.9, batch_size=64),
}
#: The seeds' default backbones when neither --base nor a metric model name is given.
DEFAULT_BASE = {"teacher": "resnet50", "student": "resnet50"}
#: typed metric method options (the registry adds them to the student parser as YAML values)
OPTION_TYPES = {"triplet_ratio": float, "dist_ratio": float, "angle_ratio": float, "dark_ratio": float,
                "dark_alpha": float, "dark_beta": float, "at_ratio": float, "fitnet_ratio": float,
                "sp_ratio": float, "aomd_ratio": float, "aomd_global": float, "aomd_local": float,
                "aomd_mode": int, "margin": float}
OPTION_CHOICES = {"triplet_sample": SAMPLERS, "loss": LOSSES, "aomd_mode": (1, 2), "sp_mode": ("batch", "per_sample")}


class _Mode(argparse.Action):
    """``--mode train|eval``: eval sets ``evaluate``."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.evaluate = value == "eval"


def _existing(parser: argparse.ArgumentParser, flag: str):
    return parser._option_string_actions.get(flag)  # argparse keeps no public lookup


def _method_flag(parser, group, flags, option: str, help_text: str) -> None:
    """A seed flag for method option ``option``: typed if the registry already added it, else new."""
    present = [f for f in flags if _existing(parser, f)]
    action = _existing(parser, present[0]) if present else None
    if action is None:
        action = group.add_argument(*flags, dest=f"method__{option}", default=argparse.SUPPRESS,
                                    metavar=option.upper(), help=help_text)
    else:
        extra = [f for f in flags if f not in present]
        if extra:
            group.add_argument(*extra, dest=action.dest, default=argparse.SUPPRESS, metavar=option.upper(),
                               help=f"alias of {present[0]}")
    _type(parser, option)


def _type(parser, option: str) -> None:
    for action in parser._actions:
        if action.dest == f"method__{option}":
            if option in OPTION_TYPES:
                action.type = OPTION_TYPES[option]
            if option in OPTION_CHOICES:
                action.choices = OPTION_CHOICES[option]
                action.type = OPTION_TYPES.get(option, str)


def add_metric_flags(parser: argparse.ArgumentParser, role: str) -> None:
    """Add the seeds' metric-learning flags to the ``teacher`` or ``student`` parser."""
    from engine.config import _bool  # engine.config calls this function: import at call time

    group = parser.add_argument_group(
        "metric learning (datasets cub200, cars196, stanford, metric_folder; the RKD/AOMD seeds' flags)")
    group.add_argument("--data", dest="data_root", default=argparse.SUPPRESS,
                       help="the seeds' spelling of --data-root")
    group.add_argument("--base", default=None,
                       help="embedding network: resnet18 or resnet50 (the seeds' --base; default resnet50)")
    group.add_argument("--embedding_size", type=int, default=None,
                       help="embedding dimension (default 128; with --mode eval: the checkpoint's)")
    group.add_argument("--l2normalize", type=_bool, default=None, metavar="true|false",
                       help="L2-normalise the embedding (default true; with --mode eval: the checkpoint's)")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="start from torchvision's ImageNet weights, as the seeds (needs them downloaded "
                            "or cached); --no-pretrained trains from scratch")
    group.add_argument("--load", dest="path_s", default=argparse.SUPPRESS, metavar="CKPT",
                       help="with --mode eval / --evaluate: the checkpoint to evaluate; when training: the "
                            "weights to start from")
    group.add_argument("--num_image_per_class", type=int, default=5,
                       help="m, images per class in every batch of --batch images (default 64, the seeds' "
                            "run.py/run_distill.py default; their example scripts pass --batch 128)")
    group.add_argument("--iter_per_epoch", type=int, default=None,
                       help="batches per epoch (default 100; the seeds' SOP scripts use 1000 for teachers, "
                            "500 for students)")
    group.add_argument("--recall", type=int, nargs="+", default=None, metavar="K",
                       help="Recall@K values (default 1 2 4 8; SOP 1 10 100 1000)")
    group.add_argument("--select", choices=("val", "test"), default="val",
                       help="model selection (best.pth): 'val' = held-out training classes (default); "
                            "'test' = the test split, as the seeds did (then all training classes train)")
    if role == "teacher":
        group.add_argument("--mode", choices=("train", "eval"), action=_Mode, default=argparse.SUPPRESS,
                           help="train, or evaluate the checkpoint --load (run.py --mode)")
        parser.set_defaults(evaluate=False, path_s=None)
        _method_flag(parser, group, ["--sample", "--triplet_sample"], "triplet_sample",
                     "triplet sampler: all (default), random, hard, semihard, distance")
        _method_flag(parser, group, ["--loss"], "loss", "l2_triplet (default), l1_triplet or contrastive")
        _method_flag(parser, group, ["--margin", "--triplet_margin"], "margin", "triplet/contrastive margin (0.2)")
        return
    group.add_argument("--teacher_base", dest="model_t", default=argparse.SUPPRESS,
                       help="alias of --model_t (the teacher embedding network)")
    group.add_argument("--teacher_load", dest="path_t", default=argparse.SUPPRESS, help="alias of --path_t")
    group.add_argument("--teacher_embedding_size", type=int, default=None,
                       help="the teacher's embedding dimension (default: read from --path_t)")
    group.add_argument("--teacher_l2normalize", type=_bool, default=None, metavar="true|false",
                       help="whether the teacher L2-normalises (default: as recorded in --path_t, else true)")
    _method_flag(parser, group, ["--triplet_sample", "--sample"], "triplet_sample",
                 "triplet sampler of --triplet_ratio: distance (default), all, random, hard, semihard")
    _method_flag(parser, group, ["--margin", "--triplet_margin"], "margin", "triplet margin (0.2)")
    for option in OPTION_TYPES:
        _type(parser, option)
    _type(parser, "sp_mode")
    _type(parser, "loss")
