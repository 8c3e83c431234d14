"""Kernel process: which of the kernel's environment variables a worker gets.

The kernel's environment holds what no cell should see (its connection file, Jupyter's tokens,
cloud credentials, a service's ``DATABASE_URL``), and the worker is started with an environment
the kernel builds: the allowlist's variables of its own, the deployer's (``WorkerManager.worker_env``),
never the deny list's, and the worker's private temp and cache dirs.  The lists are the defaults
of ``Sandbox.env_allow`` and ``Sandbox.env_deny``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence

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


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name.upper(), p) for p in patterns)


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
    # Tools' own caches go to the worker's temp dir: jedi and parso keep pickles there that
    # the user's editor would load outside any sandbox, and ~/.cache is read-only anyway
    # (jedi's completions fail when it cannot make its dir).  Matplotlib gets a config dir of
    # this kernel's, seeded with the user's font cache (see statedir.matplotlib_cache).
    clean["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
    if mplconfigdir:
        clean["MPLCONFIGDIR"] = mplconfigdir
    if accelerators == "none":
        clean["CUDA_VISIBLE_DEVICES"] = ""
        clean.setdefault("JAX_PLATFORMS", "cpu")
    elif accelerators != "all":
        clean["CUDA_VISIBLE_DEVICES"] = ",".join(i.strip() for i in accelerators.split(","))
    return clean
