"""The code a frontend shows while debugging: cell files, their text, the loaded modules.

A breakpoint is set by file and line, in the file ``dumpCell`` wrote; the code that then runs
must have that file's lines, so while a frontend debugs IPython keeps a cell's leading blank lines.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..cellnames import CellNames


def dump_cell(names: CellNames, code: str) -> str:
    """Write a cell's source where its compiled code says it is from; the path written."""
    path = names.path(code)
    os.makedirs(names.directory, mode=0o700, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    return path


def read_source(path: Any) -> str | None:
    """A source file's text for the ``source`` request, or None when there is no such file."""
    if isinstance(path, str) and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    return None


def loaded_modules(arguments: dict[str, Any]) -> dict[str, Any]:
    """The ``modules`` body: the page of ``sys.modules`` asked for, those loaded from a .py file."""
    loaded = list(sys.modules.values())
    start = arguments.get("startModule", 0)
    if not isinstance(start, int):
        start = 0
    count = arguments.get("moduleCount")
    if not isinstance(count, int):
        count = len(loaded)
    found = []
    for i, module in enumerate(loaded[start : start + count], start):
        path = getattr(getattr(module, "__spec__", None), "origin", None)
        if isinstance(path, str) and path.endswith(".py"):
            found.append({"id": i, "name": module.__name__, "path": path})
    return {"modules": found, "totalModules": len(loaded)}


class LeadingBlankLines:
    """Takes IPython's ``leading_empty_lines`` cleanup out while debugging, and puts it back."""

    def __init__(self, shell: Any) -> None:
        self._shell = shell
        self._removed: dict[int, Any] = {}

    def keep(self, keep: bool) -> None:
        """While debugging, the code that runs must have the lines of the file breakpoints are set in."""
        from IPython.core.inputtransformer2 import leading_empty_lines

        transforms = self._shell.input_transformer_manager.cleanup_transforms
        if keep and leading_empty_lines in transforms:
            index = transforms.index(leading_empty_lines)
            self._removed[index] = transforms.pop(index)
        elif not keep:
            for index in sorted(self._removed):
                transforms.insert(index, self._removed.pop(index))
