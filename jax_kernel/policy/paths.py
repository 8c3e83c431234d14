"""Kernel process: the file-system part of a worker's policy.

Which folders a worker may write, which paths inside them stay read-only because programs
outside the sandbox run or read config from them (the interpreter, this package, Jupyter's
config, dot-files), the config folders made as read-only placeholders where they are missing,
the paths hidden from it and what of the host's ``/tmp`` its private one keeps.  Worked out
here, in the kernel; the worker applies them to itself (:mod:`jax_kernel.worker.sandbox`)
before any user code runs.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence

from ..protocol.config import FsPolicy
from .statedir import matplotlib_cache

#: The folder this package is installed in (site-packages, or an editable install's checkout).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Paths the worker can't read unless the deployer says otherwise.  ``~`` and ``$VAR`` are
#: expanded and glob patterns matched each time a worker is prepared (see :func:`hidden_paths`).
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


def _writable_roots(writable: Sequence[str], state: str) -> list[str]:
    """The writable folders (real paths) that others read and run from: all but the state dir's."""
    state_real = os.path.realpath(state)
    return [r for r in (os.path.realpath(w) for w in writable) if not r.startswith(state_real)]


def writable_folders(
    cwd: str | None,
    state: str,
    caches: Iterable[str],
    writable_paths: Sequence[str],
) -> tuple[list[str], list[str]]:
    """(writable, caches): the folders a worker may write, and those of them that are caches the
    kernel hands out (made if missing; empty names dropped).  ``cwd``: the worker's folder (the
    kernel's if None); ``writable_paths``: ``Sandbox.writable_paths``."""
    # The state dir itself is not writable: the mask file lives there, and a worker that could
    # swap it for a symlink would have the next worker bind a secret over a hidden path.
    writable = [
        os.path.realpath(cwd or os.getcwd()),
        os.path.join(state, "tmp"),
        os.path.join(state, "history"),
        os.path.join(state, "snapshots"),  # its saved variables, for the next worker of this kernel
    ]
    made = [c for c in caches if c]
    for cache in made:
        os.makedirs(cache, exist_ok=True)
    writable += made
    writable += [os.path.expanduser(p) for p in writable_paths]
    return writable, made


def hidden_paths(patterns: Sequence[str], state: str) -> list[str]:
    """The hidden paths for a worker about to start: ``patterns`` (``Sandbox.hidden_paths``)
    expanded to what exists now, Jupyter's runtime dir and the connection file.

    The worker masks each path with a mount in its own namespace, which needs a concrete
    path; a socket created later (a tmux server started after the worker) is not masked
    until the next worker, which is why strict also forbids new unix sockets outright.
    """
    hidden = []
    for pattern in patterns:
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
    return [p for p in hidden if not os.path.realpath(state).startswith(os.path.realpath(p) + "/")]


def config_placeholders(
    writable: Sequence[str], state: str, protect_dotfiles: bool, log: logging.Logger
) -> list[str]:
    """Make the config and code locations that programs outside the sandbox run from, where
    they don't exist yet and lie in a writable folder (notebooks in ``~``): empty folders,
    which those programs would make themselves, so that they exist and are bound read-only.
    What it made this time (real paths).

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
    if protect_dotfiles:
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
            log.warning("Could not make %s (to keep it read-only for workers): %s", real, e)
            continue
        made.append(real)
    if made:
        log.info("Made %s so that workers can't plant config there (read-only to them)", made)
    return made


def protected_paths(
    writable: Sequence[str],
    state: str,
    runtime: Iterable[str],
    protect_dotfiles: bool,
    exempt: Sequence[str] = (),
) -> list[str]:
    """Paths inside a writable folder that must stay read-only, or the worker could plant code
    that runs outside the sandbox later: the ``runtime`` paths (:func:`runtime_paths`: the
    interpreter and its site-packages, a ``.pth`` file; this package, an editable install in the
    notebook folder; Jupyter's and IPython's config and data, ``jax_kernel_config.py``,
    ``kernel.json``), and with ``protect_dotfiles`` every dot-entry at the top of a writable
    folder but the ``exempt`` caches (``~/.bashrc``, ``.git`` hooks, ``~/.local``)."""
    candidates = set(runtime)
    roots = _writable_roots(writable, state)
    if protect_dotfiles:
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


def runtime_paths() -> frozenset[str]:
    """Where the worker's code and config come from: the interpreter and its site-packages,
    this package, Jupyter's and IPython's config and data dirs.  They do not change while the
    kernel runs: the caller works them out once."""
    import site
    import sysconfig

    from jupyter_core.paths import jupyter_config_path, jupyter_data_dir, jupyter_path

    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, _PACKAGE_PARENT}
    paths.update(sysconfig.get_paths().values())
    paths.update(getattr(site, "getsitepackages", list)())
    paths.add(site.getusersitepackages())
    paths.update(jupyter_config_path() + jupyter_path() + [jupyter_data_dir()])
    paths.add(os.environ.get("IPYTHONDIR") or os.path.expanduser("~/.ipython"))
    return frozenset(paths)


def kept_in_tmp(paths: Sequence[str], runtime: Iterable[str]) -> list[str]:
    """What of the host's /tmp a worker with a private /tmp still needs (:func:`kept_under`)."""
    return kept_under("/tmp", paths, runtime)


