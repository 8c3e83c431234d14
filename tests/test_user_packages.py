"""`%pip` in the sandbox: packages go into a folder of the notebook folder's own.

Every install is offline: the test builds tiny pure-Python wheels by hand (a zip with the package,
``METADATA``, ``WHEEL`` and ``RECORD``) inside the notebook folder, which the worker sees (its
private ``/tmp`` hides the rest of the host's).  What is checked, against the real kernel: the
package imports in the next cell and ``%pip list`` shows it; a second kernel in the same folder
imports it (the folder outlives the kernel); a kernel in another folder does not see it, nor can
write there (a decoy one notebook plants is not another's import); ``%pip uninstall -y`` removes
it; ``!pip install`` works too; and the kernel process itself never has the folder on its path (a
``.pth`` planted there runs in the worker, never in the kernel).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Kernel, start_kernel, stop_kernel

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

SLOW = 180  # seconds a pip cell may take on a loaded 2-core machine


def make_wheel(
    folder: Path, name: str, version: str = "0.1", body: str = "VALUE = 42\n", script: str | None = None
) -> Path:
    """A pure-Python wheel of package ``name`` (one ``__init__.py``), written by hand; with ``script``,
    a console script of that name calling ``name.main``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": body,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: jax-kernel-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if script:
        files[f"{dist}/entry_points.txt"] = f"[console_scripts]\n{script} = {name}:main\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def value(kernel: Kernel, code: str) -> str:
    return str(kernel.ok(code, timeout=SLOW).of("execute_result")[0]["data"]["text/plain"])


def shown(kernel: Kernel, setup: str, expr: str) -> Any:
    """``expr``'s value in the worker, through JSON (after ``setup``)."""
    return json.loads(kernel.ok(f"{setup}\nimport json\nprint(json.dumps({expr}))", timeout=SLOW).stdout)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: tmp_path_factory.mktemp(f"notebooks-{name}") for name in ("a", "b")}


@pytest.fixture(scope="module")
def pkg() -> str:
    return f"jkdemo{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def a(folders: dict[str, Path]) -> Iterator[Kernel]:
    """Notebook A's kernel, shared: its installs are what the other tests look for."""
    km, kc = start_kernel(cwd=str(folders["a"]))
    yield Kernel(km, kc)
    stop_kernel(km, kc)


@pytest.fixture(scope="module")
def installed(a: Kernel, folders: dict[str, Path], pkg: str) -> Path:
    """``pkg`` installed by ``%pip install`` in A; the prefix it went into."""
    wheel = make_wheel(folders["a"], pkg)
    res = a.ok(f"%pip install --no-index {wheel}", timeout=SLOW)
    assert f"Successfully installed {pkg}-0.1" in res.stdout, (res.stdout, res.stderr)
    prefix = Path(shown(a, "import os", "os.environ['PIP_PREFIX']"))
    assert f"into {prefix}: this notebook folder's packages" in res.stdout, res.stdout
    return prefix


def test_pip_install_then_import_and_list(
    a: Kernel, installed: Path, pkg: str, folders: dict[str, Path]
) -> None:
    assert value(a, f"import {pkg}; {pkg}.VALUE") == "42"
    assert value(a, f"import {pkg}; {pkg}.__file__").strip("'").startswith(str(installed) + "/")
    listed = a.ok("%pip list", timeout=SLOW).stdout
    assert any(line.split()[:2] == [pkg, "0.1"] for line in listed.splitlines()), listed
    # The folder is on the worker's path ahead of the environment's site-packages, after the stdlib.
    order = shown(a, "import sys", "sys.path")
    ours = next(i for i, p in enumerate(order) if p.startswith(str(installed)))
    site = next(
        i for i, p in enumerate(order) if p.endswith("-packages") and not p.startswith(str(installed))
    )
    assert ours < site and any("python3" in p for p in order[:ours]), order


