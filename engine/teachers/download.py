"""Streaming, resumable, SHA-256-checked HTTP downloads (standard library urllib, tqdm bar).

Why: teacher files are tens to hundreds of MB from servers that die or change (RepDistiller's
lab server is gone; a mirror may serve another file under the same name). So a download

* streams into ``<dest>.part`` and resumes it with an HTTP ``Range`` request after a cut;
* is checked against the manifest's sha256, or, where the publisher gives none, against the
  hash recorded in the cache's ``hashes.json`` at the first download (trust on first use),
  and against a torch.hub-style hash prefix in the file name (``resnet18-f37072fd.pth``);
* is refused on a mismatch: the file is moved aside to ``<dest>.rejected`` and the error names
  both hashes;
* fails offline with one line naming the URL and where to put the file by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, Optional

from tqdm import tqdm

from engine.file_lock import locked

CHUNK = 1 << 16
HASHES = "hashes.json"
_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")  # torch.hub's <name>-<sha256 prefix>.<ext>


class DownloadError(RuntimeError):
    """A download that cannot complete or whose file is not the expected one; one line."""


class _Unreachable(Exception):
    """No byte could be fetched: offline, refused, DNS, an HTTP error."""


class _Interrupted(Exception):
    """The transfer started and stopped before the end; the .part file holds what arrived."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def name_hash_prefix(url: str) -> Optional[str]:
    """The sha256 prefix torch.hub files carry in their name (``resnet18-f37072fd.pth`` -> f37072fd)."""
    match = _NAME_HASH.search(url.split("?")[0])
    return match.group(1) if match else None


class HashBook:
    """``hashes.json``: the sha256 recorded for each key (a URL, or ``URL#member``) the first time.

    Read-modify-write holds an flock on ``hashes.json.lock``, and the file is replaced
    atomically, so two runs filling one cache never lose an entry.
    """

    def __init__(self, path: str):
        self.path = path

    def _read(self) -> Dict[str, Dict]:
        try:
            with open(self.path) as fh:
                values = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise DownloadError(f"cannot read the recorded hashes '{self.path}' ({err}): fix or delete it") from None
        return values if isinstance(values, dict) else {}

    def get(self, key: str) -> Optional[str]:
        entry = self._read().get(key)
        return entry.get("sha256") if isinstance(entry, dict) else None

    def record(self, key: str, sha256: str, size: int) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with locked(self.path + ".lock"):
            values = self._read()
            values[key] = {"sha256": sha256, "bytes": int(size), "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
            _write_json(self.path, values)


def _write_json(path: str, values) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _reject(path: str, dest: str, url: str, expected: str, got: str, what: str) -> DownloadError:
    """Move ``path`` aside to ``<dest>.rejected`` and return the one-line error naming both hashes."""
    rejected = dest + ".rejected"
    os.replace(path, rejected)
    return DownloadError(f"{what} {url} has sha256 {got}, expected {expected}: refused, moved to {rejected} "
                         "(a corrupt transfer, or the server now serves another file)")


def verify(path: str, dest: str, url: str, *, sha256: Optional[str], book: Optional[HashBook],
           key: Optional[str] = None, what: str = "the file from") -> str:
    """Check ``path`` against the given hash, the recorded one and the name's prefix; record the
    hash when none is known yet. Returns the sha256; a mismatch moves the file aside and raises."""
    key = key or url
    got = sha256_file(path)
    expected = sha256 or (book.get(key) if book else None)
    if expected and got != expected.lower():
        raise _reject(path, dest, url, expected.lower(), got, what)
    prefix = name_hash_prefix(url)
    if prefix and not got.startswith(prefix):
        raise _reject(path, dest, url, f"{prefix}... (from the file name)", got, what)
    if book is not None and not expected:
        book.record(key, got, os.path.getsize(path))
    return got


def fetch(url: str, dest: str, *, sha256: Optional[str] = None, book: Optional[HashBook] = None,
          progress: bool = True, retries: int = 2, timeout: float = 60.0) -> str:
    """``dest``, downloaded from ``url`` if it is not there yet, and verified (see :func:`verify`).

    An interrupted transfer is resumed from ``<dest>.part`` up to ``retries`` times in this call,
    and again by the next call. Errors are one-line :class:`DownloadError`s.
    """
    hint = sha256 or (book.get(url) if book else None) or "not recorded yet"
    if os.path.isfile(dest):
        verify(dest, dest, url, sha256=sha256, book=book, what="the cached copy of")
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, progress, timeout)
            break
        except _Unreachable as err:
            raise DownloadError(f"cannot download {url}: {err}; put the file at {dest} by hand "
                                f"(sha256 {hint})") from None
        except _Interrupted as err:
            if attempt == retries:
                raise DownloadError(f"download of {url} interrupted ({err}); run again to resume from "
                                    f"{part}") from None
    verify(part, dest, url, sha256=sha256, book=book)
    os.replace(part, dest)
    return dest


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(getattr(err.reason, "strerror", None) or err.reason)
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _transfer(url: str, part: str, progress: bool, timeout: float) -> None:
    """Append what is missing to ``part`` (all of it when the server ignores ``Range``)."""
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    headers = {"User-Agent": "distillers-teacher-zoo"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part is whole (the hash decides)
            return
        raise _Unreachable(_reason(err)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Unreachable(_reason(err)) from None
    with response:
        total = _total(response, have)
        if total == -1:  # a range that does not continue the part: drop the part, the next try starts over
            os.unlink(part)
            raise _Interrupted(f"the server answered Range bytes={have}- with "
                               f"'{response.headers.get('Content-Range')}'")
        if response.status != 206:
            have = 0  # a full body: start over
        with open(part, "ab" if have else "wb") as fh, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                     desc=os.path.basename(part)[:-len(".part")], disable=not progress, leave=True) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.IncompleteRead, OSError, socket.timeout) as err:
                    fh.flush()
                    raise _Interrupted(f"{fh.tell()} of {total or '?'} bytes, {_reason(err)}") from None
                if not block:
                    break
                fh.write(block)
                bar.update(len(block))
            size = fh.tell()
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes")


def _total(response, have: int) -> Optional[int]:
    """The whole file's size: from ``Content-Range`` on a 206 (-1 when it does not start at
    ``have``), else ``Content-Length`` (None when the server does not say)."""
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
        return int(match.group(2)) if match and int(match.group(1)) == have else -1
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None
