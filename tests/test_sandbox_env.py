"""The worker's environment is an allowlist: service URLs and tokens of the kernel's never reach a cell.

A deny list of name patterns (``*TOKEN*``, ``AWS_*``) let ``DATABASE_URL``, ``PIP_INDEX_URL``
(often with a password in it), ``HTTPS_PROXY``, ``SENTRY_DSN``, ``GH_PAT`` and
``MLFLOW_TRACKING_URI`` through even under strict.  The test gives them to the kernel; a cell
must find them neither in ``os.environ`` nor in what the worker was started with.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import pytest
from conftest import Kernel, start_kernel, stop_kernel
from test_sandbox import alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

KERNEL_ONLY = {
    "DATABASE_URL": "postgres://app:pw-4f1c@db.internal/app",
    "PIP_INDEX_URL": "https://user:pw-9a2e@pypi.internal/simple",
    "HTTPS_PROXY": "http://user:pw-77b0@proxy.internal:3128",
    "SENTRY_DSN": "https://key-c3d1@sentry.internal/4",
    "GH_PAT": "ghp_decoy0123456789",
    "MLFLOW_TRACKING_URI": "https://user:pw-5e5e@mlflow.internal",
    "MY_APP_SECRETLESS_SETTING": "1",
    "MY_APP_MODE": "fast",
}

# Both views a cell has: the live mapping and the block the process was started with.
SEEN = (
    "import json, os\n"
    "raw = open('/proc/self/environ', 'rb').read().split(b'\\0')\n"
    "print(json.dumps({'environ': dict(os.environ), 'proc': [e.decode(errors='replace') for e in raw if e]}))"
)


def seen(k: Kernel) -> tuple[dict[str, str], str]:
    out = json.loads(k.ok(SEEN).stdout)
    return out["environ"], "\0".join(out["proc"])


@pytest.fixture(scope="module", params=["standard", "strict"])
def env_kernel(request: pytest.FixtureRequest) -> Iterator[Kernel]:
    km, kc = start_kernel(
        extra_arguments=[f"--Sandbox.profile={request.param}"], env={**os.environ, **KERNEL_ONLY}
    )
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def test_kernel_only_variables_stay_out(env_kernel: Kernel) -> None:
    environ, proc = seen(env_kernel)
    for name, value in KERNEL_ONLY.items():
        assert name not in environ, name
        assert not [e for e in proc.split("\0") if e.startswith(f"{name}=")], name
        assert len(value) < 4 or value not in proc, name
    # What Python and JAX need still passes.
    assert environ["PATH"] and environ["HOME"] and environ["JAX_PLATFORMS"] == "cpu"
    env_kernel.ok("import jax, jax.numpy as jnp\nfloat(jax.jit(lambda x: x @ x)(jnp.ones((8, 8))).sum())")
    alive(env_kernel)


def test_deployer_allows_and_sets_variables(tmp_path_factory: pytest.TempPathFactory) -> None:
    from jax_kernel.policy.sandbox import DEFAULT_ENV_ALLOW

    allow = [*DEFAULT_ENV_ALLOW, "MY_APP_*", "MY_API_TOKEN"]
    km, kc = start_kernel(
        extra_arguments=[
            f"--Sandbox.env_allow={json.dumps(allow)}",
            '--WorkerManager.worker_env={"DEPLOYER_SETTING": "on"}',
        ],
        env={**os.environ, **KERNEL_ONLY, "MY_API_TOKEN": "tok-decoy"},
    )
    k = Kernel(km, kc)
    try:
        environ, proc = seen(k)
        assert environ["MY_APP_MODE"] == "fast"
        assert "MY_APP_MODE=fast" in proc.split("\0")
        assert environ["DEPLOYER_SETTING"] == "on"  # worker_env needs no allowlist entry
        # The deny list still wins over the allowlist: a token stays out even when allowed (and
        # *SECRET* takes MY_APP_SECRETLESS_SETTING with it: a deployer who wants it narrows env_deny).
        assert "MY_API_TOKEN" not in environ and "tok-decoy" not in proc
        assert "MY_APP_SECRETLESS_SETTING" not in environ
        assert "DATABASE_URL" not in environ and "SENTRY_DSN" not in environ
        alive(k)
    finally:
        stop_kernel(km, kc)


def test_off_profile_passes_the_environment_whole() -> None:
    km, kc = start_kernel(extra_arguments=["--Sandbox.profile=off"], env={**os.environ, **KERNEL_ONLY})
    k = Kernel(km, kc)
    try:
        environ, _ = seen(k)
        assert {n: environ.get(n) for n in KERNEL_ONLY} == KERNEL_ONLY
    finally:
        stop_kernel(km, kc)
