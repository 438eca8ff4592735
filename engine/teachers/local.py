"""The local zoo: the project's own trained teachers, registered by card, resolved by name.

Why: a teacher trained here is as worth naming as a published one (``--path_t mine@cifar100``),
and its card already says everything a published entry does. The file is ``zoo.yaml`` in the
teacher cache (:func:`engine.teachers.zoo.cache_dir`), not in a run's ``--save_root``, so every
run of the user finds it whatever folder it writes to::

    format: distillers/local-zoo/1
    teachers:
      cifar100:
        mine: {path: /abs/path/best.pth, card: {...}}
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Dict, Mapping, Optional

import yaml

from engine.file_lock import locked
from engine.teachers.card import CardError, check_card

FORMAT = "distillers/local-zoo/1"
_LOCAL_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def local_zoo_path(cache: Optional[str] = None) -> str:
    from engine.teachers.zoo import cache_dir

    return os.path.join(cache or cache_dir(), "zoo.yaml")


def _read(zoo_file: str) -> Dict[str, Any]:
    try:
        with open(zoo_file, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        return {"format": FORMAT, "teachers": {}}
    except (OSError, yaml.YAMLError) as err:
        from engine.teachers.zoo import ZooError
        raise ZooError(f"cannot read the local zoo '{zoo_file}': {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        from engine.teachers.zoo import ZooError
        raise ZooError(f"'{zoo_file}' is not a local zoo file (format {FORMAT}): fix or move it")
    values.setdefault("teachers", {})
    return values


def local_entries(zoo_file: Optional[str] = None) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{dataset: {name: {'path', 'card'}}}`` of the local zoo ({} when there is none)."""
    return _read(zoo_file or local_zoo_path())["teachers"]


def register_local(card: Mapping[str, Any], path: str, *, name: Optional[str] = None,
                   zoo_file: Optional[str] = None, overwrite: bool = False) -> str:
    """Record the teacher at ``path`` under ``name`` (default ``<arch>-<8 hex of its hash>``) for
    its card's dataset; returns ``NAME@DATASET``.

    A name the manifest already has for that dataset is refused (a local file must never stand
    in for a published teacher), as is a name taken by other weights unless ``overwrite``.
    """
    from engine.teachers.zoo import ZooError, manifest_names

    card = check_card(card, f"register_local('{path}')")
    dataset = card.get("dataset")
    if not dataset:
        raise CardError(f"register_local('{path}'): the card names no dataset")
    name = name or f"{card['arch']}-{card['weights_sha256'][:8]}"
    if not _LOCAL_NAME.match(name):
        raise ZooError(f"local teacher name '{name}' may hold only letters, digits, '_', '.', '+' and '-'")
    if name in manifest_names(dataset):
        raise ZooError(f"'{name}@{dataset}' is a published zoo teacher: register yours under another name")
    if not os.path.isfile(path):
        raise ZooError(f"register_local: '{path}' does not exist")
    zoo_file = zoo_file or local_zoo_path()
    with locked(zoo_file + ".lock"):
        values = _read(zoo_file)
        known = values["teachers"].setdefault(dataset, {})
        old = known.get(name)
        if old and not overwrite and old["card"].get("weights_sha256") != card["weights_sha256"]:
            raise ZooError(f"'{name}@{dataset}' already names {old['path']} (sha256 "
                           f"{old['card'].get('weights_sha256', '?')[:12]}...): pick another name or overwrite it")
        known[name] = {"path": os.path.abspath(path), "card": dict(card)}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=os.path.dirname(os.path.abspath(zoo_file)))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(values, fh, sort_keys=True)
        os.replace(tmp, zoo_file)
    return f"{name}@{dataset}"
