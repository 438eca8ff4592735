"""The metric-learning task: what the trainer optimises and reports on metric datasets.

Chosen by the datasets' ``task="metric"`` metadata (:mod:`data.metric_learning`); the loop, taps,
checkpoints, resume, TensorBoard and DDP are the trainer's. This task decides:

* defaults (:meth:`MetricTask.configure`, before anything is built): the seeds' backbones
  (``--base``), the seeds' recipes (Adam, lr 1e-5 teacher / 1e-4 student, their decay epochs),
  the Recall@K values (1, 2, 4, 8; SOP 1, 10, 100, 1000); a student's default method is the one
  registered with ``default_for="metric"``;
* the loss: no task term of its own (no cross-entropy, and -r/-a are errors,
  :meth:`check_weights`); the objective is the method's ratio-weighted terms. A teacher run
  trains with the task's default method at the settings that method declares for teachers
  (:meth:`teacher_objective`: the seeds' triplet loss, tuned by ``--loss``, ``--sample``,
  ``--margin``);
* the loader: m images per class, ``--iter_per_epoch`` batches per epoch (:mod:`data.metric_learning`);
* evaluation: leave-one-out Recall@K in blocks (:func:`distillers.retrieval.recall_at_k`) on the
  test classes and, by default, on held-out training classes that select ``best.pth``
  (``--select test`` selects on the test split, as the seeds did; the log says which). Each
  evaluation also reports the test numbers of the best-selected epoch so far (``best_recall@K``);
  the last epoch's are ``recall@K``. ``--mode eval`` also reads the RKD seed's own ``best.pth``,
  a bare state_dict (:meth:`MetricTask.foreign_checkpoint`);
* the model arguments: ``--embedding_size``/``--l2normalize`` for the trained network,
  ``--teacher_embedding_size``/``--teacher_l2normalize`` for the teacher (default: what its
  checkpoint records; a size that does not match the checkpoint is an error).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

import data as datasets
from data import metric_learning as metric_data  # registers cub200, cars196, stanford, metric_folder
from distillers import DISTILLERS, Distiller, build_distiller
from distillers.base import default_method
from distillers.dist import gather
from distillers.retrieval import recall_at_k
from engine import checkpoint as ckpt
from engine.errors import ConfigError
from engine.options import method_options
from engine.distributed import DistInfo
from data.loaders import eval_loader
from engine.metric_learning_flags import DEFAULT_BASE, METRIC_RECIPES
from engine.tasks import TASKS



def _classification_default(attr: str) -> Optional[str]:
    from engine import parsers
    parser = parsers.teacher_parser() if attr == "model" else parsers.student_parser()
    return parser.get_default(attr)


def _head_size(weights: Dict[str, torch.Tensor]) -> Optional[int]:
    weight = weights.get("linear.weight")
    return int(weight.shape[0]) if weight is not None else None


@TASKS.register("metric")
class MetricTask:
    """Retrieval training: metric losses, m-per-class batches, Recall@K (module docstring)."""

    train_accuracy = False
    keeps_last_batch = False  # its m-per-class sampler builds every batch whole

    def __init__(self):
        self.ks = metric_data.DEFAULT_KS
        self.select = "val"
        self.score_key = "val_recall@1"
        self.selection_loader = None
        self._best: Dict[int, Any] = {}

    # ------------------------------------------------------------------ defaults
    def configure(self, args, kind: str, log=print) -> None:
        """Fill the metric defaults into ``args`` (kind: teacher, student or eval)."""
        meta = datasets.dataset_info(args.dataset)
        self.ks = tuple(getattr(args, "recall", None) or meta.get("recall_ks", metric_data.DEFAULT_KS))
        self.select = getattr(args, "select", "val") or "val"
        self.score_key = "recall@1" if self.select == "test" else "val_recall@1"
        if kind == "eval":
            return
        if self.select == "test":
            args.data_opts.setdefault("val_classes", 0)  # as the seeds: every training class trains
            log("model selection: best.pth is the epoch with the best test Recall@1 (--select test, the seeds' "
                "protocol: every training class trains); its test numbers are therefore optimistic. The default "
                "--select val selects on training classes held out of training")
        else:
            import inspect
            held = args.data_opts.get("val_classes")
            if held is None:
                param = inspect.signature(datasets.DATASETS.get(args.dataset)).parameters.get("val_classes")
                held = None if param is None else param.default
            of = f" of the {meta['num_classes']}" if meta.get("num_classes") else " of the"
            held = f"{held}{of} training classes" if held is not None else f"20%{of} training classes"
            log(f"model selection: best.pth is the epoch with the best Recall@1 on {held}, held out of training "
                "(--select val, the default; --data_opt val_classes=N to change); --select test reproduces the "
                "seeds' protocol: every training class trains and best.pth is selected on the test split")
        attr = "model" if kind == "teacher" else "model_s"
        base = getattr(args, "base", None)
        if base:
            setattr(args, attr, base)
        elif getattr(args, attr, None) in (None, _classification_default(attr)):
            setattr(args, attr, DEFAULT_BASE[kind])
            log(f"{attr.replace('_', ' ')} {DEFAULT_BASE[kind]} (the seeds' default --base)")
        if getattr(args, "embedding_size", None) is None:
            args.embedding_size = 128
        if getattr(args, "l2normalize", None) is None:
            args.l2normalize = True
        if getattr(args, "iter_per_epoch", None) is None:
            args.iter_per_epoch = 100
        if getattr(args, "num_image_per_class", None) is None:
            args.num_image_per_class = 5
        for key, value in METRIC_RECIPES[kind].items():
            if getattr(args, key, None) is None:
                setattr(args, key, list(value) if isinstance(value, list) else value)
        log(f"metric recipe: Adam (weight decay {args.weight_decay}), lr {args.learning_rate} x{args.lr_decay_rate} "
            f"from epochs {args.lr_decay_epochs} on (the references' schedule), {args.iter_per_epoch} batches of "
            f"{args.batch_size} ({args.num_image_per_class} images per class) per epoch")

    def check_weights(self, weights: Dict[str, float]) -> None:
        """Metric learning has no class logits: no cross-entropy, no KD; its losses are the method's."""
        for flag, key in (("-a/--alpha (KD)", "alpha"), ("-r/--gamma (cross-entropy)", "gamma")):
            if weights.get(key):
                raise ConfigError(f"{flag} does not apply to metric learning (no class logits): "
                                  "the loss is the sum of the ratio-weighted metric terms")

    def own_terms(self, weights: Dict[str, float]) -> Dict[str, Any]:
        return {}

    def teacher_objective(self, args, spec) -> Distiller:
        """A teacher run trains with the task's default method at its declared teacher settings
        (the seeds' run.py: a triplet loss), tuned by the teacher flags (--loss, --sample, --margin)."""
        cls = DISTILLERS.get(default_method("metric"))
        options = {**cls.teacher_options, **{k: v for k, v in method_options(args).items() if k in cls.option_names()}}
        self._teacher_options = options
        return build_distiller(cls.registry_name, spec, **options)

    # ------------------------------------------------------------------ model arguments
    def model_kwargs(self, args, role: str) -> Dict[str, Any]:
        if role == "teacher":
            return self._teacher_kwargs(args)
        kwargs = {"embedding_size": args.embedding_size, "l2normalize": args.l2normalize,
                  "pretrained": bool(getattr(args, "pretrained", True))}
        if getattr(args, "path_s", None):  # the seeds' --load when training: starting weights
            kwargs["init_weights"] = args.path_s
        return kwargs

    def _teacher_kwargs(self, args) -> Dict[str, Any]:
        state = ckpt.load(args.path_t)
        size = _head_size(ckpt.model_state(state))
        recorded = state.get("config", {}) if isinstance(state.get("config"), dict) else {}
        wanted = getattr(args, "teacher_embedding_size", None)
        if wanted is not None and size is not None and wanted != size:
            raise ConfigError(f"--teacher_embedding_size {wanted} does not match the teacher checkpoint "
                              f"'{args.path_t}': its embedding head has {size} outputs (pass "
                              f"--teacher_embedding_size {size}, or leave it unset to read it from the checkpoint)")
        norm = getattr(args, "teacher_l2normalize", None)
        if norm is None:
            norm = recorded.get("l2normalize")
            norm = True if norm is None else bool(norm)  # run_distill.py's default
        return {"embedding_size": wanted or size or 128, "l2normalize": norm, "pretrained": False}

    def eval_model_kwargs(self, args, state: Dict[str, Any]) -> Dict[str, Any]:
        """Arguments to rebuild a saved network for ``--mode eval``: the checkpoint's, checked
        against any ``--embedding_size``/``--l2normalize``/``--base`` given."""
        path = args.path_s
        size = _head_size(ckpt.model_state(state))
        recorded = state.get("config", {}) if isinstance(state.get("config"), dict) else {}
        wanted = getattr(args, "embedding_size", None)
        if wanted is not None and size is not None and wanted != size:
            raise ConfigError(f"--embedding_size {wanted} does not match '{path}': its embedding head has "
                              f"{size} outputs")
        base = getattr(args, "base", None)
        if base and state.get("arch") and base != state["arch"]:
            raise ConfigError(f"--base {base} does not match '{path}', a {state['arch']} checkpoint")
        norm = getattr(args, "l2normalize", None)
        if norm is None:
            norm = recorded.get("l2normalize")
            norm = True if norm is None else bool(norm)
        return {"embedding_size": wanted or size or 128, "l2normalize": norm, "pretrained": False}

    # ------------------------------------------------------------------ training
    def train_loader(self, args, info: DistInfo, dataset, batch_per_rank: int, pin_memory: bool, view_scheme=None):
        self.selection_loader = None
        if self.select == "val":
            root = args.data_root or datasets.default_data_root()
            try:
                val = metric_data.build_split(args.dataset, root, "val", **args.data_opts)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            self.selection_loader = eval_loader(val, info.rank, info.world_size, max(1, batch_per_rank // 2),
                                                max(0, args.num_workers // 2), pin_memory)
        try:
            return metric_data.MetricTrainLoader(dataset, info.rank, batch_per_rank, args.num_image_per_class,
                                                 args.iter_per_epoch, args.num_workers, args.seed, pin_memory)
        except ValueError as err:  # e.g. --num_image_per_class 1, a one-class training split
            raise ConfigError(str(err)) from None

    #: The seeds' optimiser: Adam with L2-style weight decay (engine/optim.py).
    default_optimizer = "adam"

    def milestones(self, epochs):
        """The trainer steps the schedule after each epoch, so milestones move one epoch earlier to
        match the references' step at the start of each epoch (the decayed rate applies from the
        milestone epoch on)."""
        return tuple(max(int(m) - 1, 1) for m in epochs)

    def train_correct(self, logits: torch.Tensor, y: torch.Tensor) -> int:
        return 0

    # ------------------------------------------------------------------ evaluation
    def foreign_checkpoint(self, args, state: Dict[str, Any], path: str, log=print) -> Dict[str, Any]:
        """A checkpoint this project did not write, as ``--mode eval`` reads one: the RKD seed's
        ``best.pth``, ``torch.save(model.state_dict())`` of its LinearEmbedding (keys ``base.<conv1 ..
        layer4>.*`` and ``linear.weight/bias``, the module names of :mod:`models.embedding_nets`; a
        ``{'model': ...}`` dict or DataParallel's ``module.`` prefix are read too). The network is
        ``--base`` or, unset, the backbone whose pooled width feeds the head (512: resnet18, 2048:
        resnet50); the embedding size is the head's; ``--l2normalize`` defaults to true, as run.py."""
        from models.embedding_nets import BACKBONES

        try:
            weights = ckpt.model_state(state)
        except ckpt.CheckpointError:
            weights = {}
        head = weights.get("linear.weight")
        if head is None or head.dim() != 2 or not any(k.startswith("base.") for k in weights):
            raise ckpt.CheckpointError(
                f"'{path}' is neither a distillers checkpoint nor an embedding network's state_dict (expected "
                "'base.*' and 'linear.weight' keys, as the RKD seed's best.pth)")
        base, source = getattr(args, "base", None), "--base"
        if not base:
            widths = {width: name for name, (_, width) in BACKBONES.items()}
            base, source = widths.get(int(head.shape[1])), f"its head's {int(head.shape[1])}-d input"
            if base is None:
                raise ConfigError(f"'{path}': an embedding head over {int(head.shape[1])}-d features fits none of "
                                  f"{', '.join(f'{n} ({w}-d)' for n, (_, w) in BACKBONES.items())}: pass --base")
        norm = getattr(args, "l2normalize", None)
        why = "--l2normalize" if norm is not None else "the seeds' default; --l2normalize false to change"
        log(f"'{path}' is a bare state_dict (the RKD seed's format): {base} (from {source}), embedding size "
            f"{int(head.shape[0])} (its head), l2normalize {'false' if norm is False else 'true'} ({why})")
        meta = datasets.dataset_info(args.dataset)
        return {"arch": base, "model": weights, "num_classes": meta.get("num_classes"), "config": {}}

    @torch.no_grad()
    def embed(self, model: nn.Module, loader, device: torch.device):
        """Embeddings and labels of a (rank-sharded) evaluation loader, gathered over ranks."""
        model.eval()
        embeddings, labels = [], []
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            embeddings.append(model(batch.images).flatten(1).float())
            labels.append(batch.labels)
        if not embeddings:
            embeddings, labels = [torch.zeros(0, 1, device=device)], [torch.zeros(0, dtype=torch.long, device=device)]
        return gather(torch.cat(embeddings)), gather(torch.cat(labels))

    def recall(self, model: nn.Module, loader, device: torch.device, prefix: str = "") -> Dict[str, float]:
        embeddings, labels = self.embed(model, loader, device)
        values = recall_at_k(embeddings, labels, self.ks)
        return {f"{prefix}recall@{k}": 100.0 * float(v) for k, v in zip(self.ks, values)}

    def evaluate(self, model: nn.Module, loader, device: torch.device,
                 head: Optional[nn.Module] = None) -> Dict[str, float]:
        """Recall@K (percent) on the test split, on the selection split, and the test numbers of
        the best-selected evaluation of this model so far (``best_recall@K``)."""
        result = self.recall(model, loader, device)
        if self.selection_loader is not None:
            result.update(self.recall(model, self.selection_loader, device, prefix="val_"))
        if self.score_key not in result:  # --mode eval: no selection split, nothing to select
            return result
        test = {k: v for k, v in result.items() if k.startswith("recall@")}
        best = self._best.get(id(model))
        if best is None or result[self.score_key] > best[0]:
            best = self._best[id(model)] = (result[self.score_key], test)
        result.update({f"best_{k}": v for k, v in best[1].items()})
        return result

    def describe(self, metrics: Dict[str, float]) -> str:
        ks = [k for k in self.ks if f"recall@{k}" in metrics]
        text = "R@" + "/".join(str(k) for k in ks) + " " + " ".join(f"{metrics[f'recall@{k}']:.2f}" for k in ks)
        if f"val_recall@{ks[0]}" in metrics:
            text += f" | val R@{ks[0]} {metrics[f'val_recall@{ks[0]}']:.2f} (held-out training classes, selects best)"
        elif self.select == "test":
            text += " (best selected on the test split, as the seeds)"
        best = [metrics.get(f"best_recall@{k}") for k in ks]
        if best[0] is not None and best != [metrics[f"recall@{k}"] for k in ks]:
            text += (" | at the best-selected epoch: R@" + "/".join(str(k) for k in ks) + " "
                     + " ".join(f"{metrics[f'best_recall@{k}']:.2f}" for k in ks))
        return text
