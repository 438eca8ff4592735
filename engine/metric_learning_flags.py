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
The objective's options (ratios, ``--loss``, ``--sample``, ``--margin``, ...) are the options of the
``metric`` method, declared with their types and aliases in its file and added to the parser like
every method's (a teacher run gets the ones its triplet objective uses). Unset recipe values
(learning rate, epochs, schedule, batch, weight decay) come from :data:`METRIC_RECIPES`.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

from engine.flags import parse_bool


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
class _Mode(argparse.Action):
    """``--mode train|eval``: eval sets ``evaluate``."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.evaluate = value == "eval"


def add_metric_flags(parser: argparse.ArgumentParser, role: str) -> None:
    """Add the seeds' metric-learning flags to the ``teacher`` or ``student`` parser."""

    group = parser.add_argument_group(
        "metric learning (datasets cub200, cars196, stanford, metric_folder; the RKD/AOMD seeds' flags)")
    group.add_argument("--data", dest="data_root", default=argparse.SUPPRESS,
                       help="the seeds' spelling of --data-root")
    group.add_argument("--base", default=None,
                       help="embedding network: resnet18 or resnet50 (the seeds' --base; default resnet50)")
    group.add_argument("--embedding_size", type=int, default=None,
                       help="embedding dimension (default 128; with --mode eval: the checkpoint's)")
    group.add_argument("--l2normalize", type=parse_bool, default=None, metavar="true|false",
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
        return
    group.add_argument("--teacher_base", dest="model_t", default=argparse.SUPPRESS,
                       help="alias of --model_t (the teacher embedding network)")
    group.add_argument("--teacher_load", dest="path_t", default=argparse.SUPPRESS, help="alias of --path_t")
    group.add_argument("--teacher_embedding_size", type=int, default=None,
                       help="the teacher's embedding dimension (default: read from --path_t)")
    group.add_argument("--teacher_l2normalize", type=parse_bool, default=None, metavar="true|false",
                       help="whether the teacher L2-normalises (default: as recorded in --path_t, else true)")
