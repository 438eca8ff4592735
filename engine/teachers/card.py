"""The teacher card: what a teacher checkpoint is, stored beside its weights as ``state['card']``.

Why: a teacher file alone does not say which normalisation, split, recipe or accuracy it
belongs to, and a wrong one trains a worse student without any error. The card is plain
JSON-able values only, so it goes into a ``weights_only`` checkpoint and out as JSON. Its
``weights_sha256`` is the teacher store's fingerprint (:func:`engine.teacher_store.teacher_fingerprint`),
one definition of "these weights" for the store, the card and the pre-flight check.

A checkpoint from elsewhere (RepDistiller, mdistiller, torchvision, timm) has no card:
:func:`card_of` builds one from its zoo entry or from the user's flags and says which fields
were assumed (``assumed``) rather than read from a source.

    python -m engine.teachers.card CKPT [--json OUT] [--zoo NAME@DATASET]

prints the card and whether the checkpoint's weights still are the card's (exit status 1 if not).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from engine import checkpoint as ckpt
from engine.teacher_store import teacher_fingerprint

FORMAT = "distillers/teacher-card/1"
#: Every card has these keys (None where unknown), in this order when printed.
FIELDS = ("format", "arch", "model_options", "dataset", "num_classes", "mean", "std", "input_size", "crop",
          "weights_sha256", "top1", "top5", "recipe", "world_size", "batch_per_process", "global_batch", "seed",
          "code_version", "source", "assumed")
#: The optimisation values of a run's config that make its recipe (engine/config.py's RECIPES keys and more).
RECIPE_KEYS = ("epochs", "learning_rate", "lr_decay_epochs", "lr_decay_rate", "weight_decay", "momentum",
               "batch_size", "amp", "dot", "dot_delta", "lr_rule", "data_opts", "loader")


class CardError(ValueError):
    """A card that is missing, malformed or holds a value JSON cannot carry; one line."""


class _Weights:
    """A state_dict seen as a module, so the store's fingerprint hashes it unchanged."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self._state = state_dict

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        return self._state


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state_dict, equal to ``teacher_fingerprint`` of a model holding it.

    A DataParallel ``module.`` prefix is dropped first, as when the weights are loaded.
    """
    return teacher_fingerprint(_Weights(ckpt.model_state({"model": dict(state_dict)})))


def _plain(value: Any, field: str) -> Any:
    """``value`` as JSON reads it back: tuples become lists, tensors and numpy scalars numbers,
    NaN/inf None (JSON has no NaN); anything else is a :class:`CardError` naming the field."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _plain(value.item(), field)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
        return _plain(value.item(), field)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise CardError(f"card field {field}: key {key!r} is not a string (JSON keys are)")
            out[key] = _plain(v, f"{field}.{key}")
        return out
    raise CardError(f"card field {field}: {type(value).__name__} {value!r} is not a plain value "
                    "(accepted: None, bool, int, float, str, lists and string-keyed dicts of them)")


def _numbers(values: Optional[Sequence[float]], field: str) -> Optional[list]:
    if values is None:
        return None
    out = [float(v) for v in values]
    if len(out) != 3:
        raise CardError(f"card field {field}: expected 3 per-channel values, got {len(out)}: {out}")
    return out


