"""What fastkd may delete, and which process writes a run folder: ownership markers and run locks.

Nothing a user owns is ever deleted. fastkd removes or empties a folder only when a marker file inside it,
``.fastkd-owner.json``, says which fastkd command made it (:func:`mark`, :func:`marker_kind`); a folder
without one that holds anything is refused with one line naming it (:func:`prepare_owned`,
:func:`remove_owned`). ``convert`` marks its conversions and their work folders, ``demo`` the folders it
creates, ``compare``/``ablate``/``grid`` their cells.

A run folder is written by one process at a time: :func:`run_lock` holds an ``fcntl.flock`` on
``.fastkd-lock`` in the folder for the whole run, with the holder's pid and host written in it, so a second
process is told who holds it. Under torchrun only rank 0 locks (and marks).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from fastkd import __version__
from fastkd.atomic import atomic_write_json
from fastkd.errors import UserError

MARKER = ".fastkd-owner.json"
LOCK = ".fastkd-lock"
#: the files ``fastkd train`` writes in its ``--out``
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "model.safetensors")

_HELD: Dict[str, list] = {}  # real path of a locked folder -> [fd, depth]: re-entrant within one process


def is_main() -> bool:
    """Rank 0 of a torchrun job, or a process outside torchrun (as ``fastkd.train.distributed.is_main_process``,
    read from the environment here so that this module does not import torch)."""
    return int(os.environ.get("RANK", "0")) == 0


# ---- markers --------------------------------------------------------------------------------------------
def mark(folder: str, kind: str) -> None:
    """Create ``folder`` if needed and record that fastkd (``kind``: the command that made it) owns it."""
    os.makedirs(folder, exist_ok=True)
    atomic_write_json(os.path.join(folder, MARKER), {"made_by": "fastkd", "kind": kind, "fastkd_version": __version__})


def marker_kind(folder: str) -> Optional[str]:
    """The ``kind`` of ``folder``'s fastkd marker; None when it has none (or an unreadable one)."""
    try:
        with open(os.path.join(folder, MARKER)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("made_by") == "fastkd" and isinstance(data.get("kind"), str):
        return data["kind"]
    return None


def entries(folder: str) -> List[str]:
    """What ``folder`` holds (sorted names), its lock file left out; empty when it does not exist."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n != LOCK)


def is_temp(name: str) -> bool:
    """A temporary file of an atomic write (``fastkd.atomic``) that a killed writer left."""
    return name.startswith(".") and name.endswith(".tmp")


def only_run_files(names: Sequence[str]) -> bool:
    """Every name is one ``fastkd train`` writes (a run folder of a fastkd from before the markers)."""
    return all(n in RUN_FILES or n in (MARKER, LOCK) or is_temp(n) for n in names)


def _listing(names: Sequence[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} entries)" if len(names) > most else "")


def foreign(folder: str, kinds: Sequence[str], legacy: Optional[Callable[[str, List[str]], bool]] = None) -> bool:
    """``folder`` exists and holds something, but no marker of ``kinds`` (nor, when given, does ``legacy``
    recognise it as fastkd's): fastkd must not remove or empty it."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        return True
    names = entries(folder)
    if not names:
        return False
    if marker_kind(folder) in kinds:
        return False
    return not (legacy is not None and legacy(folder, names))


def refusal(folder: str, fix: str = "move them elsewhere or choose another --out") -> UserError:
    """The one-line error for a folder fastkd did not make."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        return UserError(f"{folder} is a file, not a folder fastkd made; {fix}")
    return UserError(f"{folder} holds files fastkd did not write ({_listing(entries(folder))}); "
                     f"fastkd deletes only what it made: {fix}")


def _remove_entry(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def prepare_owned(folder: str, kind: str, legacy: Optional[Callable[[str, List[str]], bool]] = None) -> None:
    """Make ``folder`` an empty folder marked ``kind``: created when missing; emptied (its lock file and
    marker kept) only when its marker is of ``kind`` (or ``legacy`` recognises it); else a UserError."""
    if foreign(folder, (kind,), legacy):
        raise refusal(folder)
    for name in entries(folder):
        if name != MARKER:
            _remove_entry(os.path.join(folder, name))
    mark(folder, kind)


def remove_owned(folder: str, kinds: Sequence[str], legacy: Optional[Callable[[str, List[str]], bool]] = None) -> None:
    """Delete ``folder`` when a marker of ``kinds`` (or ``legacy``) shows fastkd made it; an empty folder is
    removed too; anything else is refused (a UserError) and left as it is."""
    if not os.path.lexists(folder):
        return
    if foreign(folder, kinds, legacy):
        raise refusal(folder)
    shutil.rmtree(folder)


# ---- run locks ------------------------------------------------------------------------------------------
def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its pid yet"


def _acquire(folder: str) -> int:
    """An fd holding the exclusive flock of ``folder``'s lock file, pid and host written in it."""
    path = os.path.join(folder, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _holder(fd)
                os.close(fd)
                raise UserError(f"{folder} is in use by another fastkd run ({holder}; lock {path}); wait for it "
                                "to finish or choose another --out")
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return fd  # a file system without locks: run unlocked, as before
            os.close(fd)
            raise
        try:  # a holder that was releasing may have unlinked the file we opened: lock the current one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(folder: str) -> Iterator[None]:
    """Hold ``folder``'s run lock for the ``with`` block (a UserError naming the holder when another
    process has it). Rank 0 alone locks under torchrun; re-entrant in one process (a multi-run command
    locks a cell, then ``train`` locks it again). On release the lock file is removed, and the folder too
    when this call created it and it is still empty."""
    if not is_main():
        yield
        return
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        fd = _acquire(folder)
    except BaseException:
        if created:
            _rmdir_if_empty(folder)
        raise
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        try:
            os.remove(os.path.join(folder, LOCK))  # while still holding it: a waiting opener retries (samestat)
        except OSError:
            pass
        os.close(fd)
        if created:
            _rmdir_if_empty(folder)


def _rmdir_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)  # only ever removes an empty folder
    except OSError:
        pass


@contextlib.contextmanager
def claim_run(out: str, resume: bool) -> Iterator[None]:
    """For ``fastkd train --out``: refuse a folder that holds another run's files unless ``resume``, and hold
    its run lock for the run (rank 0 alone under torchrun)."""
    if is_main() and not resume:
        found = [n for n in RUN_FILES if os.path.exists(os.path.join(out, n))]
        if found:
            with run_lock(out):  # a run still in progress: name its process rather than the files
                pass
            raise UserError(f"{out} already holds a run ({', '.join(found)}); pass --resume to continue it or "
                            "choose another --out")
    with run_lock(out):
        yield


def claims_run_folder(train):
    """Decorates ``train(cfg, resume=False)``: the run holds :func:`claim_run` on ``cfg.out`` throughout (a
    torchrun elastic restart counts as a resume: the folder is the job's own)."""
    import functools

    @functools.wraps(train)
    def wrapper(cfg, resume: bool = False, *args, **kwargs):
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0  # as distributed.elastic_restart
        with claim_run(cfg.out, resume or restarted):
            return train(cfg, resume, *args, **kwargs)

    return wrapper
