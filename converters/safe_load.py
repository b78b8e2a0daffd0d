"""Reading downloaded metadata safely: pickles through a restricted unpickler, MATLAB files via scipy.

The pickles and ``.mat`` files come from the internet. ``pickle.load`` would run any class a file
names; ``load_pickle`` admits only plain containers, strings, numbers and numpy arrays.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, Dict, List

import numpy as np

from fastkd.errors import UserError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"), ("__builtin__", "list"), ("__builtin__", "dict"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path: str) -> Any:
    """Unpickle a downloaded file (Python 2 pickles: ``latin1``) admitting only data, never code."""
    try:
        with open(path, "rb") as f:
            return _Restricted(io.BytesIO(f.read()), encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"expected {path}; check --root")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} is not a data pickle this converter accepts ({exc}); re-download the file")


def load_batch_file(path: str) -> Dict[str, Any]:
    """A pickled or ``.npz`` batch (ImageNet32 ships both); npz is read with ``allow_pickle=False``."""
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is not a readable .npz ({exc}); re-download the file")
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not the expected dict of arrays")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_mat(path: str) -> Dict[str, Any]:
    """``scipy.io.loadmat`` with structs and cells unwrapped into dicts and lists."""
    import scipy.io

    if not os.path.isfile(path):
        raise UserError(f"expected {path}; check --root")
    try:
        return scipy.io.loadmat(path, simplify_cells=True)
    except (ValueError, OSError, TypeError, NotImplementedError) as exc:
        raise UserError(f"{path} is not a readable MATLAB file ({exc}); re-download it")


def mat_records(mat: Dict[str, Any], key: str, path: str) -> List[Dict[str, Any]]:
    """A MATLAB struct array as a list of dicts (a one-element struct comes back as a dict)."""
    if key not in mat:
        raise UserError(f"{path} has no variable {key!r} (it has {', '.join(k for k in mat if not k.startswith('__'))})")
    value = mat[key]
    if isinstance(value, dict):
        return [value]
    return list(value)


def as_list(value) -> list:
    """A MATLAB vector or cell array (scalar when of length one) as a Python list."""
    if isinstance(value, np.ndarray):
        return value.ravel().tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]
