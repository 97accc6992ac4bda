"""Atomic file writes: temp name in the same folder, fsync, rename.

Every file the pipeline writes goes through these helpers, so a crash (even SIGKILL)
leaves either the old file or the new one, never a half-written one. Temp files are
named ``.<name>.tmp-<pid>`` and are removed on error; stale ones left by a killed
process are ignored by readers (they start with a dot) and cleaned by
:func:`remove_stale_temps`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

TMP_MARK = ".tmp-"


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it to ``path``.

    The caller writes the temp file (by any means: ``open``, a tar writer, ``torch.save``).
    On an exception the temp file is deleted and the target is left untouched.

    Raises:
        OSError: from the file system, e.g. ``ENOSPC`` (disk full) or ``EACCES``
            (read-only folder), re-raised with the target path in the message.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}{TMP_MARK}{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(exc.errno, f"could not write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (deterministic bytes)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Any) -> int:
    """Atomically write an iterable of dicts as JSON Lines; return the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike, *, missing_ok: bool = False, torn_tail_ok: bool = False) -> list[dict]:
    """Read a JSON Lines file written by :func:`write_jsonl` or appended to line by line (blank lines skipped).

    Args:
        missing_ok: a missing file reads as ``[]`` (a stage not run yet).
        torn_tail_ok: a last line that is not valid JSON (cut by a crash, or a writer still appending) is
            skipped; any other bad line still raises.

    Raises:
        FileNotFoundError: if the file is missing and not ``missing_ok``.
        ValueError: naming the file and line of a line that is not valid JSON.
    """
    if missing_ok and not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if torn_tail_ok and i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from e
    return rows


def read_json(path: str | os.PathLike, *, missing_ok: bool = False) -> Any:
    """Read a JSON file written by :func:`write_json`.

    Raises:
        FileNotFoundError: if the file is missing and not ``missing_ok`` (then None is returned).
        ValueError: naming the file, if it is not valid JSON.
    """
    if missing_ok and not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temp files left by killed writers anywhere below ``folder``; return how many."""
    n = 0
    root = Path(folder)
    if not root.exists():
        return 0
    for p in root.rglob(f".*{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n
