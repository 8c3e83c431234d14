"""``python -m jax_kernel`` starts the kernel; ``python -m jax_kernel install`` installs its spec."""

import os

from jax_kernel.protocol.importpath import drop_unsafe_entries

if __name__ == "__main__":
    drop_unsafe_entries()  # before anything is imported: see jax_kernel.protocol.importpath
    # ipykernel's debugger module imports debugpy, whose pydevd prints a frozen-modules note to the
    # server's log on every start; our debugger runs in the worker, which sets the same.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    if os.environ.get("JAX_KERNEL_SPARE"):  # a spare for the next restart (jax_kernel.launch.provisioner)
        from jax_kernel.launch.spare import wait_to_be_kernel

        wait_to_be_kernel()
    from jax_kernel.kernel.app import launch_new_instance

    launch_new_instance()