def test_the_wheel_is_a_real_one_for_the_stock_kernel_too(folders: dict[str, Path], tmp_path: Path) -> None:
    # The same hand-built wheel, installed by the stock kernel's own %pip (into a --target of the
    # test's: the stock kernel would write into the test environment otherwise), imports there.
    name = f"jkstock{uuid.uuid4().hex[:8]}"
    wheel = make_wheel(tmp_path, name)
    km, kc = start_kernel(kernel_name="python3", cwd=str(tmp_path))
    stock = Kernel(km, kc)
    try:
        res = stock.ok(f"%pip install --no-index --target {tmp_path / 'target'} {wheel}", timeout=SLOW)
        assert f"Successfully installed {name}-0.1" in res.stdout, res.stdout
        assert (
            value(
                stock,
                f"import sys; sys.path.insert(0, {str(tmp_path / 'target')!r})\nimport {name}; {name}.VALUE",
            )
            == "42"
        )
    finally:
        stop_kernel(km, kc)


def test_a_second_kernel_in_the_same_folder_imports_it(
    installed: Path, folders: dict[str, Path], pkg: str
) -> None:
    km, kc = start_kernel(cwd=str(folders["a"]))
    try:
        assert value(Kernel(km, kc), f"import {pkg}; {pkg}.VALUE") == "42"
    finally:
        stop_kernel(km, kc)


def test_another_notebook_folder_neither_sees_nor_writes_it(
    installed: Path, folders: dict[str, Path], pkg: str
) -> None:
    # The cross-notebook attack: A's cell installs a decoy under a name B imports; B must not get it,
    # nor be able to plant one in A's folder for A's next import.
    site = next(installed.glob("lib/python*/site-packages"))
    km, kc = start_kernel(cwd=str(folders["b"]))
    b = Kernel(km, kc)
    try:
        res = b.run(f"import {pkg}")
        assert res.status == "error" and res.ename == "ModuleNotFoundError", res.reply
        planted = site / "jk_planted_by_b.py"
        code = (
            "import os\n"
            "out = []\n"
            f"for path in [{str(planted)!r}, {str(site / pkg / '__init__.py')!r}]:\n"
            "    try:\n"
            "        open(path, 'a').write('VALUE = -1\\n')\n"
            "        out.append('written')\n"
            "    except OSError as e:\n"
            "        out.append(type(e).__name__)\n"
            f"out, os.path.exists({str(site / pkg)!r}), os.environ['PIP_PREFIX'] != {str(installed)!r}"
        )
        got = value(b, code)
        assert "written" not in got and got.endswith("False, True)"), got
        assert not planted.exists()
        assert (site / pkg / "__init__.py").read_text() == "VALUE = 42\n"
    finally:
        stop_kernel(km, kc)


def test_bang_pip_install_works_too(a: Kernel, folders: dict[str, Path], installed: Path) -> None:
    name = f"jkbang{uuid.uuid4().hex[:8]}"
    wheel = make_wheel(folders["a"], name, body="VALUE = 'bang'\n")
    res = a.ok(f"!pip install --no-index {wheel}", timeout=SLOW)
    assert f"Successfully installed {name}-0.1" in res.stdout, (res.stdout, res.stderr)
    assert (
        value(a, f"import {name}; {name}.VALUE, {name}.__file__.startswith({str(installed)!r})")
        == "('bang', True)"
    )


def test_a_console_script_it_installs_runs(a: Kernel, folders: dict[str, Path]) -> None:
    # As uid 0 the sandbox makes chmod a no-op, so pip's scripts came out rw-r--r--.
    name = f"jkcli{uuid.uuid4().hex[:8]}"
    body = "def main():\n    print('hello from', __name__)\n"
    a.ok(
        f"%pip install --no-index {make_wheel(folders['a'], name, body=body, script=name + '-cli')}",
        timeout=SLOW,
    )
    res = a.ok(f"!{name}-cli", timeout=SLOW)
    assert f"hello from {name}" in res.stdout, (res.stdout, res.stderr)


