"""Output capture in the worker: Python-level text streams and the raw stdout/stderr descriptors.

Output is batched (a flush at most every ``flush_interval`` seconds, or at once past
one chunk) so a loop printing 100 000 lines costs a few hundred frames, not 100 000,
and it still streams while the cell runs.  Each cell has an output budget: past it the
text is dropped here, before it crosses the wire, and one notice says how much.

Text is tagged with the request it belongs to when it is *written* (the writing thread's
parent, :mod:`.parents`), not when the flusher sends it, so a thread printing for an earlier
cell stays with that cell.  The streams are ``ipykernel.iostream.OutStream`` subclasses, as
code checks ``isinstance(sys.stdout, OutStream)`` to tell it runs in a kernel.
"""

from __future__ import annotations

import codecs
import io
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from ipykernel import iostream

from ..protocol import wire
from ..protocol.budget import OutputBudget
from .parents import ParentAPI, Parents
from .threads import service_thread

Send = Callable[[dict[str, Any]], None]


class OutStream(ParentAPI, iostream.OutStream):  # type: ignore[misc]
    """A text stream that sends ``stream`` messages, batched on a flusher thread."""

    def __init__(
        self,
        name: str,
        send: Send,
        budget: OutputBudget,
        flush_interval: float,
        parents: Parents | None = None,
    ) -> None:
        io.TextIOBase.__init__(self)  # not ipykernel's: it would start an IOPub thread and watch fds
        self.name = name
        self.session = None
        self.pub_thread = None
        self._master_pid = os.getpid()  # ipykernel's: a forked child's stream knows it is one
        self._send = send
        self._budget = budget
        self._interval = flush_interval
        self._parents = parents or Parents()
        self._buf: list[str] = []
        self._buf_request: int | None = None  # the request the buffered text belongs to
        self._size = 0
        self._last_send = 0.0
        self._flusher_pid = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # io.TextIOBase API ------------------------------------------------------
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "UTF-8"  # spelled as ipykernel's OutStream spells it: code compares the string

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:  # type: ignore[override]
        return False

    def close(self) -> None:
        self.flush_now()  # sys.stdout outlives a cell that closes it, as ipykernel's does

    def _kept_by(self) -> Parents:
        return self._parents

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # Libraries that ask for a descriptor (faulthandler, subprocess) get the real fd,
        # which FdCapture forwards as well.
        return 1 if self.name == "stdout" else 2

    def write(self, text: str) -> int:  # type: ignore[override]
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        return self.write_for(text, self._parents.request_id())

    def writelines(self, lines: Any) -> None:  # type: ignore[override]
        for line in lines:
            self.write(line)

    def write_for(self, text: str, request: int | None) -> int:
        """Write ``text`` as output of kernel request ``request`` (None: no known request)."""
        if not text:
            return 0
        with self._cond:
            if self._buf and request != self._buf_request:
                self._flush_locked()  # what is buffered belongs to another request
            self._buf_request = request
            self._buf.append(text)
            self._size += len(text)
            if self._size >= wire.STREAM_CHUNK:
                self._flush_locked()
            elif len(self._buf) == 1:
                self._ensure_thread()
                self._cond.notify()
        return len(text)

    def flush(self) -> None:
        """``flush()`` from cell code (``print(..., flush=True)``): at once, unless this stream sent
        less than a flush interval ago; then the flusher sends it when that interval ends.

        A loop that flushes every line would otherwise be one message per line, each signed and
        relayed by the kernel: 6,000 of them in a second outran a frontend's IOPub queue (ZeroMQ
        drops past its high-water mark) and lines went missing.  ipykernel's IO thread batches
        such flushes the same way."""
        with self._cond:
            if (
                self._buf
                and time.monotonic() - self._last_send < self._interval
                and self._flusher_pid == os.getpid()  # not in a forked child: no flusher there
            ):
                self._ensure_thread()  # already told at the first write; sends at its deadline
                return
            self._flush_locked()

    def flush_now(self) -> None:
        """Send what is buffered now: before a display, an input prompt or a reply, so that the
        text arrives before what follows it."""
        with self._cond:
            self._flush_locked()

    # internals --------------------------------------------------------------
    def _flush_locked(self, whole_lines: bool = False) -> None:
        """Send the buffer; ``whole_lines`` (the flusher, on its own schedule): up to its last line
        end, keeping a line still being written for the next round, so that a message does not end
        between ``print``'s text and its newline (in a set, another process's line would be glued
        to it).  A buffer with no line end at all (a prompt) is sent whole."""
        if not self._buf:
            return
        text = "".join(self._buf)
        self._buf.clear()
        self._size = 0
        if whole_lines:
            cut = max(text.rfind("\n"), text.rfind("\r")) + 1
            if 0 < cut < len(text):
                text, rest = text[:cut], text[cut:]
                self._buf.append(rest)
                self._size = len(rest)
        text = self._budget.admit(text)
        self._last_send = time.monotonic()
        tag = {} if self._buf_request is None else {wire.REQUEST_FIELD: self._buf_request}
        for i in range(0, len(text), wire.STREAM_CHUNK):
            self._send({"type": "stream", "name": self.name, "text": text[i : i + wire.STREAM_CHUNK], **tag})

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = service_thread(self._flusher, f"{self.name}-flusher")
            self._flusher_pid = os.getpid()

    def _flusher(self) -> None:
        with self._cond:
            while True:
                while not self._buf:
                    self._cond.wait()
                deadline = time.monotonic() + self._interval
                while (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                try:
                    self._flush_locked(whole_lines=True)
                except OSError:
                    return  # the kernel is gone; the worker is about to exit


class FdCapture:
    """Forwards what C code and subprocesses write to file descriptors 1 and 2.

    The descriptors are replaced by pipes; a thread relays their bytes as ``stream``
    messages.  ``drain()`` lets the main thread relay what is pending before a reply so
    that output written just before a cell ends is not reported after it.
    """

    def __init__(self, streams: dict[int, OutStream]) -> None:
        self._streams = streams
        self._pipes: dict[int, int] = {}
        self._decoders: dict[int, codecs.IncrementalDecoder] = {}
        self._lock = threading.Lock()
        for fd in streams:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.dup2(w, fd)
            os.close(w)
            self._pipes[r] = fd
            self._decoders[r] = codecs.getincrementaldecoder("utf-8")("replace")
        self._thread = service_thread(self._relay, "fd-capture")

    def _read(self, r: int) -> bool:
        try:
            data = os.read(r, 65536)
        except BlockingIOError:
            return False
        if data:
            self._streams[self._pipes[r]].write(self._decoders[r].decode(data))
        return bool(data)

    def _relay(self) -> None:
        while True:
            ready, _, _ = select.select(list(self._pipes), [], [])
            with self._lock:
                for r in ready:
                    self._read(r)

    def drain(self) -> None:
        """Relay whatever is waiting in the pipes now, then flush the streams."""
        with self._lock:
            for _ in range(64):  # bounded: a background writer must not stall the reply
                ready, _, _ = select.select(list(self._pipes), [], [], 0)
                if not any([self._read(r) for r in ready]):
                    break
        for stream in self._streams.values():
            stream.flush_now()
