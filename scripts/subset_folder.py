"""A smaller class-folder tree made of links into a bigger one, for short-budget runs.

    python scripts/subset_folder.py /data/tiny-imagenet-200 /tmp/tiny100 --classes 100 --train-per-class 100

The source is a ``<root>/train/<class>/...`` tree with ``val/`` or ``test/`` sorted into class
folders (``scripts/sort_val.py`` sorts Tiny-ImageNet's and ImageNet's); images one folder deeper,
as Tiny-ImageNet's ``train/<wnid>/images/*.JPEG``, are found. The first ``--classes`` classes in
sorted order are kept, and in each the first images in sorted order, so two machines given the same
source build the same subset. Files are symbolic links (``--copy`` copies), so the subset costs no
space; the result is an ``imagefolder`` root (``--dataset imagefolder --data-root DEST``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from data.folder import image_paths  # noqa: E402  (the same walk the dataset does)


def class_folders(directory: str):
    return sorted(e.name for e in os.scandir(directory) if e.is_dir())


def make_subset(source: str, dest: str, classes: int, per_class: dict, copy: bool = False) -> dict:
    """Link (or copy) ``per_class[split]`` images of the first ``classes`` classes; returns counts."""
    splits = [s for s in ("train", "val", "test") if os.path.isdir(os.path.join(source, s))]
    if "train" not in splits or len(splits) < 2:
        raise SystemExit(f"error: '{source}' needs train/ and val/ or test/ class folders "
                         f"(sort Tiny-ImageNet's or ImageNet's val/ first: python scripts/sort_val.py {source})")
    names = class_folders(os.path.join(source, "train"))
    if classes > len(names):
        raise SystemExit(f"error: --classes {classes}: '{source}/train' has only {len(names)} classes")
    if os.path.exists(dest) and os.listdir(dest):
        raise SystemExit(f"error: '{dest}' exists and is not empty; pick a new destination")
    counts = {}
    for split in splits:
        limit = per_class["train" if split == "train" else "test"]
        total = 0
        for name in names[:classes]:
            folder = os.path.join(source, split, name)
            if not os.path.isdir(folder):
                raise SystemExit(f"error: '{folder}' is missing: {split}/ is not sorted into the classes of train/ "
                                 f"(python scripts/sort_val.py {source})")
            files = image_paths(folder)[:limit] if limit else image_paths(folder)
            target = os.path.join(dest, split, name)
            os.makedirs(target, exist_ok=True)
            for path in files:
                out = os.path.join(target, os.path.basename(path))
                if copy:
                    shutil.copyfile(path, out)
                else:
                    os.symlink(os.path.abspath(path), out)
            total += len(files)
        counts[split] = total
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("source", help="a sorted class-folder tree (train/ and val/ or test/)")
    parser.add_argument("dest", help="the new root (created; must be new or empty)")
    parser.add_argument("--classes", type=int, required=True, help="keep the first N classes (sorted)")
    parser.add_argument("--train-per-class", type=int, default=0, help="train images per class (0: all)")
    parser.add_argument("--test-per-class", type=int, default=0, help="val/test images per class (0: all)")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    args = parser.parse_args(argv)
    if args.classes < 1 or args.train_per_class < 0 or args.test_per_class < 0:
        parser.error("--classes must be >= 1 and the per-class counts >= 0")
    counts = make_subset(args.source, args.dest, args.classes,
                         {"train": args.train_per_class, "test": args.test_per_class}, args.copy)
    print(f"{args.dest}: {args.classes} classes, " + ", ".join(f"{n} {s} images" for s, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
