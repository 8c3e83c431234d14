"""Worker side of the sandbox: applies the kernel's policy to this process, first thing.

:func:`apply` runs in ``jax_kernel.worker.__main__`` before IPython or JAX is imported and
before any thread exists, because Landlock restricts only the calling thread and the
threads it creates later, and a user namespace can't be made once a process has threads.
Everything here uses ctypes and the standard library only, so importing this package
starts no thread either.

Order (each step needs the privileges the later ones take away):

1. resource limits (rlimits) and joining the kernel-made cgroups (memory, pids):
   :mod:`.limits`, :mod:`.cgroups`;
2. namespaces: a new network namespace when the policy denies the network (with a user
   namespace first when not root), and a mount namespace with the host's files read-only,
   hidden paths masked and a private ``/tmp`` and ``/dev``: :mod:`.namespaces`, which runs
   :mod:`.network`, :mod:`.mounts`, :mod:`.private_tmp` and :mod:`.masks`;
3. ``no_new_privs``, then, as root, every capability is dropped (bounding, ambient,
   effective, permitted, inheritable): uid 0 stays, so an interpreter under a 0700
   ``/root`` still works, but the DAC override, CAP_KILL, CAP_SYS_RESOURCE (raising the
   rlimits back) and CAP_SYS_ADMIN are gone: :mod:`.capabilities`;
4. Landlock: file system read-only except the writable paths, hidden paths unreadable,
   and (ABI >= 6) signals and abstract unix sockets scoped to the worker's own domain,
   so it can't signal the kernel or anyone else even as uid 0; when the policy has
   ``net_rules`` (ABI >= 4), TCP bind and connect only to the ports it names:
   :mod:`.filesystem`, on the primitives of :mod:`.landlock`;
5. seccomp-bpf (a deny list, with TSYNC), last, since it forbids ``unshare``: :mod:`.seccomp`.

Every step records itself as active or unavailable (with the reason) in a report
(:class:`~.base._Report`) that ``%sandbox`` and the kernel's ``kernel_info_reply`` show.  Under
the ``strict`` profile an unavailable protection ends the worker (exit code :data:`EXIT_STRICT`)
with a message on stderr naming it; under ``standard`` it is reported and the worker goes on.

This package's namespace keeps the names the flat module had that others use: :data:`REPORT`
and :func:`apply` are looked up here at run time (a test may replace them, or
:func:`landlock_abi`, to pose as a forged worker or an older kernel).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from ...protocol.config import SandboxPolicy
from ...protocol.exitcodes import EXIT_STRICT
from .base import DEV_ALLOWED, NAMESPACE_FLAGS, Unavailable, _Report
from .capabilities import _drop_capabilities, _no_new_privs
from .filesystem import _apply_landlock
from .landlock import DEVICE, LL_NET_BIND_TCP, LL_NET_CONNECT_TCP, READ, SPECIAL_FILES, landlock_abi
from .limits import _apply_limits
from .namespaces import _namespaces
from .network import _describe_ports as _describe_ports  # for tests/test_sandbox_net.py
from .network import _port_spans as _port_spans
from .seccomp import _apply_seccomp, seccomp_program
from .user_dirs import _describe as _describe_user_dirs

__all__ = [
    "DEVICE",
    "DEV_ALLOWED",
    "EXIT_STRICT",
    "LL_NET_BIND_TCP",
    "LL_NET_CONNECT_TCP",
    "NAMESPACE_FLAGS",
    "PLACES",
    "READ",
    "REPORT",
    "SPECIAL_FILES",
    "Unavailable",
    "apply",
    "format_report",
    "landlock_abi",
    "register_magic",
    "seccomp_program",
]

#: What the last :func:`apply` did, for ``%sandbox`` and the ``ready`` message.
REPORT: dict[str, Any] = {"profile": "off", "active": {}, "unavailable": {}}

#: Where the last :func:`apply` lets the worker write, for the rest of the worker (``%pip``, the
#: note on a refused write): ``writable`` (real paths), ``hidden``, ``state`` (the kernel's state
#: dir), ``internal`` (writable folders the kernel hands out, not the user's), ``packages`` (the
#: notebook folder's prefix for ``%pip``), ``home_cache`` (``~/.cache``, when the notebook
#: folder's cache is there).  Empty under the ``off`` profile.
PLACES: dict[str, Any] = {}


def apply(requested: SandboxPolicy | None) -> dict[str, Any]:
    """Apply ``requested`` (the kernel's config, checked by the worker) to this process; return the report.

    Must run before any thread exists.  Exits the process under ``strict`` if a
    protection is unavailable.  The steps note what they did in a copy of the policy
    (``readonly_done``, ``tmp_done``, ``masked``) for the steps after them.
    """
    global REPORT
    policy: dict[str, Any] = dict(requested or {})
    profile = policy.get("profile", "off")
    report = _Report(profile)
    if profile == "off":
        REPORT = report.data
        return report.data
    if not sys.platform.startswith("linux"):
        report.unavailable("sandbox", f"needs Linux, this is {sys.platform}")
    else:
        report.step("rlimits", _apply_limits, policy, report)
        if policy.get("allow_network", True):
            report.data["network"] = "allowed by policy"
        masked: list[str] = []
        try:
            masked = _namespaces(policy, report)
        except (Unavailable, OSError) as e:
            report.data["masking"] = f"hidden paths carved out of Landlock's rules instead ({e})"
        policy = {**policy, "masked": masked}
        report.step("no_new_privs", _no_new_privs, report)
        report.step("capabilities", _drop_capabilities, report)
        report.step("filesystem", _apply_landlock, policy, report, landlock_abi())
        report.step("seccomp", _apply_seccomp, report, bool(policy.get("deny_unix_sockets")))
        for name, detail in policy.get("kernel_side", {}).items():
            report.active(name, detail)
        _describe_user_dirs(policy, report)
        PLACES.update(_places(policy))
    REPORT = report.data
    if profile == "strict" and report.data["unavailable"]:
        missing = "; ".join(f"{k}: {v}" for k, v in report.data["unavailable"].items())
        os.write(2, f"jax-kernel sandbox (strict profile): cannot apply {missing}\n".encode())
        os._exit(EXIT_STRICT)
    return report.data


def _places(policy: dict[str, Any]) -> dict[str, Any]:
    """:data:`PLACES` from the policy as applied (``tmp_done``, ``cache_done`` recorded by the steps)."""
    fs = policy.get("fs", {})
    dirs = fs.get("user_dirs") or {}
    covered = [policy[key] for key in ("tmp_done", "cache_done") if policy.get(key)]
    internal = [(fs.get("shared_cache") or {}).get("folder"), *fs.get("private_writable", [])]
    internal += [(dirs.get(name) or {}).get("folder") for name in ("packages", "cache")]
    return {
        "writable": [os.path.realpath(p) for p in [*fs.get("writable", []), *covered]],
        "hidden": [os.path.realpath(p) for p in fs.get("hidden", [])],
        "state": os.path.dirname(fs.get("mask_file", "")) or None,
        "internal": [os.path.realpath(p) for p in internal if p],
        "packages": (dirs.get("packages") or {}).get("folder"),
        "home_cache": policy.get("cache_done"),
    }


def register_magic(shell: Any, selftest: Callable[[], int] | None = None) -> None:
    """``%sandbox``: show which protections are active and which are unavailable, and why;
    ``%sandbox --selftest``: have the kernel run the attack battery and show what it contained."""

    def sandbox(line: str = "") -> None:
        from IPython.core.error import UsageError

        arg = line.strip()
        if not arg:
            print(format_report())
            return
        if arg != "--selftest" or selftest is None:
            raise UsageError(f"%sandbox takes no argument or --selftest, not {arg!r}")
        status = selftest()
        if status == 1:
            raise RuntimeError("the self-test found attacks the sandbox did not contain: see the table above")
        if status:
            raise RuntimeError("the self-test could not run: see the lines above")

    shell.register_magic_function(sandbox, "line", "sandbox")


def format_report(report: dict[str, Any] | None = None) -> str:
    """Human-readable report for ``%sandbox``."""
    report = REPORT if report is None else report
    lines = [f"Sandbox profile: {report.get('profile', 'off')}"]
    if report.get("network"):
        lines.append(f"Network: {report['network']}")
    if report.get("masking"):
        lines.append(f"Hidden paths: {report['masking']}")
    active = report.get("active", {})
    if active:
        lines.append("Active:")
        lines += [f"  {k}: {v}" for k, v in active.items()]
    unavailable = report.get("unavailable", {})
    if unavailable:
        lines.append("Unavailable on this host:")
        lines += [f"  {k}: {v}" for k, v in unavailable.items()]
    return "\n".join(lines)
