"""What a run optimises and how it is scored, chosen by the dataset's ``task`` metadata.

The trainer's loop (tapping, the objective, backward, checkpoints, DDP) is the same for
every task; a task only gives its own loss terms to the objective (:mod:`engine.objective`:
classification's cross-entropy, weighted by ``gamma``), decides which loss weights apply,
how a test split is scored, which optimiser the recipe uses, the extra model arguments and
the training loader. Classification is built in; metric learning is :mod:`engine.metric_learning_task`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from distillers import FeatureTaps
from core.registry import Registry
from data.loaders import DataLoaderTrainLoader
from engine.distributed import all_reduce_sum

TASKS = Registry("task")


def accuracy_counts(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> List[int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top.eq(y[:, None])
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


@TASKS.register("classification")
class ClassificationTask:
    """Cross-entropy as its own term (``gamma``); top-1/top-5; best checkpoint by top-1."""

    score_key = "top1"
    train_accuracy = True
    soft_targets = True  # its cross-entropy reads mixing's soft targets (--mixup/--cutmix)
    keeps_last_batch = True  # its loaders can serve an epoch's last partial batch (--keep_last_batch)
    label_smoothing = 0.0  # --label_smoothing, set by configure

    def own_terms(self, weights: Dict[str, float]) -> Dict[str, Any]:
        """The task's terms of the objective: cross-entropy of the prediction, weighted by gamma. It reads
        the batch's mixed soft ``targets`` when it has them (--mixup/--cutmix), else the hard labels, with
        --label_smoothing applied to either (torch's own smoothing, equal to timm's mixup_target's)."""
        smoothing = self.label_smoothing

        def cross_entropy(prediction, batch):
            target = batch["targets"] if batch.get("targets") is not None else batch["labels"]
            return F.cross_entropy(prediction, target, label_smoothing=smoothing)

        return {"ce": (weights.get("gamma", 1.0), cross_entropy)}

    def check_weights(self, weights: Dict[str, float]) -> None:
        """Every weight (gamma, alpha, beta) has a term here."""

    def teacher_objective(self, args, spec) -> Optional[nn.Module]:
        """A method a teacher run trains with besides the task's own terms (none: cross-entropy)."""
        return None

    def train_correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Top-1 hits of a training batch, as a tensor on its device (summed there, read per epoch)."""
        return logits.topk(1, dim=1).indices[:, 0].eq(y).sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device,
                 head: Optional[nn.Module] = None) -> Dict[str, float]:
        """Top-1/top-5 and CE over a sharded test loader, each sample counted once over all ranks.

        ``head`` (SimKD's inference head) predicts from the student's taps instead of its logits.
        """
        model.eval()
        taps = FeatureTaps(model, head.student_taps) if head is not None else None
        if head is not None:
            head.eval()
        counts = torch.zeros(4, dtype=torch.float64)
        try:
            for batch in loader:
                batch = batch.to(device, non_blocking=True)
                x, y = batch.images, batch.labels
                logits = head(taps(x)) if head is not None else model(x)
                top1, top5 = accuracy_counts(logits, y)
                loss = F.cross_entropy(logits, y, reduction="sum").item()
                counts += torch.tensor([y.shape[0], top1, top5, loss], dtype=torch.float64)
        finally:
            if taps is not None:
                taps.close()
        counts = all_reduce_sum(counts)
        n = max(counts[0].item(), 1.0)
        return {"top1": 100 * counts[1].item() / n, "top5": 100 * counts[2].item() / n,
                "loss": counts[3].item() / n}

    def configure(self, args, kind: str, log=print) -> None:
        """Task defaults filled into ``args`` before anything is built (kind: 'teacher', 'student' or
        'eval'); classification has none (its recipe comes from the dataset family); it keeps the
        cross-entropy's --label_smoothing."""
        self.label_smoothing = float(getattr(args, "label_smoothing", 0.0) or 0.0)

    def model_kwargs(self, args, role: str) -> Dict[str, Any]:
        """Extra ``create_model`` arguments for ``role`` ('model', 'student' or 'teacher')."""
        return {}

    def eval_model_kwargs(self, args, state: Dict[str, Any]) -> Dict[str, Any]:
        """Extra ``create_model`` arguments to rebuild the network of checkpoint ``state`` (--evaluate)."""
        return {}

    def train_loader(self, args, info, dataset, batch_per_rank: int, pin_memory: bool, view_scheme=None):
        """The DataLoader path over ``dataset`` (the training set serving the run's data requests); called
        while the run is assembled."""
        return DataLoaderTrainLoader(dataset, info.rank, info.world_size, batch_per_rank, args.num_workers,
                                     args.seed, pin_memory, view_scheme, bool(getattr(args, "keep_last_batch", False)))

    def describe(self, metrics: Dict[str, float]) -> str:
        return f"top-1 {metrics['top1']:.2f}% top-5 {metrics.get('top5', float('nan')):.2f}%"

    #: The recipe's optimiser (engine/optim.py) when --optimizer is not given.
    default_optimizer = "sgd"

    def milestones(self, epochs):
        """The epochs after which a step schedule decays (the references step at the start of each epoch)."""
        return tuple(int(e) for e in epochs)
