"""The entry points' errors, and the one line of an exception that a reply or a cell shows.

Runs in the worker process.  Kept apart from the entry points so that every module of the package
(and the worker's shell, which shows these without a traceback) can name them without importing JAX.
"""

from __future__ import annotations

from typing import Any


class JaxEntryError(Exception):
    """A clear, one-line error from an entry point (shown without a traceback)."""


class JaxLoadError(JaxEntryError):
    """load_jax_library could not give JAX the platform or devices asked for."""


class TransformError(JaxEntryError):
    """execute_jax_transformation could not build or call the transformed function."""


class ProgramRejected(JaxEntryError):
    """execute_jax_program refused a program before running it."""


class JaxRestartRequired(BaseException):
    """JAX's backend already started with other settings: only a new worker can apply them.

    A BaseException so that a cell's ``except Exception`` does not swallow it: the rest of
    the cell must not run in a worker that is about to be replaced.
    """

    def __init__(
        self,
        settings: dict[str, Any],
        reason: str,
        keep_state: bool = False,
        memory: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.settings = settings
        self.reason = reason
        self.keep_state = keep_state  # the variables were saved: the new worker restores them
        self.memory = memory  # device memory before (%jax_reset reports before and after)


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:2000]
