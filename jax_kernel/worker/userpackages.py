"""The notebook folder's own packages: on the worker's ``sys.path``, and removed again.

The environment's site-packages is read-only in the sandbox, so ``%pip install`` installs with
``--prefix`` into a folder the kernel made for this notebook folder (``PLACES["packages"]``, see
``jax_kernel.policy.domains``): ``--prefix`` keeps the dependencies the environment already has
(``--target`` would install them all again and shadow the environment's jax and numpy).  The
folder is on ``sys.path`` ahead of site-packages but after the standard library, as a user site
is, and its ``.pth`` files run, here in the sandbox; the worker's children (``!pip``, ``!python``)
get it through ``PYTHONPATH``, ``PIP_PREFIX`` and ``PATH``.  The kernel never imports from it.

pip refuses to uninstall what lies outside ``sys.prefix`` in a virtual environment ("Not
uninstalling X at ..., outside environment"), so :func:`uninstall` removes a distribution of this
folder itself: the files its ``RECORD`` lists, each checked to lie inside the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.metadata
import os
import re
import site
import stat
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator

#: The variable pip (``%pip``, ``!pip``) takes the prefix from.
PIP_PREFIX = "PIP_PREFIX"
#: The prefix :func:`install` put on ``sys.path``: where ``%pip`` installs (None: pip's own way).
PREFIX: str | None = None


def layout(prefix: str) -> tuple[list[str], str]:
    """(the import folders, the scripts folder) pip uses for ``--prefix prefix``: this
    interpreter's preferred scheme for a prefix, as pip picks it (Debian's is ``local/...``)."""
    scheme = sysconfig.get_preferred_scheme("prefix")
    if scheme == "osx_framework_library":  # pip's own exception for a custom prefix
        scheme = "posix_prefix"
    paths = sysconfig.get_paths(scheme=scheme, vars={"base": prefix, "platbase": prefix})
    folders = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    return folders, paths["scripts"]


def install(prefix: str | None) -> list[str]:
    """Put ``prefix``'s import folders on ``sys.path`` (made first: importlib remembers a missing
    one as absent) and tell the worker's children; return the folders (none without a prefix).

    Called once the worker's own modules are imported and its sandbox is on, so nothing of the
    worker itself comes from there."""
    global PREFIX
    if not prefix:
        return []
    folders, scripts = layout(prefix)
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return []  # not writable after all (no sandbox rule): leave pip as it is
    known = set(getattr(site, "getsitepackages", list)())
    at = next((i for i, p in enumerate(sys.path) if p in known), len(sys.path))
    sys.path[at:at] = [f for f in folders if f not in sys.path]
    for folder in folders:
        site.addsitedir(folder)  # its .pth files; already on sys.path, so not appended again
    _prepend("PYTHONPATH", folders)
    _prepend("PATH", [scripts])
    os.environ[PIP_PREFIX] = prefix
    PREFIX = prefix
    make_scripts_executable(prefix)  # those a `!pip install` left
    tidy(prefix)  # and what a `!pip install -U` left
    return folders


def make_scripts_executable(prefix: str) -> int:
    """Give the scripts pip put in ``prefix``'s scripts folder their executable bits; how many.

    As uid 0 the sandbox makes ``chmod`` a no-op (uid 0 owns the system's files, and Landlock does
    not govern modes), so pip's console scripts stay ``rw-r--r--`` and ``!tool`` fails.  A file's
    mode at creation is not a chmod: each is written again into a new file made 0755 (the umask
    applies) that replaces it, with the same bytes, so pip's RECORD still holds."""
    scripts = layout(prefix)[1]
    fixed = 0
    try:
        names = os.listdir(scripts)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(scripts, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o111:
                continue
            with open(path, "rb") as f:
                data = f.read()
            temp = os.path.join(scripts, f".{name}.{os.getpid()}.tmp")
            fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temp, path)
            fixed += 1
        except OSError:
            continue
    return fixed


def _prepend(name: str, entries: list[str]) -> None:
    old = [p for p in os.environ.get(name, "").split(os.pathsep) if p and p not in entries]
    os.environ[name] = os.pathsep.join([*entries, *old])


