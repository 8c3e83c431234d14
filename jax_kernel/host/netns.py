"""Kernel side: network namespaces for workers, held by a small process of the kernel's own.

Two uses:

* **A set's private network** (a policy without network, ``strict``): one namespace per set with
  only loopback up; each member on this host joins it (``setns``) while it applies its sandbox,
  so members reach each other (JAX's coordinator, gloo's collectives) and nothing else.  Before,
  they were let out with Landlock's TCP port rules, which left the whole ephemeral range (every
  kernel's zmq ports) and all of UDP open.
* **User-mode egress** (:class:`Egress`, the ``standard`` profile): the internet as before, but not
  the host's loopback, where every kernel's ports, the Jupyter server, tmux-less local services and
  other notebooks' debug ports listen.  ``slirp4netns --disable-host-loopback`` gives the namespace
  a NAT'd interface; the host ports the deployer names are forwarded by the kernel
  (:mod:`jax_kernel.host.portforward`).

A socket stays in the namespace it was made in: a worker's or member's wire to the kernel,
connected before it joins, keeps working, and the listening sockets the holder makes inside the
namespace keep accepting there when the kernel holds them.
"""

from __future__ import annotations

import ipaddress
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from .portforward import Forwarder

#: The holder: a new network namespace, loopback up, the listeners asked for (``tcp:PORT`` or
#: ``udp:PORT`` on 127.0.0.1) sent to the kernel over the fd in argv[1], then wait for the kernel to go.
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
socks = []
for spec in sys.argv[2:]:
    kind, port = spec.split(":")
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        t.bind(("127.0.0.1", int(port)))
    except OSError as e:
        print(f"could not listen on {spec} in the namespace: {e.strerror}", flush=True)
        sys.exit(1)
    if kind == "tcp":
        t.listen(64)
    socks.append(t)
chan = socket.socket(fileno=int(sys.argv[1]))
socket.send_fds(chan, [b"fds"], [t.fileno() for t in socks])
for t in socks:
    t.close()
