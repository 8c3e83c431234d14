"""The plumbing the benches and the tests share: one way to isolate the environment, start a kernel,
wait for it, run a cell and time it (the tables the benches print are in :mod:`tables`).

Why one module: a bench that waits for a kernel differently from the tests, or times a cell with a
loop of its own, measures its own harness as much as the kernel.  The tests import it as
``bench.harness`` (``tests/conftest.py`` puts the repository root on ``sys.path``); the benches,
run as ``python bench/bench_X.py``, as ``harness``.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jupyter_client import KernelManager
from jupyter_client.blocking import BlockingKernelClient
from traitlets.config import Config

try:
    import psutil
except ImportError:  # psutil is a dependency, but a bench should still run without its leak check
    psutil = None

TIMEOUT = 60
#: Kernels started here warm no pooled kernel process for the next one (JaxProvisioner.pool_size):
#: a test or a timing must not depend on, nor pay for, what an earlier start left warm.  The pool's
#: own tests and bench rows ask for it.
NO_POOL = Config({"JaxProvisioner": {"pool_size": 0}})
KERNEL_NAME = JAX = "jax"
#: The stock ipykernel, the reference every bench compares with (ipykernel's own kernelspec).
PY = "python3"


# environment ------------------------------------------------------------------------------------
def isolate_environment(prefix: str = "jax-kernel-tests-") -> str:
    """Point IPython's history, Jupyter's data/runtime dirs, the caches and the packages cells
    install into a new temporary directory, before any kernel starts, and return it.

    So a kernelspec installed by hand in ~/.local cannot shadow the one under test, a run starts
    from nothing (no compilation cache, no font cache) as CI does, and no user file is touched.
    """
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.environ["IPYTHONDIR"] = os.path.join(tmp, "ipython")
    os.environ["JUPYTER_DATA_DIR"] = os.path.join(tmp, "data")
    os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(tmp, "runtime")
    os.environ["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
    os.environ["XDG_DATA_HOME"] = os.path.join(tmp, "data-home")  # the packages %pip installs
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return tmp


def bench_environment() -> None:
    """What every bench runs under (kernels and subprocesses inherit it): JAX on the CPU, so both
    sides of a comparison use the same backend, and no deprecation chatter in timed output."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


# one kernel, one cell -------------------------------------------------------------------------------
@dataclass
class Result:
    """What a frontend saw for one execute_request: the reply, the IOPub messages and the time taken
    from the request to the later of the idle status and the reply."""

    reply: dict[str, Any]
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0
    msg_id: str = ""  # the execute_request's: what the frontend files the outputs under

    def of(self, msg_type: str) -> list[dict[str, Any]]:
        """The contents of the outputs of this type, in order."""
        return [c for t, c in self.outputs if t == msg_type]

    def stream(self, name: str) -> str:
        """Everything the cell wrote to this stream."""
        return "".join(c["text"] for t, c in self.outputs if t == "stream" and c["name"] == name)

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of("error")
        return errors[-1] if errors else None

    @property
    def status(self) -> str:
        return str(self.reply.get("status"))

    @property
    def ename(self) -> str | None:
        return self.reply.get("ename")


def launch(
    km: KernelManager, extra_arguments: Sequence[str] = (), **launch_kwargs: Any
) -> BlockingKernelClient:
    """Start the kernel process and connect a blocking client, without waiting for it."""
    km.start_kernel(extra_arguments=list(extra_arguments), **launch_kwargs)
    kc = km.client()
    kc.start_channels()
    return kc


def start_kernel(
    extra_arguments: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    **km_kwargs: Any,
) -> tuple[KernelManager, BlockingKernelClient]:
    """A kernel (``jax`` unless ``kernel_name=`` says otherwise) started as a frontend starts it,
    ready and with IOPub drained."""
    km = KernelManager(**{"kernel_name": KERNEL_NAME, "config": NO_POOL, **km_kwargs})
    launch_kwargs: dict[str, Any] = {"env": env} if env else {}
    if cwd:
        launch_kwargs["cwd"] = cwd  # the notebook's folder, as a frontend would give it
    kc = launch(km, extra_arguments or [], **launch_kwargs)
    kc.wait_for_ready(timeout=TIMEOUT)
    return km, kc


def stop_kernel(km: KernelManager, kc: BlockingKernelClient) -> None:
    """Disconnect and shut the kernel down politely, as a frontend does."""
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def _wait_for(get: Callable[..., dict[str, Any]], msg_id: str, msg_type: str, timeout: float) -> bool:
    end = time.perf_counter() + timeout
    while (left := end - time.perf_counter()) > 0:
        try:
            msg = get(timeout=left)
        except queue.Empty:
            return False
        if msg["parent_header"].get("msg_id") != msg_id or msg["msg_type"] != msg_type:
            continue
        if msg_type != "status" or msg["content"].get("execution_state") == "idle":
            return True
    return False


