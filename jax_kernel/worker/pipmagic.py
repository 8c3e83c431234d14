"""``%pip`` in the worker: pip's own output, with installs into the notebook folder's packages.

IPython's ``%pip`` runs ``python -m pip LINE`` in a shell; so does this one, with the variables
:func:`jax_kernel.worker.userpackages.install` set (``PIP_PREFIX``: pip installs into this notebook
folder's own prefix; ``PYTHONPATH``: ``list``, ``show`` and ``freeze`` see what is there).  It adds
one line saying where an install went, passes a user's own ``--target``/``--prefix``/``--user``/
``--root`` through unchanged (without ``PIP_PREFIX`` for that call), and runs ``%pip uninstall`` of
a package of that folder itself (pip refuses: it lies outside the environment).  Without such a
folder (the ``off`` profile, ``WorkerManager.user_packages = False``) it is IPython's ``%pip``.
"""

from __future__ import annotations

import codecs
import os
import selectors
import shlex
import signal
import subprocess
import sys
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from . import userpackages
from .sandbox import PLACES

#: Install options that choose the destination themselves: passed through, without PIP_PREFIX.
OWN_DESTINATION = ("--target", "-t", "--prefix", "--user", "--root")
#: What pip prints when it would change the environment's own (read-only) packages.
READ_ONLY_SIGNS = ("Read-only file system", "[Errno 30]")
RESTART_NOTE = "Note: you may need to restart the kernel to use updated packages."
#: pip's options that take a value as the next word (not a distribution name).
VALUE_OPTIONS = frozenset(
    "-r --requirement --root-user-action --log --proxy --retries --timeout --exists-action "
    "--trusted-host --cert --client-cert --cache-dir --python --keyring-provider".split()
)


