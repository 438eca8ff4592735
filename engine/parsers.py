"""The command lines' flags: ``train_teacher.py`` and ``train_student.py``.

Flags follow the reference scripts (RepDistiller / giakoumoglou's distillers), with their
aliases. The flags a method, a plugin or a metric-learning dataset brings are added when the
command line is parsed (:func:`engine.config.complete`).
"""
from __future__ import annotations

import argparse
import os

import yaml

from engine.flags import HelpFormatter, Parser
from engine.optim import OPTIMIZERS, SCHEDULERS


def key_value(flag: str):
    """The converter of a repeatable ``KEY=VALUE`` flag (the value read as YAML: 32, 0.1, true, [a, b])."""
    def convert(text: str):
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} expects key=value, got '{text}'")
        return key, yaml.safe_load(value)
    return convert


def _common(parser: argparse.ArgumentParser, model_flag: str) -> None:
    parser.add_argument("--model_opt", dest="model_opts", action="append", type=key_value("--model_opt"),
                        default=[], metavar="KEY=VALUE",
                        help=f"{model_flag} network option, repeatable (timm: img_size=32 patch_size=4); in checkpoints")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cifar100",
                      help="cifar100, cifar10, synthetic (no download), imagenet, imagefolder, ...")
    data.add_argument("--data-root", "--data_root", dest="data_root", default=None,
                      metavar="DIR", help="dataset folder (default: $DISTILLERS_DATA or ~/.cache/distillers/data)")
    data.add_argument("--keep_last_batch", action="store_true",
                      help="train on each epoch's partial batch too (RepDistiller)")
    data.add_argument("--data_opt", dest="data_opts", action="append", type=key_value("--data_opt"), default=[],
                      metavar="KEY=VALUE", help="dataset option, repeatable (synthetic: train_size=2000)")
    data.add_argument("--num_workers", type=int, default=2, metavar="N", help="DataLoader workers per process")
    data.add_argument("--skip_bad_images", action="store_true",
                      help="image folders: skip undecodable files (counted)")
    data.add_argument("--loader", choices=["auto", "device", "dataloader"], default="auto",
                      help="auto: device where it applies, else the DataLoader (README: Loaders)")
    data.add_argument("--dali", choices=["cpu", "gpu"], default=None,
                      help="ImageNet-style folders through NVIDIA DALI")

    opt = parser.add_argument_group("optimisation (unset values come from the dataset's recipe)")
    opt.add_argument("--batch_size", "--batch", dest="batch_size", type=int, default=None,
                     metavar="N", help="global batch, split over processes (CIFAR 64, ImageNet 256)")
    opt.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs (CIFAR 240, ImageNet 120)")
    opt.add_argument("--learning_rate", "--lr", dest="learning_rate", type=float, default=None,
                     metavar="LR", help="CIFAR 0.05 (0.01 for MobileNetV2/ShuffleNet students), ImageNet 0.1")
    opt.add_argument("--lr_decay_epochs", nargs="+", default=None, metavar="EPOCH",
                     help="step schedule: '150,180,210' or '150 180 210'")
    opt.add_argument("--lr_decay_rate", "--lr_decay_gamma", dest="lr_decay_rate", type=float, default=None,
                     metavar="X", help="lr multiplier at each decay epoch (0.1)")
    opt.add_argument("--weight_decay", type=float, default=None, metavar="WD", help="CIFAR 5e-4, ImageNet 1e-4")
    opt.add_argument("--momentum", type=float, default=None, metavar="M", help="SGD momentum (0.9)")
    opt.add_argument("--lr_rule", choices=["keep", "linear"], default="keep",
                     help="lr for another global batch: keep it (the references) or scale it by batch / the "
                          "recipe's")
    opt.add_argument("--optimizer", default=None, metavar="NAME",
                     help=f"{', '.join(OPTIMIZERS.names())} (default: the recipe's: sgd; metric learning adam)")
    opt.add_argument("--scheduler", default="step", metavar="NAME",
                     help=f"per-epoch schedule: {', '.join(SCHEDULERS.names())}")
    opt.add_argument("--warmup_epochs", type=int, default=0, metavar="N", help="cosine: linear warm-up epochs")
    opt.add_argument("--min_lr", type=float, default=0.0, metavar="LR", help="cosine: the final lr")
    opt.add_argument("--seed", type=int, default=0, help="random seed")

    vit = parser.add_argument_group("the ViT recipe (README: The ViT recipe; all off by default)")
    vit.add_argument("--no_wd_bias_norm", action="store_true",
                     help="no weight decay on biases, norm weights and the model's no_weight_decay() (DeiT, mmcls)")
    vit.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                     help="mixup, lambda ~ Beta(ALPHA, ALPHA) (DeiT 0.8)")
    vit.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                     help="cutmix, lambda ~ Beta(ALPHA, ALPHA) (DeiT 1.0)")
    vit.add_argument("--mixup_switch_prob", type=float, default=0.5, metavar="P",
                     help="with both: P(cutmix) per batch")
    vit.add_argument("--label_smoothing", type=float, default=0.0, metavar="EPS",
                     help="of the cross-entropy (DeiT 0.1)")
    vit.add_argument("--ema", type=float, default=None, metavar="DECAY",
                     help="also keep and evaluate an EMA of the weights")
    vit.add_argument("--drop_path", type=float, default=None, metavar="RATE",
                     help="stochastic depth (timm models)")
    vit.add_argument("--clip_grad", type=float, default=None, metavar="NORM",
                     help="clip the gradient norm (not with --dot)")

    run = parser.add_argument_group("run")
    run.add_argument("--trial", default="0", help="trial id, part of the run name")
    run.add_argument("--save_root", default=os.environ.get("DISTILLERS_SAVE_ROOT", "save"),
                     metavar="DIR", help="run folders and teacher stores ($DISTILLERS_SAVE_ROOT)")
    run.add_argument("--save_dir", default=None, metavar="DIR", help="the run folder (default: <save_root>/<kind>s/<run>)")
    run.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                     help="continue the run exactly, from CKPT or <run folder>/latest.pth")
    run.add_argument("--overwrite", action="store_true",
                     help="delete the run already in the run folder")
    run.add_argument("--config", default=None, metavar="YAML", help="flag values by name; the command line wins")
    run.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE.py",
                     help="your method, model or dataset (repeatable)")
    run.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard logs")
    run.add_argument("--eval_freq", type=int, default=1, metavar="N", help="evaluate every N epochs and at the end")
    run.add_argument("--log_every", type=int, default=0, metavar="STEPS",
                     help="TensorBoard points every STEPS steps too")

    compute = parser.add_argument_group("how a step computes")
    compute.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                         help="autocast in bfloat16, or float16 with a loss scaler; weights stay float32")
    compute.add_argument("--channels_last", action="store_true", help="NHWC memory format")
    compute.add_argument("--compile", action="store_true", help="torch.compile the student's forward")

    dist = parser.add_argument_group("devices and distributed training")
    dist.add_argument("--gpu_id", default=None, metavar="IDS", help="CUDA devices, e.g. 0,1 (CUDA_VISIBLE_DEVICES)")
    dist.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    dist.add_argument("--multiprocessing-distributed", "--multiprocessing_distributed",
                      dest="multiprocessing_distributed", action="store_true",
                      help="one process per GPU (NCCL), or --nprocs CPU processes (gloo)")
    dist.add_argument("--nprocs", type=int, default=None, metavar="N", help="CPU processes per node (gloo)")
    dist.add_argument("--dist-url", "--dist_url", dest="dist_url", default="tcp://127.0.0.1:23456", metavar="URL",
                      help="rendezvous address of rank 0")
    dist.add_argument("--world-size", "--world_size", dest="world_size", type=int, default=1, metavar="NODES",
                      help="number of nodes")
    dist.add_argument("--rank", type=int, default=0, metavar="NODE", help="rank of this node")
    dist.add_argument("--dist-backend", "--dist_backend", dest="dist_backend", default=None,
                      choices=["nccl", "gloo"], help="default: nccl on GPUs, gloo on CPU")