def wait_ready(km: KernelManager, kc: BlockingKernelClient, timeout: float = 120.0, name: str = "") -> None:
    """A kernel_info round trip on shell plus its idle status on IOPub, for timing a start.

    Why not ``kc.wait_for_ready()``: it ends by draining IOPub until 0.2 s of silence, which would
    add a fixed 0.2 s to every start-up number.  This stops as soon as the IOPub subscription is
    proven to work (the idle status for our own request), and re-asks if that status was lost to
    the subscription not being connected yet.  It re-asks every 0.1 s, zmq's reconnect interval:
    after a restart the SUB socket reconnects within that, and a longer wait would time the
    client, not the kernel (both kernels alike).
    """
    deadline = time.perf_counter() + timeout

    def left(cap: float) -> float:
        return min(cap, max(deadline - time.perf_counter(), 0.01))

    while True:
        msg_id = kc.kernel_info()
        if _wait_for(kc.get_shell_msg, msg_id, "kernel_info_reply", left(1.0)):
            if _wait_for(kc.get_iopub_msg, msg_id, "status", left(0.1)):
                return
        if not km.is_alive():
            raise BenchError(f"{name} kernel died before it answered kernel_info")
        if time.perf_counter() > deadline:
            raise BenchError(f"{name} kernel did not become ready in {timeout:g} s")


def execute(
    kc: BlockingKernelClient,
    code: str,
    timeout: float = TIMEOUT,
    stdin: Callable[[dict[str, Any]], str] | None = None,
    on_output: Callable[[str, dict[str, Any], float], None] | None = None,
    subshell_id: str | None = None,
    **kwargs: Any,
) -> Result:
    """Run one cell (in the main shell, or in subshell ``subshell_id``) and collect everything up
    to the idle status and the reply, answering input requests; messages for other requests are
    skipped.  The clock stops when the later of idle
    and reply has arrived, which is when a notebook considers the cell finished."""
    t0 = time.perf_counter()
    if subshell_id is None:
        msg_id = kc.execute(code, allow_stdin=stdin is not None, **kwargs)
    else:
        msg_id = send_to_subshell(kc, subshell_id, code, **kwargs)
    outputs: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while True:
        if stdin is not None:
            try:
                req = kc.get_stdin_msg(timeout=0.01)
            except queue.Empty:
                pass
            else:
                if req["parent_header"].get("msg_id") == msg_id:
                    kc.input(stdin(req["content"]))
        try:
            msg = kc.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no idle status within {timeout} s for {code!r}") from None
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status":
            if msg["content"]["execution_state"] == "idle":
                break
            continue
        if kind == "execute_input":
            continue
        if on_output is not None:
            on_output(kind, msg["content"], time.monotonic())
        outputs.append((kind, msg["content"]))
    while True:
        reply = kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 1))
        if reply["parent_header"].get("msg_id") == msg_id:
            return Result(reply["content"], outputs, time.perf_counter() - t0, msg_id)


