"""Installing the kernelspec, and configuring the kernel the ways Jupyter users expect.

Settings are traitlets, so they must work from a ``jax_kernel_config.py`` in Jupyter's
config path as well as from ``--Class.trait=value`` on the kernel command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import Kernel, shell_replies, start_kernel, stop_kernel
from jupyter_client.kernelspec import KernelSpecManager


def test_pip_install_makes_the_kernelspec_visible() -> None:
    # conftest points JUPYTER_DATA_DIR at an empty directory: only the installed spec can be found.
    spec = KernelSpecManager().get_kernel_spec("jax")
    assert spec.display_name == "JAX (sandboxed)"
    assert spec.language == "python"
    assert spec.argv[1:] == ["-P", "-m", "jax_kernel", "-f", "{connection_file}"]
    # VS Code and JupyterLab interrupt by SIGINT to the kernel, which forwards it to the worker.
    assert spec.interrupt_mode == "signal"
    resources = set(os.listdir(spec.resource_dir))
    assert {"kernel.json", "logo-32x32.png", "logo-64x64.png"} <= resources


def test_install_command_writes_a_spec_for_this_python(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jax_kernel", "install", "--prefix", str(tmp_path), "--name", "jax-test"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    spec_dir = tmp_path / "share" / "jupyter" / "kernels" / "jax-test"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    # The spec must start the kernel with the interpreter that has jax_kernel installed.
    assert spec["argv"][0] == sys.executable
    assert spec["display_name"] == "JAX (sandboxed)"
    assert (spec_dir / "logo-64x64.png").stat().st_size > 0


def test_specs_other_environments_read_leave_the_provisioner_out(tmp_path: Path) -> None:
    """jupyter_client hides a spec whose provisioner the server cannot import: a spec a Jupyter
    server from another environment may read must not name ours unless asked."""

    def installed(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "jax_kernel", "install", *args, "--name", "jax-p"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        where = Path(sys.prefix) if "--sys-prefix" in args else tmp_path
        return json.loads((where / "share" / "jupyter" / "kernels" / "jax-p" / "kernel.json").read_text())

    assert "kernel_provisioner" not in installed("--prefix", str(tmp_path))["metadata"]
    named = installed("--prefix", str(tmp_path), "--provisioner")["metadata"]["kernel_provisioner"]
    assert named == {"provisioner_name": "jax-provisioner"}
    try:
        assert "kernel_provisioner" in installed("--sys-prefix")["metadata"]
    finally:
        KernelSpecManager().remove_kernel_spec("jax-p")


def test_install_command_rejects_an_unknown_option(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jax_kernel", "install", "--no-such-option"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "no-such-option" in proc.stderr + proc.stdout


def test_settings_are_read_from_jax_kernel_config_py(tmp_path: Path) -> None:
    (tmp_path / "jax_kernel_config.py").write_text(
        "c.JaxKernel.output_limit = 3000\nc.WorkerManager.interrupt_grace = 0.5\n"
    )
    km, kc = start_kernel(env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path)})
    kernel = Kernel(km, kc)
    try:
        res = kernel.ok("print('z' * 100_000)")
        assert res.stdout.count("z") <= 3000
        assert "output truncated" in res.stderr
        # A short grace: a cell stuck in native code is killed half a second after the interrupt.
        kernel.ok(
            "import jax, jax.numpy as jnp\n"
            "spin = jax.jit(lambda x: jax.lax.fori_loop(0, 2**31 - 1, lambda i, v: jnp.sin(v) + 1.0, x))"
        )
        msg_id = kc.execute("spin(jnp.float32(0)).block_until_ready()")
        time.sleep(1.0)
        t0 = time.monotonic()
        km.interrupt_kernel()
        (reply,) = shell_replies(kc, msg_id, timeout=30)
        assert reply["status"] == "error"
        assert "within 0.5 s" in reply["evalue"]
        assert time.monotonic() - t0 < 3.0  # the default grace alone would be 3 s
    finally:
        stop_kernel(km, kc)


def test_help_all_lists_the_kernels_settings() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jax_kernel", "--help-all"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for setting in ("--WorkerManager.interrupt_grace", "--JaxKernel.output_limit", "--Sandbox.profile"):
        assert setting in proc.stdout
    assert "--pylab" not in proc.stdout  # the kernel process has no shell to configure
