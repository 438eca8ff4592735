#!/usr/bin/env python
"""Sort a flat ``val/`` folder into class folders, as ``--dataset imagenet`` expects.

ImageNet and Tiny-ImageNet ship their validation images in one folder, with the labels in
an annotation file. Formats read (found in ``val/`` or the data root, or given with
``--annotations``):

* Tiny-ImageNet's ``val/val_annotations.txt`` (``<file> <wnid> ...`` per line; any list
  of that shape works), images in ``val/images/``;
* Kaggle's ImageNet ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first
  word of the prediction string is the class);
* the ILSVRC2012 devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one class id per
  image, in file-name order) with ``--meta data/meta.mat`` mapping ids to wnids.

Images are moved into ``val/<wnid>/`` (an emptied ``val/images/`` is removed), or, with
``--symlink-to NEW_ROOT``, left in place and linked from ``NEW_ROOT/val/<wnid>/`` with
``NEW_ROOT/train`` linking to the original train folder (for read-only copies). Nothing
moves unless every annotated image is found; running it again changes nothing.

    python scripts/sort_val.py /data/tiny-imagenet-200
    python scripts/sort_val.py /data/imagenet --annotations LOC_val_solution.csv
    python scripts/sort_val.py /data/imagenet --annotations ILSVRC2012_validation_ground_truth.txt \\
        --meta ILSVRC2012_devkit_t12/data/meta.mat
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Dict, List, Optional, Tuple

CANDIDATES = ("val/val_annotations.txt", "val/LOC_val_solution.csv", "LOC_val_solution.csv",
              "val/ILSVRC2012_validation_ground_truth.txt", "ILSVRC2012_validation_ground_truth.txt")


class SortError(Exception):
    """A problem with the folder or the annotation file, reported as one line."""


def find_annotations(root: str) -> str:
    for name in CANDIDATES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    raise SortError(f"no annotation file under '{root}' (looked for {', '.join(CANDIDATES)}); "
                    "pass --annotations FILE")


def _devkit_wnids(meta: Optional[str]) -> Dict[int, str]:
    if not meta:
        raise SortError("a devkit ground-truth file holds class ids, not wnids: pass --meta "
                        "<devkit>/data/meta.mat to map them")
    from scipy.io import loadmat

    synsets = loadmat(meta, squeeze_me=True)["synsets"]
    return {int(i): str(w) for i, w in zip(synsets["ILSVRC2012_ID"], synsets["WNID"])}


def read_annotations(path: str, meta: Optional[str] = None) -> Dict[str, str]:
    """``{file name: class}`` from any of the formats in the module docstring."""
    with open(path, newline="", encoding="utf-8") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    if not lines:
        raise SortError(f"'{path}' is empty")
    if lines[0].replace(" ", "").lower() == "imageid,predictionstring":
        rows = list(csv.reader(lines[1:]))
        return {row[0]: row[1].split()[0] for row in rows if len(row) > 1 and row[1].split()}
    if all(line.isdigit() for line in lines):
        wnids = _devkit_wnids(meta)
        try:
            return {f"ILSVRC2012_val_{i:08d}.JPEG": wnids[int(c)] for i, c in enumerate(lines, start=1)}
        except KeyError as err:
            raise SortError(f"class id {err} of '{path}' is not in '{meta}'") from None
    pairs = [line.split() for line in lines]
    bad = [line for line, parts in zip(lines, pairs) if len(parts) < 2]
    if bad:
        raise SortError(f"'{path}': expected '<file> <class> ...' per line, got '{bad[0]}'")
    return {parts[0]: parts[1] for parts in pairs}


def _locate(val: str, name: str) -> Tuple[Optional[str], str]:
    """(current path or None, file name) of an annotated image in ``val/`` or ``val/images/``."""
    names = [name] if os.path.splitext(name)[1] else [name, name + ".JPEG"]
    for candidate in names:
        for folder in (val, os.path.join(val, "images")):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path, candidate
    return None, names[-1]


def plan(root: str, labels: Dict[str, str], out_val: str) -> Tuple[List[Tuple[str, str]], int]:
    """(source, destination) pairs still to do, and how many are already in place."""
    val = os.path.join(root, "val")
    train = os.path.join(root, "train")
    if os.path.isdir(train):
        classes = {e.name for e in os.scandir(train) if e.is_dir()}
        unknown = sorted(set(labels.values()) - classes)
        if unknown:
            raise SortError(f"{len(unknown)} annotated classes are not folders of '{train}' (e.g. "
                            f"{', '.join(unknown[:3])}): is this the right annotation file?")
    todo, done, missing = [], 0, []
    for name, label in sorted(labels.items()):
        source, file_name = _locate(val, name)
        target = os.path.join(out_val, label, file_name)
        if os.path.lexists(target):
            done += 1
        elif source is None:
            missing.append(name)
        else:
            todo.append((source, target))
    if missing:
        raise SortError(f"{len(missing)} annotated images are neither in '{val}' (or val/images/) nor "
                        f"sorted yet, e.g. {', '.join(missing[:3])}; nothing was moved")
    return todo, done


def sort_val(root: str, annotations: Optional[str] = None, meta: Optional[str] = None,
             symlink_to: Optional[str] = None) -> Tuple[int, int]:
    """Sort ``root/val`` (or link it under ``symlink_to``); returns (sorted now, already sorted)."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(os.path.join(root, "val")):
        raise SortError(f"no 'val/' folder under '{root}'")
    labels = read_annotations(annotations or find_annotations(root), meta)
    out_root = os.path.abspath(symlink_to) if symlink_to else root
    todo, done = plan(root, labels, os.path.join(out_root, "val"))
    for source, target in todo:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if symlink_to:
            os.symlink(source, target)
        else:
            os.replace(source, target)
    if symlink_to:
        train_link = os.path.join(out_root, "train")
        if not os.path.lexists(train_link):
            os.symlink(os.path.join(root, "train"), train_link)
    else:
        images = os.path.join(root, "val", "images")
        if os.path.isdir(images) and not os.listdir(images):
            os.rmdir(images)
    return len(todo), done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="data root holding train/ and val/")
    parser.add_argument("--annotations", help="annotation file (default: looked up under the root)")
    parser.add_argument("--meta", help="devkit meta.mat, for ILSVRC2012_validation_ground_truth.txt")
    parser.add_argument("--symlink-to", dest="symlink_to", metavar="NEW_ROOT",
                        help="leave the files in place and build NEW_ROOT/{train,val/<class>} of symlinks")
    args = parser.parse_args(argv)
    try:
        moved, done = sort_val(args.root, args.annotations, args.meta, args.symlink_to)
    except (SortError, OSError) as err:
        print(f"sort_val.py: error: {err}", file=sys.stderr)
        return 2
    verb = "linked" if args.symlink_to else "moved"
    print(f"{verb} {moved} images into class folders ({done} already sorted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
