"""What only code outside the sandbox could change: the evidence each attack is judged by.

Set up in the self-test's own process before the kernel starts, on the host, outside every
sandbox: a file and its metadata, a dot-file in the notebook folder, a marker a planted module
would write, a secret in the kernel's environment, a loopback server, a bystander process.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading

#: The kernel's environment carries the decoy secret under this name; no cell may see it.
SECRET_VAR = "JAX_KERNEL_SELFTEST_SECRET"
DECOY_TEXT = "decoy\n"
DECOY_MODE = 0o600
DECOY_MTIME = 1_000_000_000
DOTFILE_TEXT = "# the user's own\n"


class LoopbackDecoy:
    """A TCP server on the host's loopback that records who connects: a cell that reaches it
    reached every service there (another kernel's ports, a database, the Jupyter server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        """Stop listening; the count stays readable."""
        self._stop.set()
        self._thread.join()
        self.sock.close()


class Decoys:
    """The decoys of one run, in a folder of their own that :meth:`close` removes."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="jax-kernel-selftest-", dir=_decoy_base())
        self.notebooks = os.path.join(self.root, "notebooks")
        self.outside = os.path.join(self.root, "outside")
        os.mkdir(self.notebooks)
        os.mkdir(self.outside)
        self.decoy = os.path.join(self.outside, "decoy")
        with open(self.decoy, "w") as f:
            f.write(DECOY_TEXT)
        os.chmod(self.decoy, DECOY_MODE)
        os.utime(self.decoy, (DECOY_MTIME, DECOY_MTIME))
        self.marker = os.path.join(self.outside, "planted-code-ran")
        self.dotfile = os.path.join(self.notebooks, ".bashrc")  # notebooks in a home
        with open(self.dotfile, "w") as f:
            f.write(DOTFILE_TEXT)
        self.secret = secrets.token_hex(16)
        self.loopback = LoopbackDecoy()
        self.bystander = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)

    def close(self) -> None:
        """Stop the server and the bystander, and remove the folder (the kernel's log with it)."""
        self.loopback.close()
        self.bystander.kill()
        self.bystander.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _decoy_base() -> str:
    # Not /tmp: a worker with a private /tmp would not see the decoys at all, which proves
    # nothing.  /var/tmp is visible to the worker and not writable by it.
    return "/var/tmp" if os.access("/var/tmp", os.W_OK) else tempfile.gettempdir()
