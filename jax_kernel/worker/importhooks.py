"""Run a callback when a given module is imported, without importing it ourselves.

The worker adapts to libraries only once a cell imports them (JAX's monitoring for the
compile notice, tqdm's notebook detection), so a worker that never uses them never pays
for them, and the first cell that does is covered from its first line.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from typing import Any


class _Hook(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, before: Callable[[], None] | None, after: Callable[[Any], None] | None):
        self.name, self.before, self.after = name, before, after

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once only; also keeps find_spec below from finding us again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader, before, after = spec.loader, self.before, self.after

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                if before is not None:
                    before()
                loader.exec_module(module)
                if after is not None:
                    after(module)

        spec.loader = _Loader()
        return spec


def on_import(
    name: str, before: Callable[[], None] | None = None, after: Callable[[Any], None] | None = None
) -> None:
    """Call ``before()`` just before module ``name`` executes and ``after(module)`` just after.

    If the module is already imported, ``after`` runs now (``before`` is moot).
    """
    if name in sys.modules:
        if after is not None:
            after(sys.modules[name])
        return
    sys.meta_path.insert(0, _Hook(name, before, after))
