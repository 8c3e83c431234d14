"""Kernel side of the sandbox: the deployer's policy, resolved into what each worker gets.

:class:`Sandbox` is the one place the policy lives (traitlets, so ``jax_kernel_config.py``
or ``--Sandbox.profile=strict``).  The kernel reads it at start; nothing a cell sends can
change it, because the worker applies it to itself before any user code runs and then
can't undo it (no capabilities, ``no_new_privs``, Landlock and seccomp only tighten).

Per worker the kernel prepares: a scrubbed environment (no kernel secrets, tokens,
connection paths), the JSON policy the worker applies (see
:mod:`jax_kernel.worker.sandbox`), and, where the host offers them to us, cgroups for
memory and the number of tasks, which the kernel also uses to explain a death ("killed
by the memory limit") and to clean up processes the worker left behind.
"""

from __future__ import annotations

import atexit
import fnmatch
import glob
import itertools
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from traitlets import Bool, Enum, Float, Integer, List, Unicode, Union, default, validate
from traitlets.config import LoggingConfigurable

from ..host.netns import Egress, NetworkError
from ..protocol.exitcodes import EXIT_STRICT

#: The folder this package is installed in (site-packages, or an editable install's checkout).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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

#: Paths the worker can't read unless the deployer says otherwise.  ``~`` and ``$VAR`` are
#: expanded and glob patterns matched each time a worker is prepared (see :meth:`Sandbox._hidden`).
DEFAULT_HIDDEN = [
    # As uid 0 without capabilities the worker still owns these (mode 0640 root:shadow).
    "/etc/shadow",
    "/etc/gshadow",
    "~/.ssh",
    "~/.jupyter",
    "~/.gnupg",
    "~/.aws",
    "~/.azure",
    "~/.config/gcloud",
    "~/.kube",
    "~/.docker",
    "~/.netrc",
    "~/.git-credentials",
    "~/.pypirc",
    "~/.config/gh",
    "~/.npmrc",
    "~/.cache/huggingface",  # its token; the worker's own XDG_CACHE_HOME holds its downloads
    "~/.huggingface",
    "~/.kaggle",
    "~/.databrickscfg",
    "~/.vault-token",
    "~/.terraform.d",
    "~/.*_history",  # shell, Python, psql, MySQL histories: passwords typed on command lines
    "~/.local/share/keyrings",
    "~/.mozilla",
    "~/.config/google-chrome",
    "~/.config/chromium",
    # User sockets: whoever connects to a tmux or screen server, an ssh-agent, an X display or
    # VS Code's IPC socket types or runs commands as that user, outside the sandbox.
    "/tmp/tmux-*",
    "/tmp/ssh-*",
    "/tmp/.X11-unix",
    "/tmp/screen*",
    "/tmp/uscreens",
    "/run/screen",
    "/var/run/screen",
    "/tmp/vscode-ipc-*.sock",
    "/tmp/vscode-git-*.sock",
    "$XDG_RUNTIME_DIR/vscode-*",
    # Host control sockets: connecting to one as its owner (root) is root on the host, and
    # Landlock does not govern connect() on a socket path.
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
    "/run/podman",
    "/run/crio",
    "/run/dbus/system_bus_socket",
    "/run/systemd/private",
    "/run/user",
]

_GLOB = re.compile(r"[*?[]")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def total_memory() -> int:
    """Physical memory of the host in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_size(value: int | str, what: str) -> int:
    """``1073741824``, ``"4G"``, ``"512MiB"`` or ``"75%"`` (of RAM) -> bytes; 0 means no limit."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must be >= 0, not {value}")
        return value
    text = str(value).strip()
    if text in ("", "0", "none", "None"):
        return 0
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not a percentage like '75%'") from None
        if not 0 < pct <= 100:
            raise ValueError(f"{what}: {value!r} must be between 0% and 100%")
        return int(total_memory() * pct / 100)
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{what}: {value!r} is not a size (bytes, '4G', '512MiB' or '75%')")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


# --- cgroups ---------------------------------------------------------------------------


def _own_cgroups() -> dict[str, str]:
    """controller -> our cgroup path, from /proc/self/cgroup (``""`` is the v2 hierarchy)."""
    found = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(",") if controllers else [""]:
                    found[c] = path
    except OSError:
        pass
    return found


@dataclass
class Cgroup:
    """One cgroup the kernel made for one worker."""

    controller: str
    path: str
    version: int

    def read(self, name: str) -> str:
        try:
            with open(os.path.join(self.path, name)) as f:
                return f.read()
        except OSError:
            return ""

    def counter(self, file: str, key: str) -> int:
        for line in self.read(file).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
                return int(parts[1])
        return 0

    def oom_kills(self) -> int:
        if self.version == 1:
            return self.counter("memory.oom_control", "oom_kill")
        return self.counter("memory.events", "oom_kill")

    def release(self, tries: int = 50) -> None:
        """Kill what the worker left in it, then remove it (and first the workers' cgroups in it,
        for a set's parent cgroup)."""
        try:
            children = [e.path for e in os.scandir(self.path) if e.is_dir(follow_symlinks=False)]
        except OSError:
            children = []
        for child in children:
            if os.path.basename(child).startswith("jax-kernel-"):
                Cgroup(self.controller, child, self.version).release(tries)
        for _ in range(tries):
            pids = [int(p) for p in self.read("cgroup.procs").split() if p.isdigit()]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def _parent_cpuset() -> tuple[str, str] | None:
    """This kernel's cpuset (v1): (cpus, mems) to start a worker's with, None where there is none."""
    own = _own_cgroups().get("cpuset")
    if own is None:
        return None
    base = f"/sys/fs/cgroup/cpuset{own}"
    try:
        with open(os.path.join(base, "cpuset.cpus")) as f:
            cpus = f.read().strip()
        with open(os.path.join(base, "cpuset.mems")) as f:
            mems = f.read().strip()
    except OSError:
        return None
    return (cpus, mems) if cpus and mems else None


