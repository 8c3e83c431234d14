"""Outside the kernel: how Jupyter starts it (provisioner, spare kernel process, kernelspec)."""
