"""A small decorator registry shared by models, methods, datasets and pipeline backends, and the package
discovery that makes adding one a single new file: each package imports all of its modules on import."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, Generic, List, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a canonical name (and case-insensitive aliases) to a registered object.

    >>> models = Registry("model")
    >>> @models.register("ResNet18", "resnet18")
    ... def build(): ...
    """

    def __init__(self, kind: str, name_attribute: str = ""):
        self.kind = kind
        self.name_attribute = name_attribute  # set on each registered object to its canonical name
        self._items: Dict[str, T] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key.lower() in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._aliases[key.lower()] = name
            self._items[name] = obj
            if self.name_attribute:
                setattr(obj, self.name_attribute, name)
            return obj

        return decorator

    def canonical(self, name: str) -> str:
        key = self._aliases.get(str(name).lower())
        if key is None:
            raise UserError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
                f" (see `fastkd list {self.kind}s`)"
            )
        return key

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> List[str]:
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return str(name).lower() in self._aliases

    def items(self):
        return self._items.items()


def import_modules(package: str, suffix: str = "") -> List[str]:
    """Import every module of ``package`` whose name ends with ``suffix``, in sorted order, so that each
    registers its entries (registration order is then file-name order); returns the modules' full names."""
    path = importlib.import_module(package).__path__
    names = [f"{package}.{m.name}" for m in sorted(pkgutil.iter_modules(path), key=lambda m: m.name)
             if m.name.endswith(suffix)]
    for name in names:
        importlib.import_module(name)
    return names
