"""Kernel process: the folders a notebook keeps across kernels, one per trust domain.

A trust domain is what may share files anyway: notebooks in the same folder (they can write each
other's files) under the same sandbox profile (an ``off`` kernel never shares with a sandboxed
one).  What outlives a kernel and is read back by the next one is code or data that reader
trusts: JAX's compilation cache (an entry is an executable), the packages ``%pip`` installs (the
next worker imports them), the worker's cache (pip's wheels, jedi's pickles, datasets and models
a library caches).  Shared by every notebook, one of them could plant a ``numpy`` or a poisoned
entry that every other notebook later loads; so each lives in one folder per domain, and a worker
may write only its own.  :func:`trust_domain` names that folder; packages also key on the Python
environment, since a package built for one must not land in another.

The kernel only makes these folders: it never imports from them or puts them on its own
``sys.path`` (or the server's).  :func:`check_outside_runtime` refuses a packages folder that
would lie where an unsandboxed Python imports from.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass

from ..protocol.config import FsUserDirs


def trust_domain(profile: str, environment: bool = False) -> str:
    """The folder name of this kernel's trust domain: its sandbox ``profile`` and the real path of
    its working directory (the notebook folder); with ``environment``, also the Python environment
    (``sys.prefix`` and major.minor), for what is built for one interpreter."""
    parts = [profile, os.path.realpath(os.getcwd())]
    if environment:
        parts += [os.path.realpath(sys.prefix), f"{sys.version_info[0]}.{sys.version_info[1]}"]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    return f"{profile}-{digest}"


def xdg_dir(variable: str, fallback: str, *parts: str) -> str:
    """``$variable/parts`` (an XDG base directory), or ``~/fallback/parts`` when it is unset."""
    base = os.environ.get(variable) or os.path.join(os.path.expanduser("~"), fallback)
    return os.path.join(base, *parts)


@dataclass(frozen=True)
class UserDirs:
    """One worker's folders of its domain: ``packages`` and ``cache`` as (root, folder), or None
    when turned off; ``home_cache``: the real ``~/.cache`` the cache folder is bound over (None:
    no bind, XDG_CACHE_HOME alone points there)."""

    packages: tuple[str, str] | None
    cache: tuple[str, str] | None
    home_cache: str | None

    @property
    def folders(self) -> list[str]:
        """The folders a worker may write (made by the sandbox's policy if missing)."""
        return [pair[1] for pair in (self.packages, self.cache) if pair is not None]

    def policy(self, keep: Iterable[str]) -> FsUserDirs:
        """Their part of the worker's file-system policy; ``keep``: what of the real ``~/.cache``
        the worker still needs at its own path (:func:`jax_kernel.policy.paths.kept_under`)."""
        fs: FsUserDirs = {}
        if self.packages is not None:
            fs["packages"] = {"root": self.packages[0], "folder": self.packages[1]}
        if self.cache is not None:
            fs["cache"] = {"root": self.cache[0], "folder": self.cache[1]}
            if self.home_cache is not None:
                inside = os.path.realpath(self.cache[1])
                fs["home_cache"] = self.home_cache
                fs["keep"] = [p for p in keep if p != inside and not p.startswith(inside + "/")]
        return fs


def user_dirs(
    profile: str,
    packages_dir: str | None,
    cache_dir: str | None,
    writable_paths: Iterable[str] = (),
) -> UserDirs:
    """This kernel's :class:`UserDirs` under the bases ``packages_dir`` and ``cache_dir`` (None:
    that one is off), real paths.  The folders themselves are made with the worker's policy.

    ``~/.cache`` is made if missing (empty, 0700: a mount point for the bind), and it is not
    covered when the deployer made it writable itself (``writable_paths`` names it)."""
    packages = cache = None
    if packages_dir:
        root = os.path.realpath(os.path.expanduser(packages_dir))
        packages = (root, os.path.join(root, trust_domain(profile, environment=True)))
    if cache_dir:
        root = os.path.realpath(os.path.expanduser(cache_dir))
        cache = (root, os.path.join(root, trust_domain(profile)))
    home_cache = None
    if cache is not None:
        wanted = os.path.join(os.path.expanduser("~"), ".cache")
        try:
            os.makedirs(wanted, mode=0o700, exist_ok=True)
            home_cache = os.path.realpath(wanted)
        except OSError:
            home_cache = None  # no HOME of ours: XDG_CACHE_HOME alone
        chosen = {os.path.realpath(os.path.expanduser(p)) for p in writable_paths}
        if home_cache in chosen or home_cache == cache[1]:
            home_cache = None
    return UserDirs(packages, cache, home_cache)


def check_outside_runtime(folder: str, runtime: Iterable[str]) -> str | None:
    """Why ``folder`` (a packages folder) must not be used, or None.

    It must not hold a place an unsandboxed program imports or runs from (this interpreter's
    prefix and site-packages, the user site, Jupyter's and IPython's dirs: ``runtime``; an entry
    of the kernel's ``sys.path`` or ``PATH``), nor lie inside an entry of ``sys.path``: what a
    cell installs there would be imported outside the sandbox."""
    real = os.path.realpath(folder)
    imported = {os.path.realpath(p) for p in sys.path if os.path.isabs(p)} - {"/"}
    executed = {os.path.realpath(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p}
    places = {*imported, *executed, *(os.path.realpath(p) for p in runtime)}
    places |= {os.path.realpath(p) for p in sysconfig.get_paths().values()}
    for there in sorted(places):
        if there == real or there.startswith(real + "/"):
            return f"{real} holds {there}, which programs outside the sandbox import or run from"
        if there in imported and real.startswith(there + "/"):
            return f"{real} is inside {there}, which Python outside the sandbox imports from"
    return None
