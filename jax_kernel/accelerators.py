"""Moved to :mod:`jax_kernel.policy.accelerators` on 2026-12-02 (the re-layout into packages).

Config and code written for the flat layout name this path; it stays as a
re-export.  New code imports from the new module.  Deprecated: to be removed no earlier than
2027-06.
"""

from jax_kernel.policy.accelerators import Accelerators  # noqa: F401
