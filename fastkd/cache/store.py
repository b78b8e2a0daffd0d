"""The cache on disk: ``cache.json`` (key, storage, signals) and, per epoch and signal, memory-mapped ``.npy``
arrays indexed by dataset index: the values, a CRC-32 of each row, the fingerprint of the view the row was
computed on (``fastkd.cache.fingerprint``) and a written-bitmap.

- A row is written as values, then its CRC and fingerprint, then its bitmap byte; a reader serves a row only
  when its bitmap byte is set and its CRC matches. A row failing its CRC is recomputed by the teacher and
  rewritten in a run that can fill (``DamagedRows``), and stops a read-only run; never wrong teacher output.
  Every file's size is checked against its shape when it is opened (a truncated file is refused).
- Every read compares the stored fingerprints with those of the batch's views: a cached output is never
  served for other pixels, whatever the key missed (a one-line error naming the epoch and index).
- Files are created under a temporary name, space-reserved (``posix_fallocate``: a full disk fails at
  creation, not later inside a memory map) and renamed; ``cache.json`` is replaced atomically. The
  temporary files a killed fill left are removed by the next filling run (under the lock).
- One filling run at a time: its main process holds ``fill.lock`` (``flock``); its ranks write disjoint
  rows of the shared maps. Readers take no lock. The key is compared again once the lock is held.
- A float16 cache refuses a teacher signal beyond float16's range (it would be stored as inf).
- Storage of each signal: ``float16`` (default) or ``float32``; logits optionally top-k (FKD): the k largest
  logits, their class indices and the log-sum-exp of the rest, which is spread evenly over the other
  classes on reading (so the softmax at T = 1 keeps its top-k probabilities and its tail mass).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import zlib
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from fastkd.atomic import atomic_write_json, remove_stale_temps
from fastkd.errors import UserError
from fastkd.sizes import format_bytes

from .fingerprint import FP_WORDS
from .key import key_differences
from .rows import decode_rows, encode_rows, parts, row_bytes, stored_spec  # noqa: F401  (row_bytes, stored_spec: API)

FORMAT = "fastkd-teacher-cache"
META, LOCK = "cache.json", "fill.lock"
TEMP = re.compile(r".+\.npy\.tmp-\d+")  # the temporary names of :meth:`TeacherCache._create`


class DamagedRows(UserError):
    """Rows failing their CRC-32 (``positions`` into the batch's indices): a run that can fill recomputes and
    rewrites them; a read-only run stops with this one-line error."""

    def __init__(self, message: str, positions: np.ndarray, what: str):
        super().__init__(message)
        self.positions, self.what = positions, what


def existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


class TeacherCache:
    """Open with :meth:`open`; then :meth:`has`, :meth:`read`, :meth:`write` per batch of dataset indices."""

    def __init__(self, root: str, meta: dict, writable: bool, lock=None):
        self.root, self.meta, self.writable, self._lock = root, meta, writable, lock
        self._epoch, self._maps = None, {}

    @property
    def signals(self) -> Dict[str, dict]:
        return self.meta["signals"]

    @staticmethod
    def read_meta(root: str) -> Optional[dict]:
        path = os.path.join(root, META)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is unreadable ({exc}); delete {root} and fill the cache again")
        if meta.get("format") != FORMAT:
            raise UserError(f"{root} is not a fastkd teacher cache ({META} has no format {FORMAT!r}); choose another folder")
        return meta

    @staticmethod
    def _refuse_other(root: str, meta: Optional[dict], key: dict, storage: dict) -> None:
        if meta is None:
            return
        diff = key_differences(meta["key"], key)
        diff += [f"cache_{k} (cache {meta['storage'][k]}, run {v})" for k, v in storage.items() if meta["storage"].get(k) != v]
        if diff:
            raise UserError(f"teacher cache {root} was filled for another run: {'; '.join(diff)}; "
                            "use another --teacher-cache folder or the cache's options")

    @classmethod
    def open(cls, root: str, key: dict, storage: dict, signals: Dict[str, dict], epochs: int, fill: bool,
             main: bool = True, log: Callable[[str], None] = print, reserve: int = 0) -> "TeacherCache":
        """Open ``root`` for a run of key ``key`` that needs ``signals`` (name -> {shape}) for ``epochs``.

        Refuses a cache of another key or storage (compared again once the fill lock is held: another run
        may have created the cache in between). With ``fill`` the signals the cache lacks are added (after
        the disk check, which leaves ``reserve`` bytes free for the run's checkpoints) and the fill lock is
        taken when anything is left to write; the temporary files of a killed fill are then removed. Without
        it, the cache is opened read-only and the signals it lacks are simply not served."""
        root = os.path.abspath(root)
        meta = cls.read_meta(root)
        if meta is None and not fill:
            raise UserError(f"{root} holds no teacher cache; fill one with `fastkd cache build` or `fastkd train --teacher-cache`")
        cls._refuse_other(root, meta, key, storage)
        have = meta["signals"] if meta is not None else {}
        new = {n: s for n, s in signals.items() if n not in have}
        if not fill or not main:
            return cls(root, meta, writable=fill)
        lock = None
        if new or not cls(root, meta or {"signals": {}}, False).complete(list(signals), epochs):
            cls._check_space(root, (meta or {"key": key})["key"], {n: stored_spec(n, s, storage) for n, s in new.items()},
                             log, reserve)
            os.makedirs(root, exist_ok=True)
            lock = open(os.path.join(root, LOCK), "a+")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                raise UserError(f"another run is filling the teacher cache {root} ({LOCK} is locked); wait for it "
                                "to finish, then rerun (this run will read what it wrote)")
            try:
                meta = cls.read_meta(root)
                cls._refuse_other(root, meta, key, storage)  # the cache may have been created since the first look
                cls._remove_temps(root, log)
            except BaseException:
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()
                raise
            meta = meta or {"format": FORMAT, "key": key, "storage": storage, "signals": {}}
            for name, spec in signals.items():
                if name not in meta["signals"]:
                    spec = stored_spec(name, spec, storage)
                    for e in range(meta["key"]["epochs"]):
                        cls._create(root, e, name, spec, meta["key"]["count"])
                    meta["signals"][name] = {**spec, "compute_dtype": None}
            atomic_write_json(os.path.join(root, META), meta)
        elif meta is not None:  # complete: remove a killed fill's temporary files if no run is filling now
            try:
                probe = open(os.path.join(root, LOCK), "a+")
            except OSError:
                probe = None
            if probe is not None:
                with probe:
                    try:
                        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        pass
                    else:
                        cls._remove_temps(root, log)
                        fcntl.flock(probe, fcntl.LOCK_UN)
        return cls(root, meta, writable=True, lock=lock)

    @staticmethod
    def _remove_temps(root: str, log) -> None:
        """Delete what a killed fill left: fastkd's own temporary names only (``<file>.npy.tmp-<pid>`` in the
        epoch folders, ``cache.json``'s atomic-write temporaries); called with the fill lock held."""
        if not os.path.isdir(root):
            return
        removed = 0
        for sub in os.listdir(root):
            folder = os.path.join(root, sub)
            if re.fullmatch(r"epoch\d{4}", sub) and os.path.isdir(folder):
                for name in os.listdir(folder):
                    if TEMP.fullmatch(name) and os.path.isfile(os.path.join(folder, name)):
                        os.unlink(os.path.join(folder, name))
                        removed += 1
        before = len(os.listdir(root))
        remove_stale_temps(os.path.join(root, META))
        removed += before - len(os.listdir(root))
        if removed:
            log(f"teacher cache {root}: removed {removed} temporary file(s) of an interrupted fill")

    @staticmethod
    def _check_space(root: str, key: dict, new: Dict[str, dict], log, reserve: int = 0) -> None:
        """Print what the new signals take and refuse when the disk cannot hold it and ``reserve`` bytes more
        (the run's checkpoints, when they go to the same file system)."""
        if not new:
            return
        per_view = sum(row_bytes(s) for s in new.values())
        views = key["count"] * key["epochs"]
        what = ", ".join(f"{n} {'top-%d ' % s['topk'] if s.get('topk') else ''}{s['dtype']} {list(s['shape'])}"
                         for n, s in new.items())
        free = shutil.disk_usage(existing_parent(root)).free
        kept = f" + {format_bytes(reserve)} for the run's checkpoints" if reserve else ""
        log(f"teacher cache {root}: {format_bytes(per_view)} per view ({what}) x {key['count']} views x "
            f"{key['epochs']} epochs = {format_bytes(per_view * views)}{kept} ({format_bytes(free)} free)")
        if per_view * views + reserve > free:
            raise UserError(f"the teacher cache needs {format_bytes(per_view * views)}{kept} but {existing_parent(root)} has "
                            f"{format_bytes(free)} free; free space, pick another --teacher-cache folder, or store less "
                            "(--cache-topk K, --cache-budget)")

    # ---- files -------------------------------------------------------------------------------
    @staticmethod
    def _paths(root: str, epoch: int, name: str, spec: dict) -> Dict[str, Tuple[str, str, tuple]]:
        folder = os.path.join(root, f"epoch{epoch:04d}")
        files = {sfx: (os.path.join(folder, f"{name}.{sfx}.npy"), d, s) for sfx, d, s in parts(spec)}
        files["crc"] = (os.path.join(folder, f"{name}.crc.npy"), "uint32", ())
        files["fp"] = (os.path.join(folder, f"{name}.fp.npy"), "int64", (FP_WORDS,))
        files["written"] = (os.path.join(folder, f"{name}.written.npy"), "uint8", ())
        return files

    @classmethod
    def _create(cls, root: str, epoch: int, name: str, spec: dict, count: int) -> None:
        for path, dtype, shape in cls._paths(root, epoch, name, spec).values():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(count, *shape))
            size = os.path.getsize(tmp)
            del arr
            try:
                with open(tmp, "rb+") as f:
                    os.posix_fallocate(f.fileno(), 0, size)
            except OSError as exc:
                os.unlink(tmp)
                raise UserError(f"cannot reserve {format_bytes(size)} for {path} ({exc.strerror}); free disk space or "
                                "choose another --teacher-cache folder")
            os.replace(tmp, path)

    def _open_epoch(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        self._maps, count = {}, self.meta["key"]["count"]
        mode = "r+" if self.writable else "r"
        for name, spec in self.signals.items():
            arrays = {}
            for sfx, (path, dtype, shape) in self._paths(self.root, epoch, name, spec).items():
                row = np.dtype(dtype).itemsize * math.prod(shape)
                try:
                    with open(path, "rb") as f:  # the header says where the rows start
                        fmt = np.lib.format
                        (fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0)(f)
                        expected = f.tell() + row * count
                    if os.path.getsize(path) != expected:
                        raise UserError(f"teacher cache file {path} is truncated or damaged ({os.path.getsize(path)} "
                                        f"bytes, expected {expected}); delete {self.root} and fill it again")
                    arr = np.load(path, mmap_mode=mode)
                except (OSError, ValueError) as exc:
                    raise UserError(f"teacher cache file {path} is unreadable ({exc}); delete {self.root} and fill it again")
                if arr.shape != (count, *shape) or arr.dtype != np.dtype(dtype):
                    raise UserError(f"teacher cache file {path} holds {arr.dtype} {arr.shape}, expected {dtype} "
                                    f"{(count, *shape)}; delete {self.root} and fill it again")
                arrays[sfx] = arr
            self._maps[name] = arrays
        self._epoch = epoch

    # ---- rows --------------------------------------------------------------------------------
    def complete(self, names: List[str], epochs: int, visits: Optional[Callable[[int], np.ndarray]] = None) -> bool:
        """Every row of ``names`` written for epochs ``0 .. epochs-1`` (only the rows ``visits(epoch)``, if given)."""
        if any(n not in self.signals for n in names):
            return False
        for e in range(epochs):
            self._open_epoch(e)
            rows = visits(e) if visits is not None else slice(None)
            if not all(self._maps[n]["written"][rows].all() for n in names):
                return False
        return True

    def written(self, epoch: int) -> Dict[str, int]:
        """Rows written per signal in ``epoch``."""
        self._open_epoch(epoch)
        return {n: int(self._maps[n]["written"].sum()) for n in self.signals}

    def has(self, epoch: int, idx: np.ndarray, names: List[str]) -> bool:
        if any(n not in self.signals for n in names):
            return False
        self._open_epoch(epoch)
        return all(bool(self._maps[n]["written"][idx].all()) for n in names)

    @staticmethod
    def _crc(values: List[np.ndarray]) -> np.ndarray:
        n = len(values[0])
        return np.array([zlib.crc32(b"".join(v[i].tobytes() for v in values)) for i in range(n)], dtype=np.uint32)

    def _row_name(self, row) -> str:
        """``dataset index 12``, or with K views per image ``dataset index 3, view 0`` (row ``index * K + k``)."""
        k = int(self.meta["key"].get("views_per_image", 1))
        return f"dataset index {int(row)}" if k == 1 else f"dataset index {int(row) // k}, view {int(row) % k}"

    def _check_fingerprints(self, epoch: int, name: str, idx: np.ndarray, stored: np.ndarray,
                            fingerprint: Optional[np.ndarray]) -> None:
        if fingerprint is None:
            return
        bad = np.flatnonzero((stored != fingerprint).any(1))
        if len(bad):
            raise UserError(
                f"teacher cache {self.root}: the cached {name} of {self._row_name(idx[bad[0]])} in epoch {epoch + 1} "
                f"(folder epoch{epoch:04d}, {len(bad)} of the batch's {len(idx)} views) was computed on other pixels than "
                "this run's view (fingerprint mismatch): the views changed since the cache was filled (a decoder, "
                "library, memory tier or data change its key does not cover) or the cache was altered; fill a new "
                "--teacher-cache folder")

    def read(self, epoch: int, idx: np.ndarray, names: List[str], device,
             fingerprint: Optional[np.ndarray] = None) -> Dict[str, torch.Tensor]:
        """The rows ``idx`` of epoch ``epoch`` as tensors on ``device`` in the dtype the teacher computed them in.

        Rows failing their CRC-32 raise :class:`DamagedRows` (all of them, over every signal of ``names``);
        given ``fingerprint`` (int64 (len(idx), 2), ``fingerprint.view_fingerprint`` of the batch), a row computed on
        another view is a one-line error naming the epoch and index."""
        self._open_epoch(epoch)
        loaded, damaged, first = {}, np.zeros(len(idx), dtype=bool), None
        for name in names:
            spec, arrays = self.signals[name], self._maps[name]
            values = [np.asarray(arrays[sfx][idx]) for sfx, _, _ in parts(spec)]
            bad = (self._crc(values) != arrays["crc"][idx]) | (arrays["written"][idx] != 1)
            if bad.any() and first is None:
                first = (name, int(idx[np.flatnonzero(bad)[0]]), self._paths(self.root, epoch, name, spec)["values"][0])
            damaged |= bad
            loaded[name] = values
        if first is not None:
            name, index, path = first
            n = int(damaged.sum())
            raise DamagedRows(f"teacher cache {path} is corrupted (row of {self._row_name(index)} fails its CRC-32); "
                              f"delete {self.root} and fill it again", np.flatnonzero(damaged),
                              f"{n} row(s) of epoch {epoch + 1} (folder epoch{epoch:04d}; first: {name} of "
                              f"{self._row_name(index)}) failed their CRC-32")
        out = {}
        for name in names:
            spec, values = self.signals[name], loaded[name]
            self._check_fingerprints(epoch, name, idx, np.asarray(self._maps[name]["fp"][idx]), fingerprint)
            t = decode_rows(spec, [torch.from_numpy(v) for v in values])
            t = t.to(device=device, dtype=getattr(torch, spec.get("compute_dtype") or "float32"))
            out[name] = t.contiguous(memory_format=torch.channels_last) if spec.get("channels_last") else t
        return out

    def write(self, epoch: int, idx: np.ndarray, outputs: Dict[str, torch.Tensor],
              fingerprint: Optional[np.ndarray] = None, rewrite: Optional[np.ndarray] = None) -> None:
        """Store the rows of ``idx`` not yet written (another writer's rows are left alone), and those at
        positions ``rewrite`` (damaged rows) again. ``fingerprint``: int64 (len(idx), 2) of the views the
        outputs were computed on, stored beside the rows; the rows already written must carry the same."""
        self._open_epoch(epoch)
        for name, arrays in self._maps.items():
            if name not in outputs:
                continue
            spec = self.signals[name]
            if spec.get("compute_dtype") is None:  # recorded once, so reads give back the same dtype and layout
                t = outputs[name]
                spec["compute_dtype"] = str(t.dtype).replace("torch.", "")
                spec["channels_last"] = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
                atomic_write_json(os.path.join(self.root, META), self.meta)
            todo = arrays["written"][idx] == 0
            if rewrite is not None and len(rewrite):
                todo[rewrite] = True
            kept = np.flatnonzero(~todo)
            if len(kept) and fingerprint is not None:
                self._check_fingerprints(epoch, name, idx[kept], np.asarray(arrays["fp"][idx[kept]]), fingerprint[kept])
            todo = np.flatnonzero(todo)
            if not len(todo):
                continue
            rows = idx[todo]
            t = outputs[name].detach()
            # index_select, not t[tensor]: advanced indexing took ~30 ms for 32 rows on our loaded 2-core CPU
            values = encode_rows(spec, t if len(todo) == len(t) else t.index_select(0, torch.from_numpy(todo).to(t.device)),
                                  name, epoch, self.root)
            arrays["written"][rows] = 0  # a rewritten row is not served while it is being written
            for (sfx, _, _), v in zip(parts(spec), values):
                arrays[sfx][rows] = v
            arrays["crc"][rows] = self._crc(values)
            arrays["fp"][rows] = fingerprint[todo] if fingerprint is not None else 0
            arrays["written"][rows] = 1

    def flush(self) -> None:
        for arrays in self._maps.values():
            for arr in arrays.values():
                if isinstance(arr, np.memmap) and self.writable:
                    arr.flush()

    def close(self) -> None:
        self.flush()
        self._maps, self._epoch = {}, None
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
