"""Kernel side of one worker process: spawning it, reading its wire and its diagnostics.

The event loop reads the wire itself (validated, size-bounded JSON frames, each handled as
it is read: a widget's answer reaches IOPub with no thread hop), and a daemon thread reads
the worker's original stderr (kept as a bounded tail, so that a crash report can quote what
faulthandler printed).  Nothing the worker sends can raise in the kernel: bad frames are logged
and reported, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..protocol import wire
from ..protocol.budget import COUNTED, OutputBudget, output_size
from ..protocol.importpath import python_module_command

#: Frames handled per turn of the event loop before other callbacks get theirs.
FRAMES_PER_TURN = 64
#: Bytes of the worker's stderr kept for crash reports.
DIAG_TAIL = 16 * 1024
#: Bytes of the worker's stderr the kernel logs (the rest is counted, and kept in the tail).
DIAG_LOGGED = 4 * 1024
#: Escape sequences and control characters, stripped from logged stderr (a terminal reading the
#: log must not be driven by a cell).
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*(\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f]")

SIGNAL_MEANINGS = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating-point exception",
    signal.SIGILL: "illegal instruction",
    signal.SIGTERM: "terminated",
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
}


def describe_exit(returncode: int | None) -> str:
    """Say in words how a worker process ended, for the cell that saw it happen."""
    if returncode is None:
        return "stopped responding"
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"was killed by signal {-returncode}"
    if sig == signal.SIGKILL:
        return "was killed by SIGKILL, likely out of memory (the OOM killer or a memory limit)"
    meaning = SIGNAL_MEANINGS.get(sig)
    return f"was killed by signal {sig.name}" + (f" ({meaning})" if meaning else "")


@dataclass
class Spawned:
    """A worker process just started, not yet watched: what :class:`WorkerProcess` takes over.

    Spawning needs no event loop, so a spare kernel process can start its standby worker before
    the kernel (and its loop) exists.
    """

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    sandbox: Any = None
    started_at: float = field(default_factory=time.monotonic)


def spawn(
    argv: list[str],
    env: Mapping[str, str],
    config: dict[str, Any],
    sandbox: Any = None,
    cwd: str | None = None,
) -> Spawned:
    """Start ``argv`` with one end of a socketpair (the wire) and its JSON config as arguments.

    The config (the sandbox policy with every hidden and writable path) goes on a memfd named
    ``@FD``, not on the command line, which any process of the host can read in /proc."""
    parent_sock, child_sock = socket.socketpair()
    child_fd = child_sock.fileno()
    config = dict(config, parent_pid=os.getpid())
    config_fd = os.memfd_create("jax-kernel-worker-config")
    try:
        os.write(config_fd, json.dumps(config).encode())
        os.lseek(config_fd, 0, os.SEEK_SET)
        proc = subprocess.Popen(
            [*argv, str(child_fd), f"@{config_fd}"],
            pass_fds=(child_fd, config_fd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # the kernel, not the terminal, decides who gets SIGINT
            env=dict(env),
            cwd=cwd,
        )
    finally:
        child_sock.close()
        os.close(config_fd)
    return Spawned(proc, parent_sock, sandbox)


class WireReader:
    """Reads one worker connection on the event loop, in bounded turns, until it is closed.

    A turn handles at most FRAMES_PER_TURN frames, so a flood cannot starve the loop, and when it
    stops at that bound it schedules the next turn itself: ``Connection.recv`` takes up to 1 MiB from
    the socket at once, so after a burst of small frames complete ones wait in its buffer while the
    socket, drained, no longer wakes the selector (a cell printing 10,000 flushed lines left its
    reply there for good).  Consecutive ``stream`` frames of one stream read in a turn reach
    ``on_message`` as one message of at most ``wire.STREAM_CHUNK`` characters, as ipykernel batches
    a flush interval's writes; order is kept, and every other message ends the batch.

    ``on_error`` gets every failure of the wire: a :class:`wire.WireError` for one bad frame (the
    reader goes on unless the callback closes it), ``EOFError``/``OSError`` once the peer is gone.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: wire.Connection,
        on_message: Callable[[dict[str, Any]], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self.conn = conn
        self._loop = loop
        self._on_message = on_message
        self._on_error = on_error
        self._fd = conn.fileno()
        self.closed = False
        self._held: dict[str, Any] | None = None  # stream frames read in a row this turn, joined
        #: When the last message other than a heartbeat was read (time.monotonic()), 0.0 before the first.
        self.last_frame_at = 0.0
        loop.add_reader(self._fd, self.turn)

    def turn(self) -> None:
        """Handle the frames that are complete, at most FRAMES_PER_TURN of them."""
        try:
            for _ in range(FRAMES_PER_TURN):
                if self.closed:
                    return
                try:
                    msg = self.conn.recv(timeout=0)
                    if msg is None:
                        return
                    wire.validate_worker_message(msg)
                except (EOFError, OSError, wire.WireError) as e:
                    self._release_stream()
                    self._on_error(e)
                    continue
                if msg["type"] != "heartbeat":  # a set member's heartbeat thread runs whatever the cell does
                    self.last_frame_at = time.monotonic()
                if msg["type"] == "stream":
                    self._hold_stream(msg)
                    continue
                self._release_stream()
                if not self.closed:
                    self._on_message(msg)
            if not self.closed:
                self._loop.call_soon(self.turn)  # bytes may wait in the buffer: see the class docstring
        finally:
            self._release_stream()

    def _hold_stream(self, msg: dict[str, Any]) -> None:
        """Join ``msg`` to the stream text held back in this turn, or hold it instead of that."""
        held = self._held
        if held is not None and held["name"] == msg["name"]:
            if len(held["text"]) + len(msg["text"]) <= wire.STREAM_CHUNK:
                held["text"] += msg["text"]
                return
        self._release_stream()
        self._held = msg

    def _release_stream(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._on_message(held)

    def pending(self) -> bool:
        """Whether frames have arrived that were not handled yet (buffered, or still in the socket)."""
        if self.closed:
            return False
        if self.conn.has_frame():
            return True
        try:
            ready, _, _ = select.select([self._fd], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(ready)

    def close(self) -> None:
        """Stop reading and close the connection (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self._fd)
        except (ValueError, OSError, RuntimeError):
            pass  # the loop is closed: the kernel is shutting down
        self.conn.close()


class WorkerProcess:
    """One running worker: its process, its wire connection and the threads that read them."""

    #: How a death report names what died and what replaced it (a set of processes says its own).
    subject = "The worker process"
    fresh = "A fresh worker was started"
    #: One process, started within ``WorkerManager.start_timeout``, under the manager's own lease.
    processes = 1
    start_timeout_setting = "WorkerManager.start_timeout"
    lease: Any = None

    def __init__(
        self,
        *,
        spawned: Spawned,
        max_frame: int,
        stream_limit: int,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[WorkerProcess, dict[str, Any]], None],
        on_problem: Callable[[WorkerProcess, str], None],
        on_exit: Callable[[WorkerProcess, int | None], None],
        log: logging.Logger,
    ) -> None:
        self.log = log
        self._loop = loop
        self._on_message = on_message
        self._on_problem = on_problem
        self._on_exit = on_exit
        self.kill_reason: str | None = None
        self.sandbox: Any = spawned.sandbox  # the WorkerSandbox the manager prepared for this worker
        self.ready = loop.create_future()
        self.stream_budget = OutputBudget(stream_limit)
        self._diag = bytearray()
        self._diag_lock = threading.Lock()
        self.started_at = spawned.started_at
        self.proc = spawned.proc
        self.pid = self.proc.pid
        self.conn = wire.Connection(spawned.sock, max_frame=max_frame)
        self.reader = WireReader(loop, self.conn, self._frame, self._wire_error)
        threading.Thread(target=self._read_diag, name=f"worker-{self.pid}-diag", daemon=True).start()

    # reading ------------------------------------------------------------------
    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, self, *args)
        except RuntimeError:
            pass  # the loop is closed: the kernel is shutting down

    def _frame(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "stream":
            text = self.stream_budget.admit(msg["text"])
            if not text:
                return
            msg["text"] = text
        elif kind in COUNTED and not self.stream_budget.admit_message(output_size(msg)):
            return
        self._on_message(self, msg)

    def _wire_error(self, error: Exception) -> None:
        if isinstance(error, wire.WireError):  # a bad frame is reported and skipped
            self.log.warning("Dropped a bad frame from worker %s: %s", self.pid, error)
            self._on_problem(self, f"dropped a malformed message from the worker ({error})")
            return
        # The worker closed its end (it exited, or is about to): reap it off the loop.
        self.reader.close()
        threading.Thread(target=self._reap, name=f"worker-{self.pid}-reap", daemon=True).start()

    def _reap(self) -> None:
        returncode: int | None
        try:
            returncode = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            # It closed its end of the wire but lives on: it is of no use to anyone.
            self.log.warning("Worker %s closed its connection but did not exit; killing it", self.pid)
            self.kill("it closed its connection without exiting")
            returncode = self.proc.wait()
        self._post(self._on_exit, returncode)

    def _read_diag(self) -> None:
        """Keep the tail of the worker's own stderr for crash reports; log only the first
        ``DIAG_LOGGED`` bytes of it: a cell can write there (``os.write(2, ...)``), and the
        server's log is not the cell's to fill (bench/RESULTS.md, "Measurements behind design choices")."""
        assert self.proc.stderr is not None
        logged = unlogged = 0
        for line in iter(self.proc.stderr.readline, b""):
            with self._diag_lock:
                self._diag += line[:DIAG_TAIL]
                del self._diag[:-DIAG_TAIL]
            if logged < DIAG_LOGGED:
                text = _CONTROL.sub("", line[: DIAG_LOGGED - logged].decode("utf-8", "replace")).rstrip()
                logged += len(line)
                self.log.warning("worker %s: %s", self.pid, text)
                if logged >= DIAG_LOGGED:
                    self.log.warning(
                        "worker %s: its further stderr is not logged (kept for a crash report)", self.pid
                    )
            else:
                unlogged += len(line)
        if unlogged:
            self.log.warning("worker %s: %d more bytes of stderr were not logged", self.pid, unlogged)
        self.proc.stderr.close()

    def catch_up(self, turns: int = 16) -> None:
        """Handle now what the worker has sent and the loop has not read yet (a bounded amount)."""
        for _ in range(turns):
            if not self.reader.pending():
                return
            self.reader.turn()

    def last_frame_at(self) -> float:
        """When the worker's last message was read (time.monotonic())."""
        return self.reader.last_frame_at

    # control --------------------------------------------------------------------
    def diagnostics(self) -> str:
        """The last lines the worker wrote to its original stderr (faulthandler's stack, ...)."""
        with self._diag_lock:
            return self._diag.decode("utf-8", "replace")

    def send(self, msg: Mapping[str, Any]) -> bool:
        """Send a request; False if the worker is gone (its exit is reported separately)."""
        try:
            self.conn.send(msg)
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        """Whether the process has not exited yet."""
        return self.proc.poll() is None

    def interrupt(self) -> None:
        """Deliver SIGINT to the worker alone."""
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def kill(self, reason: str) -> None:
        """SIGKILL the worker, remembering why so its exit can be explained."""
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): the worker must not outlive the kernel."""
        if self.alive():
            self.kill("the kernel exited")

    def wait(self, timeout: float) -> int | None:
        """Wait for the process to exit; None if it is still running."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def default_worker_argv() -> list[str]:
    """The worker runs in the kernel's interpreter unless configured otherwise."""
    return python_module_command("jax_kernel.worker")
