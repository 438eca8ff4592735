#!/usr/bin/env python
"""Decode every image under a folder tree and list the files that cannot be read.

Training decodes a file only when a batch needs it, so one corrupt or truncated file
stops a run hours in (or, with ``--skip_bad_images``, is skipped). This reads every
file with an image extension up front, with the decoder training uses
(:func:`data.folder.read_image`), so a tree that passes here trains without a bad file:

    python scripts/verify_images.py /data/imagenet --workers 8

Each bad file is printed as ``BAD <path>: <reason>``, then a summary. Exit status: 0 when
every image decodes, 1 when any does not, 2 for a wrong command line.
"""
from __future__ import annotations

import argparse
import os
import sys
from multiprocessing import Pool
from typing import Optional, Sequence, Tuple

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.folder import image_paths, read_image  # noqa: E402


def check(path: str) -> Tuple[str, Optional[str]]:
    """``(path, None)`` when the file decodes, else ``(path, reason)``."""
    try:
        read_image(path)
        return path, None
    except Exception as err:  # by format PIL raises OSError, SyntaxError, ValueError, ...
        return path, f"{type(err).__name__}: {' '.join(str(err).split())}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to check, e.g. the data root or its train/ folder")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="decoding processes (default: min(8, CPU count))")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error(f"'{args.root}' is not a folder")
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    paths = image_paths(args.root)
    if not paths:
        parser.error(f"no image files under '{args.root}'")
    bad = 0
    pool = Pool(args.workers) if args.workers > 1 else None
    try:
        results = pool.imap(check, paths, chunksize=16) if pool else map(check, paths)
        for path, reason in tqdm(results, total=len(paths), unit="img", desc="decoding"):
            if reason:
                bad += 1
                tqdm.write(f"BAD {path}: {reason}")
    finally:
        if pool:
            pool.terminate()
    print(f"{len(paths)} image files under '{args.root}': "
          + (f"{bad} cannot be read (above); delete or replace them, or train with --skip_bad_images"
             if bad else "all decode"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
