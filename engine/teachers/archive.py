"""One named file out of a release tarball (mdistiller's ``cifar_teachers.tar``), nothing else.

Why: extracting a whole archive trusts every path in it (``../`` members, links); reading one
regular member by name and writing it ourselves does not, and a run needs one teacher.
"""
from __future__ import annotations

import difflib
import os
import shutil
import tarfile
import tempfile


class ArchiveError(ValueError):
    """A tarball that cannot be read or lacks the member; one line."""


def extract_member(archive: str, member: str, dest: str) -> str:
    """Write ``member`` of tar ``archive`` to ``dest`` (through a temporary file and a rename)."""
    try:
        with tarfile.open(archive) as tar:
            try:
                info = tar.getmember(member)
            except KeyError:
                names = [n for n in tar.getnames() if n.endswith((".pth", ".pt", ".tar", "ti_res18"))] or tar.getnames()
                close = difflib.get_close_matches(member, names, n=1, cutoff=0.5)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ArchiveError(f"'{archive}' has no member '{member}'.{hint} It holds: "
                                   f"{', '.join(sorted(names)[:12])}{' ...' if len(names) > 12 else ''}") from None
            if not info.isfile():
                raise ArchiveError(f"'{archive}': member '{member}' is not a regular file (a link or folder)")
            source = tar.extractfile(info)
            os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(dest)))
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                if os.path.getsize(tmp) != info.size:
                    raise ArchiveError(f"'{archive}': member '{member}' is truncated "
                                       f"({os.path.getsize(tmp)} of {info.size} bytes)")
                os.replace(tmp, dest)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
    except (tarfile.TarError, EOFError) as err:
        raise ArchiveError(f"cannot read tar archive '{archive}': {err}") from None
    return dest