@contextlib.contextmanager
def locked(prefix: str | None) -> Iterator[None]:
    """Hold ``prefix``'s lock (``.lock`` in it, ``flock``): one change to the folder at a time."""
    if not prefix:
        yield
        return
    try:
        fd = os.open(
            os.path.join(prefix, ".lock"), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def find(prefix: str, name: str) -> importlib.metadata.Distribution | None:
    """The distribution ``name`` installed in ``prefix``, if any."""
    wanted = canonical(name)
    for dist in importlib.metadata.distributions(path=layout(prefix)[0]):
        if canonical(dist.metadata["Name"] or "") == wanted:
            return dist
    return None


def _files(prefix: str, dist: importlib.metadata.Distribution) -> tuple[list[str], list[str]]:
    """(files to remove, RECORD entries refused as outside ``prefix``), real paths, with the
    compiled ``.pyc`` of each ``.py`` as pip removes them."""
    top = os.path.realpath(prefix)
    found: set[str] = set()
    refused = []
    for entry in dist.files or []:
        path = os.path.realpath(str(dist.locate_file(entry)))
        if not path.startswith(top + "/"):
            refused.append(str(entry))
            continue
        found.add(path)
        if path.endswith(".py"):
            cache = os.path.join(os.path.dirname(path), "__pycache__")
            stem = os.path.basename(path)[:-3] + "."
            try:
                found.update(os.path.join(cache, n) for n in os.listdir(cache) if n.startswith(stem))
            except OSError:
                pass
    return sorted(found), refused


def _shown(prefix: str, files: Iterable[str]) -> list[str]:
    """What pip's "Would remove:" lists: a top-level folder as ``folder/*``, a loose file as itself."""
    shown = set()
    for folder in layout(prefix)[0]:
        for path in files:
            if path.startswith(folder + "/"):
                first = path[len(folder) + 1 :].split("/", 1)[0]
                whole = os.path.join(folder, first)
                shown.add(whole + "/*" if os.path.isdir(whole) else whole)
    shown.update(p for p in files if not any(p.startswith(f + "/") for f in layout(prefix)[0]))
    return sorted(shown)


def uninstall(prefix: str, dist: importlib.metadata.Distribution, confirm: Callable[[], bool] | None) -> bool:
    """Remove ``dist`` from ``prefix``, printing what pip prints; ``confirm``: asks "Proceed?"
    (None: ``-y``).  False if the user said no."""
    name, version = dist.metadata["Name"], dist.version
    files, refused = _files(prefix, dist)
    print(f"Found existing installation: {name} {version}")
    print(f"Uninstalling {name}-{version}:")
    if confirm is not None:
        print("  Would remove:")
        for path in _shown(prefix, files):
            print(f"    {path}")
        if not confirm():
            return False
    for entry in refused:
        print(f"  Not removing {entry}: it lies outside {prefix}", file=sys.stderr)
    folders = set()
    for path in files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        folders.add(os.path.dirname(path))
    _remove_empty(prefix, folders)
    importlib.invalidate_caches()
    print(f"  Successfully uninstalled {name}-{version}")
    return True


def tidy(prefix: str) -> list[str]:
    """Remove the versions an upgrade left behind in ``prefix``; "name version" of each removed.

    pip upgrades by uninstalling the old version first, which it refuses outside the environment:
    after ``pip install -U x`` the old version's files and ``.dist-info`` stay beside the new one's.
    The newest ``RECORD`` of a name is the installed one; of the others, what that one does not
    list is removed (each path checked to lie inside ``prefix``)."""
    by_name: dict[str, list[importlib.metadata.Distribution]] = {}
    for dist in importlib.metadata.distributions(path=layout(prefix)[0]):
        by_name.setdefault(canonical(dist.metadata["Name"] or ""), []).append(dist)
    removed = []
    for dists in (d for d in by_name.values() if len(d) > 1):
        dists.sort(key=_record_mtime)
        current = set(_files(prefix, dists[-1])[0])
        for old in dists[:-1]:
            label = f"{old.metadata['Name']} {old.version}"  # read before its metadata goes
            files = [p for p in _files(prefix, old)[0] if p not in current]
            for path in files:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            _remove_empty(prefix, {os.path.dirname(p) for p in files})
            removed.append(label)
    if removed:
        importlib.invalidate_caches()
    return removed


def _record_mtime(dist: importlib.metadata.Distribution) -> float:
    """When this version was installed: its ``RECORD``'s time (pip writes it last)."""
    for entry in dist.files or []:
        if entry.name == "RECORD" and entry.parent.name.endswith(".dist-info"):
            try:
                return os.stat(str(dist.locate_file(entry))).st_mtime
            except OSError:
                break
    return 0.0


def _remove_empty(prefix: str, folders: Iterable[str]) -> None:
    """Remove the emptied folders, deepest first, up to (not including) the import folders."""
    keep = {os.path.realpath(prefix), *layout(prefix)[0]}
    for folder in sorted(folders, key=len, reverse=True):
        while folder not in keep and folder.startswith(os.path.realpath(prefix) + "/"):
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)
