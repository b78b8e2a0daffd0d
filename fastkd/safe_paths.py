"""Names read from files (run summaries, grid specs, manifests, recipes) that become paths: confined to their
folder. A name where a plain name is expected has no path separator, is not ``.`` or ``..`` and not
absolute; a relative path (a manifest's file list) has only such components, joined by ``/``. Anything else
is a one-line UserError naming the file it came from and the bad name, before any path is built from it."""
from __future__ import annotations

import os

from fastkd.errors import UserError

_FIX = "fix or remove that file"


def _bad(value) -> bool:
    return (not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value
            or "\0" in value or os.path.isabs(value) or (len(value) > 1 and value[1] == ":"))


def plain_name(value, what: str, where: str) -> str:
    """``value`` (read from file ``where`` as its ``what``) when it is a plain file name, else a UserError."""
    if _bad(value):
        raise UserError(f"{where}: {what} {value!r} is not a plain name (no path separators, '..' or absolute "
                        f"paths); {_FIX}")
    return value


def relative_path(value, what: str, where: str) -> str:
    """``value`` when it is a relative POSIX path (``a/b/c``) that stays inside its folder, else a UserError."""
    if not isinstance(value, str) or not value or any(_bad(part) for part in value.split("/")):
        raise UserError(f"{where}: {what} {value!r} is not a relative path inside the folder (no '..', '\\\\', "
                        f"empty or absolute parts); {_FIX}")
    return value


def inside(root: str, value, what: str, where: str) -> str:
    """``root/value`` after :func:`relative_path` checked ``value``."""
    return os.path.join(root, *relative_path(value, what, where).split("/"))
