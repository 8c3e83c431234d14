"""Secret stores and user sockets are hidden from cells by default.

Decoys live under a temporary HOME given to the kernel, and a unix socket server listens where
tmux (``/tmp/tmux-*``) and VS Code (``/tmp/vscode-ipc-*.sock``) put theirs; the real user's files
are never touched.  ``/etc/shadow`` is the real one: the worker runs as uid 0, which owns it, so
only the mask stops a cell reading it (the test reads it itself to compare).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, start_kernel, stop_kernel
from test_sandbox import alive, need

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

DECOYS = {
    ".npmrc": "//registry.npmjs.org/:_authToken=npm-decoy-1a2b",
    ".kaggle/kaggle.json": '{"username": "u", "key": "kaggle-decoy-3c4d"}',
    ".databrickscfg": "[DEFAULT]\ntoken = dapi-decoy-5e6f\n",
    ".vault-token": "hvs.decoy-7a8b",
    ".terraform.d/credentials.tfrc.json": '{"token": "tf-decoy-9c0d"}',
    ".cache/huggingface/token": "hf_decoy-1e2f",
    ".bash_history": "mysql -u root -pdecoy-3a4b\n",
    ".psql_history": "ALTER USER app PASSWORD 'decoy-5c6d';\n",
    ".local/share/keyrings/login.keyring": "keyring-decoy-7e8f",
    ".mozilla/firefox/profiles.ini": "mozilla-decoy-9a0b",
    ".config/google-chrome/Default/Cookies": "chrome-decoy-1c2d",
    ".config/chromium/Default/Login Data": "chromium-decoy-3e4f",
}

# Reads every path it is given; prints {path: what it got, or the exception's name}.
READ = """
import json
got = {{}}
for path in {paths!r}:
    try:
        with open(path, 'rb') as f:
            got[path] = f.read().decode(errors='replace')
    except OSError as e:
        got[path] = type(e).__name__
print(json.dumps(got))
"""

CONNECT = """
import socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect({path!r})
s.sendall(b'run-shell "touch /tmp/owned"')
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    for rel, text in DECOYS.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)
    return home


@pytest.fixture(scope="module")
def sockets() -> Iterator[dict[str, socket.socket]]:
    """Listening unix sockets where tmux and VS Code make theirs (made before any worker starts:
    hidden paths are matched when a worker is prepared)."""
    tmux = tempfile.mkdtemp(prefix="tmux-jaxtest-", dir="/tmp")  # 0700, as tmux makes it
    vscode = f"/tmp/vscode-ipc-jaxtest-{os.getpid()}-{os.urandom(4).hex()}.sock"
    servers = {}
    try:
        for path in (os.path.join(tmux, "default"), vscode):
            server = socket.socket(socket.AF_UNIX)
            server.bind(path)
            server.listen()
            server.settimeout(0.5)
            servers[path] = server
        yield servers
    finally:
        for s in servers.values():
            s.close()
        shutil.rmtree(tmux, ignore_errors=True)
        if os.path.lexists(vscode):
            os.unlink(vscode)


@pytest.fixture(scope="module", params=["standard", "strict"])
def hk(
    request: pytest.FixtureRequest,
    home: Path,
    sockets: dict[str, socket.socket],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Kernel]:
    km, kc = start_kernel(
        extra_arguments=[f"--Sandbox.profile={request.param}"],
        env={**os.environ, "HOME": str(home)},
        cwd=str(tmp_path_factory.mktemp("notebooks")),
    )
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def _home_cache_covered(kernel: Kernel) -> bool:
    res = kernel.ok("from jax_kernel.worker import sandbox\nprint(bool(sandbox.PLACES.get('home_cache')))")
    return res.stdout.strip() == "True"


def test_secret_stores_under_home_are_unreadable(hk: Kernel, home: Path) -> None:
    need(hk, "filesystem")
    paths = [str(home / rel) for rel in DECOYS]
    got = json.loads(hk.ok(READ.format(paths=paths)).stdout)
    # ~/.cache in the worker is the notebook folder's own cache, bound over the real one (which holds
    # the Hugging Face token): not there at all, rather than masked.
    covered = "FileNotFoundError" if _home_cache_covered(hk) else "PermissionError"
    expected = {p: covered if "/.cache/" in p else "PermissionError" for p in paths}
    assert got == expected, got
    for rel, text in DECOYS.items():  # and nothing of them changed
        assert (home / rel).read_text() == text
    # The home itself stays usable.
    assert hk.ok("import os; sorted(os.listdir(os.path.expanduser('~')))").reply["status"] == "ok"
    alive(hk)


