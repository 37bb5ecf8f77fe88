"""Atomic file output: write to a temporary file beside the target, fsync, then rename over it.

A crash, a full disk or an exception leaves the previous file (or no file) in place, never a half-written one.
Temporaries are named ``.<target name>.<pid>-<random>.tmp``: a process killed with SIGKILL cannot remove its
own, so :func:`remove_stale_temporaries` deletes those whose process is gone when the next run starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_output_dir",
    "atomic_output_path",
    "atomic_write",
    "atomic_write_json",
    "check_output_dir",
    "refuse_overwriting_inputs",
    "remove_replaced_backups",
    "remove_stale_temporaries",
    "restore_interrupted_output_dir",
]

TEMPORARY_SUFFIX = ".tmp"
# `.<name>.<pid>-<random>.tmp`: the writer's pid tells a live writer's temporary from a dead one's.
_TEMPORARY_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[^.]+\.tmp$")


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


@contextmanager
def atomic_output_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to (for libraries that take a file name); rename it to `path` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=_temporary_prefix(target), suffix=TEMPORARY_SUFFIX, dir=target.parent
    )
    os.close(descriptor)
    # mkstemp creates the file private (0600); the result should be an ordinary file under the user's umask.
    os.chmod(temporary, 0o666 & ~_umask())
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield an open file handle whose contents replace `path` only if the block succeeds."""
    with atomic_output_path(path) as temporary, open(temporary, mode) as handle:
        yield handle


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON, atomically; NaN and infinities become null (JSON has no such numbers, and
    strict readers such as ``JSON.parse`` refuse Python's ``NaN``)."""
    with atomic_write(path, "w") as handle:
        json.dump(_finite_or_null(data), handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")


def _finite_or_null(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite_or_null(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_null(value) for value in data]
    return data


@contextmanager
def atomic_output_dir(
    path: str | os.PathLike[str], replaceable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to fill; on success it becomes `path`, on failure it is removed.

    An existing `path` is replaced only if it is an empty folder or ``replaceable(path)`` is true (e.g. it is
    an earlier output of the same kind); this is checked before the caller does any work. The previous folder
    is renamed aside, the new one renamed in, and the old one deleted last, so that a crash between the two
    renames leaves a complete copy that :func:`restore_interrupted_output_dir` puts back, and one after them a
    copy that :func:`remove_replaced_backups` deletes.

    Raises:
        FileExistsError: `path` exists and may not be replaced.
    """
    target = check_output_dir(path, replaceable)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=TEMPORARY_SUFFIX, dir=target.parent))
    staging.chmod(0o777 & ~_umask())
    try:
        yield staging
        if target.exists():
            backup = target.with_name(f"{_backup_prefix(target)}{uuid.uuid4().hex[:8]}")
            os.replace(target, backup)
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_output_dir(path: str | os.PathLike[str], replaceable: Callable[[Path], bool] | None = None) -> Path:
    """The absolute `path` if :func:`atomic_output_dir` may write there (absent, empty, or `replaceable`).

    Raises:
        FileExistsError: Naming `path`, when it exists and may not be replaced.
    """
    target = Path(path).absolute()
    if target.exists() and not (
        target.is_dir() and (not any(target.iterdir()) or (replaceable is not None and replaceable(target)))
    ):
        raise FileExistsError(f"{target}: already exists and is not an empty folder; choose another output")
    return target


def restore_interrupted_output_dir(
    path: str | os.PathLike[str], is_complete: Callable[[Path], bool] | None = None
) -> bool:
    """Put back the previous folder of an :func:`atomic_output_dir` swap that died between its renames.

    Args:
        path: The output folder.
        is_complete: Restore the set-aside folder only if this accepts it.

    Returns:
        Whether a folder was restored.
    """
    target = Path(path).absolute()
    if target.exists():
        return False
    backups = sorted(_backups(target), key=lambda p: p.stat().st_mtime)
    if not backups or (is_complete is not None and not is_complete(backups[-1])):
        return False
    os.replace(backups[-1], target)
    return True


def remove_replaced_backups(
    path: str | os.PathLike[str], is_complete: Callable[[Path], bool] | None = None
) -> list[Path]:
    """Delete the previous folders that :func:`atomic_output_dir` swaps set aside and were killed before deleting.

    A swap that got past its second rename leaves the new folder in place and the old one as
    ``.<name>.old-<random>`` beside it (whole, or half deleted). They are removed only while `path` exists and
    ``is_complete(path)`` accepts it: a swap killed between its renames leaves no `path`, and then the set-aside
    copy is the one :func:`restore_interrupted_output_dir` puts back.

    Returns:
        The paths removed.
    """
    target = Path(path).absolute()
    if not target.is_dir() or (is_complete is not None and not is_complete(target)):
        return []
    removed = []
    for backup in _backups(target):
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)
        removed.append(backup)
    return removed


def _backup_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def _backups(target: Path) -> list[Path]:
    """The set-aside copies of `target` (glob would read a name holding ``[`` or ``*`` as a pattern)."""
    prefix = _backup_prefix(target)
    if not target.parent.is_dir():
        return []
    return [entry for entry in target.parent.iterdir() if entry.name.startswith(prefix)]


def refuse_overwriting_inputs(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an output file that is one of the inputs (the same file, whatever the path says).

    Raises:
        ValueError: Naming the output: writing it would destroy that input.
    """
    if not os.path.exists(output):
        return
    for item in inputs:
        try:
            same = os.path.samefile(output, item)
        except OSError:
            continue
        if same:
            raise ValueError(f"{output}: is also an input; writing there would destroy it, choose another output")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and staging folders in `folder` left by writers that were killed.

    A temporary is stale when the process that created it (the pid in its name) no longer runs; a live
    writer's temporaries, in this process or another, are kept. Call it once when a run starts, on the
    folders it writes into (the training output folder, an index's parent folder).

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _TEMPORARY_NAME.match(entry.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OverflowError:
        return False
    return True


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which would race with other threads' writes
# (the demo serves several users at once).
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK
