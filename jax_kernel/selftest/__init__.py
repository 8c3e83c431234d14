"""``python -m jax_kernel selftest``: the attack battery, run from cells against this host's kernel.

A deployer's configuration (``jax_kernel_config.py``, the kernelspec, the host's kernel features)
decides what the sandbox can do, and ``%sandbox`` reports what the worker believes it applied.  The
self-test checks from outside instead: it starts the installed kernel as a frontend would, runs
each attack from a cell, and judges it by a decoy that only code outside the sandbox could change
(a file's bytes and metadata, a process, a loopback server's connection log, a marker a planted
module would write).  Deployers run it after every upgrade and on every new host; the exit status
is 0 only if every attack was contained (or allowed by a setting the deployer chose, named).

Where each part runs: all of this package runs in the self-test's own process, outside every
sandbox and never in a kernel that runs user code (so ``%sandbox --selftest`` has the kernel start
it and relay its table).  :mod:`.app` is the command line; :mod:`.battery` one run;
:mod:`.decoys` the evidence, on the host; :mod:`.kernel` the client of the kernel it starts;
:mod:`.attacks` the attacks, whose code strings are the only thing that runs in that kernel's
sandboxed worker, as cells; :mod:`.verdicts` the verdicts and the table.
"""

from .app import SelfTestApp, main
from .battery import Battery
from .decoys import SECRET_VAR
from .kernel import TIMEOUT, Outcome
from .verdicts import CONTAINED, ESCAPED, POLICY, table

__all__ = [
    "CONTAINED",
    "ESCAPED",
    "POLICY",
    "SECRET_VAR",
    "TIMEOUT",
    "Battery",
    "Outcome",
    "SelfTestApp",
    "main",
    "table",
]
