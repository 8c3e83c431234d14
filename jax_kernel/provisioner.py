"""Moved to :mod:`jax_kernel.launch.provisioner` on 2026-12-02 (the re-layout into packages).

The provisioner entry point of earlier installs names this path; it stays as a
re-export.  New code imports from the new module.  Deprecated: to be removed no earlier than
2027-06.
"""

from jax_kernel.launch.provisioner import JaxProvisioner  # noqa: F401
