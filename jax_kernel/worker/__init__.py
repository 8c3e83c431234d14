"""Worker side: everything that runs inside the sandboxed worker process.

Nothing here imports traitlets configuration or ZMQ sockets of the kernel: the worker
gets its settings as explicit JSON from the kernel and talks only over :mod:`jax_kernel.protocol.wire`.
"""
