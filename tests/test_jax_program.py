"""execute_jax_program / export_jax_program: export, validate, run, through all three routes.

Programs are exported both in the worker (``%jax_export``) and in this process with plain
JAX, and the outputs are compared with plain JAX's.  Tampered or mismatched programs must be
refused with one clear line before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Kernel, start_kernel, stop_kernel

from jax_kernel.client import JaxClient


def model(x, y):
    return jnp.tanh(x @ y) * 2.0


# numpy, not jax.numpy: a JAX array here would start XLA's threads at collection time, before
# other test modules fork (pexpect).
X = np.arange(12.0, dtype=np.float32).reshape(3, 4) / np.float32(10)
Y = np.ones((4, 2), dtype=np.float32) / np.float32(3)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("programs")
    exported = jax.export.export(jax.jit(model))(X, Y)
    paths = {
        "model": d / "model.jaxexp",
        "cuda_only": d / "cuda.jaxexp",
        "garbage": d / "garbage.jaxexp",
        "tampered": d / "tampered.jaxexp",
        "inv": d / "inv.jaxexp",
    }
    paths["model"].write_bytes(exported.serialize())
    cuda = jax.export.export(jax.jit(model), platforms=["cuda"])(X, Y)
    paths["cuda_only"].write_bytes(cuda.serialize())
    paths["garbage"].write_bytes(b"definitely not a jax.export artifact" * 10)
    inv = jax.export.export(jax.jit(jnp.linalg.inv))(jnp.eye(3))
    data = bytes(inv.serialize())
    paths["inv"].write_bytes(data)
    assert b"lapack_sgetrf_ffi" in data
    paths["tampered"].write_bytes(data.replace(b"lapack_sgetrf_ffi", b"evil_sgetrf_hook_"))
    return paths


@pytest.fixture(scope="module")
def pk(programs: dict[str, Path]) -> Iterator[Kernel]:
    # The programs lie in the notebook's folder, as a user keeps them (the host's /tmp, where
    # pytest's tmp_path lives, is not in a worker's view).
    km, kc = start_kernel(cwd=str(programs["model"].parent))
    kernel = Kernel(km, kc)
    kernel.ok(
        "import jax, jax.numpy as jnp\n"
        "def model(x, y):\n    return jnp.tanh(x @ y) * 2.0\n"
        "X = jnp.arange(12.0).reshape(3, 4) / 10\nY = jnp.ones((4, 2)) / 3\n"
        + "".join(f"{name}_path = {str(path)!r}\n" for name, path in programs.items())
    )
    yield kernel
    stop_kernel(km, kc)


@pytest.fixture(scope="module")
def client(pk: Kernel) -> JaxClient:
    return JaxClient(pk.kc, timeout=60)


def _values(node: dict) -> np.ndarray:
    return np.asarray(node["values"], dtype=np.float32)


def _worker_tmp(pk: Kernel) -> Path:
    """A directory the worker may write to (the sandbox confines its writes); this process reads it."""
    res = pk.ok("import tempfile\ntempfile.mkdtemp()")
    return Path(res.of("execute_result")[0]["data"]["text/plain"].strip("'"))


def test_export_in_worker_then_run_by_magic(pk: Kernel) -> None:
    out = _worker_tmp(pk) / "m.jaxexp"
    res = pk.ok(f"%jax_export model X, Y --out {out}")
    assert f"bytes to {out}" in res.stdout
    assert out.stat().st_size > 100
    # The worker's artifact runs in this process too, and gives plain JAX's answer.
    exp = jax.export.deserialize(bytearray(out.read_bytes()))
    np.testing.assert_allclose(exp.call(X, Y), model(X, Y), rtol=1e-6)
    res = pk.ok(f"%jax_program {out} X, Y --out ran\nran.shape")
    np.testing.assert_allclose(
        _values(res.of("display_data")[0]["data"]["application/json"]), model(X, Y), rtol=1e-6
    )
    assert res.of("execute_result")[0]["data"]["text/plain"] == "(3, 2)"


def test_message_route_by_path_and_by_bytes(client: JaxClient, programs: dict[str, Path]) -> None:
    by_path = client.run_program(programs["model"], "X, Y")
    assert by_path["status"] == "ok", by_path
    np.testing.assert_allclose(_values(by_path["data"]["application/json"]), model(X, Y), rtol=1e-6)
    by_bytes = client.run_program(programs["model"].read_bytes(), "X * 2, Y", time=True, runs=3)
    assert by_bytes["status"] == "ok", by_bytes
    np.testing.assert_allclose(_values(by_bytes["data"]["application/json"]), model(X * 2, Y), rtol=1e-6)
    t = by_bytes["reports"]["time"]
    assert t["compile_s"] > 0 and t["runs"] == 3 and t["run_median_s"] > 0


def test_function_route_returns_jax_values(pk: Kernel) -> None:
    res = pk.ok(
        "blob = export_jax_program('model', 'X, Y', vjp_order=1)\n"
        "out = execute_jax_program(blob, (X, Y))\n"
        "out2 = execute_jax_program(model_path, 'X, Y')\n"
        "type(out).__module__.split('.')[0], bool(jnp.allclose(out, model(X, Y))), bool((out == out2).all())"
    )
    assert res.of("execute_result")[0]["data"]["text/plain"] == "('jaxlib', True, True)"
    # vjp_order=1: grad through the deserialized program works.
    res = pk.ok(
        "exp = jax.export.deserialize(bytearray(blob))\n"
        "g = jax.grad(lambda x: exp.call(x, Y).sum())(X)\n"
        "bool(jnp.allclose(g, jax.grad(lambda x: model(x, Y).sum())(X)))"
    )
    assert res.of("execute_result")[0]["data"]["text/plain"] == "True"


def test_time_report_in_magic(pk: Kernel) -> None:
    res = pk.ok("%jax_program model_path X, Y --time --runs 4")
    shown = res.of("display_data")[1]["data"]["text/plain"]
    assert "compile" in shown and "over 4 runs" in shown


def test_export_for_two_platforms(pk: Kernel) -> None:
    out = _worker_tmp(pk) / "both.jaxexp"
    pk.ok(f"%jax_export model X, Y --out {out} --platforms cpu,cuda")
    exp = jax.export.deserialize(bytearray(out.read_bytes()))
    assert exp.platforms == ("cpu", "cuda")
    assert pk.ok(f"%jax_program {out} X, Y").of("display_data")


@pytest.mark.parametrize(
    "program, args, fragment",
    [
        ("garbage", "X, Y", "not a valid jax.export artifact"),
        ("cuda_only", "X, Y", "exported for cuda, but this worker runs cpu (present: cpu: 1 device (0))"),
        ("model", "X", "program takes 2 argument(s), got 1"),
        ("model", "X.T, Y", "argument 1: expected float32[3,4], got float32[4,3]"),
        ("model", "X, Y.astype(jnp.int32)", "argument 2: expected float32[4,2], got int32[4,2]"),
        ("tampered", "jnp.eye(3)", "custom_call target(s) not on the allowlist: evil_sgetrf_hook_"),
        ("missing", "X, Y", "cannot read program"),
    ],
)
def test_rejected_programs(
    pk: Kernel, client: JaxClient, programs: dict[str, Path], program: str, args: str, fragment: str
) -> None:
    path = str(programs.get(program, "/nonexistent/program.jaxexp"))
    reply = client.run_program(path, args)
    assert reply["status"] == "error" and reply["ename"] == "ProgramRejected", reply
    assert fragment in reply["evalue"], reply["evalue"]
    res = pk.run(f"%jax_program {path} {args}")
    assert res.reply["ename"] == "ProgramRejected" and fragment in res.reply["evalue"]
    assert len(res.reply["traceback"]) == 1
    assert pk.ok("X.shape").of("execute_result")  # the namespace is intact


def test_untampered_lapack_program_runs(client: JaxClient, programs: dict[str, Path]) -> None:
    reply = client.run_program(programs["inv"], "2 * jnp.eye(3)")
    assert reply["status"] == "ok", reply
    np.testing.assert_allclose(_values(reply["data"]["application/json"]), np.eye(3) / 2, rtol=1e-6)


def test_bad_program_requests(client: JaxClient) -> None:
    both = client.request("jax_program_request", {"program": "a", "program_base64": "AA=="})
    assert both["ename"] == "JaxRequestError" and "exactly one" in both["evalue"]
    bad64 = client.request("jax_program_request", {"program_base64": "not base64!"})
    assert bad64["ename"] == "JaxRequestError" and "base64" in bad64["evalue"]


def test_size_limits(programs: dict[str, Path]) -> None:
    km, kc = start_kernel(
        extra_arguments=["--JaxKernel.max_program_bytes=200", "--JaxKernel.jax_reply_limit=5000"],
        cwd=str(programs["model"].parent),
    )
    try:
        jc = JaxClient(kc, timeout=60)
        Kernel(km, kc).ok("import jax.numpy as jnp")
        data = programs["model"].read_bytes()
        assert len(data) > 200
        reply = jc.run_program(data, "")
        assert reply["ename"] == "JaxRequestError" and "over the 200-byte limit" in reply["evalue"]
        reply = jc.run_program(programs["model"], "")
        assert reply["ename"] == "ProgramRejected" and "over the 200-byte limit" in reply["evalue"]
        reply = jc.transform("jit", "lambda: jnp.arange(2000.0)", "", max_values=5000)
        assert reply["ename"] == "ReplyTooLarge" and "jax_reply_limit" in reply["evalue"]
        assert jc.transform("jit", "lambda: jnp.arange(3.0)", "")["status"] == "ok"
    finally:
        stop_kernel(km, kc)
