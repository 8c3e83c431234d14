"""Writable where users write: ``/tmp``, ``~/.cache`` (the notebook folder's own), and a refused
write that says once which setting allows it.

``~/.cache`` in the worker is a folder of the notebook folder's own, kept across kernels, bound over
the user's real one: what one kernel caches the next kernel in that folder reads, a kernel in
another folder does not see, and the real ``~/.cache`` (a decoy the test makes there, removed at the
end) stays untouched and unreadable.  One test gives the kernel a HOME of its own without
``XDG_CACHE_HOME``, so the defaults' layout is checked: the compilation cache and the workers' caches
both under ``~/.cache/jax-kernel``, JAX's path to this folder's entries kept through the bind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Kernel, start_kernel, stop_kernel

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

TAG = uuid.uuid4().hex[:8]


def shown(kernel: Kernel, code: str, expr: str) -> Any:
    """``expr``'s value in the worker, through JSON (after ``code``)."""
    return json.loads(kernel.ok(f"{code}\nimport json\nprint(json.dumps({expr}))").stdout)


def need_mount_namespace(kernel: Kernel) -> None:
    report = shown(kernel, "from jax_kernel.worker import sandbox", "sandbox.REPORT")
    if not str(report.get("masking", "")).startswith("mount namespace"):
        pytest.skip(f"no mount namespace on this host: {report.get('masking')}")


@pytest.fixture(scope="module")
def decoy() -> Iterator[Path]:
    """A file in the user's real ~/.cache (made and removed here; the folder too if it made it)."""
    home_cache = Path.home() / ".cache"
    made = not home_cache.exists()
    home_cache.mkdir(exist_ok=True)
    path = home_cache / f"jax-kernel-test-decoy-{TAG}"
    path.write_text("the user's own cache")
    before = sorted(p.name for p in home_cache.iterdir())
    yield path
    assert sorted(p.name for p in home_cache.iterdir()) == before, "a kernel wrote into the real ~/.cache"
    assert path.read_text() == "the user's own cache"
    path.unlink()
    if made and not any(home_cache.iterdir()):
        home_cache.rmdir()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: tmp_path_factory.mktemp(f"notebooks-{name}") for name in ("a", "b")}


@pytest.fixture(scope="module")
def a(folders: dict[str, Path], decoy: Path) -> Iterator[Kernel]:
    km, kc = start_kernel(cwd=str(folders["a"]))
    kernel = Kernel(km, kc)
    need_mount_namespace(kernel)
    yield kernel
    stop_kernel(km, kc)


def test_tmp_writes_work_and_last_as_long_as_the_kernel(a: Kernel) -> None:
    path = f"/tmp/jk-{TAG}/checkpoint.txt"
    a.ok(
        f"import os\nos.makedirs(os.path.dirname({path!r}), exist_ok=True)\nopen({path!r}, 'w').write('step 1')"
    )
    assert not os.path.exists(path)  # the kernel's own /tmp, not the host's
    a.run("import os; os._exit(0)")  # the worker dies; its replacement has the same /tmp
    assert shown(a, "", f"open({path!r}).read()") == "step 1"