def test_etc_shadow_is_unreadable(hk: Kernel) -> None:
    need(hk, "filesystem")
    with open("/etc/shadow") as f:
        real = f.read()
    assert real  # the test runs outside the sandbox and can read it
    got = json.loads(hk.ok(READ.format(paths=["/etc/shadow", "/etc/gshadow"])).stdout)
    leaked = got["/etc/shadow"] == real or real.split(":")[0] in got["/etc/shadow"]
    assert not leaked, "the cell read /etc/shadow"  # (its content is not repeated here)
    assert got["/etc/shadow"] in ("PermissionError", "FileNotFoundError")
    alive(hk)


def test_user_sockets_are_unreachable(hk: Kernel, sockets: dict[str, socket.socket]) -> None:
    need(hk, "filesystem")
    for path, server in sockets.items():
        res = hk.run(CONNECT.format(path=path))
        assert res.reply["status"] == "error", (path, res.outputs)
        assert res.reply["ename"] in ("PermissionError", "ConnectionRefusedError", "FileNotFoundError"), (
            res.reply
        )
        with pytest.raises(TimeoutError):
            server.accept()  # the server saw no connection
    hk.ok("import jax, jax.numpy as jnp\nfloat(jax.jit(lambda x: x @ x)(jnp.ones((64, 64))).sum())")
    alive(hk)


def test_a_worker_cannot_swap_the_mask_for_the_next_worker(tmp_path: Path) -> None:
    """With TMPDIR set to the notebook folder the state dir (and its mask file, which the next
    worker binds over every hidden file) landed where the worker could write: a cell replaced
    the mask and the next worker's hidden files showed the cell's content."""
    import tempfile

    secret_dir = Path(tempfile.mkdtemp(dir="/var/tmp"))
    secret = secret_dir / "token"
    secret.write_text("the real secret")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    km, kc = start_kernel(
        extra_arguments=[f"--Sandbox.hidden_paths={json.dumps([str(secret)])}"],
        env={**os.environ, "TMPDIR": str(notebooks)},
        cwd=str(notebooks),
    )
    k = Kernel(km, kc)
    try:
        res = k.ok(
            "import os, tempfile\n"
            "state = os.path.dirname(tempfile.gettempdir())\n"
            "print(state)\n"
            "for attempt in ('write', 'replace'):\n"
            "    try:\n"
            "        if attempt == 'write':\n"
            "            open(os.path.join(state, 'mask'), 'w').write('planted')\n"
            "        else:\n"
            "            open(os.path.join(state, 'fake'), 'w').write('planted')\n"
            "            os.replace(os.path.join(state, 'fake'), os.path.join(state, 'mask'))\n"
            "        print(attempt, 'done')\n"
            "    except OSError as e:\n"
            "        print(attempt, type(e).__name__)\n"
        )
        state, *attempts = res.stdout.split("\n")
        assert not Path(state).resolve().is_relative_to(notebooks.resolve()), state
        assert "done" not in res.stdout, res.stdout
        k.run("import os; os._exit(0)")  # the next worker masks the secret with the mask file
        res = k.run(f"print(repr(open({str(secret)!r}).read()))")
        assert "planted" not in res.stdout and "the real secret" not in res.stdout, res.stdout
        assert k.ok("6 * 7").of("execute_result")
    finally:
        stop_kernel(km, kc)
        secret.unlink()
        secret_dir.rmdir()


def test_no_state_dir_outside_the_writable_folders_is_one_line_at_start(tmp_path: Path) -> None:
    import subprocess

    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jax_kernel",
            f"--Sandbox.writable_paths={json.dumps(['/var/tmp', '~/.cache'])}",
            "-f",
            str(tmp_path / "kernel.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(notebooks),
        env={**os.environ, "TMPDIR": str(notebooks)},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert "start the kernel with TMPDIR outside the notebook folder" in proc.stdout + proc.stderr