def run(line: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``python -m pip LINE`` in a shell, as IPython's ``%pip`` does, streaming its stdout and
    stderr to the cell's; (exit status, everything it wrote).  An interrupt stops pip first."""
    command = f"{shlex.quote(sys.executable)} -m pip {line}"
    proc = subprocess.Popen(
        command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    streams = {proc.stdout.fileno(): sys.stdout, proc.stderr.fileno(): sys.stderr}
    decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in streams}
    try:
        with selectors.DefaultSelector() as sel:
            for fd in streams:
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                for key, _ in sel.select():
                    data = os.read(key.fd, 65536)
                    text = decoders[key.fd].decode(data, final=not data)
                    if not data:
                        sel.unregister(key.fd)
                    if text:
                        streams[key.fd].write(text)
                        streams[key.fd].flush()  # stdout and stderr in the order pip wrote them
                        seen.append(text)
        return proc.wait(), "".join(seen)
    except BaseException:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def _subcommand(words: list[str]) -> str:
    return next((w for w in words if not w.startswith("-")), "")


def _chooses_destination(words: list[str]) -> bool:
    return any(w == opt or w.startswith(opt + "=") for w in words for opt in OWN_DESTINATION) or any(
        w.startswith("-t") and len(w) > 2 and not w.startswith("--") for w in words
    )


@magics_class
class PipMagics(Magics):
    """``%pip``, installing into the notebook folder's own packages (see the module's docstring)."""

    @line_magic
    def pip(self, line: str) -> None:
        """Run pip in the worker's Python: %pip install NAME, %pip uninstall -y NAME, %pip list, ...

        Packages go into this notebook folder's own folder (kept across kernels, on this worker's
        sys.path ahead of the environment's site-packages, seen by no other notebook folder);
        ``%pip uninstall NAME`` removes them.  The environment's own packages are read-only here.
        """
        prefix = userpackages.PREFIX
        words = _words(line)
        command = _subcommand(words)
        # Kernels of one notebook folder (and the processes of a set, which all run the cell)
        # change the folder one at a time.
        with userpackages.locked(prefix if command in ("install", "uninstall") else None):
            if prefix and command == "uninstall":
                self._uninstall(prefix, words)
            else:
                env = dict(os.environ)
                own = command == "install" and _chooses_destination(words)
                if own or not prefix:
                    env.pop(userpackages.PIP_PREFIX, None)
                status, text = run(line, env)
                self._user_ns["_exit_code"] = status
                if prefix and command == "install" and not own:
                    self._after_install(prefix, status, text)
        sys.stderr.flush()
        print(RESTART_NOTE)

    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns

    def _after_install(self, prefix: str, status: int, text: str) -> None:
        import importlib

        importlib.invalidate_caches()
        userpackages.make_scripts_executable(prefix)
        for replaced in userpackages.tidy(prefix):
            print(
                f"Removed {replaced}, which the upgrade replaced (pip leaves it: {prefix} is outside the environment)"
            )
        if status == 0 and "Successfully installed" in text:
            print(f"into {prefix}: this notebook folder's packages; `%pip uninstall NAME` removes them")
        else:
            _explain_read_only(prefix, status, text)

    def _uninstall(self, prefix: str, words: list[str]) -> None:
        """This folder's distributions here, the rest by pip (with every option the user gave)."""
        after = words[words.index("uninstall") + 1 :]
        yes = any(w in ("-y", "--yes") for w in after)
        names = [
            w
            for i, w in enumerate(after)
            if not w.startswith("-") and (i == 0 or after[i - 1] not in VALUE_OPTIONS)
        ]
        for path in _requirement_files(after):
            names += _requirement_names(path)
        ours = {n: d for n in dict.fromkeys(names) if (d := userpackages.find(prefix, n)) is not None}
        self._user_ns["_exit_code"] = 0
        for dist in ours.values():
            if not userpackages.uninstall(prefix, dist, None if yes else self._confirm):
                self._user_ns["_exit_code"] = 1
                return
        rest = [w for w in after if w not in ours]
        if ours and not [n for n in names if n not in ours] and not _requirement_files(after):
            return  # everything named was this folder's
        before = words[: words.index("uninstall") + 1]
        status, text = run(" ".join(shlex.quote(w) for w in [*before, *rest]), dict(os.environ))
        self._user_ns["_exit_code"] = status
        _explain_read_only(prefix, status, text)

    def _confirm(self) -> bool:
        try:
            answer = input("Proceed (Y/n)? ")
        except Exception:  # noqa: BLE001 - no frontend stdin (allow_stdin false): pip aborts too
            print("ERROR: no answer to pip's question; run `%pip uninstall -y NAME`", file=sys.stderr)
            return False
        return answer.strip().lower() in ("", "y", "yes")


def _explain_read_only(prefix: str, status: int, text: str) -> None:
    """After pip failed on the environment's own (read-only) packages, say so in one line."""
    if status != 0 and any(sign in text for sign in READ_ONLY_SIGNS):
        print(
            "The environment's own packages are read-only in jax-kernel's sandbox: pip can add "
            f"packages to this notebook folder's ({prefix}) and remove those, not upgrade or remove "
            "the environment's; change those before starting the kernel.",
            file=sys.stderr,
        )


def _requirement_files(words: list[str]) -> list[str]:
    """The files of ``-r FILE`` / ``--requirement FILE`` / ``--requirement=FILE``."""
    files = []
    for i, word in enumerate(words):
        if word in ("-r", "--requirement") and i + 1 < len(words):
            files.append(words[i + 1])
        elif word.startswith("--requirement="):
            files.append(word.split("=", 1)[1])
        elif word.startswith("-r") and len(word) > 2 and not word.startswith("--"):
            files.append(word[2:])
    return files


def _requirement_names(path: str) -> list[str]:
    """The distribution names a requirements file lists (its options and comments skipped)."""
    import re

    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = (re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", ln.split("#", 1)[0]) for ln in lines)
    return [m.group(1) for m in found if m]


def register(shell: Any) -> None:
    """Put the notebook folder's packages on ``sys.path`` and ``%pip`` in place of IPython's."""
    userpackages.install(PLACES.get("packages"))
    shell.register_magics(PipMagics)