def test_home_cache_is_the_notebook_folders_own_and_outlives_the_kernel(
    a: Kernel, folders: dict[str, Path], decoy: Path
) -> None:
    rel = f"jk-{TAG}/downloaded.bin"
    got = shown(
        a,
        "import os\n"
        f"p = os.path.expanduser('~/.cache/{rel}')\n"
        "os.makedirs(os.path.dirname(p), exist_ok=True)\n"
        "open(p, 'w').write('weights')\n"
        "try:\n"
        f"    seen = open({str(decoy)!r}).read()\n"
        "except OSError as e:\n"
        "    seen = type(e).__name__",
        "[seen, os.environ['XDG_CACHE_HOME'] == os.path.expanduser('~/.cache'), "
        f"{decoy.name!r} in os.listdir(os.path.expanduser('~/.cache'))]",
    )
    assert got == ["FileNotFoundError", True, False], got
    assert not (decoy.parent / rel).exists()  # not in the real ~/.cache
    km, kc = start_kernel(cwd=str(folders["a"]))  # the same notebook folder, later
    try:
        assert (
            shown(Kernel(km, kc), "import os", f"open(os.path.expanduser('~/.cache/{rel}')).read()")
            == "weights"
        )
    finally:
        stop_kernel(km, kc)
    km, kc = start_kernel(cwd=str(folders["b"]))  # another notebook folder
    try:
        b = Kernel(km, kc)
        assert shown(b, "import os", f"os.path.exists(os.path.expanduser('~/.cache/{rel}'))") is False
        # nor at the real path of A's folder (the roots are narrowed to each notebook's own)
        a_folder = shown(a, "import os", "os.path.realpath(os.path.expanduser('~/.cache'))")
        a_real = shown(a, "from jax_kernel.worker import sandbox", "sandbox.PLACES['internal']")
        assert a_folder == os.path.realpath(Path.home() / ".cache")
        cache_folders = [p for p in a_real if "/jax-kernel/workers/" in p]
        assert cache_folders and os.path.exists(os.path.join(cache_folders[0], rel))  # seen from outside
        assert shown(b, "import os", f"os.path.exists({os.path.join(cache_folders[0], rel)!r})") is False
    finally:
        stop_kernel(km, kc)


def test_default_layout_keeps_the_compilation_cache_and_hides_the_real_cache(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text("hf_decoy")
    (home / ".cache" / "decoy").write_text("the user's own")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    km, kc = start_kernel(cwd=str(notebooks), env={**env, "HOME": str(home)})
    k = Kernel(km, kc)
    try:
        need_mount_namespace(k)
        got = shown(
            k,
            "import os, jax, jax.numpy as jnp\n"
            "float(jax.jit(lambda x: x * 3 + 2)(jnp.ones(3)).sum())\n"
            "c = os.path.expanduser('~/.cache')\n"
            "os.makedirs(os.path.join(c, 'huggingface', 'hub'), exist_ok=True)\n"
            "open(os.path.join(c, 'huggingface', 'hub', 'model'), 'w').write('m')\n"
            "found = {}\n"
            "for name in ('decoy', 'huggingface/token'):\n"
            "    try:\n"
            "        found[name] = open(os.path.join(c, name)).read()\n"
            "    except OSError as e:\n"
            "        found[name] = type(e).__name__\n"
            "cc = jax.config.jax_compilation_cache_dir",
            "[found, cc.startswith(c + '/jax-kernel/compilation/'), "
            "os.listdir(os.path.join(c, 'jax-kernel', 'compilation')) == [os.path.basename(cc)], "
            "os.access(cc, os.W_OK)]",
        )
        assert got == [
            {"decoy": "FileNotFoundError", "huggingface/token": "FileNotFoundError"},
            True,
            True,
            True,
        ]
        compiled = home / ".cache" / "jax-kernel" / "compilation"
        assert any(p.is_file() for p in compiled.rglob("*")), "JAX wrote nothing to its cache"
        assert (home / ".cache" / "huggingface" / "token").read_text() == "hf_decoy"
        assert not (home / ".cache" / "huggingface" / "hub").exists()
        workers = home / ".cache" / "jax-kernel" / "workers"
        assert [p.read_text() for p in workers.glob("*/huggingface/hub/model")] == ["m"]
    finally:
        stop_kernel(km, kc)
        shutil.rmtree(home, ignore_errors=True)


def test_a_refused_write_names_the_setting_once(a: Kernel) -> None:
    first = a.run(f"open('/usr/share/jk-{TAG}', 'w')")
    assert first.status == "error" and first.ename in ("OSError", "PermissionError"), first.reply
    text = "\n".join(first.reply["traceback"])
    assert text.count("Sandbox.writable_paths") == 1, text
    assert "keeps /usr/share read-only" in text and "/tmp" in text and "~/.cache" in text, text
    second = a.run(f"open('/usr/lib/jk-{TAG}', 'w')")
    assert second.status == "error"
    assert "Sandbox.writable_paths" not in "\n".join(second.reply["traceback"])
    assert shown(a, "", "6 * 7") == 42