# subshells (JEP 91) ------------------------------------------------------------------------------
def control_request(kc: BlockingKernelClient, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    """Send a control request (``create_subshell_request``, ...) and return its reply's content."""
    msg = kc.session.msg(msg_type, content)
    kc.control_channel.send(msg)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        reply = kc.get_control_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return dict(reply["content"])
    raise TimeoutError(f"no {msg_type} reply")


def create_subshell(kc: BlockingKernelClient) -> str:
    """A new subshell's id, as JupyterLab's "New Subshell Console" asks for one."""
    reply = control_request(kc, "create_subshell_request", {})
    if reply.get("status") != "ok":
        raise RuntimeError(f"create_subshell_request failed: {reply}")
    return str(reply["subshell_id"])


def send_to_subshell(
    kc: BlockingKernelClient, subshell_id: str, code: str, silent: bool = False, store_history: bool = True
) -> str:
    """Send an execute_request addressed to a subshell (its id in the header); its msg_id."""
    content = {
        "code": code,
        "silent": silent,
        "store_history": store_history,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    msg = kc.session.msg("execute_request", content)
    msg["header"]["subshell_id"] = subshell_id
    kc.shell_channel.send(msg)
    return str(msg["header"]["msg_id"])


# processes ---------------------------------------------------------------------------------------
def worker_pids(kernel_pid: int) -> list[int]:
    """The worker processes a kernel process has started (its worker and its standby)."""
    if psutil is None:
        return []
    try:
        children = psutil.Process(kernel_pid).children()
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            if "jax_kernel.worker" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def process_gone(pid: int, within: float = 10.0) -> bool:
    """Whether ``pid`` exits within ``within`` seconds (a zombie counts as gone: only its parent's
    wait is missing)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# benches: kernels that are always cleaned up ------------------------------------------------------
class BenchError(RuntimeError):
    """A kernel did something the benchmark did not expect (timeout, wrong reply)."""


@dataclass
class Notes:
    """Anything unexpected seen during a run: it goes under the table, never silently away."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)
        print(f"  note: {text}", file=sys.stderr, flush=True)


NOTES = Notes()


class BenchKernel:
    """One kernel and its blocking client; :meth:`shutdown` is idempotent so cleanup can't double-fail."""

    live: list[BenchKernel] = []  # every kernel not yet shut down, for the final cleanup

    def __init__(self, name: str, extra_arguments: Sequence[str] = (), config: Config | None = None) -> None:
        self.name = name
        self.extra_arguments = list(extra_arguments)
        self.km = KernelManager(kernel_name=name, config=config if config is not None else NO_POOL)
        self.kc: BlockingKernelClient | None = None
        self.worker_pids: set[int] = set()
        self.closed = False
        BenchKernel.live.append(self)

    def start(self, timeout: float = 120.0) -> None:
        """Start the process, connect, and wait until shell and IOPub both answer."""
        self.kc = launch(self.km, self.extra_arguments)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_ready(self.km, self._client(), timeout, self.name)

    def _client(self) -> BlockingKernelClient:
        if self.kc is None:
            raise BenchError(f"{self.name} kernel is not started")
        return self.kc

    def run(self, code: str, timeout: float = 120.0) -> Result:
        """Execute a cell the way a frontend does (see :func:`execute`)."""
        try:
            return execute(self._client(), code, timeout=timeout)
        except (queue.Empty, TimeoutError):
            raise BenchError(f"{self.name} kernel: cell {code!r} did not finish in {timeout:g} s") from None

    def run_ok(self, code: str, timeout: float = 120.0) -> Result:
        """Run a cell that must succeed."""
        cell = self.run(code, timeout)
        if cell.status != "ok":
            raise BenchError(f"{self.name} kernel: {code!r} failed: {cell.ename}: {cell.reply.get('evalue')}")
        return cell

    def note_workers(self) -> None:
        """Remember the worker processes under this kernel, to check later that none outlived it."""
        if psutil is None or self.km.provisioner is None:
            return
        pid = getattr(self.km.provisioner, "pid", None)
        try:
            children = psutil.Process(pid).children(recursive=True) if pid else []
        except psutil.Error:
            return
        self.worker_pids.update(p.pid for p in children)

    def restart(self, timeout: float = 120.0) -> None:
        """``KernelManager.restart_kernel()`` as a frontend's restart button does it, then ready."""
        self.km.restart_kernel()
        self.wait_ready(timeout)

    def shutdown(self) -> float:
        """Polite shutdown (as a frontend does); returns its duration and checks for orphans."""
        if self.closed:
            return 0.0
        self.closed = True
        t0 = time.perf_counter()
        try:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=False)
        finally:
            if self.kc is not None:
                self.kc.stop_channels()
            if self in BenchKernel.live:
                BenchKernel.live.remove(self)
        seconds = time.perf_counter() - t0
        self._check_orphans()
        return seconds

    def _check_orphans(self) -> None:
        if psutil is None:
            return
        for pid in self.worker_pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    NOTES.add(
                        f"{self.name} kernel: process {pid} ({' '.join(proc.cmdline())[:80]}) outlived it"
                    )
                    proc.kill()
            except psutil.Error:
                pass

    @classmethod
    def shutdown_all(cls) -> None:
        """Last-resort cleanup: every kernel still running is stopped, whatever happens."""
        for kernel in list(cls.live):
            try:
                kernel.shutdown()
            except (OSError, RuntimeError) as e:
                print(
                    f"could not shut down a {kernel.name} kernel politely ({e}); killing it", file=sys.stderr
                )
                kernel.km.shutdown_kernel(now=True)


def started(name: str, extra_arguments: Sequence[str] = ()) -> BenchKernel:
    """A kernel that has already run a cell, so later timings exclude its start-up."""
    kernel = BenchKernel(name, extra_arguments)
    kernel.start()
    kernel.run_ok("1")
    kernel.note_workers()
    return kernel


def settle(timeout: float = 60.0) -> float:
    """Wait until every process this bench started (kernels, their workers, the standby and spare
    processes that warm up in the background) is idle; the seconds waited.  Steady-state timings
    start here: a standby importing JAX on the other core is start-up, not what a cell costs."""
    t0 = time.perf_counter()
    if psutil is None:
        return 0.0
    while time.perf_counter() - t0 < timeout:
        try:
            procs = psutil.Process().children(recursive=True)
            before = [sum(p.cpu_times()[:2]) for p in procs]
            time.sleep(0.5)
            after = [sum(p.cpu_times()[:2]) for p in procs]
        except psutil.Error:
            continue
        if all(b - a < 0.02 for a, b in zip(before, after, strict=True)):
            return time.perf_counter() - t0
    NOTES.add(f"the kernels' processes were not idle after {timeout:g} s")
    return time.perf_counter() - t0


def printed_seconds(kernel: BenchKernel, code: str, mark: str) -> float:
    """Run ``code``, which prints ``MARK <seconds>`` (a time taken inside the cell), and return it."""
    cell = kernel.run_ok(code)
    m = re.search(mark + r" ([0-9.eE+-]+)", cell.stdout)
    if m is None:
        raise BenchError(f"{kernel.name}: the cell printed {cell.stdout[:200]!r}, not {mark}")
    return float(m.group(1))


def rounds_from_argv(argv: Sequence[str], doc: str) -> int:
    """``--quick`` (2 rounds) or ``--reps N`` (default 5), and the environment every bench runs in."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv[1:])
    bench_environment()
    return int(args.reps or (2 if args.quick else 5))
