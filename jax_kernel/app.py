"""Moved to :mod:`jax_kernel.kernel.app` on 2026-12-02 (the re-layout into packages).

The ``jax-kernel`` script of earlier installs and their kernelspecs name this path; it stays as a
re-export.  New code imports from the new module.  Deprecated: to be removed no earlier than
2027-06.
"""

from jax_kernel.kernel.app import JaxKernelApp, launch_new_instance  # noqa: F401
