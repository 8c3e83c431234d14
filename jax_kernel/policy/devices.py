"""Kernel process: the accelerator device files a worker may open, and which requests for one are refused.

``Sandbox.accelerators`` is the ceiling: the worker's private ``/dev`` holds only the device files
it names (and the shared control files), and no request (``jax_load_request``, a magic) reaches
a device it does not list.  Leases narrow it further from outside (:mod:`.limits`: the devices
cgroup); which device a lease is lives in :mod:`.accelerators`.
"""

from __future__ import annotations

import glob
import re

#: Device files of one accelerator each (a lease's unit); control files (nvidiactl, uvm) are shared.
ACCELERATOR_FILE = re.compile(r"/dev/(nvidia|accel)[0-9]+")


def accelerator_devices(accelerators: str) -> list[str]:
    """The device files a worker may open for ``accelerators`` (``Sandbox.accelerators``)."""
    if accelerators == "none":
        return []
    control = glob.glob("/dev/nvidiactl") + glob.glob("/dev/nvidia-uvm*") + glob.glob("/dev/nvidia-caps")
    control += glob.glob("/dev/nvidia-modeset") + glob.glob("/dev/dri") + glob.glob("/dev/shm")
    if accelerators == "all":
        return control + glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/accel*") + glob.glob("/dev/vfio")
    return control + [f"/dev/nvidia{i.strip()}" for i in accelerators.split(",")]


def refused_device(accelerators: str, platform: str, index: int | None = None) -> str | None:
    """Why a request for ``platform`` (device ``index``) is refused under ``accelerators``
    (``Sandbox.accelerators``, the sandbox enabled), or None."""
    if platform == "cpu" or accelerators == "all":
        return None
    if accelerators == "none":
        return f"the sandbox allows no accelerators (Sandbox.accelerators = 'none'), so not {platform}"
    allowed = [int(i) for i in accelerators.split(",")]
    if index is not None and index not in allowed:
        return f"{platform} device {index} is not among the allowed devices {allowed} (Sandbox.accelerators)"
    return None
