"""``--evaluate --path_s CKPT`` (and the metric seeds' ``--mode eval --load CKPT``): a saved
network scored on the test split without its teacher or any training state.

A checkpoint not written by this project is handed to the task (``foreign_checkpoint``): the
metric task takes the RKD seed's ``best.pth`` (a bare state_dict). Data options: the ones
recorded at training time, overridden by ``--data_opt`` on the command line; a recorded one that
the evaluated dataset does not take (trained on ``cub200``, evaluated on ``metric_folder``) is
left out with a note, a command-line one is a one-line error."""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict

import data as datasets
from data.loaders import eval_loader
from distillers import build_distiller
from engine import checkpoint as ckpt
from engine.errors import ConfigError
from engine.distributed import DistInfo
from engine.tasks import TASKS
from models import create_model


def evaluate_checkpoint(args, info: DistInfo) -> Dict[str, float]:
    """``train_student.py --evaluate --path_s CKPT``: the saved student alone, no teacher."""
    state = ckpt.load(args.path_s)
    ours = state.get("format") == ckpt.FORMAT
    explicit = "dataset" in getattr(args, "given", ())  # an explicit --dataset wins over the recorded one
    dataset = args.dataset if explicit or "dataset" not in state else state["dataset"]
    args.dataset = dataset  # the task's configure and foreign_checkpoint read the evaluated dataset
    meta = datasets.dataset_info(dataset)
    task = TASKS.build(meta.get("task", "classification"))
    if not ours:
        adopt = getattr(task, "foreign_checkpoint", None)
        if adopt is None:
            raise ckpt.CheckpointError(f"'{args.path_s}' is not a distillers checkpoint" + _foreign_hint(state))
        state = adopt(args, state, args.path_s, log=print if info.is_main else _quiet)
    task.configure(args, "eval")
    recorded = state.get("config") if isinstance(state.get("config"), dict) else {}
    options = data_options(dataset, recorded.get("data_opts") or {}, args.data_opts or {},
                           state.get("dataset"), log=print if info.is_main else _quiet)
    try:
        test_set = datasets.build_dataset(dataset, args.data_root or datasets.default_data_root(), "test",
                                          **options)
    except (TypeError, ValueError) as err:  # a value the dataset rejects (DataError is reported as it is)
        if isinstance(err, datasets.DataError):
            raise
        raise ConfigError(f"{dataset}: {err} (data options {_show(options)})") from None
    arch = state["arch"]
    built_with = state.get("model_options") if isinstance(state.get("model_options"), dict) else {}
    model = create_model(arch, num_classes=state["num_classes"], family=None if ":" in arch else meta["family"],
                         **{**built_with, **task.eval_model_kwargs(args, state)}).to(info.device)
    ckpt.load_weights(model, state["model"], f"student checkpoint '{args.path_s}'")
    head = None
    if state.get("distiller_name") and state.get("shape_spec"):
        method = build_distiller(state["distiller_name"], ckpt.spec_from_dict(state["shape_spec"]),
                                 **state.get("distiller_options", {}))
        method.load_state_dict(state["distiller"])
        head = method.inference_head()
        if head is not None:
            head.to(info.device)
    loader = eval_loader(test_set, info.rank, info.world_size, max(1, (args.batch_size or 64) // 2),
                         max(0, args.num_workers // 2))
    acc = task.evaluate(model, loader, info.device, head)
    if info.is_main:
        recorded = state.get("acc")
        print(f"{arch} ({args.path_s}) on {dataset}: test {task.describe(acc)}"
              + (f" (recorded at training time: {recorded:.2f}%)" if isinstance(recorded, float)
                 and not math.isnan(recorded) else ""), flush=True)
    return acc


def _quiet(*_args, **_kwargs) -> None:
    pass


def _show(options: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "none"


def _foreign_hint(state: Dict[str, Any]) -> str:
    weights = state.get("model", state)
    if isinstance(weights, dict) and any(str(k).replace("module.", "", 1) == "linear.weight" for k in weights):
        return (" (it looks like a metric-learning state_dict, e.g. the RKD seed's best.pth: pass its dataset, "
                "--dataset cub200, cars196, stanford or metric_folder)")
    return ""


def data_options(dataset: str, recorded: Dict[str, Any], given: Dict[str, Any], trained_on=None,
                 log=print) -> Dict[str, Any]:
    """The options to build ``dataset`` with for evaluation: the ones recorded at training time,
    the command line's (``given``) winning. A given option that ``dataset`` does not take is a
    :class:`ConfigError`; a recorded one is left out with a note (it belonged to the dataset the
    checkpoint was trained on)."""
    try:
        params = inspect.signature(datasets.DATASETS.get(dataset)).parameters
    except (TypeError, ValueError):  # not introspectable: pass everything, the dataset decides
        return {**recorded, **given}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {**recorded, **given}
    takes = [name for name in params if name not in ("root", "split", "augment")]
    bad = [k for k in given if k not in takes]
    if bad:
        raise ConfigError(f"--data_opt {bad[0]}: dataset '{dataset}' takes no option '{bad[0]}' "
                          f"(its options: {', '.join(takes) or 'none'})")
    dropped = {k: v for k, v in recorded.items() if k not in takes and k not in given}
    if dropped:
        log(f"data options recorded at training time{f' on {trained_on}' if trained_on else ''} that "
            f"{dataset} does not take are left out: {_show(dropped)}")
    return {**{k: v for k, v in recorded.items() if k not in dropped}, **given}
