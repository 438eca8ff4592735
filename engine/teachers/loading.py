"""A student run's teacher: found (a path, a run folder or a zoo name), loaded, carded, fed its own input.

Why one place: what the teacher is (its card: architecture, weights' hash, normalisation, the
accuracy it was measured at) decides how it is built, what its input must look like and what the
pre-flight check expects of it (:mod:`engine.teachers.preflight`). Everything here happens before
the first step, and every problem is one line naming the file or the flag.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from torch import nn

from engine import checkpoint as ckpt
from engine.errors import ConfigError
from engine.teachers import zoo
from engine.teachers.card import CardError, card_of
from engine.teachers.preflight import check_normalisation


@dataclass
class TeacherFile:
    """Where the teacher comes from: the checkpoint's path and contents, and its zoo entry if named."""

    path: str
    state: Dict[str, Any]
    zoo_entry: Optional[Dict[str, Any]] = None


def find_teacher(path_t: str, log=print) -> TeacherFile:
    """``--path_t`` as a readable checkpoint, before any data is read: a zoo name (``NAME@DATASET``,
    downloaded or extracted into the cache and hash-checked), a run folder (its ``best.pth``, said in
    the log), or a file."""
    entry = None
    if zoo.is_zoo_name(path_t):
        try:
            teacher = zoo.resolve(path_t, log=log)
        except (zoo.ZooError, OSError, ValueError) as err:
            raise ConfigError(f"--path_t {path_t}: {err}") from None
        path, entry = teacher.path, dict(teacher.entry)
        log(f"teacher {teacher.spec}: {path}")
    elif os.path.isdir(path_t):
        best, latest = os.path.join(path_t, "best.pth"), os.path.join(path_t, "latest.pth")
        path = best if os.path.isfile(best) else latest
        if not os.path.isfile(path):
            raise ConfigError(f"--path_t {path_t} is a folder without best.pth or latest.pth: give the checkpoint "
                              "file, a run folder of train_teacher.py, or a zoo name such as resnet32x4@cifar100")
        log(f"--path_t {path_t} is a run folder: its {os.path.basename(path)} is the teacher")
    else:
        path = path_t
    return TeacherFile(path, ckpt.load(path), entry)


def teacher_arch(found: TeacherFile, model_t: Optional[str], config_source: str = "") -> str:
    """The architecture to build: ``--model_t`` (which must agree with what the checkpoint records), the
    checkpoint's, the zoo entry's, or the reference scripts' folder name."""
    recorded = found.state.get("arch") or (found.zoo_entry or {}).get("arch")
    if model_t and recorded and str(model_t) != str(recorded):
        where = f" ({config_source})" if config_source else ""
        raise ConfigError(f"--model_t {model_t}{where} disagrees with the teacher checkpoint '{found.path}', which "
                          f"records '{recorded}': drop --model_t or give the checkpoint of a {model_t}")
    return model_t or recorded or ckpt.arch_from_path(found.path)


def build_teacher(found: TeacherFile, arch: str, family: str, num_classes: int, create_model,
                  options: Optional[Dict[str, Any]] = None, **model_kwargs) -> nn.Module:
    """The teacher network with its recorded model options (``--model_t_opt`` wins) and its weights."""
    recorded = found.state.get("model_options") if isinstance(found.state.get("model_options"), dict) else {}
    try:
        model = create_model(arch, num_classes=num_classes, family=None if ":" in str(arch) else family,
                             **{**recorded, **(options or {})}, **model_kwargs)
    except KeyError as err:
        raise ckpt.CheckpointError(
            f"cannot tell the teacher's architecture from '{found.path}' (got '{arch}'): pass --model_t. {err}"
        ) from None
    except ValueError as err:  # a model option the architecture does not take (models.options.ModelOptionError)
        raise ConfigError(f"--model_t_opt: {err}") from None
    ckpt.load_weights(model, ckpt.model_state(found.state), f"teacher checkpoint '{found.path}'")
    return model


def teacher_card(found: TeacherFile, arch: str, dataset: str) -> Dict[str, Any]:
    """The teacher's card: its own, the zoo entry's, or one built from the checkpoint's fields."""
    try:
        return card_of(found.state, found.path, zoo_entry=found.zoo_entry,
                       flags=None if found.state.get("format") == ckpt.FORMAT else {"arch": arch, "dataset": dataset})
    except CardError as err:
        raise ConfigError(str(err)) from None


