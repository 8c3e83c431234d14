"""The Jupyter server as a confused deputy: what a cell leaves in the notebook folder, it reads.

jupyter_server's save follows a symlink in the notebook folder and writes through it: a cell that
replaced the open notebook with a symlink to ``~/.bashrc`` had the next autosave write notebook
JSON there, and bash then ran a command from a cell's output.  A FIFO named like a notebook hangs
the server's read.  So the notebook folder (and every writable folder others read) takes only
ordinary files and folders from a worker; the worker's own temp dir takes anything.

The server side is a real ``FileContentsManager`` on the same folder; the decoy lives in
/var/tmp, which the worker can see and not write.
"""

from __future__ import annotations

import ast
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, start_kernel, stop_kernel

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

ATTACK = r"""
import os, socket, tempfile
out = {}
def attempt(name, fn):
    try:
        fn(); out[name] = "made"
    except OSError as e:
        out[name] = type(e).__name__
os.remove("nb.ipynb")
attempt("symlink", lambda: os.symlink(DECOY, "nb.ipynb"))
own = os.path.join(tempfile.gettempdir(), "link")
os.symlink(DECOY, own)  # the worker's own temp dir: allowed
attempt("rename_symlink_in", lambda: os.rename(own, "nb.ipynb"))
attempt("hardlink", lambda: os.link(DECOY, "hard.ipynb"))
attempt("fifo", lambda: os.mkfifo("fifo.ipynb"))
attempt("fifo_in_tmp", lambda: os.mkfifo("/tmp/fifo"))
def sock():
    s = socket.socket(socket.AF_UNIX)
    s.bind("server.sock")
attempt("socket", sock)
attempt("subfolder_symlink", lambda: (os.makedirs("sub", exist_ok=True), os.symlink(DECOY, "sub/nb.ipynb")))
print(out)
"""


@pytest.fixture(scope="module", params=["standard", "strict"])
def notebook(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    from jupyter_server.services.contents.filemanager import FileContentsManager

    folder = tmp_path_factory.mktemp(f"notebooks-{request.param}")
    decoy_dir = Path(tempfile.mkdtemp(dir="/var/tmp"))
    decoy = decoy_dir / "bashrc"
    decoy.write_text("# the user's ~/.bashrc\n")
    cm = FileContentsManager(root_dir=str(folder))
    model = {
        "type": "notebook",
        "format": "json",
        "content": {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
    }
    cm.save(model, "nb.ipynb")
    km, kc = start_kernel(extra_arguments=[f"--Sandbox.profile={request.param}"], cwd=str(folder))
    try:
        yield Kernel(km, kc), cm, model, folder, decoy
    finally:
        stop_kernel(km, kc)
        decoy.unlink()
        decoy_dir.rmdir()


def test_the_server_saves_no_notebook_through_a_cells_link(notebook: tuple) -> None:
    k, cm, model, folder, decoy = notebook
    res = k.ok(f"DECOY = {str(decoy)!r}\n" + ATTACK)
    out = ast.literal_eval(res.stdout.strip())
    made = {name for name, what in out.items() if what == "made"}
    assert made <= {"fifo_in_tmp"}, out  # the private /tmp and TMPDIR: nobody else's to read
    if "socket" in out and k.ok("%sandbox").stdout.count("no new unix sockets"):
        assert out["socket"] == "PermissionError"
    cm.save(model, "nb.ipynb")  # the autosave
    assert decoy.read_text() == "# the user's ~/.bashrc\n"
    assert cm.get("nb.ipynb")["type"] == "notebook"
    assert not (folder / "nb.ipynb").is_symlink()
    kinds = {p.name: p.is_file() or p.is_dir() and not p.is_symlink() for p in folder.rglob("*")}
    assert all(kinds.values()) and "fifo.ipynb" not in kinds and "hard.ipynb" not in kinds, kinds


def test_ordinary_files_and_folders_still_work(notebook: tuple) -> None:
    k, cm, _model, folder, _decoy = notebook
    k.ok(
        "import os, shutil\n"
        "os.makedirs('data/run1', exist_ok=True)\n"
        "open('data/run1/a.txt', 'w').write('x')\n"
        "os.rename('data/run1/a.txt', 'data/b.txt')\n"
        "shutil.copytree('data', 'data2')\n"
        "shutil.rmtree('data2')\n"
    )
    assert (folder / "data" / "b.txt").read_text() == "x"
    assert cm.get("data")["type"] == "directory"
