"""The command lines' flags: ``train_teacher.py`` and ``train_student.py``.

Flags follow the reference scripts (RepDistiller / giakoumoglou's distillers), with their
aliases. The flags a method, a plugin or a metric-learning dataset brings are added when the
command line is parsed (:func:`engine.config.complete`).
"""
from __future__ import annotations

import argparse

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
                        help=f"an option of the {model_flag} network, repeatable (timm: img_size=32, patch_size=4, "
                             "drop_path_rate=0.1); recorded in its checkpoints")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cifar100",
                      help="dataset plugin: cifar100, cifar10, synthetic (no download), imagefolder, ...")
    data.add_argument("--data-root", "--data_root", dest="data_root", default=None,
                      help="dataset folder (default: $DISTILLERS_DATA or ~/.cache/distillers/data)")
    data.add_argument("--data_opt", dest="data_opts", action="append", type=key_value("--data_opt"), default=[],
                      metavar="KEY=VALUE", help="dataset option, repeatable (e.g. train_size=2000 for synthetic)")
    data.add_argument("--num_workers", type=int, default=2, help="DataLoader workers per process")
    data.add_argument("--skip_bad_images", action="store_true",
                      help="image-folder datasets: skip files that cannot be decoded (each is replaced by the "
                           "next readable sample, warned about once and counted) instead of stopping with the "
                           "file's path; scripts/verify_images.py ROOT lists them before a run")
    data.add_argument("--loader", choices=["auto", "device", "dataloader"], default="auto",
                      help="training loader. 'device': the in-memory uint8 set (cifar10/100, synthetic) is "
                           "cropped, flipped and normalised a batch at a time on the training device, no PIL, "
                           "no workers; each view a function of (seed, epoch, sample), which the teacher store "
                           "keys. 'dataloader': torch DataLoader with PIL transforms. 'auto': device for in-memory "
                           "sets read with one view per image, else dataloader (both reach the same accuracy: "
                           "README, Loaders)")
    data.add_argument("--dali", choices=["cpu", "gpu"], default=None,
                      help="read ImageNet-style folders with NVIDIA DALI pipelines on the CPU or GPU "
                           "(pip install -e .[dali]); default: torchvision DataLoader")

    opt = parser.add_argument_group("optimisation (unset values come from the dataset's recipe)")
    opt.add_argument("--batch_size", "--batch", dest="batch_size", type=int, default=None,
                     help="global batch size, split over processes (CIFAR 64, ImageNet 256)")
    opt.add_argument("--epochs", type=int, default=None, help="epochs (CIFAR 240, ImageNet 120)")
    opt.add_argument("--learning_rate", "--lr", dest="learning_rate", type=float, default=None,
                     help="learning rate (CIFAR 0.05, or 0.01 for MobileNetV2/ShuffleNet students; "
                          "ImageNet 0.1)")
    opt.add_argument("--lr_decay_epochs", nargs="+", default=None, metavar="EPOCH",
                     help="epochs after which the lr decays: '150,180,210' or '150 180 210'")
    opt.add_argument("--lr_decay_rate", "--lr_decay_gamma", dest="lr_decay_rate", type=float, default=None,
                     help="lr multiplier at each decay epoch (0.1)")
    opt.add_argument("--weight_decay", type=float, default=None, help="weight decay (CIFAR 5e-4)")
    opt.add_argument("--momentum", type=float, default=None, help="SGD momentum (0.9)")
    opt.add_argument("--lr_rule", choices=["keep", "linear"], default="keep",
                     help="the learning rate for another global batch: keep it (the references), or scale it "
                          "linearly with the global batch over the recipe's (CIFAR 64, ImageNet 256)")
    opt.add_argument("--optimizer", default=None, metavar="NAME",
                     help=f"optimiser: {', '.join(OPTIMIZERS.names())} (default: the recipe's, sgd; adam for "
                          "metric learning; --dot is --optimizer dot)")
    opt.add_argument("--scheduler", default="step", metavar="NAME",
                     help=f"learning-rate schedule, stepped after each epoch: {', '.join(SCHEDULERS.names())} "
                          "(step: x --lr_decay_rate after each of --lr_decay_epochs; cosine: to --min_lr)")
    opt.add_argument("--warmup_epochs", type=int, default=0,
                     help="epochs of linear warm-up before the cosine schedule")
    opt.add_argument("--min_lr", type=float, default=0.0, help="the cosine schedule's final learning rate")
    opt.add_argument("--seed", type=int, default=0, help="random seed")

    vit = parser.add_argument_group("the ViT recipe (README: The ViT recipe; all off by default)")
    vit.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                     help="mixup each training batch with lambda ~ Beta(ALPHA, ALPHA) (DeiT 0.8); teacher and "
                          "student see the same mixed images, the cross-entropy reads the mixed targets. The "
                          "plan is a function of (seed, epoch, batch): the same on any loader, any number of "
                          "processes and after a resume")
    vit.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                     help="cutmix with lambda ~ Beta(ALPHA, ALPHA) (DeiT 1.0); with --mixup too, one of the two "
                          "per batch")
    vit.add_argument("--mixup_switch_prob", type=float, default=0.5, metavar="P",
                     help="with both --mixup and --cutmix: the probability that a batch is cut-mixed")
    vit.add_argument("--label_smoothing", type=float, default=0.0, metavar="EPS",
                     help="label smoothing of the cross-entropy term (also of mixed targets; DeiT 0.1)")
    vit.add_argument("--ema", type=float, default=None, metavar="DECAY",
                     help="keep an exponential moving average of the weights, ema = DECAY*ema + (1-DECAY)*model "
                          "after each optimiser step (buffers copied; e.g. 0.99996); evaluated beside the model "
                          "and saved in every checkpoint under 'ema' (best.pth is still chosen on the model)")
    vit.add_argument("--drop_path", type=float, default=None, metavar="RATE",
                     help="stochastic depth of the trained network: --model_opt drop_path_rate=RATE (timm models "
                          "take it; a model that does not is refused)")
    vit.add_argument("--clip_grad", type=float, default=None, metavar="NORM",
                     help="clip the global gradient norm to NORM before each optimiser step (after unscaling "
                          "under --amp fp16); not with --dot")

    run = parser.add_argument_group("run")
    run.add_argument("--trial", default="0", help="trial id, part of the run name")
    run.add_argument("--save_root", default="save",
                     help="folder for run folders, outside the code")
    run.add_argument("--save_dir", default=None, help="exact run folder (default: <save_root>/<kind>/<run name>)")
    run.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                     help="continue a run exactly: from CKPT, or from <run folder>/latest.pth (a run that has "
                          "none yet starts from the beginning); the run's recorded hyper-parameters must not change")
    run.add_argument("--overwrite", action="store_true",
                     help="start over in a run folder that already holds a run (its checkpoints and logs "
                          "are deleted); without it such a folder is refused unless --resume continues it")
    run.add_argument("--config", default=None, help="YAML file of flag values; the command line wins")
    run.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                     help="import a module or .py file first, e.g. one that registers your own "
                          "distiller, model or dataset (repeatable)")
    run.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard logs")
    run.add_argument("--eval_freq", type=int, default=1, help="evaluate every N epochs (and at the end)")
    run.add_argument("--log_every", type=int, default=0, metavar="STEPS",
                     help="also log the loss, its terms, the lr and the fraction of step time spent waiting for "
                          "data to TensorBoard every STEPS steps (train_step/*; 0: once per epoch only)")

    compute = parser.add_argument_group("how a step computes (engine/precision.py)")
    compute.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                         help="mixed precision: forwards and losses under autocast in bfloat16, or float16 "
                              "with a gradient scaler (in the checkpoint); weights stay float32")
    compute.add_argument("--channels_last", action="store_true",
                         help="NHWC memory format for the networks and the batches (tensor cores, oneDNN)")
    compute.add_argument("--compile", action="store_true",
                         help="torch.compile the student's forward (inductor); a model that cannot be "
                              "compiled stops at the first step with one line")

    dist = parser.add_argument_group("devices and distributed training")
    dist.add_argument("--gpu_id", default=None,
                      help="CUDA devices to use, e.g. '0' or '0,1,2,3' (sets CUDA_VISIBLE_DEVICES)")
    dist.add_argument("--device", default=None, choices=["cpu", "cuda"],
                      help="force a device (default: cuda when available)")
    dist.add_argument("--multiprocessing-distributed", "--multiprocessing_distributed",
                      dest="multiprocessing_distributed", action="store_true",
                      help="spawn one process per GPU (NCCL), or --nprocs CPU processes (gloo)")
    dist.add_argument("--nprocs", type=int, default=None,
                      help="processes per node without GPUs (gloo); implies --multiprocessing-distributed")
    dist.add_argument("--dist-url", "--dist_url", dest="dist_url", default="tcp://127.0.0.1:23456",
                      help="rendezvous address of rank 0")
    dist.add_argument("--world-size", "--world_size", dest="world_size", type=int, default=1,
                      help="number of nodes")
    dist.add_argument("--rank", type=int, default=0, help="rank of this node")
    dist.add_argument("--dist-backend", "--dist_backend", dest="dist_backend", default=None,
                      choices=["nccl", "gloo"], help="default: nccl on GPUs, gloo on CPU")


