"""A small Python client for the JAX entry points' custom messages.

Wraps a jupyter_client ``KernelClient`` (blocking) so tools can ask a running ``jax``
kernel to load JAX, apply a transformation or run a program, and get the reply content::

    from jupyter_client.manager import start_new_kernel
    from jax_kernel.client import JaxClient

    km, kc = start_new_kernel(kernel_name="jax")
    jc = JaxClient(kc)
    jc.load_jax(host_device_count=4)
    reply = jc.transform("grad", "lambda x: x ** 3", "2.0")
    reply["data"]["application/json"]  # {'shape': [], 'dtype': 'float32', 'values': 12.0}
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any


class JaxClient:
    """Sends jax_load/jax_transform/jax_program requests on a KernelClient's shell channel."""

    def __init__(self, client: Any, timeout: float = 120.0) -> None:
        self.client = client
        self.timeout = timeout

    def request(self, msg_type: str, content: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one shell request and return the content of its reply (other replies are skipped)."""
        msg = self.client.session.msg(msg_type, content)
        self.client.shell_channel.send(msg)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {msg_type.replace('_request', '_reply')} within the timeout")
            reply = self.client.get_shell_msg(timeout=left)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]

    def load_jax(self, **settings: Any) -> dict[str, Any]:
        """jax_load_request: platform, devices, x64, host_device_count, memory_fraction, preallocate,
        compilation_cache_dir, matmul_precision, processes, launcher, devices_per_process (as
        load_jax_library)."""
        return self.request("jax_load_request", {k: v for k, v in settings.items() if v is not None})

    def transform(
        self, transformation: str, function: str, args: str = "", timeout: float | None = None, **options: Any
    ) -> dict[str, Any]:
        """jax_transform_request: options are argnums, has_aux, in_axes, ..., time, jaxpr, hlo, cost, out."""
        content = {"transformation": transformation, "function": function, "args": args, "options": options}
        return self.request("jax_transform_request", content, timeout)

    def run_program(
        self,
        program: str | bytes | os.PathLike[str],
        args: str = "",
        timeout: float | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """jax_program_request: a path in the worker's file system, or the artifact's bytes."""
        content: dict[str, Any] = {"args": args, "options": options}
        if isinstance(program, bytes | bytearray):
            content["program_base64"] = base64.b64encode(bytes(program)).decode()
        else:
            content["program"] = os.fspath(program)
        return self.request("jax_program_request", content, timeout)
