"""Kernel side: carry connections from inside a worker's network namespace to chosen host ports.

A worker under user-mode egress (:class:`jax_kernel.host.netns.Egress`) can't reach the host's
loopback: that is where every kernel's ports, the Jupyter server and local services listen.  The
services the deployer names (``Sandbox.host_ports``: a local database, MLflow, a model server)
are brought back one port at a time: the namespace's holder makes a listening socket at
``127.0.0.1:PORT`` *inside* the namespace and hands it to the kernel, and the kernel, whose own
sockets live in the host's namespace, accepts there and connects to the host's ``127.0.0.1:PORT``.
So a cell reaches exactly those ports at the addresses it would use outside the sandbox, and
nothing else on the host.  The same carries DNS when the host's resolver listens on loopback.

Threads, not the kernel's event loop: the traffic is a deployer's service, possibly bulk data,
and must not hold up the kernel's messages.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time

log = logging.getLogger(__name__)

#: Bytes moved per read.
CHUNK = 1 << 16
#: Seconds a UDP flow (one DNS query's client port) is kept after its last datagram.
UDP_IDLE = 30.0


class Forwarder:
    """Every forward of one namespace; :meth:`close` ends them all."""

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def _keep(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.update(socks)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._sockets.discard(s)
                try:
                    s.close()
                except OSError:
                    pass

    def tcp(self, listener: socket.socket, target: tuple[str, int]) -> None:
        """Accept on ``listener`` (in the namespace) and join each connection to ``target``."""
        self._keep(listener)
        threading.Thread(
            target=self._accept, args=(listener, target), daemon=True, name="forward-accept"
        ).start()

    def udp(self, inside: socket.socket, target: tuple[str, int]) -> None:
        """Relay datagrams between ``inside`` (bound in the namespace) and ``target``."""
        self._keep(inside)
        threading.Thread(
            target=self._relay_udp, args=(inside, target), daemon=True, name="forward-udp"
        ).start()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            socks, self._sockets = list(self._sockets), set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    # TCP ---------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket, target: tuple[str, int]) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                out = socket.create_connection(target, timeout=10)
                out.settimeout(None)
            except OSError as e:
                log.info("Forwarded port %s: the host's service did not answer (%s)", target[1], e)
                conn.close()
                continue
            self._keep(conn, out)
            ends = [2]  # directions still open; the last one to finish closes both sockets
            for a, b in ((conn, out), (out, conn)):
                threading.Thread(
                    target=self._pump, args=(a, b, ends), daemon=True, name="forward-tcp"
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, ends: list[int]) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # pass the end of this direction on, keep the other
        except OSError:  # a reset: end the other direction too
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        with self._lock:
            ends[0] -= 1
            last = ends[0] == 0
        if last:
            self._drop(src, dst)

    # UDP ---------------------------------------------------------------------------------
    def _relay_udp(self, inside: socket.socket, target: tuple[str, int]) -> None:
        flows: dict[tuple[str, int], socket.socket] = {}
        clients: dict[socket.socket, tuple[str, int]] = {}
        last: dict[socket.socket, float] = {}
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([inside, *clients], [], [], 5.0)
            except (OSError, ValueError):
                break
            now = time.monotonic()
            for s in ready:
                try:
                    if s is inside:
                        data, client = inside.recvfrom(CHUNK)
                        out = flows.get(client)
                        if out is None:
                            out = flows[client] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            out.connect(target)
                            clients[out] = client
                        out.send(data)
                        last[out] = now
                    else:
                        data = s.recv(CHUNK)
                        inside.sendto(data, clients[s])
                        last[s] = now
                except OSError:
                    if s is inside:
                        return
            for s, t in list(last.items()):
                if now - t > UDP_IDLE:
                    flows.pop(clients.pop(s), None)
                    last.pop(s)
                    s.close()
        for s in clients:
            s.close()