def teacher_parser() -> Parser:
    parser = Parser(
        prog="train_teacher.py", kind="teacher",
        description="Train a model from scratch (a teacher, or a vanilla student baseline).",
        epilog="Metric-learning datasets (cub200, cars196, stanford, metric_folder) bring their own flags: "
               "train_teacher.py --dataset cub200 --help.",
        formatter_class=HelpFormatter)
    parser.add_argument("--model", default="resnet32x4", metavar="ARCH",
                        help="a CIFAR zoo name, 'torchvision:<name>' or 'timm:<name>'")
    _common(parser, "--model")
    return parser


def student_parser() -> Parser:
    parser = Parser(
        prog="train_student.py", kind="student",
        description="Distil a teacher into a student with any registered method.",
        formatter_class=HelpFormatter)
    parser.add_argument("--model_s", default="resnet8x4", metavar="ARCH", help="student architecture")
    parser.add_argument("--path_t", "--path-t", dest="path_t", default=None, metavar="TEACHER",
                        help="a checkpoint, a train_teacher.py run folder, or a zoo name such as resnet32x4@cifar100")
    parser.add_argument("--model_t", default=None, metavar="ARCH",
                        help="teacher architecture, for checkpoints that do not record it")
    parser.add_argument("--teacher_tolerance", type=float, default=0.5, metavar="POINTS",
                        help="refuse a teacher whose test top-1 is further than this from its card's")
    parser.add_argument("--no_teacher_check", action="store_true", help="skip that comparison")
    parser.add_argument("--list-methods", "--list_methods", action="store_true",
                        help="list the methods (metric-learning ones marked) and exit")
    parser.add_argument("--distill", default=None, metavar="METHOD",
                        help="the method (default: kd; metric-learning datasets: metric); NAME --help: its options")
    weights = parser.add_argument_group(
        "loss = gamma*CE + alpha*KD + beta*method (unset: the method's reference weights)")
    weights.add_argument("-r", "--gamma", "-c", "--cls", dest="gamma", type=float, default=None, metavar="W",
                         help="cross-entropy (-c/--cls: SimKD's spelling)")
    weights.add_argument("-a", "--alpha", "-d", "--div", dest="alpha", type=float, default=None, metavar="W",
                         help="the KD term any method can add (-d/--div: SimKD's spelling)")
    weights.add_argument("-b", "--beta", dest="beta", type=float, default=None, metavar="W",
                         help="the method's own loss")
    parser.add_argument("--model_t_opt", dest="model_t_opts", action="append", type=key_value("--model_t_opt"),
                        default=[], metavar="KEY=VALUE", help="teacher network option (default: as recorded)")
    dot = parser.add_argument_group("DOT (Zhao et al. 2023): momentum -/+ delta for task/distillation gradients")
    dot.add_argument("--dot", action="store_true", help="--optimizer dot, with any method")
    dot.add_argument("--dot_delta", type=float, default=0.075, metavar="D", help="DOT's momentum split")
    store = parser.add_argument_group(
        "teacher-output store: the teacher's logits/pooled per (sample, view) on disk (README)")
    store.add_argument("--teacher_store", default=None, metavar="DIR",
                       help="its folder (default: <save_root>/teacher_store/<hash>)")
    store.add_argument("--no_teacher_store", action="store_true", help="run the teacher on every batch")
    store.add_argument("--teacher_store_dtype", choices=["float32", "float16", "topk16"], default="float32",
                       help="float16: half the disk, ~3 digits; topk16: lossy, the top K logits")
    store.add_argument("--teacher_store_topk", type=int, default=10, metavar="K",
                       help="topk16: how many of the largest logits are kept")
    parser.add_argument("--evaluate", action="store_true", help="evaluate the student --path_s and exit")
    parser.add_argument("--path_s", default=None, metavar="CKPT", help="student checkpoint for --evaluate")
    _common(parser, "--model_s")
    return parser
