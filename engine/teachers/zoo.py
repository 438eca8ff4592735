"""Teachers by name: ``--path_t resnet32x4@cifar100`` resolves to a verified file in the cache.

Why: a path says nothing about what the file should be; a name from the repository's manifest
(``manifest.yaml`` beside this file) brings its URL, hash, architecture, normalisation and
published accuracy, and the user's own teachers (:mod:`engine.teachers.local`) resolve the
same way by the name they were registered under.

Syntax: ``NAME@DATASET``, NAME as in the manifest (``resnet32x4``, ``ResNet34``) or as
registered locally, DATASET a zoo dataset (``cifar100``, ``imagenet``). An existing file
path is never taken for a name (:func:`is_zoo_name`).

The cache (``$DISTILLERS_TEACHERS`` or ``~/.cache/distillers/teachers``)::

    hashes.json                          sha256 of each download and archive member, recorded at first use
    archives/cifar_teachers.tar          a release tarball, kept to extract other teachers from
    cifar100/resnet32x4_vanilla/ckpt_epoch_240.pth   one extracted member (RepDistiller's folder convention)
    imagenet/resnet34-b627a593.pth       a direct download, under its published file name
    zoo.yaml                             the local zoo (engine/teachers/local.py)
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import yaml

from core.registry import Registry
from engine.teachers.archive import extract_member
from engine.teachers.download import HASHES, HashBook, fetch, verify

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.yaml")
FORMAT = "distillers/teacher-zoo/1"
_NAME = re.compile(r"^([A-Za-z0-9_.:+-]+)@([A-Za-z0-9_.-]+)$")
#: Fields of a zoo entry that are card fields (engine/teachers/card.py).
CARD_FIELDS = ("arch", "dataset", "num_classes", "mean", "std", "input_size", "crop", "top1", "top5", "model_options")


class ZooError(ValueError):
    """An unknown or unavailable zoo name, or a broken manifest; one line naming the accepted values."""


def cache_dir() -> str:
    """``$DISTILLERS_TEACHERS`` or ``~/.cache/distillers/teachers``: teachers never live in the code tree."""
    return os.environ.get("DISTILLERS_TEACHERS") or os.path.join(
        os.path.expanduser("~"), ".cache", "distillers", "teachers")


def is_zoo_name(text: str) -> bool:
    """Whether ``--path_t text`` means a zoo name: ``NAME@DATASET`` and not an existing file."""
    return bool(_NAME.match(str(text))) and not os.path.exists(text)


def parse_name(text: str):
    """``(name, dataset)`` of ``NAME@DATASET``, or a one-line :class:`ZooError` showing the syntax."""
    match = _NAME.match(str(text))
    if not match:
        raise ZooError(f"'{text}' is not a zoo name: expected NAME@DATASET, e.g. resnet32x4@cifar100 "
                       "(or give the path of a checkpoint file)")
    return match.group(1), match.group(2)


@functools.lru_cache(maxsize=8)
def _read_manifest(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ZooError(f"cannot read the zoo manifest '{path}': {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise ZooError(f"'{path}' is not a zoo manifest (format {FORMAT})")
    return values


def load_manifest(path: Optional[str] = None) -> Dict[str, Any]:
    """The manifest as plain dicts (``yaml.safe_load``), read once per path: ``path``, else
    ``$DISTILLERS_TEACHER_MANIFEST`` (a mirror's own manifest), else the repository's."""
    return _read_manifest(os.path.abspath(path or os.environ.get("DISTILLERS_TEACHER_MANIFEST") or MANIFEST))


def manifest_names(dataset: str, path: Optional[str] = None) -> Dict[str, str]:
    """``{name: 'published' | 'unavailable'}`` of ``dataset`` in the manifest."""
    manifest = load_manifest(path)
    names = {n: "published" for n in (manifest.get("teachers") or {}).get(dataset) or {}}
    names.update({n: "unavailable" for n in (manifest.get("unavailable") or {}).get(dataset) or {}})
    return names


@dataclass
class Teacher:
    """A zoo name and what it stands for. ``path`` is where the file is (or will be, before
    :func:`resolve` fetches it); ``entry`` holds the card fields and where they come from."""

    name: str
    dataset: str
    path: str
    entry: Dict[str, Any]
    local: bool = False
    url: Optional[str] = None
    sha256: Optional[str] = None
    archive: Optional[Dict[str, Any]] = field(default=None)
    member: Optional[str] = None

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.dataset}"


def lookup(text: str, *, cache: Optional[str] = None, manifest: Optional[str] = None) -> Teacher:
    """What ``NAME@DATASET`` names, with no network access: a local teacher first, then the manifest.

    Unknown names and datasets are one-line errors listing the known ones and the closest match.
    """
    from engine.teachers import local

    name, dataset = parse_name(text)
    cache = cache or cache_dir()
    values = load_manifest(manifest)
    mine = local.local_entries(local.local_zoo_path(cache))
    datasets = sorted(set(values.get("teachers") or {}) | set(values.get("unavailable") or {}) | set(mine))
    if dataset not in datasets:
        raise ZooError(Registry("zoo dataset").unknown_message(dataset, datasets) + f" (in '{text}')")
    if name in mine.get(dataset, {}):
        record = mine[dataset][name]
        return Teacher(name, dataset, record["path"], {**record["card"], "name": f"{name}@{dataset}"}, local=True)
    known = {**manifest_names(dataset, manifest), **{n: "local" for n in mine.get(dataset, {})}}
    if name not in known:
        raise ZooError(Registry(f"{dataset} teacher").unknown_message(name, known) + f" (in '{text}')")
    if known[name] == "unavailable":
        raise ZooError(f"{text} has no public file: {values['unavailable'][dataset][name]}")
    return _published(name, dataset, values, cache)


def _published(name: str, dataset: str, values: Dict[str, Any], cache: str) -> Teacher:
    item = values["teachers"][dataset][name]
    block = (values.get("datasets") or {}).get(dataset)
    if block is None:
        raise ZooError(f"zoo manifest: dataset '{dataset}' of {name}@{dataset} has no datasets: block")
    entry = {**{k: block.get(k) for k in CARD_FIELDS}, **{k: item.get(k) for k in CARD_FIELDS if k in item},
             "name": f"{name}@{dataset}", "top1_source": item.get("top1_source")}
    if item.get("archive"):
        archive = dict(values["archives"][item["archive"]])
        member = item["member"]
        path = os.path.join(cache, dataset, *member.split("/")[-2:])  # <arch>_vanilla/ckpt_epoch_240.pth
        entry.update(url=archive["url"], member=member)
        return Teacher(name, dataset, path, entry, url=archive["url"], archive=archive, member=member)
    url = item["url"]
    entry["url"] = url
    return Teacher(name, dataset, os.path.join(cache, dataset, os.path.basename(url.split("?")[0])), entry,
                   url=url, sha256=item.get("sha256"))


def resolve(text: str, *, cache: Optional[str] = None, manifest: Optional[str] = None, progress: bool = True,
            log=print) -> Teacher:
    """``NAME@DATASET`` as a verified local file: downloaded (resumably) or extracted from its
    release tarball on first use, checked against its hash on every use."""
    cache = cache or cache_dir()
    teacher = lookup(text, cache=cache, manifest=manifest)
    if teacher.local:
        if not os.path.isfile(teacher.path):
            raise ZooError(f"{teacher.spec} was registered as '{teacher.path}', which no longer exists "
                           "(moved or deleted? register it again)")
        return teacher
    book = HashBook(os.path.join(cache, HASHES))
    if teacher.archive is None:
        fetch(teacher.url, teacher.path, sha256=teacher.sha256, book=book, progress=progress)
        return teacher
    key = f"{teacher.url}#{teacher.member}"
    if os.path.isfile(teacher.path):
        verify(teacher.path, teacher.path, key, sha256=None, book=book, what="the cached teacher")
        return teacher
    archive = fetch(teacher.url, os.path.join(cache, "archives", teacher.archive.get("file") or
                                              os.path.basename(teacher.url)),
                    sha256=teacher.archive.get("sha256"), book=book, progress=progress)
    extract_member(archive, teacher.member, teacher.path)
    verify(teacher.path, teacher.path, key, sha256=None, book=book, what="the extracted teacher")
    log(f"{teacher.spec}: {teacher.member} extracted from {archive} to {teacher.path}")
    return teacher