def _make_cgroup(
    controller: str, name: str, settings: dict[str, int | str], parent: Cgroup | None = None
) -> Cgroup:
    """Make a child of ``parent`` (a set's cgroup), else of our own cgroup, for ``controller``
    (v1, else v2); OSError if we can't."""
    own = _own_cgroups()
    candidates = []
    if parent is not None:
        candidates.append((parent.version, parent.path))
    elif controller in own:
        candidates.append((1, f"/sys/fs/cgroup/{controller}{own[controller]}"))
    if "" in own:
        for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            if os.path.exists(os.path.join(base, "cgroup.controllers")):
                candidates.append((2, f"{base}{own['']}"))
                break
    reasons = []
    for version, parent in candidates:
        path = os.path.join(parent, name)
        _sweep_stale(parent)
        try:
            os.mkdir(path, 0o755)
        except OSError as e:
            reasons.append(f"v{version} {parent}: {e.strerror}")
            continue
        cg = Cgroup(controller, path, version)
        try:
            for file, value in settings.items():
                if version == 2:
                    file = {"memory.limit_in_bytes": "memory.max"}.get(file, file)
                with open(os.path.join(path, file), "w") as f:
                    f.write(str(value))
            if (
                version == 2
                and controller == "memory"
                and os.path.exists(os.path.join(path, "memory.swap.max"))
            ):
                with open(os.path.join(path, "memory.swap.max"), "w") as f:
                    f.write("0")
            return cg
        except OSError as e:
            reasons.append(f"v{version} {path}: {e.strerror} (controller not delegated here?)")
            cg.release()
    raise OSError(", ".join(reasons) or f"no {controller} cgroup hierarchy on this host")


#: Device files of one accelerator each (a lease's unit); control files (nvidiactl, uvm) are shared.
ACCELERATOR_FILE = re.compile(r"/dev/(nvidia|accel)[0-9]+")


@dataclass(eq=False)
class WorkerSandbox:
    """What the kernel set up for one worker: its policy and its cgroups."""

    policy: dict[str, Any]
    cgroups: dict[str, Cgroup] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    limit_hits_seen: int = 0  # pids.events "max" when last read (see new_process_limit_hits)

    def restrict_cpus(self, cores: list[int]) -> bool:
        """Narrow the worker's cpuset to its leased cores: Linux then keeps every affinity it sets
        (its own, its threads', its children's) inside them.  False where it has no cpuset."""
        cg = self.cgroups.get("cpuset")
        if cg is None:
            return False
        try:
            with open(os.path.join(cg.path, "cpuset.cpus"), "w") as f:
                f.write(",".join(str(c) for c in cores))
        except OSError:
            return False
        return True

    def process_limit_hits(self) -> int:
        """How often the worker's tasks have hit the pids cgroup's limit so far."""
        cg = self.cgroups.get("pids")
        return cg.counter("pids.events", "max") if cg is not None else 0

    def new_process_limit_hits(self) -> int:
        """Hits of the task limit since the last call: one read of pids.events per cell, after it
        (a fork refused between cells, from a widget's callback, is counted after the next cell)."""
        now = self.process_limit_hits()
        new, self.limit_hits_seen = now - self.limit_hits_seen, now
        return new

    def kill_children(self, worker_pid: int, rounds: int = 20) -> int:
        """Kill every process in the worker's cgroups but the worker itself; how many there were.

        After a fork bomb the processes it left fill the worker's task limit, and the next cell
        can't even start a thread; they are the cell's, and the worker keeps its variables."""
        killed: set[int] = set()
        for _ in range(rounds):
            found = False
            for cg in self.cgroups.values():
                for p in cg.read("cgroup.procs").split():
                    pid = int(p) if p.isdigit() else worker_pid
                    if pid == worker_pid:
                        continue
                    found = True
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                    except ProcessLookupError:
                        pass
            if not found:
                break
            time.sleep(0.01)  # children forked while we killed are in the cgroup too: again
        return sorted(killed)

    def restrict_to_lease(self, platform: str, devices: Sequence[int]) -> bool:
        """Keep the worker out of every accelerator but ``devices`` of ``platform`` (its lease, or a
        set member's slice of it); False where that can't be enforced from outside (CPU, ROCm, no
        devices cgroup) and the lease is kept by the environment alone."""
        from .accelerators import device_files

        keep = device_files(platform, list(devices))
        return keep is not None and self.restrict_devices(keep)

    def restrict_devices(self, keep: list[str]) -> bool:
        """Deny the worker every accelerator device file it was given except ``keep`` (its lease).

        The worker's private /dev holds every accelerator the policy allows, since a standby
        worker is made before anyone knows its lease; the devices cgroup (v1) then refuses to
        open the others, from outside, whatever the worker does with its environment.  False
        where there is no devices cgroup."""
        cg = self.cgroups.get("devices")
        if cg is None or cg.version != 1:
            return False
        try:
            with open(os.path.join(cg.path, "devices.deny"), "w") as f:
                for path in self.policy.get("fs", {}).get("devices", []):
                    if path in keep or not ACCELERATOR_FILE.fullmatch(path):
                        continue
                    try:
                        info = os.stat(path)
                    except OSError:
                        continue
                    if stat.S_ISCHR(info.st_mode):
                        f.write(f"c {os.major(info.st_rdev)}:{os.minor(info.st_rdev)} rwm\n")
                        f.flush()  # one rule per write: the controller parses each write alone
        except OSError:
            return False
        return True

    def release(self, wait: bool = False) -> None:
        """Kill leftovers and remove the cgroups (in a thread unless ``wait``: it may wait for exits)."""
        cgroups = list(self.cgroups.values())
        self.cgroups = {}
        if not cgroups:
            return
        if wait:
            for c in cgroups:
                c.release()
        else:
            threading.Thread(target=lambda: [c.release() for c in cgroups], daemon=True).start()


