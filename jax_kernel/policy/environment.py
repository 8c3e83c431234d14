"""Kernel process: the environment a worker (or a set's member) starts with, built here only.

The kernel's environment holds what no cell should see (its connection file, Jupyter's tokens,
cloud credentials, a service's ``DATABASE_URL``), and the worker is started with an environment
the kernel builds: the allowlist's variables of its own, the deployer's (``WorkerManager.worker_env``),
never the deny list's, and the worker's private temp and cache dirs (:func:`build`; the spawner
sets the notebook folder's cache, :mod:`.domains`); on top of
that, its job's: JAX's settings, the allocator's, the compilation cache and the devices it leased
(:func:`job_environment`; a standby worker gets that part when it takes up work).  The lists are
the defaults of ``Sandbox.env_allow`` and ``Sandbox.env_deny``.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol import jaxspec
from ..protocol.importpath import SAFE_PATH_ENV
from .accelerators import VISIBLE_DEVICES_ENV, Lease, pin_env

#: Every variable that tells an accelerator runtime its devices, emptied: no accelerator at all.
NO_DEVICES = {name: "" for names in VISIBLE_DEVICES_ENV.values() for name in names}

#: Environment variables the worker never sees (fnmatch patterns, case-insensitive).
DEFAULT_ENV_DENY = [
    "JPY_*",
    "JUPYTERHUB_*",
    "JUPYTER_TOKEN",
    "JUPYTER_RUNTIME_DIR",
    "*TOKEN*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*_KEY",
    "*_KEY_ID",
    "*API_KEY*",
    "AWS_*",
    "AZURE_*",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "GPG_AGENT_INFO",
    "DBUS_SESSION_BUS_ADDRESS",
    "KRB5CCNAME",
    "*CONNECTION_FILE*",
]

#: The only environment variables that reach the worker (fnmatch patterns, case-insensitive),
#: unless the deployer names more (``Sandbox.env_allow``) or sets them (``WorkerManager.worker_env``).
#: A deny list can't know every service's secret (``DATABASE_URL``, ``SENTRY_DSN``, ``GH_PAT``, a
#: proxy URL with a password in it), so what passes is what a Python/JAX process needs: paths,
#: locale, terminal, and the variables of JAX, XLA, the accelerator runtimes and the BLAS/OpenMP
#: thread pools.  Jupyter's path variables pass (they point the worker at the same config and data
#: as the kernel); its runtime dir and tokens never do (``Sandbox.env_deny`` wins).
DEFAULT_ENV_ALLOW = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TERM",
    "COLORTERM",
    "TZ",
    "TZDIR",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "JAX_*",
    "XLA_*",
    "TF_CPP_*",
    "CUDA_*",
    "NVIDIA_*",
    "ROCR_*",
    "ROCM_*",
    "HIP_*",
    "TPU_*",
    "LIBTPU_*",
    "NCCL_*",
    "OMP_*",
    "MKL_*",
    "OPENBLAS_*",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONWARNINGS",
    "PYTHONHASHSEED",
    "PYTHONUNBUFFERED",
    "PYTHONIOENCODING",
    "PYTHONUTF8",
    "PYTHONSAFEPATH",
    "PYTHONNOUSERSITE",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONFAULTHANDLER",
    "PYDEVD_DISABLE_FILE_VALIDATION",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "MPLBACKEND",
    "MPLCONFIGDIR",
    "IPYTHONDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_CONFIG_PATH",
    "JUPYTER_DATA_DIR",
    "JUPYTER_PATH",
    "JUPYTER_PLATFORM_DIRS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
]


@functools.lru_cache(maxsize=32)
def _pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for a list of shell-style name patterns: compiled once per policy, not once per
    variable and pattern at every worker start."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


def _matches(name: str, patterns: list[str]) -> bool:
    return _pattern(tuple(patterns)).match(name.upper()) is not None


def worker_environment(
    env: Mapping[str, str],
    extra: Mapping[str, str] | None,
    allow: Sequence[str],
    deny: Sequence[str],
    tmp: str,
    mplconfigdir: str | None,
    accelerators: str,
) -> dict[str, str]:
    """What ``env`` passes of ``allow``, plus ``extra`` (the deployer's own variables), minus
    ``deny``, plus the worker's private temp dir ``tmp`` and Matplotlib config dir, and the
    devices of ``accelerators`` (``Sandbox.accelerators``).

    Allow, not just deny: a secret is any variable a service reads (``DATABASE_URL``), and no
    list of names finds them all.
    """
    allow_upper = [p.upper() for p in allow]
    deny_upper = [p.upper() for p in deny]
    passed = {k: v for k, v in env.items() if _matches(k, allow_upper)}
    passed.update(extra or {})
    clean = {k: v for k, v in passed.items() if not _matches(k, deny_upper)}
    clean.update(TMPDIR=tmp, TEMP=tmp, TMP=tmp)
    # What every kernel's process has from jupyter_client (code takes it as "in a notebook"); here
    # the worker's parent, the kernel (the JPY_* of the server never pass: JPY_API_TOKEN, ...).
    clean["JPY_PARENT_PID"] = str(os.getpid())
    # Tools' own caches never go to the user's real ~/.cache: jedi and parso keep pickles there
    # that the user's editor loads outside any sandbox, and it is read-only anyway (jedi's
    # completions fail when it cannot make its dir).  Here the worker's temp dir; with
    # WorkerManager.user_cache (the default) the spawner points XDG_CACHE_HOME at the notebook
    # folder's own cache instead (jax_kernel.policy.domains), which only that folder's workers
    # read, and which the worker's mount namespace shows at ~/.cache over the real one.
    # Matplotlib gets a config dir of this kernel's, seeded with the user's font cache (see
    # statedir.matplotlib_cache).
    clean["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
    if mplconfigdir:
        clean["MPLCONFIGDIR"] = mplconfigdir
    # Sandbox.accelerators numbers CUDA's devices (it says so in its help).
    if accelerators == "none":
        clean.update(dict.fromkeys(VISIBLE_DEVICES_ENV["cuda"], ""))
        clean.setdefault("JAX_PLATFORMS", "cpu")
    elif accelerators != "all":
        ids = ",".join(i.strip() for i in accelerators.split(","))
        clean.update(dict.fromkeys(VISIBLE_DEVICES_ENV["cuda"], ids))
    return clean


#: ``Sandbox.worker_environment``: the kernel's environment and the deployer's variables in, what
#: the policy lets through out.
Scrub = Callable[[dict[str, str], dict[str, str]], dict[str, str]]


def build(
    environ: Mapping[str, str],
    worker_env: Mapping[str, str],
    scrub: Scrub,
    job: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a worker process or a set's member is started with: what ``scrub`` passes
    of the kernel's ``environ`` and the deployer's ``worker_env`` (an empty value removes the
    variable), and the ``job``'s variables on top (none for a standby worker)."""
    env = dict(environ)
    # The kernel's own safe import path (jax_kernel.protocol.importpath) is not the user's: the worker
    # runs with -P itself, and `!python script.py` in a cell finds the script's siblings as usual.
    for key in SAFE_PATH_ENV:
        env.pop(key, None)
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    extra = {}
    for key, value in worker_env.items():
        if value:
            extra[key] = value
        else:
            env.pop(key, None)
    # The deployer's worker_env passes the allowlist (they named it) but not the deny list:
    # secrets never pass, even by config.
    full = scrub(env, extra)
    full.update(job or {})
    return full


@dataclass(frozen=True)
class CompilationCache:
    """JAX's persistent compilation cache as a worker is given it (``WorkerManager.compilation_cache*``)."""

    folder: str
    min_compile_secs: float
    max_bytes: int

    def env(self) -> dict[str, str]:
        """The variables JAX reads for it; the same path at every start (JAX's cache key includes it)."""
        return {
            "JAX_COMPILATION_CACHE_DIR": self.folder,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": f"{self.min_compile_secs:g}",
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(self.max_bytes),
        }


def job_environment(
    settings: Mapping[str, Any],
    memory: Mapping[str, str],
    cache: CompilationCache | None,
    lease: Lease | None,
    no_devices: bool = False,
) -> dict[str, str]:
    """The variables JAX reads for a worker's job: its load_jax_library ``settings``, the
    allocator's ``memory`` (``Accelerators.memory_env``), the compilation ``cache`` unless the
    settings name one, and the ``lease``'s devices; ``no_devices`` hides every accelerator (the
    default lease could not be had: none rather than one another kernel holds)."""
    env = jaxspec.settings_env(settings)
    env.update(memory)
    if cache is not None and "compilation_cache_dir" not in settings:
        env.update(cache.env())
    if lease is not None:
        if lease.platform != "cpu":
            env.update(pin_env(lease))
        elif "host_device_count" not in settings:
            env["JAX_NUM_CPU_DEVICES"] = str(len(lease.devices))
    elif no_devices:
        env.update(NO_DEVICES)
    return env