def kept_under(root: str, paths: Sequence[str], runtime: Iterable[str]) -> list[str]:
    """What of the host's ``root`` (``/tmp``, ``~/.cache``) a worker still needs at the same paths
    once ``root`` is covered by a folder of its own: ``paths`` (its writable folders and state dir)
    and whatever it runs or reads its config from (``runtime``, :data:`sys.path`: an interpreter,
    a checkout or a home there); the rest of ``root`` is not there."""
    top = os.path.realpath(root)
    needed = {
        *runtime,
        *(p for p in sys.path if os.path.isabs(p)),
        os.path.expanduser("~"),
        *paths,
    }
    kept = {os.path.realpath(p) for p in needed if p}
    return sorted(real for real in kept if real.startswith(top + "/") and os.path.exists(real))


def fs_policy(
    writable: list[str],
    state: str,
    *,
    caches: Sequence[str],
    hidden: Sequence[str],
    devices: list[str],
    mask_id: list[int] | None,
    runtime: Iterable[str],
    protect_dotfiles: bool,
    shared_cache: tuple[str, str] | None,
) -> FsPolicy:
    """The ``fs`` part of a worker's policy: ``writable`` folders (and the ``caches`` among them),
    the ``hidden`` patterns resolved, the ``devices`` it may open, the mask file in ``state`` with
    its (device, inode), what stays read-only and the ``shared_cache`` (root, folder), if any."""
    fs: FsPolicy = {
        "writable": writable,
        "hidden": hidden_paths(hidden, state),
        "devices": devices,
        "mask_file": os.path.join(state, "mask"),
        "mask_id": mask_id,
        # The worker's own temp dir and history: nothing outside reads them but the kernel's
        # clean-up, which follows no symlink; the only places for sockets, FIFOs, symlinks.
        "private_writable": [os.path.join(state, "tmp"), os.path.join(state, "history")],
        "readonly": protected_paths(writable, state, runtime, protect_dotfiles, exempt=caches),
    }
    if shared_cache is not None:
        root, folder = (os.path.realpath(p) for p in shared_cache)
        fs["shared_cache"] = {"root": root, "folder": folder}
    return fs


def worker_fs(
    cwd: str | None,
    state: str,
    extra_writable: Sequence[str],
    shared_cache: tuple[str, str] | None,
    writable_paths: Sequence[str],
    *,
    hidden: Sequence[str],
    devices: list[str],
    mask_id: list[int] | None,
    runtime: Iterable[str],
    protect_dotfiles: bool,
    made: list[str],
    log: logging.Logger,
) -> tuple[FsPolicy, list[str]]:
    """One worker's ``fs`` policy and its writable folders, from ``Sandbox``'s settings.

    The config placeholders made for it are added to ``made`` (the kernel's list of them, which
    its policy's notes name), before the read-only paths are listed: only what exists can be bound.
    """
    runtime = list(runtime)
    # Caches the kernel hands out hold data that no tool runs, and JAX keeps a .lockfile in
    # its cache: no dot-file protection inside them.
    caches = [
        os.environ.get("JAX_COMPILATION_CACHE_DIR", ""),
        *extra_writable,
        *([shared_cache[1]] if shared_cache is not None else []),
        matplotlib_cache(state) or "",
    ]
    writable, caches = writable_folders(cwd, state, caches, writable_paths)
    made += config_placeholders(writable, state, protect_dotfiles, log)
    fs = fs_policy(
        writable,
        state,
        caches=caches,
        hidden=hidden,
        devices=devices,
        mask_id=mask_id,
        runtime=runtime,
        protect_dotfiles=protect_dotfiles,
        shared_cache=shared_cache,
    )
    return fs, writable