def teacher_input(teacher: nn.Module, card: Dict[str, Any], mean, std, crop: int, log=print) -> Tuple[str, Any]:
    """Give the teacher the input its card says it was trained on: the run's batch when they agree, else
    its own normalisation and size (a forward pre-hook re-normalises and resizes on the device). Returns
    (what was done, the hook's handle or None); a card that cannot say is a one-line refusal, never a
    silently wrong input. Values the card only assumed (from its dataset's registry) count as agreeing."""
    from models.teacher_input import attach_teacher_input

    check = check_normalisation(card, mean, std)
    if check.action == "refuse":
        raise ConfigError(check.message)
    own_size = card.get("crop") if "crop" not in (card.get("assumed") or []) else None
    size = int(own_size) if own_size and int(own_size) != int(crop) else None
    if check.action == "same" and size is None:
        return "the run's input", None
    to_mean, to_std = (check.teacher_mean, check.teacher_std) if check.action == "renormalize" else (mean, std)
    handle = attach_teacher_input(teacher, mean, std, to_mean, to_std, teacher_size=size)
    said = [check.message] if check.action == "renormalize" else []
    if size is not None:
        said.append(f"the teacher was trained on {size}px crops, this run's are {crop}px: resized on the device")
    log("; ".join(said))
    return ("its own normalisation" if check.action == "renormalize" else "the run's normalisation") + \
        (f", resized to {size}px" if size else ""), handle


def load_teacher(path: str, model_t: Optional[str], family: str, num_classes: int,
                 options: Optional[Dict[str, Any]] = None, log=print, **model_kwargs) -> nn.Module:
    """The teacher network of ``path`` (a file, a run folder or a zoo name), built and loaded: the
    scripts' shortcut for :func:`find_teacher`, :func:`teacher_arch` and :func:`build_teacher`."""
    from models import create_model

    found = find_teacher(path, log=log)
    return build_teacher(found, teacher_arch(found, model_t), family, num_classes, create_model, options,
                         **model_kwargs)


def _comparable(card: Dict[str, Any], dataset: str, data_opts: Dict[str, Any]) -> bool:
    """Whether the card's accuracy was measured on this run's test set: same dataset, same data options
    (a card without a recipe, a zoo entry's, was measured on the dataset's default split)."""
    def own(options):
        return {k: v for k, v in dict(options or {}).items() if k != "skip_bad_images"}

    recorded = (card.get("recipe") or {}).get("data_opts")
    return card.get("dataset") == dataset and own(recorded) == own(data_opts)


def check_teacher(run, evaluate, tolerance: float, log=print):
    """The pre-flight check (:func:`engine.teachers.preflight.preflight`) of a student run's teacher on its
    test set, cached per (weights, test set) in ``<teacher cache>/preflight``; under DDP every rank
    evaluates (a collective) and rank 0 writes the cache. A refusal is one :class:`ConfigError` line."""
    from engine.teachers.preflight import PreflightError, preflight

    config, card = run.config, dict(run.teacher_card or {})
    key = {"dataset": config["dataset"], "split": "test", "data_opts": {k: v for k, v in config["data_opts"].items()
                                                                        if k != "skip_bad_images"},
           "teacher_input": run.teacher_note}
    if not _comparable(card, config["dataset"], config["data_opts"]):
        if card.get("top1") is not None:
            log(f"teacher card's top-1 {card['top1']:.2f}% was measured on {card.get('dataset')} with data options "
                f"{(card.get('recipe') or {}).get('data_opts') or {}}, this run tests on {config['dataset']} with "
                f"{config['data_opts'] or {}}: not compared")
        card["top1"] = None
    distributed = run.info.world_size > 1
    measured = evaluate(run.teacher) if distributed else None  # every rank, before any rank reads a cache
    try:
        return preflight(run.teacher, card, (lambda _: measured) if distributed else evaluate, key,
                         os.path.join(zoo.cache_dir(), "preflight"), tolerance, write_cache=run.info.is_main,
                         log=log)
    except PreflightError as err:
        raise ConfigError(f"{err} (--teacher_tolerance {tolerance:g}; --no_teacher_check skips the check)") from None
