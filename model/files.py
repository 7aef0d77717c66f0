"""File helpers: atomic writes (a reader never sees a half-written checkpoint, model or
image), output folders checked before any work, and JSON or YAML settings files read."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json_or_yaml(path: str | os.PathLike[str]) -> Any:
    """The data of a JSON (``.json``) or YAML (any other suffix) file. Raises ``OSError``
    when it cannot be read, ``ValueError`` when it does not parse."""
    source = Path(path)
    text = source.read_text()  # UnicodeDecodeError is a ValueError
    if source.suffix == ".json":
        return json.loads(text)  # JSONDecodeError is a ValueError
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc


def check_folder(path: str | os.PathLike[str]) -> Path:
    """Check, leaving nothing behind, that ``path`` is a folder we can write in or can be
    created as one; else raise ``NotADirectoryError`` or ``PermissionError`` saying why."""
    folder = Path(path)
    # The deepest part that exists: the folder itself, or where it would be created.
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        where = "it is" if existing == folder else f"{existing} is"
        raise NotADirectoryError(f"{where} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in {existing} (permission denied)")
    # Mode bits do not tell everything (root, read-only or virtual file systems): try.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fcn-write-test.", dir=existing))
    except OSError as exc:
        raise PermissionError(f"cannot write in {existing} ({exc.strerror or exc})") from exc
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The parent folder must exist and be writable, else ``OSError`` names it before any
    work is done. On any exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the file the mode a plain open() would, so a service
        # running as another user can read the checkpoints and models we write.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
