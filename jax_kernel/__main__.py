"""``python -m jax_kernel`` starts the kernel; ``python -m jax_kernel install`` installs its spec."""

from jax_kernel.app import launch_new_instance

if __name__ == "__main__":
    launch_new_instance()
