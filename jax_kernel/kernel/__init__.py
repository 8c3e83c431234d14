"""The kernel process: speaks the Jupyter protocol to the frontend and never runs user code.

``jax_kernel.kernel.JaxKernel`` was the module path of the kernel class before 2026-12-02 (the
flat layout); it stays importable here for config files and code that name it.
"""

from __future__ import annotations


def __getattr__(name: str) -> object:
    # Lazy, so that importing a module of this package does not import ipykernel's kernel.
    if name == "JaxKernel":
        from .jaxkernel import JaxKernel

        return JaxKernel
    raise AttributeError(f"module 'jax_kernel.kernel' has no attribute {name!r}")
