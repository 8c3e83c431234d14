"""The JAX entry points' old path, kept so that ``jax_kernel.worker.jax_ops`` still imports.

Runs in the worker process.  The code lives in :mod:`jax_kernel.worker.jax`, one module per job;
this re-exports its public names (the worker's shell, magics and server, and ``jax_kernel``'s lazy
entry points, use them from here).
"""

from __future__ import annotations

from .jax import *  # noqa: F403 - the package's __all__ is this module's
from .jax import __all__  # noqa: F401