def teacher_parser() -> Parser:
    parser = Parser(
        prog="train_teacher.py", kind="teacher",
        description="Train a model from scratch (a teacher, or a vanilla student baseline).",
        epilog="Metric-learning datasets (cub200, cars196, stanford, metric_folder) bring their own flags: "
               "train_teacher.py --dataset cub200 --help.",
        formatter_class=HelpFormatter)
    parser.add_argument("--model", default="resnet32x4",
                        help="architecture: a CIFAR zoo name, 'torchvision:<name>' or 'timm:<name>'")
    _common(parser, "--model")
    return parser


def student_parser() -> Parser:
    parser = Parser(
        prog="train_student.py", kind="student",
        description="Distil a teacher into a student with any registered method. "
                    "`train_student.py --distill NAME --help` lists that method's options.",
        formatter_class=HelpFormatter)
    parser.add_argument("--model_s", default="resnet8x4", help="student architecture")
    parser.add_argument("--path_t", "--path-t", dest="path_t", default=None,
                        help="the teacher: a checkpoint (this project's or RepDistiller's {'model': state_dict}), a "
                             "run folder of train_teacher.py (its best.pth), or a zoo name NAME@DATASET such as "
                             "resnet32x4@cifar100 (downloaded once, hash-checked; README: teachers by name)")
    parser.add_argument("--model_t", default=None,
                        help="teacher architecture, for checkpoints that do not record it")
    parser.add_argument("--teacher_tolerance", type=float, default=0.5, metavar="POINTS",
                        help="pre-flight check: refuse a teacher whose test top-1 on this run's test set is further "
                             "than POINTS from its card's (or its zoo entry's published one)")
    parser.add_argument("--no_teacher_check", action="store_true",
                        help="skip the pre-flight comparison (the teacher is still evaluated and its score printed)")
    parser.add_argument("--distill", default=None, metavar="METHOD",
                        help="the method (default: kd; on metric-learning datasets: metric); see the list below")
    weights = parser.add_argument_group(
        "loss weights: total = gamma*CE + alpha*KD + beta*method (unset: the method's reference values)")
    weights.add_argument("-r", "--gamma", "-c", "--cls", dest="gamma", type=float, default=None,
                         help="weight of the cross-entropy term (-c/--cls is the SimKD spelling)")
    weights.add_argument("-a", "--alpha", "-d", "--div", dest="alpha", type=float, default=None,
                         help="weight of the KD term, which any method can add (-d/--div is the SimKD spelling)")
    weights.add_argument("-b", "--beta", dest="beta", type=float, default=None,
                         help="weight of the method's own loss")
    parser.add_argument("--model_t_opt", dest="model_t_opts", action="append", type=key_value("--model_t_opt"),
                        default=[], metavar="KEY=VALUE",
                        help="an option of the teacher network (default: what its checkpoint records)")
    dot = parser.add_argument_group("the DOT optimiser")
    dot.add_argument("--dot", action="store_true",
                     help="--optimizer dot: DOT (Zhao et al. 2023), SGD with separate momenta for the task-loss and "
                          "the distillation-loss gradients (momentum - delta and momentum + delta), any method")
    dot.add_argument("--dot_delta", type=float, default=0.075, help="DOT's momentum split delta")
    store = parser.add_argument_group(
        "teacher-output store: the teacher's small outputs (logits, pooled) per (sample, view) on disk, so "
        "later runs on the same teacher skip its forward (with --loader device, or --data_opt seeded_views=true "
        "on image folders; README: the teacher-output store)")
    store.add_argument("--teacher_store", default=None, metavar="DIR",
                       help="the store's folder (default: teacher_store/<hash of teacher, dataset, views, dtype> "
                            "in --save_root, or beside --save_dir when given); scripts/fill_teacher_store.py "
                            "fills every view once")
    store.add_argument("--no_teacher_store", action="store_true", help="run the teacher on every batch")
    store.add_argument("--teacher_store_dtype", choices=["float32", "float16", "topk16"], default="float32",
                       help="storage of the stored outputs (float16 halves the disk, rounds to ~3 digits; topk16, "
                            "not exact: the logits as their top --teacher_store_topk in float16 plus one logit "
                            "keeping the rest's probability, its KL bound printed at start: README)")
    store.add_argument("--teacher_store_topk", type=int, default=10, metavar="K",
                       help="with --teacher_store_dtype topk16: how many of the largest logits are kept")
    parser.add_argument("--evaluate", action="store_true",
                        help="only evaluate the student checkpoint --path_s (no teacher needed)")
    parser.add_argument("--path_s", default=None, help="student checkpoint for --evaluate")
    _common(parser, "--model_s")
    return parser
