"""The notebook folder's own packages and cache, in the worker's mount namespace.

Runs in the worker process, inside its own mount namespace (:mod:`.namespaces`).  The kernel
hands each worker two folders of its trust domain (``jax_kernel.policy.domains``): the prefix
``%pip`` installs into and an XDG cache.  Here each root is narrowed to this domain's folder (the
others are neither readable nor writable, as for the compilation cache), and the cache folder is
bound over ``~/.cache``, so libraries that hard-code ``~/.cache/...`` write there: the user's real
``~/.cache`` (jedi's pickles that an unsandboxed editor loads, the hidden Hugging Face token, other
notebooks' folders when the root lies in it) is behind it, untouched and unreadable.  What of the
real one the worker needs at its own path (the compilation cache's folder, a state dir, an
interpreter) is bound back (``keep``).
"""

from __future__ import annotations

import os
from typing import Any

from .base import Unavailable, _is_within, _Report
from .mounts import _shared_cache
from .private_tmp import _cover


def _isolate_user_dirs(fs: dict[str, Any], report: _Report) -> None:
    """Narrow the packages' and the caches' roots to this notebook's folders (see ``_shared_cache``)."""
    dirs = fs.get("user_dirs") or {}
    for name in ("packages", "cache"):
        pair = dirs.get(name)
        if not pair:
            continue
        try:
            _shared_cache(pair["root"], pair["folder"])
        except (Unavailable, OSError, KeyError, TypeError) as e:
            report.data[f"user_{name}"] = f"other notebooks' {name} folders stay readable ({e})"


def _cover_home_cache(policy: dict[str, Any], report: _Report) -> None:
    """Bind the notebook folder's cache over the real ``~/.cache``.

    On success the policy records ``cache_done`` (``~/.cache``, for Landlock's write grant), its
    ``fs`` drops the hidden paths inside ``~/.cache`` (they are behind the bind already; masked,
    they would break this folder's own ``~/.cache/huggingface``), and ``XDG_CACHE_HOME`` names
    ``~/.cache``.  Without the bind, ``XDG_CACHE_HOME`` stays the folder's real path (the
    kernel's), writable under Landlock, and ``~/.cache`` stays the read-only real one.
    """
    fs = policy.get("fs", {})
    dirs = fs.get("user_dirs") or {}
    home = dirs.get("home_cache")
    cache = (dirs.get("cache") or {}).get("folder")
    if not home or not cache:
        return
    # Only writable folders inside ~/.cache make a kept path writable: one that holds it (notebooks
    # in ~) does not, since ~/.cache is a read-only dot-entry there.
    writable = [w for w in fs.get("writable", []) if _is_within(os.path.realpath(w), home)]
    try:
        _cover(home, cache, list(dirs.get("keep", [])), writable)
    except (Unavailable, OSError) as e:
        report.data["user_cache"] = f"~/.cache is the real one, read-only; XDG_CACHE_HOME is {cache} ({e})"
        return
    policy["cache_done"] = home
    policy["fs"] = {
        **fs,
        "hidden": [h for h in fs.get("hidden", []) if not _is_within(os.path.realpath(h), home)],
    }
    os.environ["XDG_CACHE_HOME"] = home


def _describe(policy: dict[str, Any], report: _Report) -> None:
    """Say in the report where this notebook folder's packages and cache are."""
    dirs = policy.get("fs", {}).get("user_dirs") or {}
    parts = []
    if dirs.get("packages"):
        parts.append(f"packages in {dirs['packages'].get('folder')} (%pip install)")
    if dirs.get("cache"):
        where = f" at {policy['cache_done']}" if policy.get("cache_done") else ""
        parts.append(f"cache {dirs['cache'].get('folder')}{where} (XDG_CACHE_HOME)")
    if parts:
        report.active(
            "notebook_folders", "; ".join(parts) + ": this notebook folder's own, kept across kernels"
        )