def make_card(model: nn.Module, *, arch: str, model_options: Optional[Dict[str, Any]], dataset: str,
              num_classes: int, mean: Sequence[float], std: Sequence[float], input_size: int, crop: int,
              top1: Optional[float], top5: Optional[float], recipe: Optional[Dict[str, Any]], world_size: int,
              batch_per_process: int, seed: Optional[int], code_version: str,
              source: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The card of ``model`` as trained here: its weights' hash and the run that made it.

    ``top1``/``top5`` are the test accuracies measured at the end of training (the numbers a
    pre-flight check compares with); ``recipe`` the resolved optimisation values
    (:func:`recipe_from_config`). ``global_batch`` is derived: ``world_size * batch_per_process``.
    """
    card = {
        "format": FORMAT, "arch": str(arch), "model_options": dict(model_options or {}), "dataset": str(dataset),
        "num_classes": int(num_classes), "mean": _numbers(mean, "mean"), "std": _numbers(std, "std"),
        "input_size": int(input_size), "crop": int(crop), "weights_sha256": teacher_fingerprint(model),
        "top1": None if top1 is None else float(top1), "top5": None if top5 is None else float(top5),
        "recipe": dict(recipe or {}), "world_size": int(world_size), "batch_per_process": int(batch_per_process),
        "global_batch": int(world_size) * int(batch_per_process), "seed": None if seed is None else int(seed),
        "code_version": str(code_version), "source": dict(source or {"kind": "trained here"}), "assumed": [],
    }
    return _plain(card, "card")


def recipe_from_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The recipe part of a run's resolved flags (``vars(args)`` after the recipe is applied)."""
    return _plain({k: config[k] for k in RECIPE_KEYS if k in config}, "recipe")


def check_card(card: Any, where: str) -> Dict[str, Any]:
    """``card`` if it is a card of this format with a weights hash, else a one-line :class:`CardError`."""
    if not isinstance(card, Mapping):
        raise CardError(f"{where}: 'card' is a {type(card).__name__}, expected a dict")
    if card.get("format") != FORMAT:
        raise CardError(f"{where}: card format {card.get('format')!r} is not {FORMAT!r}")
    sha = card.get("weights_sha256")
    if not (isinstance(sha, str) and len(sha) == 64):
        raise CardError(f"{where}: the card has no weights_sha256 (64 hex digits), got {sha!r}")
    return {field: card.get(field) for field in FIELDS}


def _dataset_meta(dataset: str) -> Dict[str, Any]:
    """The registered mean/std/size of ``dataset`` ({} for a name the registry does not know)."""
    import data as datasets  # lazily: the card CLI should not need every dataset plugin to print a card

    try:
        return datasets.dataset_info(dataset)
    except KeyError:
        return {}


def _from_fields(values: Mapping[str, Any], weights: Mapping[str, torch.Tensor], source: Dict[str, Any],
                 measured: Optional[float] = None) -> Dict[str, Any]:
    """A card from partial ``values``: the dataset's registered normalisation and size fill what
    the source does not say, and those fields are listed in ``assumed``."""
    if not values.get("arch") or not values.get("dataset"):
        raise CardError(f"a card needs at least arch and dataset, got arch={values.get('arch')!r} "
                        f"dataset={values.get('dataset')!r}")
    meta = _dataset_meta(str(values["dataset"]))
    card: Dict[str, Any] = {field: values.get(field) for field in FIELDS}
    assumed = []
    for field, fallback in (("mean", meta.get("mean")), ("std", meta.get("std")),
                            ("input_size", meta.get("input_size")), ("crop", meta.get("input_size")),
                            ("num_classes", meta.get("num_classes"))):
        if card[field] is None and fallback is not None:
            card[field] = list(fallback) if isinstance(fallback, (tuple, list)) else fallback
            assumed.append(field)
    if card["top1"] is None and measured is not None:
        card["top1"] = measured
        assumed.append("top1")
    card.update(format=FORMAT, weights_sha256=weights_sha256(weights), source=source, assumed=assumed,
                model_options=dict(card["model_options"] or {}), recipe=dict(card["recipe"] or {}))
    card["mean"], card["std"] = _numbers(card["mean"], "mean"), _numbers(card["std"], "std")
    return _plain(card, "card")


def _recorded_accuracy(state: Mapping[str, Any]) -> Optional[float]:
    """The accuracy a foreign checkpoint carries, if any (RepDistiller: 'accuracy'; ours: 'acc')."""
    for key in ("acc", "accuracy", "best_acc"):
        value = state.get(key)
        try:
            number = float(value.item() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if math.isfinite(number):
            return number
    return None


def card_of(state: Mapping[str, Any], path: str, *, zoo_entry: Optional[Mapping[str, Any]] = None,
            flags: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The card of checkpoint ``state`` read from ``path``: its own, else one built from a zoo entry,
    else from the user's flags (``arch``, ``dataset``, ``top1``, ``mean``, ``std``, ...), else from
    the fields of a distillers checkpoint written before cards existed.

    A built card hashes the checkpoint's weights and names its ``source``; values taken from the
    dataset's registry rather than from the source are listed in ``assumed``.
    """
    if "card" in state:
        return check_card(state["card"], f"checkpoint '{path}'")
    weights = ckpt.model_state(dict(state))
    if zoo_entry is not None:
        source = {"kind": "zoo", **{k: zoo_entry[k] for k in ("name", "url", "member", "top1_source")
                                     if zoo_entry.get(k) is not None}}
        return _from_fields(zoo_entry, weights, source)
    if flags:
        given = {k: v for k, v in flags.items() if v is not None}
        return _from_fields(given, weights, {"kind": "flags", "path": os.path.abspath(path)},
                            measured=_recorded_accuracy(state))
    if state.get("format") == ckpt.FORMAT:
        config = state.get("config") if isinstance(state.get("config"), Mapping) else {}
        batch, world = config.get("batch_size"), state.get("world_size")
        values = {"arch": state.get("arch"), "dataset": state.get("dataset"), "num_classes": state.get("num_classes"),
                  "recipe": recipe_from_config(config), "world_size": world, "seed": config.get("seed"),
                  "global_batch": batch, "code_version": state.get("code_version"),
                  "batch_per_process": batch // world if isinstance(batch, int) and isinstance(world, int)
                  and world > 0 else None}
        return _from_fields(values, weights, {"kind": "distillers checkpoint without card",
                                              "path": os.path.abspath(path)}, measured=_recorded_accuracy(state))
    raise CardError(f"'{path}' has no card and is not a distillers checkpoint: name it through the zoo "
                    "(--path_t NAME@DATASET) or give its architecture, dataset and accuracy as flags")


def write_card_json(card: Mapping[str, Any], path: str) -> None:
    """The card as JSON at ``path``, written to a temporary file and renamed (never half a file)."""
    text = json.dumps(_plain(dict(card), "card"), indent=1, sort_keys=True, allow_nan=False) + "\n"
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_card(card: Mapping[str, Any]) -> str:
    """The card as aligned ``field: value`` lines, in :data:`FIELDS` order."""
    width = max(len(f) for f in FIELDS)
    return "\n".join(f"{field.ljust(width)}  {json.dumps(card.get(field), sort_keys=True)}" for field in FIELDS)


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.teachers.card",
                                     description="Print a teacher checkpoint's card (and write it as JSON).")
    parser.add_argument("checkpoint")
    parser.add_argument("--json", metavar="OUT", help="also write the card as JSON to OUT")
    parser.add_argument("--zoo", metavar="NAME@DATASET", help="a foreign checkpoint's zoo entry")
    for flag in ("arch", "dataset"):
        parser.add_argument(f"--{flag}", help=f"a foreign checkpoint's {flag}")
    parser.add_argument("--top1", type=float, help="a foreign checkpoint's published test top-1")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        state = ckpt.load(args.checkpoint)
        entry = None
        if args.zoo:
            from engine.teachers import zoo
            entry = zoo.lookup(args.zoo).entry
        flags = {"arch": args.arch, "dataset": args.dataset, "top1": args.top1}
        card = card_of(state, args.checkpoint, zoo_entry=entry, flags=flags if any(flags.values()) else None)
        print(format_card(card))
        actual = weights_sha256(ckpt.model_state(state))
        if actual != card["weights_sha256"]:
            print(f"error: the weights in '{args.checkpoint}' (sha256 {actual[:16]}...) are not the ones this card "
                  "describes: changed after the card was written", file=sys.stderr)
            return 1
        print(f"the checkpoint's weights match the card (sha256 {actual[:16]}...)")
        if args.json:
            write_card_json(card, args.json)
            print(f"card written to {args.json}")
    except (ValueError, OSError) as err:  # CardError, CheckpointError, ZooError: one line each
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
