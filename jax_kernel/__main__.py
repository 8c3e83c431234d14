"""``python -m jax_kernel`` starts the kernel; ``python -m jax_kernel install`` installs its spec."""

import os

from jax_kernel.protocol.importpath import drop_unsafe_entries

if __name__ == "__main__":
    drop_unsafe_entries()  # before anything is imported: see jax_kernel.protocol.importpath
    # ipykernel's debugger module imports debugpy, whose pydevd prints a frozen-modules note to the
    # server's log on every start; our debugger runs in the worker, which sets the same.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    from jax_kernel.launch.link import Link

    link = Link.from_environment()  # jax-kernel's provisioner launched us (jax_kernel.launch.provisioner)
    if os.environ.get("JAX_KERNEL_SPARE"):  # a warm process: the spare, or one of the server's pool
        from jax_kernel.launch.spare import wait_to_be_kernel

        wait_to_be_kernel(link)
    from jax_kernel.kernel.app import JaxKernelApp, launch_new_instance

    JaxKernelApp.link = link
    launch_new_instance()
