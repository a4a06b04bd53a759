"""User-named files and folders, checked before any work starts.

Every reader and writer of a path a user typed goes through here, so a bad path gets the one
line of :class:`~romsim.errors.RomsimInputError` (field, value, rule) instead of a traceback, and
nothing is written before the check passes.

- :func:`check_input_file` — a file to be read later (large binaries): exists, is a file, is
  readable; nothing is read.
- :func:`read_user_text` — a text file (TOML, JSON): exists, is a file, is readable, is UTF-8.
- :func:`read_user_bytes` — a binary file: exists, is a file, is readable.
- :func:`check_output_file` — a file to be written: its folder exists or can be made, no part of
  the way is a regular file, the path is not a folder, the folder is writable (probed by
  creating and removing a file: permission bits do not stop root, and some file systems refuse
  files whatever the bits say).
- :func:`check_output_dir` — a folder to be written into: the same, and it is not a file.
- :func:`write_text_atomic` — write a file through a temporary sibling and ``os.replace``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from romsim.errors import RomsimInputError


def check_input_file(path: str | os.PathLike, field: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise RomsimInputError(field, str(path), "no such file")
    if p.is_dir():
        raise RomsimInputError(field, str(path), "is a directory, not a file")
    if not p.is_file():
        raise RomsimInputError(field, str(path), "is not a regular file")
    if not os.access(p, os.R_OK):
        raise RomsimInputError(field, str(path), "is not readable (permission denied)")
    return p


def read_user_bytes(path: str | os.PathLike, field: str) -> bytes:
    """The bytes of a user-named file, or one clear error."""
    p = check_input_file(path, field)
    try:
        return p.read_bytes()
    except OSError as e:
        raise RomsimInputError(field, str(path), f"cannot be read ({e.strerror})") from None


def read_user_text(path: str | os.PathLike, field: str, what: str = "text") -> str:
    """The UTF-8 text of a user-named file, or one clear error (binary / non-UTF-8 included)."""
    raw = read_user_bytes(path, field)
    if b"\x00" in raw:
        raise RomsimInputError(field, str(path), f"is a binary file, not {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RomsimInputError(
            field, str(path), f"is not UTF-8 {what} (byte {e.start}: {raw[e.start]:#04x})"
        ) from None


def _probe_writable(folder: Path, field: str, shown: str) -> None:
    """Create and remove a temporary file in ``folder``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".romsim-", suffix=".probe")
    except OSError as e:
        raise RomsimInputError(
            field, shown, f"cannot write in {str(folder)!r} ({e.strerror})"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def _check_parent(p: Path, field: str, shown: str) -> None:
    """No component of the way to ``p`` is a file; the nearest existing folder is writable."""
    for anc in [p.parent, *p.parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise RomsimInputError(field, shown, f"lies under {str(anc)!r}, which is a file")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise RomsimInputError(field, shown, f"folder {str(anc)!r} is not writable")
            _probe_writable(anc, field, shown)
            return


def check_output_file(path: str | os.PathLike, field: str) -> Path:
    """A path that a file will be written to (an existing file there is replaced)."""
    p = Path(path)
    shown = str(path)
    if str(path) == "":
        raise RomsimInputError(field, shown, "must name a file")
    if p.is_dir():
        raise RomsimInputError(field, shown, "is a directory; give a file name")
    if p.exists() and not p.is_file():
        raise RomsimInputError(field, shown, "exists and is not a regular file")
    if p.exists() and not os.access(p, os.W_OK):
        raise RomsimInputError(field, shown, "is not writable (permission denied)")
    _check_parent(p, field, shown)
    return p


def check_output_dir(path: str | os.PathLike, field: str) -> Path:
    """A folder that outputs will be written into (made if missing)."""
    p = Path(path)
    shown = str(path)
    if str(path) == "":
        raise RomsimInputError(field, shown, "must name a folder")
    if p.exists():
        if not p.is_dir():
            raise RomsimInputError(field, shown, "is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise RomsimInputError(field, shown, "is not writable (permission denied)")
        _probe_writable(p, field, shown)
        return p
    _check_parent(p, field, shown)
    return p


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