print("ready", flush=True)
sys.stdin.read()
"""


class NetworkError(RuntimeError):
    """No private network namespace could be made here (the reason is the message)."""


class PrivateNetwork:
    """One network namespace with only loopback (and the listeners asked for) up."""

    def __init__(self, timeout: float = 10.0, listen: Sequence[str] = ()) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listeners: list[socket.socket] = []
        try:
            # -I -S: the holder runs outside any sandbox and imports only the standard library.
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HOLDER, str(theirs.fileno()), *listen],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        finally:
            theirs.close()
        assert self._proc.stdout is not None
        try:
            if listen:
                ours.settimeout(timeout)
                try:
                    _, fds, _, _ = socket.recv_fds(ours, 16, len(listen))
                except OSError:
                    fds = []
                self.listeners = [socket.socket(fileno=fd) for fd in fds]
            ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
            line = self._proc.stdout.readline().decode(errors="replace").strip() if ready else "no answer"
        finally:
            ours.close()
        if line != "ready" or len(self.listeners) != len(listen):
            self.close()
            raise NetworkError(line or "the namespace's holder exited")

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def path(self) -> str:
        """What a member opens to join the namespace."""
        return f"/proc/{self._proc.pid}/ns/net"

    def alive(self) -> bool:
        """The holder still runs (the namespace's path still names it)."""
        return self._proc.poll() is None

    def close(self) -> None:
        """End the holder; the namespace goes when its last member has left."""
        for s in self.listeners:
            s.close()
        self.listeners = []
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


def host_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The host resolver's addresses, in order (an unreadable file: none)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.split()[:1] == ["nameserver"] and len(ln.split()) > 1]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class Egress:
    """One kernel's user-mode egress: a namespace, slirp4netns attached to it, host ports forwarded.

    DNS: a resolver the host reaches over the network is reached the same way from inside, and
    the worker keeps the host's ``/etc/resolv.conf``.  A resolver on the host's loopback
    (systemd-resolved's 127.0.0.53, dnsmasq) is forwarded like a host port, to ``127.0.0.1:53``
    inside, and the worker's ``/etc/resolv.conf`` says so (:attr:`resolv_conf`).  slirp4netns's
    own DNS forwarder is off: it sends whatever port a cell names at 10.0.2.3 on to the host's
    resolver address, a way onto loopback services.
    """

    def __init__(
        self,
        host_ports: Sequence[int] = (),
        resolv_conf: str = "/etc/resolv.conf",
        timeout: float = 10.0,
    ) -> None:
        slirp = shutil.which("slirp4netns")
        if slirp is None:
            raise NetworkError("slirp4netns is not installed (Debian: apt install slirp4netns)")
        self.host_ports = sorted(set(host_ports))
        servers = host_nameservers(resolv_conf)
        local_dns = next((a for a in servers if _is_loopback(a)), None)
        if local_dns is not None and 53 in self.host_ports:
            raise NetworkError("Sandbox.host_ports names 53, where the host's resolver is forwarded")
        listen = [f"tcp:{p}" for p in self.host_ports]
        if local_dns is not None:
            listen += ["tcp:53", "udp:53"]
        started = time.monotonic()
        self.network = PrivateNetwork(timeout, listen)
        self._forwarder = Forwarder()
        self._slirp: subprocess.Popen[bytes] | None = None
        try:
            for port, listener in zip(self.host_ports, self.network.listeners, strict=False):
                self._forwarder.tcp(listener, ("127.0.0.1", port))
            self.resolv_conf: str | None = None
            if local_dns is not None:
                tcp53, udp53 = self.network.listeners[len(self.host_ports) :]
                self._forwarder.tcp(tcp53, (local_dns, 53))
                self._forwarder.udp(udp53, (local_dns, 53))
                self.resolv_conf = _rewrite_resolv_conf(resolv_conf, local_dns)
            self._start_slirp(slirp, timeout)
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - started

    def _start_slirp(self, slirp: str, timeout: float) -> None:
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        self._exit_w: int | None = exit_w
        try:
            self._slirp = subprocess.Popen(
                [
                    slirp,
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    "--disable-dns",
                    "--enable-sandbox",
                    "--enable-seccomp",
                    "--netns-type=path",
                    f"--ready-fd={ready_w}",
                    f"--exit-fd={exit_r}",
                    self.network.path,
                    "tap0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(ready_w, exit_r),
                start_new_session=True,
            )
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            ready, _, _ = select.select([ready_r], [], [], timeout)
            got = os.read(ready_r, 1) if ready else b""
        finally:
            os.close(ready_r)
        if got != b"1":
            err = b""
            if self._slirp.poll() is not None and self._slirp.stderr is not None:
                err = self._slirp.stderr.read()
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
            raise NetworkError(f"slirp4netns did not come up: {last[0]}")
        assert self._slirp.stderr is not None
        self._slirp.stderr.close()  # its chatter ("sent tapfd=...") is not ours to keep

    @property
    def path(self) -> str:
        return self.network.path

    def describe(self) -> str:
        ports = ", ".join(map(str, self.host_ports)) or "none (Sandbox.host_ports)"
        return (
            "user-mode egress (slirp4netns): the internet, not the host's loopback or other kernels' "
            f"ports; host ports forwarded: {ports}"
        )

    def alive(self) -> bool:
        return self._slirp is not None and self._slirp.poll() is None and self.network.alive()

    def close(self) -> None:
        self._forwarder.close()
        exit_w = getattr(self, "_exit_w", None)
        if exit_w is not None:
            os.close(exit_w)
            self._exit_w = None
        if self._slirp is not None:
            try:
                self._slirp.wait(5)
            except subprocess.TimeoutExpired:
                self._slirp.kill()
                self._slirp.wait()
            self._slirp = None
        self.network.close()


def _rewrite_resolv_conf(path: str, local_dns: str) -> str:
    """The host's resolv.conf with its loopback nameservers replaced by the forwarded 127.0.0.1."""
    with open(path) as f:
        lines = f.read().splitlines()
    out, said = [], False
    for ln in lines:
        words = ln.split()
        if words[:1] == ["nameserver"] and len(words) > 1 and _is_loopback(words[1]):
            if not said:
                out.append("nameserver 127.0.0.1")
                said = True
            continue
        out.append(ln)
    return "\n".join(out) + "\n"
