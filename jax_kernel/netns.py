"""Kernel side: a private network namespace that the members of a set join, and nothing else.

Under a policy without network (``strict``), one worker gets a network namespace of its own with
nothing in it.  A set's members must reach each other (JAX's coordinator, gloo's collectives) but
nothing else: before, they were let out with Landlock's TCP port rules, which left every port of
the ephemeral range (every kernel's zmq ports) and all of UDP open.  Instead the kernel makes one
namespace per set with only a loopback interface up, held by a small process of its own, and each
member on this host joins it (``setns``) while it applies its sandbox.  A member's wire to the
kernel was connected before, in the host's namespace, and keeps working: a socket stays in the
namespace it was made in.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

from .importpath import SAFE_PATH_FLAG

#: The holder: a new network namespace, loopback up, then wait for the kernel to go (stdin EOF).
_HOLDER = """\
import ctypes, fcntl, os, signal, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, signal.SIGKILL, 0, 0, 0)
if libc.unshare(0x40000000) != 0:
    print("unshare(CLONE_NEWNET) failed:", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, struct.pack("16sH14s", b"lo", 0, b"")))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))
s.close()
print("ready", flush=True)
sys.stdin.read()
"""


class NetworkError(RuntimeError):
    """No private network namespace could be made here (the reason is the message)."""


class PrivateNetwork:
    """One network namespace with only loopback, for the members of one set on this host."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, SAFE_PATH_FLAG, "-c", _HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline().decode(errors="replace").strip() if ready else "no answer"
        if line != "ready":
            self.close()
            raise NetworkError(line or "the namespace's holder exited")

    @property
    def path(self) -> str:
        """What a member opens to join the namespace."""
        return f"/proc/{self._proc.pid}/ns/net"

    def close(self) -> None:
        """End the holder; the namespace goes when its last member has left."""
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
