"""The house's import contract: which process a module runs in decides what it may import.

The kernel process never runs user code and must not load the worker's code (a worker module
imported into the kernel would run there with the kernel's rights); the worker is sandboxed before
it imports anything but the protocol; the protocol is the one definition both sides share, so it
depends on nothing of either.  Checked on the source, so a new import that breaks it fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jax_kernel"
KERNEL_SIDE = ("kernel", "supervision", "policy", "host", "launch")


def _imports(path: Path) -> set[str]:
    """Every jax_kernel module ``path`` imports, relative imports resolved."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "jax_kernel" or name.startswith("jax_kernel.")}


def _modules(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


def _is_module(name: str) -> bool:
    """Whether ``name`` (as an import's target) is a module or package of ours, not a name in one."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("package", KERNEL_SIDE)
def test_kernel_side_never_imports_the_worker(package):
    bad = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if n.startswith("jax_kernel.worker"))
        for path in _modules(package)
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_worker_imports_only_the_protocol():
    allowed = ("jax_kernel.protocol", "jax_kernel.worker")
    bad = {}
    for path in _modules("worker"):
        names = [n for n in _imports(path) if _is_module(n) and n != "jax_kernel"]
        wrong = sorted(n for n in names if not n.startswith(allowed))
        if wrong:
            bad[str(path.relative_to(PACKAGE))] = wrong
    assert bad == {}


def test_protocol_imports_nothing_of_the_project():
    bad = {}
    for path in _modules("protocol"):
        wrong = sorted(n for n in _imports(path) if _is_module(n) and not n.startswith("jax_kernel.protocol"))
        if wrong:
            bad[str(path.relative_to(PACKAGE))] = wrong
    assert bad == {}


def test_importing_the_worker_sandbox_starts_no_thread_and_no_jax():
    code = (
        "import sys, threading\n"
        "import jax_kernel.worker.sandbox\n"
        "print(threading.active_count(), 'jax' in sys.modules, 'jax_kernel.kernel' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False", "False"]


@pytest.mark.parametrize(
    "path, name",
    [
        ("jax_kernel.app", "launch_new_instance"),
        ("jax_kernel.provisioner", "JaxProvisioner"),
        ("jax_kernel.kernel", "JaxKernel"),
        ("jax_kernel.manager", "WorkerManager"),
        ("jax_kernel.sandbox", "Sandbox"),
        ("jax_kernel.accelerators", "Accelerators"),
        ("jax_kernel.processes", "ProcessSet"),
        ("jax_kernel.client", "JaxClient"),
    ],
)
def test_public_paths_of_the_flat_layout_still_import(path, name):
    code = f"import importlib; print(getattr(importlib.import_module({path!r}), {name!r}).__name__)"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in (name, "launch_instance")


def test_sources_tests_benches_and_notebooks_are_ruff_clean():
    """Lint runs with every test run (and so in .ci/run): style drift fails like a bug does."""
    root = PACKAGE.parent
    ruff = [sys.executable, "-m", "ruff"]
    paths = ["jax_kernel", "tests", "bench", "notebooks"]
    for args in (["check", "--quiet", *paths], ["format", "--check", "--quiet", *paths]):
        out = subprocess.run([*ruff, *args], cwd=root, capture_output=True, text=True)
        assert out.returncode == 0, f"ruff {args[0]}:\n{out.stdout[-3000:]}{out.stderr[-1000:]}"


@pytest.mark.timeout(600)  # a first run without mypy's cache reads the typed dependencies (jax) too
def test_the_package_is_mypy_clean():
    """Types are checked with every test run (and so in .ci/run), as lint is."""
    root = PACKAGE.parent
    args = [sys.executable, "-m", "mypy", "jax_kernel", "--ignore-missing-imports"]
    out = subprocess.run(args, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, f"mypy:\n{out.stdout[-3000:]}{out.stderr[-1000:]}"