def test_upgrading_a_package_of_the_folder_leaves_one_version(
    a: Kernel, folders: dict[str, Path], installed: Path
) -> None:
    # pip refuses to uninstall the old version (outside the environment) and left both dist-infos.
    name = f"jkup{uuid.uuid4().hex[:8]}"
    a.ok(f"%pip install --no-index {make_wheel(folders['a'], name, '0.1', body='VALUE = 1')}", timeout=SLOW)
    res = a.ok(
        f"%pip install --no-index -U {make_wheel(folders['a'], name, '0.2', body='VALUE = 2')}", timeout=SLOW
    )
    assert f"Removed {name} 0.1" in res.stdout, res.stdout
    assert value(a, f"import {name}; {name}.VALUE") == "2"
    assert sorted(p.name for p in installed.rglob(f"{name}-*.dist-info")) == [f"{name}-0.2.dist-info"]
    listed = a.ok("%pip list", timeout=SLOW).stdout
    assert [line.split()[1] for line in listed.splitlines() if line.split()[:1] == [name]] == ["0.2"], listed


def test_pip_uninstall_removes_it(a: Kernel, folders: dict[str, Path], installed: Path) -> None:
    name = f"jkgone{uuid.uuid4().hex[:8]}"
    a.ok(f"%pip install --no-index {make_wheel(folders['a'], name)}", timeout=SLOW)
    assert value(a, f"import {name}; {name}.VALUE") == "42"
    res = a.ok(f"%pip uninstall -y {name}", timeout=SLOW)
    assert f"Successfully uninstalled {name}-0.1" in res.stdout, (res.stdout, res.stderr)
    res = a.run(
        f"import sys, importlib\nsys.modules.pop({name!r}, None)\nimportlib.invalidate_caches()\nimport {name}"
    )
    assert res.status == "error" and res.ename == "ModuleNotFoundError", res.reply
    assert not list(installed.rglob(f"{name}*")), list(installed.rglob(f"{name}*"))
    assert name not in a.ok("%pip list", timeout=SLOW).stdout


def test_the_kernel_process_never_imports_from_the_folder(installed: Path, folders: dict[str, Path]) -> None:
    # A .pth in a folder on a Python's path runs when that Python starts: planted in the packages
    # folder, it runs in the next worker (sandboxed, the same notebook folder) and never in the
    # kernel process, whose environment does not name the folder either.
    site = next(installed.glob("lib/python*/site-packages"))
    pth = site / "jk_marker.pth"
    pth.write_text(
        f"import os; open(os.path.join({str(installed)!r}, 'ran-%d' % os.getpid()), 'w').close()\n"
    )
    km, kc = start_kernel(cwd=str(folders["a"]))
    try:
        worker, kernel = shown(Kernel(km, kc), "import os", "[os.getpid(), os.getppid()]")
        assert (installed / f"ran-{worker}").exists(), sorted(p.name for p in installed.iterdir())
        assert not (installed / f"ran-{kernel}").exists()
        with open(f"/proc/{kernel}/cmdline", "rb") as f:
            assert b"jax_kernel" in f.read()  # it is the kernel process
        with open(f"/proc/{kernel}/environ", "rb") as f:
            environ = f.read()
        assert str(installed).encode() not in environ
        assert b"PIP_PREFIX" not in environ
    finally:
        stop_kernel(km, kc)
        pth.unlink()


def test_a_packages_dir_where_python_imports_from_is_refused(tmp_path: Path) -> None:
    # A folder on the kernel's own import path would let a cell's install run outside the sandbox.
    site = Path(sysconfig.get_paths()["purelib"])
    before = sorted(p.name for p in site.iterdir())
    km, kc = start_kernel(extra_arguments=[f"--WorkerManager.user_packages_dir={site}"], cwd=str(tmp_path))
    try:
        assert shown(Kernel(km, kc), "import os", "os.environ.get('PIP_PREFIX')") is None
    finally:
        stop_kernel(km, kc)
    assert sorted(p.name for p in site.iterdir()) == before