def _left_by_dead_kernels(parent: str, pattern: str) -> Iterator[str]:
    """Entries of ``parent`` named (by ``pattern``, group 1) after a kernel pid that no longer runs."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(pattern, name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            yield os.path.join(parent, name)


def _sweep_stale_state(parent: str) -> None:
    """Remove state dirs of kernels that died without cleaning up (SIGKILL)."""
    for path in _left_by_dead_kernels(parent, r"jax-kernel-sandbox-(\d+)-\w+"):
        try:
            if os.stat(path).st_uid == os.geteuid():
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _writable_roots(writable: Sequence[str], state: str) -> list[str]:
    """The writable folders (real paths) that others read and run from: all but the state dir's."""
    state_real = os.path.realpath(state)
    return [r for r in (os.path.realpath(w) for w in writable) if not r.startswith(state_real)]


def _sweep_stale(parent: str) -> None:
    """Remove cgroups left by kernels that were killed (SIGKILL leaves no time to clean up)."""
    for path in _left_by_dead_kernels(parent, r"jax-kernel-(\d+)-\d+"):
        Cgroup("", path, 1).release(tries=3)


class Sandbox(LoggingConfigurable):
    """The isolation policy for the worker that runs cells (see the README's threat model).

    ``standard`` applies every protection the host offers and warns once about the rest;
    ``strict`` also cuts the network and refuses to start a worker if any protection is
    unavailable; ``off`` applies nothing (the worker still runs in its own process).
    """

    profile = Enum(
        ["strict", "standard", "off"],
        "standard",
        help="strict: every protection or no worker, no network; standard: what the host offers, "
        "network allowed; off: no sandbox.",
    ).tag(config=True)

    allow_network = Bool(
        None,
        allow_none=True,
        help="Whether cells may use the network. Default: True under standard, False under strict "
        "(a new network namespace: nothing reachable, not even loopback).",
    ).tag(config=True)

    egress = Enum(
        ["user-mode", "host"],
        "user-mode",
        help="How workers reach the network when it is allowed. user-mode: a network namespace of "
        "the kernel's own with slirp4netns (the internet, not the host's loopback: other kernels' "
        "ports, the Jupyter server, local services; those named in host_ports are forwarded). "
        "host: the host's network, loopback included. Where user-mode can't be had (no slirp4netns, "
        "no network namespaces) the worker shares the host's network and %sandbox says so.",
    ).tag(config=True)

    host_ports = List(
        Integer(),
        help="TCP ports of services on the host's loopback that cells may reach under user-mode "
        "egress (a local database, MLflow, a model server), at 127.0.0.1:PORT as outside. The "
        "kernel forwards each; no other host port is reachable.",
    ).tag(config=True)

    @validate("host_ports")
    def _valid_ports(self, proposal: Any) -> list[int]:
        bad = [p for p in proposal["value"] if not 0 < p < 65536]
        if bad:
            from traitlets import TraitError

            raise TraitError(f"Sandbox.host_ports: {bad[0]} is not a TCP port (1-65535)")
        return list(proposal["value"])

    active_outputs = Enum(
        ["allow", "sanitize"],
        None,
        allow_none=True,
        help="Outputs that run code in the browser (JavaScript, scripts and event handlers in HTML, "
        "script-bearing SVG): allow them, as the stock kernel does, or sanitize (drop JavaScript, clean "
        "HTML with nh3) before they reach the frontend, where JupyterLab runs the session's outputs with "
        "the user's login. Default: sanitize under strict, allow under standard.",
    ).tag(config=True)

    @property
    def active_outputs_mode(self) -> str:
        if self.active_outputs is not None:
            return self.active_outputs
        return "sanitize" if self.profile == "strict" else "allow"

    writable_paths = List(
        Unicode(),
        help="Extra paths the worker may write, beyond the kernel's working directory, its private "
        "temp dir and JAX's compilation cache dir.",
    ).tag(config=True)

    hidden_paths = List(
        Unicode(),
        help="Paths the worker can't read (~ and $VAR expanded, glob patterns such as '/tmp/tmux-*' "
        "matched when each worker starts: a path that appears later is hidden from the next worker). "
        "The connection file and Jupyter's runtime dir are always hidden, in addition to these.",
    ).tag(config=True)

    @default("hidden_paths")
    def _default_hidden(self) -> list[str]:
        return list(DEFAULT_HIDDEN)

    memory_limit = Union(
        [Integer(), Unicode()],
        default_value="75%",
        help="Memory the worker (and its children) may use: bytes, '4G', or a percentage of RAM "
        "('75%'); 0 for none. A cgroup where the host lets us make one, and RLIMIT_DATA.",
    ).tag(config=True)

    max_processes = Integer(
        4096,
        help="Tasks (processes and threads) the worker may have; 0 for no limit. XLA starts a "
        "thread pool per core: keep this well above the core count.",
    ).tag(config=True)

    max_open_files = Integer(4096, help="Open file descriptors per worker process (RLIMIT_NOFILE).").tag(
        config=True
    )

    max_file_size = Union(
        [Integer(), Unicode()],
        default_value=0,
        help="Largest file the worker may write (bytes or '10G'; RLIMIT_FSIZE); 0 for no limit.",
    ).tag(config=True)

    cpu_time_limit = Float(
        0.0,
        help="CPU seconds (all threads) one cell may use before the worker is killed; 0 for no limit.",
    ).tag(config=True)

    accelerators = Unicode(
        "all",
        help="Accelerators the worker may use: 'all', 'none' (CPU only), or device indices '0,1' "
        "(sets CUDA_VISIBLE_DEVICES and opens only those device files).",
    ).tag(config=True)

    protect_dotfiles = Bool(
        True,
        help="Keep every dot-entry at the top of a writable folder read-only (~/.bashrc, ~/.local, "
        ".git with its hooks): code planted there would run outside the sandbox.",
    ).tag(config=True)

    private_tmp = Bool(
        True,
        help="Give the worker a /tmp of its own (this kernel's, in its mount namespace): other "
        "notebooks' temp files, kernels' connection files and tmux/ssh-agent sockets in the host's "
        "/tmp are out of its sight; tempfile and literal /tmp paths work as usual.",
    ).tag(config=True)

    env_allow = List(
        Unicode(),
        help="The only environment variables (fnmatch patterns, case-insensitive) the worker gets "
        "from the kernel's environment; env_deny still removes any of them, and "
        "WorkerManager.worker_env is set whatever this says. Not applied under the off profile.",
    ).tag(config=True)

    @default("env_allow")
    def _default_env_allow(self) -> list[str]:
        return list(DEFAULT_ENV_ALLOW)

    env_deny = List(
        Unicode(),
        help="Environment variables (fnmatch patterns, case-insensitive) removed from the worker's "
        "environment, even when env_allow or WorkerManager.worker_env names them.",
    ).tag(config=True)

    @default("env_deny")
    def _default_env_deny(self) -> list[str]:
        return list(DEFAULT_ENV_DENY)

    @validate("memory_limit", "max_file_size")
    def _valid_size(self, proposal: Any) -> Any:
        try:
            parse_size(proposal["value"], f"Sandbox.{proposal['trait'].name}")
        except ValueError as e:
            from traitlets import TraitError

            raise TraitError(str(e)) from None
        return proposal["value"]

    @validate("accelerators")
    def _valid_accelerators(self, proposal: Any) -> str:
        value = proposal["value"].strip()
        if value not in ("all", "none") and not re.fullmatch(r"\d+(\s*,\s*\d+)*", value):
            from traitlets import TraitError

            raise TraitError(f"Sandbox.accelerators: {value!r} is not 'all', 'none' or indices like '0,1'")
        return value

    @validate("max_processes", "max_open_files")
    def _valid_count(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            from traitlets import TraitError

            raise TraitError(f"Sandbox.{proposal['trait'].name} must be >= 0")
        return proposal["value"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_dir: str | None = None
        self._mask_id: list[int] | None = None
        self._ids = itertools.count(1)
        self._warned = False
        self.last_report: dict[str, Any] | None = None
        self._runtime: frozenset[str] | None = None
        self._live: set[WorkerSandbox] = set()
        self._groups: list[dict[str, Cgroup]] = []  # sets' parent cgroups (prepare_group)
        self._config_made: list[str] = []  # config dirs made so that they are bound read-only
        self._egress: Egress | None = None
        self._resolv_written_for: Egress | None = None  # the egress whose resolv.conf is on disk
        self._egress_error: str | None = None
        atexit.register(self._release_all)

    def _release_all(self) -> None:
        for ws in list(self._live):
            ws.release(wait=True)
        for group in list(self._groups):
            self.release_group(group)
        if self._egress is not None:
            self._egress.close()
            self._egress = None

    def protect_kernel(self) -> None:
        """Make the kernel process non-dumpable: a same-uid process then can't read its memory,
        environment or open files through /proc, nor ptrace it, without CAP_SYS_PTRACE (which
        the worker drops).  Defence in depth where Landlock's scoping is missing."""
        if not self.enabled or not sys.platform.startswith("linux"):
            return
        try:
            import ctypes

            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
        except (OSError, AttributeError) as e:
            self.log.debug("Could not make the kernel non-dumpable: %s", e)

    # policy ------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise TraitError (one line, naming the setting) if the policy can't be resolved."""
        from traitlets import TraitError

        for name in ("memory_limit", "max_file_size"):
            try:
                parse_size(getattr(self, name), f"Sandbox.{name}")
            except ValueError as e:
                raise TraitError(str(e)) from None
        if self.enabled:
            try:
                self._state_base()
            except ValueError as e:
                raise TraitError(f"Sandbox: {e}") from None

    @property
    def enabled(self) -> bool:
        return self.profile != "off"

    @property
    def network_allowed(self) -> bool:
        if self.allow_network is not None:
            return bool(self.allow_network)
        return self.profile != "strict"

    def state_dir(self) -> str:
        """A private directory for this kernel's workers: their temp dir and IPython history."""
        if self._state_dir is None:
            self._state_dir = tempfile.mkdtemp(
                prefix=f"jax-kernel-sandbox-{os.getpid()}-", dir=self._state_base()
            )
            _sweep_stale_state(os.path.dirname(self._state_dir))
            os.mkdir(os.path.join(self._state_dir, "tmp"), 0o700)
            os.mkdir(os.path.join(self._state_dir, "history"), 0o700)
            os.mkdir(os.path.join(self._state_dir, "root-tmp"), 0o700)  # the workers' /tmp
            # What a hidden file looks like inside the sandbox: empty and mode 000.  The worker
            # binds it only if it is still this very file (device, inode).
            fd = os.open(
                os.path.join(self._state_dir, "mask"), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0
            )
            info = os.fstat(fd)
            os.close(fd)
            self._mask_id = [info.st_dev, info.st_ino]
            atexit.register(shutil.rmtree, self._state_dir, True)
        return self._state_dir

    def _state_base(self) -> str:
        """Where the state dir goes: the temp dir, unless a worker could write there (notebooks in
        /tmp, TMPDIR set to the notebook folder), since a worker that can swap the mask file or
        its history for its own has the next worker bind them.  Then the first of /var/tmp
        and ~/.cache that no worker writes (not /dev/shm: the worker's /dev is its own)."""
        roots = [os.path.realpath(p) for p in (os.getcwd(), *map(os.path.expanduser, self.writable_paths))]
        candidates = [tempfile.gettempdir(), "/var/tmp", os.path.expanduser("~/.cache")]
        for base in candidates:
            real = os.path.realpath(base)
            if (
                os.path.isdir(real)
                and os.access(real, os.W_OK)
                and not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)
            ):
                if base != candidates[0]:
                    self.log.info(
                        "Sandbox state in %s: the temp dir %s is writable by workers", real, candidates[0]
                    )
                return real
        raise ValueError(
            "no folder for the sandbox's state outside what workers may write (tried "
            f"{', '.join(candidates)}): start the kernel with TMPDIR outside the notebook folder"
        )

    def _hidden(self) -> list[str]:
        """The hidden paths for a worker about to start: patterns expanded to what exists now.

        The worker masks each path with a mount in its own namespace, which needs a concrete
        path; a socket created later (a tmux server started after the worker) is not masked
        until the next worker, which is why strict also forbids new unix sockets outright.
        """
        hidden = []
        for pattern in self.hidden_paths:
            path = os.path.expandvars(os.path.expanduser(pattern))
            if "$" in path:
                continue  # a variable this host does not set: nothing to hide
            hidden += sorted(glob.glob(path)) if _GLOB.search(path) else [path]
        try:
            from jupyter_core.paths import jupyter_runtime_dir

            hidden.append(jupyter_runtime_dir())
        except Exception:  # noqa: BLE001 - a missing runtime dir is nothing to hide
            pass
        try:
            from ipykernel.kernelapp import IPKernelApp

            if IPKernelApp.initialized():
                conn = getattr(IPKernelApp.instance(), "abs_connection_file", "")
                if conn:
                    hidden.append(conn)
        except Exception:  # noqa: BLE001
            pass
        # Never hide what the worker needs to run at all.
        state = self.state_dir()
        return [p for p in hidden if not os.path.realpath(state).startswith(os.path.realpath(p) + "/")]

    def _config_placeholders(self, writable: list[str], state: str) -> list[str]:
        """Make the config and code locations that programs outside the sandbox run from, where
        they don't exist yet and lie in a writable folder (notebooks in ``~``): empty folders,
        which those programs would make themselves, so that they exist and are bound read-only.

        Only a path that exists can be bound: a cell once made ``~/.jupyter/jax_kernel_config.py``
        (Python the next kernel runs; it set ``profile = 'off'`` for every later kernel).  Covered:
        Jupyter's config dir (server and kernel config), its data dir (kernelspecs: a cell's
        ``kernels/python3/kernel.json`` would be the user's next kernel), the user site-packages
        (a ``.pth`` runs in every Python) and, with ``protect_dotfiles``, ``XDG_CONFIG_HOME``
        (git's and pip's config).  IPython's dir is made by the kernel itself at start.  Files
        (``~/.bashrc``, ``.envrc``) and ``.git`` can't be made as harmless placeholders: an empty
        ``.bash_profile`` stops bash from reading ``.profile``."""
        import site

        from jupyter_core.paths import jupyter_config_dir, jupyter_data_dir

        wanted = [jupyter_config_dir(), jupyter_data_dir(), site.getusersitepackages()]
        if self.protect_dotfiles:
            wanted.append(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"))
        roots = _writable_roots(writable, state)
        made = []
        for path in wanted:
            real = os.path.realpath(path)
            if os.path.lexists(path) or not any(real.startswith(r.rstrip("/") + "/") for r in roots):
                continue
            try:
                os.makedirs(real, mode=0o700, exist_ok=True)
            except OSError as e:
                self.log.warning("Could not make %s (to keep it read-only for workers): %s", real, e)
                continue
            made.append(real)
        if made:
            self.log.info("Made %s so that workers can't plant config there (read-only to them)", made)
        self._config_made += made
        return self._config_made

    def _protected(self, writable: list[str], state: str, exempt: Sequence[str] = ()) -> list[str]:
        """Paths inside a writable folder that must stay read-only, or the worker could plant code
        that runs outside the sandbox later: the interpreter and its site-packages (a ``.pth``
        file), this package (an editable install in the notebook folder), Jupyter's and IPython's
        config and data (``jax_kernel_config.py``, ``kernel.json``), and with
        ``protect_dotfiles`` every dot-entry at the top of a writable folder (``~/.bashrc``,
        ``.git`` hooks, ``~/.local``)."""
        candidates = set(self._runtime_paths())
        roots = _writable_roots(writable, state)
        if self.protect_dotfiles:
            candidates.add(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"))
            exempt_real = {os.path.realpath(e) for e in exempt}
            for root in (r for r in roots if r not in exempt_real):
                try:
                    candidates.update(os.path.join(root, n) for n in os.listdir(root) if n.startswith("."))
                except OSError:
                    pass
        found = set()
        for path in candidates:
            real = os.path.realpath(path)
            # Only what lies inside a writable folder needs it (the rest is read-only anyway).
            if os.path.exists(real) and any(real == r or real.startswith(r + "/") for r in roots):
                found.add(real)
        return sorted(found)

    def _runtime_paths(self) -> frozenset[str]:
        """Where the worker's code and config come from: the interpreter and its site-packages,
        this package, Jupyter's and IPython's config and data dirs.  They do not change while the
        kernel runs, so they are worked out once."""
        if self._runtime is None:
            import site
            import sysconfig

            from jupyter_core.paths import jupyter_config_path, jupyter_data_dir, jupyter_path

            paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, _PACKAGE_PARENT}
            paths.update(sysconfig.get_paths().values())
            paths.update(getattr(site, "getsitepackages", list)())
            paths.add(site.getusersitepackages())
            paths.update(jupyter_config_path() + jupyter_path() + [jupyter_data_dir()])
            paths.add(os.environ.get("IPYTHONDIR") or os.path.expanduser("~/.ipython"))
            self._runtime = frozenset(paths)
        return self._runtime

    def _kept_in_tmp(self, paths: Sequence[str]) -> list[str]:
        """What of the host's /tmp a worker with a private /tmp still needs, at the same paths:
        ``paths`` (its writable folders and state dir) and whatever it runs or reads its config
        from (an interpreter, a checkout or a home under /tmp); the rest of /tmp is not there."""
        tmp = os.path.realpath("/tmp")
        needed = {
            *self._runtime_paths(),
            *(p for p in sys.path if os.path.isabs(p)),
            os.path.expanduser("~"),
            *paths,
        }
        kept = {os.path.realpath(p) for p in needed if p}
        return sorted(real for real in kept if real.startswith(tmp + "/") and os.path.exists(real))

    def refuse_device(self, platform: str, index: int | None = None) -> str | None:
        """Why a request for an accelerator (``jax_load_request``, a magic) is refused, or None.

        The policy is the ceiling: no request can reach a device it does not list.
        """
        if platform == "cpu" or not self.enabled or self.accelerators == "all":
            return None
        if self.accelerators == "none":
            return f"the sandbox allows no accelerators (Sandbox.accelerators = 'none'), so not {platform}"
        allowed = [int(i) for i in self.accelerators.split(",")]
        if index is not None and index not in allowed:
            return (
                f"{platform} device {index} is not among the allowed devices {allowed} (Sandbox.accelerators)"
            )
        return None

    def _matplotlib_cache(self) -> str | None:
        """This kernel's Matplotlib config dir (MPLCONFIGDIR), seeded with the user's font cache.

        Not the shared one: a ``matplotlibrc`` there is read by every kernel's worker and by the
        user's own Python, and names programs and backends to run, so one notebook's cell could
        act in another (or outside).  The font list (JSON data, slow to rebuild) is copied in from
        the user's own config dir, plain files only, and nothing is ever copied back."""
        private = os.path.join(self.state_dir(), "matplotlib")
        if os.path.isdir(private):
            return private
        try:
            os.mkdir(private, 0o700)
        except OSError:
            return None
        shared = os.environ.get("MPLCONFIGDIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "matplotlib"
        )
        for source in glob.glob(os.path.join(glob.escape(shared), "fontlist-*.json")):
            try:
                fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > 16 << 20:
                    continue
                data = f.read()
            with open(os.path.join(private, os.path.basename(source)), "wb") as out:
                out.write(data)
        return private

    def _devices(self) -> list[str]:
        if self.accelerators == "none":
            return []
        control = glob.glob("/dev/nvidiactl") + glob.glob("/dev/nvidia-uvm*") + glob.glob("/dev/nvidia-caps")
        control += glob.glob("/dev/nvidia-modeset") + glob.glob("/dev/dri") + glob.glob("/dev/shm")
        if self.accelerators == "all":
            return (
                control + glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/accel*") + glob.glob("/dev/vfio")
            )
        return control + [f"/dev/nvidia{i.strip()}" for i in self.accelerators.split(",")]

    def worker_environment(self, env: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
        """What the kernel's ``env`` passes of the allowlist, plus ``extra`` (the deployer's own
        variables), minus the deny list, plus the worker's private temp dir.

        Allow, not just deny: a secret is any variable a service reads (``DATABASE_URL``), and no
        list of names finds them all.  Under the off profile ``env`` and ``extra`` pass whole.
        """
        if not self.enabled:
            return {**env, **(extra or {})}
        allow = [p.upper() for p in self.env_allow]
        deny = [p.upper() for p in self.env_deny]

        def matches(name: str, patterns: list[str]) -> bool:
            return any(fnmatch.fnmatchcase(name.upper(), p) for p in patterns)

        passed = {k: v for k, v in env.items() if matches(k, allow)}
        passed.update(extra or {})
        clean = {k: v for k, v in passed.items() if not matches(k, deny)}
        tmp = os.path.join(self.state_dir(), "tmp")
        clean.update(TMPDIR=tmp, TEMP=tmp, TMP=tmp)
        # Tools' own caches go to the worker's temp dir: jedi and parso keep pickles there that
        # the user's editor would load outside any sandbox, and ~/.cache is read-only anyway
        # (jedi's completions fail when it cannot make its dir).  Matplotlib gets a config dir of
        # this kernel's, seeded with the user's font cache (see _matplotlib_cache).
        clean["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
        mpl = self._matplotlib_cache()
        if mpl:
            clean["MPLCONFIGDIR"] = mpl
        if self.accelerators == "none":
            clean["CUDA_VISIBLE_DEVICES"] = ""
            clean.setdefault("JAX_PLATFORMS", "cpu")
        elif self.accelerators != "all":
            clean["CUDA_VISIBLE_DEVICES"] = ",".join(i.strip() for i in self.accelerators.split(","))
        return clean

    def _cgroup_limits(self) -> dict[str, dict[str, int | str]]:
        """The memory and task limits one worker gets, and a set's local members share."""
        memory = parse_size(self.memory_limit, "Sandbox.memory_limit")
        wanted: dict[str, dict[str, int | str]] = {}
        if memory:
            wanted["memory"] = {"memory.limit_in_bytes": memory}
        if self.max_processes:
            wanted["pids"] = {"pids.max": self.max_processes}
        return wanted

    def prepare_group(self) -> dict[str, Cgroup]:
        """One parent cgroup per controller (memory, pids) for a set's members on this host, with the
        limits one worker gets: a set of N processes shares them instead of getting N times each
        (8 members x 4096 tasks was this host's pid_max).  Each member's own cgroup is made inside
        it (``prepare_worker(group=...)``); :meth:`release_group` when the set has ended."""
        group: dict[str, Cgroup] = {}
        if not self.enabled:
            return group
        name = f"jax-kernel-{os.getpid()}-{next(self._ids)}"
        for controller, settings in self._cgroup_limits().items():
            if os.geteuid() != 0 and not os.access("/sys/fs/cgroup", os.W_OK):
                break
            try:
                cg = _make_cgroup(controller, name, settings)
            except OSError as e:
                self.log.debug("No %s cgroup for the set: %s", controller, e)
                continue
            if cg.version == 2:  # its children may use the controller
                try:
                    with open(os.path.join(cg.path, "cgroup.subtree_control"), "w") as f:
                        f.write(f"+{controller}")
                except OSError as e:
                    self.log.debug("The set's %s cgroup can't have children: %s", controller, e)
                    cg.release()
                    continue
            group[controller] = cg
        if group:
            self._groups.append(group)
        return group

    def release_group(self, group: dict[str, Cgroup]) -> None:
        """Remove a set's parent cgroups (what is left in them is killed first)."""
        for cg in group.values():
            cg.release()
        if group in self._groups:
            self._groups.remove(group)

    def prepare_worker(
        self,
        cwd: str | None = None,
        extra_writable: Sequence[str] = (),
        shared_cache: tuple[str, str] | None = None,
        group: dict[str, Cgroup] | None = None,
    ) -> WorkerSandbox:
        """Resolve the policy for one new worker (and make its cgroups, where we can).

        ``extra_writable``: folders the kernel itself gives workers, made if missing; unlike
        ``writable_paths`` they are not the deployer's to choose.  ``shared_cache``: (root, folder)
        of a cache that outlives the kernel (JAX's compilation cache): the worker may write its own
        folder and, in its mount namespace, sees nothing else of the root, since a cache entry is
        code and data the next reader trusts (``_shared_cache`` in the worker's sandbox).
        ``group``: a set's parent cgroups (:meth:`prepare_group`), to make this worker's inside.
        """
        if not self.enabled:
            return WorkerSandbox({"profile": "off"})
        memory = parse_size(self.memory_limit, "Sandbox.memory_limit")
        fsize = parse_size(self.max_file_size, "Sandbox.max_file_size")
        state = self.state_dir()
        # The state dir itself is not writable: the mask file lives there, and a worker that could
        # swap it for a symlink would have the next worker bind a secret over a hidden path.
        writable = [
            os.path.realpath(cwd or os.getcwd()),
            os.path.join(state, "tmp"),
            os.path.join(state, "history"),
        ]
        # Caches the kernel hands out hold data that no tool runs, and JAX keeps a .lockfile in
        # its cache: no dot-file protection inside them.
        if shared_cache is not None:
            os.makedirs(shared_cache[1], exist_ok=True)
        caches = [
            os.environ.get("JAX_COMPILATION_CACHE_DIR", ""),
            *extra_writable,
            *([shared_cache[1]] if shared_cache is not None else []),
            self._matplotlib_cache() or "",
        ]
        caches = [c for c in caches if c]
        for cache in caches:
            os.makedirs(cache, exist_ok=True)
        writable += caches
        writable += [os.path.expanduser(p) for p in self.writable_paths]
        kernel_side = {
            "environment": "allowlist (Sandbox.env_allow, minus Sandbox.env_deny): kernel secrets, "
            "tokens, service URLs and connection paths stay out"
        }
        if self.active_outputs_mode == "sanitize":
            kernel_side["active_outputs"] = (
                "sanitized by the kernel: JavaScript dropped, HTML cleaned (nh3), script-bearing SVG and "
                "Markdown dropped (Sandbox.active_outputs)"
            )
        if self.cpu_time_limit:
            kernel_side["cpu_time_limit"] = f"{self.cpu_time_limit:g} CPU s per cell (kernel-side watchdog)"
        made = self._config_placeholders(writable, state)  # before _protected: it binds what exists
        kernel_side["config_locations"] = (
            "existing dot-entries of writable folders and the config/code dirs inside them are read-only"
            + (f"; made where missing, to be read-only too: {made}" if made else "")
            + "; not yet: a new top-level dot-file or .git in a writable folder is not refused"
        )
        policy: dict[str, Any] = {
            "profile": self.profile,
            "allow_network": self.network_allowed,
            "fs": {
                "writable": writable,
                "hidden": self._hidden(),
                "devices": self._devices(),
                "mask_file": os.path.join(state, "mask"),
                "mask_id": self._mask_id,
                # The worker's own temp dir and history: nothing outside reads them but the kernel's
                # clean-up, which follows no symlink; the only places for sockets, FIFOs, symlinks.
                "private_writable": [os.path.join(state, "tmp"), os.path.join(state, "history")],
                "readonly": self._protected(writable, state, exempt=caches),
            },
            "limits": {
                "memory_limit": memory,
                "max_processes": self.max_processes,
                "max_open_files": self.max_open_files,
                "max_file_size": fsize,
            },
            "history_file": os.path.join(state, "history", "history.sqlite"),
            # strict: no new unix sockets at all (socketpair still works), so no path socket on
            # the host, hidden or not, can be reached.
            "deny_unix_sockets": self.profile == "strict",
            "kernel_side": kernel_side,
        }
        if shared_cache is not None:
            root, folder = (os.path.realpath(p) for p in shared_cache)
            policy["fs"]["shared_cache"] = {"root": root, "folder": folder}
        self._network_policy(policy, state)
        if self.private_tmp:
            policy["fs"]["private_tmp"] = {
                "dir": os.path.join(state, "root-tmp"),
                "keep": self._kept_in_tmp([*writable, state]),
            }
        ws = WorkerSandbox(policy)
        name = f"jax-kernel-{os.getpid()}-{next(self._ids)}"
        wanted = self._cgroup_limits()
        if "devices" in _own_cgroups() and any(
            ACCELERATOR_FILE.fullmatch(p) for p in policy["fs"]["devices"]
        ):
            wanted["devices"] = {}  # v1 only; narrowed to the lease once there is one (restrict_devices)
        parent_cpuset = _parent_cpuset()
        if parent_cpuset is not None:  # every core of ours for now; a lease narrows it (restrict_cpus)
            wanted["cpuset"] = {"cpuset.cpus": parent_cpuset[0], "cpuset.mems": parent_cpuset[1]}
        cgroups: dict[str, str] = {}
        for controller, settings in wanted.items():
            if os.geteuid() != 0 and not os.access("/sys/fs/cgroup", os.W_OK):
                break
            try:
                cg = _make_cgroup(controller, name, settings, parent=(group or {}).get(controller))
            except OSError as e:
                self.log.debug("No %s cgroup for the worker: %s", controller, e)
                continue
            ws.cgroups[controller] = cg
            cgroups[controller] = os.path.join(cg.path, "cgroup.procs")
        policy["cgroups"] = cgroups
        if ws.cgroups:
            self._live.add(ws)
        return ws

    def _network_policy(self, policy: dict[str, Any], state: str) -> None:
        """Where the worker's network comes from: user-mode egress, or the host's (and why)."""
        if not self.network_allowed:
            return  # the worker makes an empty namespace of its own (a set: jax_kernel.host.netns)
        if self.egress == "host":
            policy["egress"] = {
                "unavailable": "the host's network, loopback included (Sandbox.egress = 'host')"
            }
            return
        egress = self.user_mode_egress()
        if egress is None:
            policy["egress"] = {
                "unavailable": f"the host's network, loopback included: no user-mode egress ({self._egress_error})"
            }
            return
        policy["join_netns"] = egress.path
        policy["egress"] = {"describe": egress.describe()}
        if egress.resolv_conf is not None:
            path = os.path.join(state, "resolv.conf")
            if self._resolv_written_for is not egress:  # once per egress, not per worker
                with open(path, "w") as f:
                    f.write(egress.resolv_conf)
                self._resolv_written_for = egress
            policy["fs"]["resolv_conf"] = path

    def user_mode_egress(self) -> Egress | None:
        """This kernel's egress namespace, made on first use (None if it can't be: see the log)."""
        if self._egress is not None and not self._egress.alive():
            self.log.warning("The workers' user-mode egress stopped; making a new one")
            self._egress.close()
            self._egress = None
        if self._egress is None and self._egress_error is None:
            try:
                self._egress = Egress(self.host_ports)
            except (NetworkError, OSError) as e:
                self._egress_error = str(e)
                self.log.warning("No user-mode egress for the workers: %s", e)
            else:
                self.log.debug("User-mode egress up in %.0f ms", self._egress.setup_seconds * 1000)
        return self._egress

    def worker_exited(self, ws: WorkerSandbox | None) -> None:
        """The worker is gone: kill what it left behind and remove its cgroups."""
        if ws is not None:
            self._live.discard(ws)
            ws.release()

    def cpu_seconds(self, pid: int) -> float | None:
        """CPU time (user + system, all threads) the process has used, None if it is gone."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def explain_exit(self, ws: WorkerSandbox | None, returncode: int | None) -> str | None:
        """Name the limit that ended a worker, if one did."""
        if ws is None or not self.enabled:
            return None
        limits = ws.policy.get("limits", {})
        if returncode == EXIT_STRICT and self.profile == "strict":
            return "could not apply the strict sandbox profile on this host"
        if returncode == -signal.SIGKILL:
            cg = ws.cgroups.get("memory")
            if cg is not None and cg.oom_kills():
                return (
                    f"was killed by the sandbox's memory limit ({limits.get('memory_limit', 0):,} bytes, "
                    "Sandbox.memory_limit)"
                )
        if returncode == -signal.SIGXFSZ:
            return f"exceeded the sandbox's file size limit ({limits.get('max_file_size')} bytes, Sandbox.max_file_size)"
        if returncode == -signal.SIGXCPU:
            return "exceeded the sandbox's CPU time limit (Sandbox.cpu_time_limit)"
        return None

    def worker_ready(self, report: Any) -> None:
        """Keep the worker's report of what it applied; warn (once) about what it could not."""
        if not isinstance(report, dict):
            return
        self.last_report = report
        missing = report.get("unavailable")
        if missing and isinstance(missing, dict) and not self._warned:
            self._warned = True
            self.log.warning(
                "Sandbox (%s profile): unavailable on this host: %s",
                self.profile,
                "; ".join(f"{k}: {v}" for k, v in missing.items()),
            )

    def info(self) -> dict[str, Any]:
        """The policy and what the last worker reported, for kernel_info_reply."""
        info: dict[str, Any] = {
            "profile": self.profile,
            "allow_network": self.network_allowed,
            "egress": self.egress if self.network_allowed else None,
            "active_outputs": self.active_outputs_mode,
            "host_ports": list(self.host_ports),
            "memory_limit": parse_size(self.memory_limit, "memory_limit") if self.enabled else 0,
            "max_processes": self.max_processes,
            "max_open_files": self.max_open_files,
            "max_file_size": parse_size(self.max_file_size, "max_file_size"),
            "cpu_time_limit": self.cpu_time_limit,
            "accelerators": self.accelerators,
        }
        if self.last_report is not None:
            info["active"] = self.last_report.get("active", {})
            info["unavailable"] = self.last_report.get("unavailable", {})
            for key in ("network", "masking"):
                if isinstance(self.last_report.get(key), str):
                    info[key] = self.last_report[key]
        return info
