"""jax-kernel: a Jupyter kernel that runs JAX in a sandboxed, supervised worker process."""

from __future__ import annotations

__version__ = "0.1.0"

#: The JAX entry points, importable without importing JAX (or the worker) until first use.
_JAX_ENTRY_POINTS = frozenset(
    {"load_jax_library", "execute_jax_transformation", "execute_jax_program", "export_jax_program"}
)


def __getattr__(name: str) -> object:
    # Lazy: the kernel process imports jax_kernel and must never import JAX.
    if name in _JAX_ENTRY_POINTS:
        from .worker import jax_ops

        return getattr(jax_ops, name)
    raise AttributeError(f"module 'jax_kernel' has no attribute {name!r}")
