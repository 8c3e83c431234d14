"""Kernel process: the adapter between a set and the ipyparallel engine-set launcher that places it.

Placing processes on hosts is a cluster engine's job, so the set never does it: an ipyparallel
*engine set launcher* (local processes, ``mpiexec``, SLURM, PBS, SGE, LSF, HTCondor, SSH, or any
class registered in the ``ipyparallel.engine_launchers`` entry-point group) starts jax-kernel's
member command instead of ``ipengine``.  Everything the set needs to know about ipyparallel's
launchers lives here: how one is made and started, which processes it started on this host, the
exit status it saw for a member, its output, and how it is stopped when nothing runs here.  The
launchers differ (some wait on threads of their own, some are batch jobs), and this is the one
place that knows how.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

from .settings import ProcessSet

#: How much of the launcher's output (the members' original stderr) a crash report quotes.
DIAG_TAIL = 4000

_ids = itertools.count(1)


def make_dir() -> str:
    """A private folder for the connection file and the launcher's logs (its "profile dir")."""
    from jupyter_core.paths import jupyter_runtime_dir

    base = jupyter_runtime_dir()
    os.makedirs(base, exist_ok=True)
    for stale in os.listdir(base):  # left by kernels that were killed
        parts = stale.split("-")
        if stale.startswith("jax-set-") and len(parts) == 4 and parts[2].isdigit():
            if not _pid_alive(int(parts[2])):
                shutil.rmtree(os.path.join(base, stale), ignore_errors=True)
    path = os.path.join(base, f"jax-set-{os.getpid()}-{next(_ids)}")
    os.makedirs(os.path.join(path, "log"), mode=0o700)
    os.chmod(path, 0o700)
    return path


class SetLauncher:
    """One set's ipyparallel launcher (``launcher`` is None until it was made, or if it could not be)."""

    def __init__(self, options: ProcessSet, name: str, directory: str, log: logging.Logger) -> None:
        self.name = name
        self.launcher: Any = None
        self._options = options
        self._dir = directory
        self.log = log

    def start(self, count: int, conn_file: str, on_stop: Callable[[Any], None]) -> None:
        """Make the launcher and start ``count`` members; raises whatever the launcher raises."""
        cls = self._options.launcher_class(self.name)
        launcher = cls(
            config=self._options.launcher_config(),
            log=self.log,
            profile_dir=self._dir,
            cluster_id=os.path.basename(self._dir),
            work_dir=os.getcwd(),
        )
        launcher.engine_cmd = list(self._options.member_command)
        launcher.engine_args = [conn_file]
        self.launcher = launcher
        self.log.info("Starting a set of %d processes with %s: %s", count, cls.__name__, launcher.args)
        started = launcher.start(count)
        if inspect.isawaitable(started):
            asyncio.ensure_future(started)
        launcher.on_stop(on_stop)

    def _engines(self) -> list[Any]:
        """The per-engine launchers a set launcher still holds (ipyparallel drops those that stopped)."""
        return list((getattr(self.launcher, "launchers", {}) or {}).values())

    def processes(self) -> list[Any]:
        """The processes this kernel started for the set (launchers' and everything under them)."""
        if self.launcher is None:
            return []
        roots = [el.process for el in self._engines()]
        if getattr(self.launcher, "process", None) is not None:
            roots.append(self.launcher.process)
        procs = []
        for root in roots:
            if root is None:
                continue
            with contextlib.suppress(Exception):
                procs.extend(root.children(recursive=True))
            procs.append(root)
        return procs

    def exit_code(self, pid: int) -> int | None:
        """A member's exit status as the launcher saw it: ipyparallel's process launchers wait for
        their process on a thread of their own, and whichever waits first gets the status.  A
        stopped engine's launcher leaves the set launcher's ``launchers`` and its stop data goes to
        the set launcher's ``stop_data["engines"]``."""
        if self.launcher is None:
            return None
        seen = [getattr(el, "stop_data", None) for el in self._engines()]
        stop_data = getattr(self.launcher, "stop_data", None)
        if isinstance(stop_data, dict) and isinstance(stop_data.get("engines"), dict):
            seen += list(stop_data["engines"].values())
        for data in seen:
            if isinstance(data, dict) and data.get("pid") == pid and data.get("exit_code") is not None:
                return int(data["exit_code"])
        return None

    def exit_code_pending(self, pid: int) -> bool:
        """Whether the engine launcher whose process is ``pid`` has not reported its stop yet.

        Its wait thread reaps the process, then hands the status to the loop (``notify_stop``):
        until that callback has run, the status is in neither place :meth:`exit_code` looks.  Only
        a launcher that started ``pid`` itself (a local engine) can be waiting so; an MPI or batch
        launcher's process is ``mpiexec`` or a job, never a member, so for those this is False."""
        for el in self._engines():
            process = getattr(el, "process", None)
            if process is not None and getattr(process, "pid", None) == pid and not el.stop_data:
                return True
        return False

    def reap(self, grace: float, loop: asyncio.AbstractEventLoop) -> dict[int, int]:
        """End what the launcher started (from a thread other than the loop's): wait ``grace``
        seconds for it to exit, SIGKILL the rest.  Returns the exit statuses of those that ended
        before being killed here, by pid: they say how a lost member died."""
        import psutil

        procs = self.processes()
        gone, alive = psutil.wait_procs(procs, timeout=grace)
        codes = {p.pid: p.returncode for p in gone if p.returncode is not None}
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5.0)
        if self.launcher is not None and not procs:
            self.stop(loop)
        return codes

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): SIGKILL what runs on this host."""
        for p in self.processes():
            with contextlib.suppress(Exception):
                p.kill()

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop the launcher from a thread other than the loop's (waits for it up to 30 s).

        For a set of which nothing runs under this kernel (a batch job, ...): the launcher's stop
        cancels it (scancel, qdel, bkill, ...); the members exit on their own anyway once the wire
        is closed."""
        with contextlib.suppress(Exception):
            stopped = self.launcher.stop()
            if inspect.isawaitable(stopped):
                asyncio.run_coroutine_threadsafe(_awaited(stopped), loop).result(30)

    def output(self) -> str:
        """The tail of the launcher's output (the members' original stderr); best effort."""
        try:
            text = self.launcher.get_output() if self.launcher is not None else ""
        except Exception:  # noqa: BLE001 - diagnostics are best effort
            text = ""
        return (text or "")[-DIAG_TAIL:]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
