"""jaxspec: what the entry points accept, checked in the kernel process without JAX."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jax_kernel.protocol import jaxspec
from jax_kernel.protocol.jaxspec import JaxSpecError


@pytest.mark.parametrize(
    "text, names",
    [
        ("grad", ["grad"]),
        ("jit(vmap(grad))", ["jit", "vmap", "grad"]),
        (" jit ( vmap ( grad ) ) ", ["jit", "vmap", "grad"]),
        ("value_and_grad", ["value_and_grad"]),
        ("pmap(jvp)", ["pmap", "jvp"]),
    ],
)
def test_transformations_parse(text: str, names: list[str]) -> None:
    assert jaxspec.parse_transformation(text) == names


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "non-empty"),
        ("jit(vmap(grad)", "expected ')'"),
        ("jit(vmap(grad)))", "unexpected ')'"),
        ("jit()", "expected a transformation name"),
        ("grad(x)", "unknown transformation 'x'"),
        ("__import__('os').system('id')", "unknown transformation '__import__'"),
        ("jit(grad, argnums=1)", "expected ')'"),
        ("jit vmap", "unexpected 'vmap'"),
        ("grad" * 200, "longer than 500"),
    ],
)
def test_bad_transformations_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(JaxSpecError) as e:
        jaxspec.parse_transformation(text)
    assert fragment in str(e.value)


def test_options_are_typed_and_normalised() -> None:
    opts = jaxspec.check_options(
        {"argnums": [0, 1], "in_axes": [0, None], "time": True, "runs": 3, "jaxpr": None},
        jaxspec.TRANSFORM_OPTIONS,
        "transformation",
    )
    assert opts == {"argnums": (0, 1), "in_axes": [0, None], "time": True, "runs": 3}
    for bad, fragment in [
        ({"argnums": True}, "argnums"),
        ({"argnums": [0, "1"]}, "list of ints"),
        ({"runs": 0}, "between 1 and 100000"),
        ({"out": "not an identifier"}, "identifier"),
        ({"time": 1}, "must be bool"),
    ]:
        with pytest.raises(JaxSpecError) as e:
            jaxspec.check_options(bad, jaxspec.TRANSFORM_OPTIONS, "transformation")
        assert fragment in str(e.value)


def test_load_settings_and_their_environment() -> None:
    settings = jaxspec.check_load_settings(
        {"platform": "GPU", "devices": "0, 2", "x64": True, "memory_fraction": 0.5, "preallocate": False}
    )
    assert settings == {
        "platform": "cuda",
        "devices": [0, 2],
        "x64": True,
        "memory_fraction": 0.5,
        "preallocate": False,
    }
    assert jaxspec.settings_env(settings) == {
        "JAX_PLATFORMS": "cuda",
        "CUDA_VISIBLE_DEVICES": "0,2",
        "JAX_ENABLE_X64": "1",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    cpu = jaxspec.check_load_settings({"host_device_count": "4", "x64": "false"}, from_strings=True)
    assert jaxspec.settings_env(cpu) == {"JAX_NUM_CPU_DEVICES": "4", "JAX_ENABLE_X64": "0"}
    for bad in (
        {"devices": [0, 0]},
        {"devices": [-1]},
        {"memory_fraction": 1.5},
        {"matmul_precision": "max"},
    ):
        with pytest.raises(JaxSpecError):
            jaxspec.check_load_settings(bad)


def test_jaxspec_does_not_import_jax() -> None:
    code = (
        "import sys, jax_kernel.protocol.jaxspec, jax_kernel.kernel.jax_requests; print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_rocm_worker_is_told_its_devices_in_every_variable_the_runtime_reads() -> None:
    """The JAX settings' devices and a lease's use the same table: ROCm reads HIP_ and ROCR_."""
    env = jaxspec.settings_env(jaxspec.check_load_settings({"platform": "rocm", "devices": [1]}))
    assert env == {"JAX_PLATFORMS": "rocm", "HIP_VISIBLE_DEVICES": "1", "ROCR_VISIBLE_DEVICES": "1"}
    unnamed = jaxspec.settings_env(jaxspec.check_load_settings({"devices": [0, 1]}))
    assert {k: v for k, v in unnamed.items() if k.endswith("_VISIBLE_DEVICES")} == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "HIP_VISIBLE_DEVICES": "0,1",
        "ROCR_VISIBLE_DEVICES": "0,1",
    }
