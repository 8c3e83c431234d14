"""``python -m jax_kernel selftest``: the command line, and the subcommand of the kernel's app.

It runs in a process of its own, outside every sandbox (``%sandbox --selftest`` has the kernel
start this command, never run it in a kernel that runs user code); SIGTERM ends it through the
same clean-up as a normal end, so the kernel it started and the decoys go too.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from traitlets import Unicode
from traitlets.config import Application

from .battery import Battery
from .verdicts import ESCAPED, Row, table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jax_kernel selftest",
        description="Start the installed jax kernel as configured on this host, run the attack battery "
        "from its cells, and print whether each attack was contained.",
    )
    parser.add_argument("--profile", choices=["off", "standard", "strict"], help="override Sandbox.profile")
    parser.add_argument("--kernel", default="jax", help="kernelspec name (default: jax)")
    return parser


def _say(text: str) -> None:
    print(text, flush=True)


def _stop(signum: int, _frame: Any) -> None:
    raise SystemExit(3)  # through main's finally: the kernel, bystander and decoys go too


def main(argv: list[str] | None = None) -> int:
    """Run the battery and print its table; 0 if every attack was contained or allowed by policy,
    1 if one was not, 2 if the kernel did not start (3 on SIGTERM)."""
    opts = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)

    battery = Battery(opts.profile, opts.kernel, out=_say)
    try:
        _say(f"jax-kernel self-test: kernel {opts.kernel!r}, profile {opts.profile or 'as configured'}")
        try:
            battery.start()
        except Exception as e:  # noqa: BLE001 - any failure to start is reported the same way
            _say(
                f"error: the kernel did not start ({type(e).__name__}: {e}); check `jupyter kernelspec list`"
            )
            _say(battery.kernel_log()[-2000:])
            return 2
        _say(
            f"sandbox: {battery.report.get('profile', '?')} profile; running {len(battery.attacks())} attacks"
        )
        rows = battery.run_all()
    finally:
        battery.close()
    return _summary(rows)


def _summary(rows: list[Row]) -> int:
    """Print the table and the count; the exit status."""
    _say("")
    _say(table(rows))
    escaped = [r for r in rows if r[1] == ESCAPED]
    _say("")
    _say(
        f"{len(rows) - len(escaped)} of {len(rows)} contained or allowed by policy"
        + (f"; NOT contained: {', '.join(r[0] for r in escaped)}" if escaped else "")
    )
    return 1 if escaped else 0


class SelfTestApp(Application):
    """``python -m jax_kernel selftest [--profile P] [--kernel NAME]`` (a subcommand of the app)."""

    name = Unicode("jax-kernel-selftest")
    description = Unicode("Run the sandbox's attack battery against the installed kernel.")

    def initialize(self, argv: list[str] | None = None) -> None:
        """Keep the arguments for :func:`main`, which parses them itself."""
        self.argv = sys.argv[1:] if argv is None else argv

    def start(self) -> None:
        """Run the self-test and exit with its status."""
        self.exit(main(self.argv))
