"""jax-kernel: a Jupyter kernel that runs JAX in a sandboxed, supervised worker process."""

from __future__ import annotations

__version__ = "0.1.0"
