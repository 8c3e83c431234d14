"""The settings users give ``JaxKernel`` (``c.JaxKernel.*``), apart from the protocol it serves.

Traitlets reads config by class name along the MRO, so ``c.JaxKernel.output_limit`` still reaches
these; they live here so that :mod:`.jaxkernel` holds only the kernel's requests and replies.
"""

from __future__ import annotations

import sys

from ipykernel.kernelbase import Kernel
from traitlets import Bool, Float, Integer, List

from .. import __version__
from ..protocol.budget import DEFAULT_OUTPUT_LIMIT

#: What IPython's kernel says about its language: cells are IPython (magics, ``!``), as in the worker.
LANGUAGE_INFO: dict[str, object] = {
    "name": "python",
    "version": sys.version.split()[0],
    "mimetype": "text/x-python",
    "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
    "pygments_lexer": "ipython3",
    "nbconvert_exporter": "python",
    "file_extension": ".py",
}


class KernelSettings(Kernel):
    """What a deployer configures about the kernel process: output bounds, views, restarts."""

    implementation = "jax-kernel"
    implementation_version = __version__
    language_info = LANGUAGE_INFO

    help_links = List(
        [
            {
                "text": "Python Reference",
                "url": f"https://docs.python.org/{sys.version_info[0]}.{sys.version_info[1]}",
            },
            {"text": "IPython Reference", "url": "https://ipython.readthedocs.io/en/stable/"},
            {"text": "JAX Reference", "url": "https://docs.jax.dev/en/latest/"},
            {"text": "NumPy Reference", "url": "https://numpy.org/doc/stable/reference/"},
            {"text": "Matplotlib Reference", "url": "https://matplotlib.org/stable/"},
        ]
    ).tag(config=True)

    output_limit = Integer(
        DEFAULT_OUTPUT_LIMIT,
        help="Characters of output one cell may send, everything counted: stream text, and the data "
        "of displays, results and comm messages; the rest is dropped with a notice (a runaway print "
        "or display loop must not take the browser or the kernel down).",
    ).tag(config=True)

    array_view = Bool(
        True,
        help="Show a JAX array result as an HTML card (shape, dtype, placement, a corner of the values) "
        "beside JAX's text; False: JAX's text only, as in the stock kernel. %jax_array_view on|off "
        "overrides it per notebook, and a renderer registered for every object (treescope) wins.",
    ).tag(config=True)

    compile_notice_after = Float(
        2.0,
        help="Seconds an XLA compile may run before the cell shows a transient 'XLA is compiling f' "
        "line (removed when the compile or the cell ends); 0 turns the line off.",
    ).tag(config=True)

    usage_timeout = Float(
        1.0,
        help="Seconds a usage_request waits for the worker's device memory figures; past that the reply "
        "has the worker's CPU and memory without them (a busy worker must not stall a status bar).",
    ).tag(config=True)

    enable_debugger = Bool(
        True,
        help="Offer the visual debugger (JupyterLab, VS Code 'Debug cell'): debug_requests reach pydevd "
        "inside the worker. False refuses them and kernel_info says the debugger is unavailable.",
    ).tag(config=True)

    jax_reply_limit = Integer(
        16 * 1024 * 1024,
        help="Largest jax_*_reply (bytes of JSON) relayed from the worker; a larger one becomes an error.",
    ).tag(config=True)

    max_program_bytes = Integer(
        256 * 1024 * 1024,
        help="Largest serialized JAX program a jax_program_request may send or name; larger ones are refused.",
    ).tag(config=True)

    max_in_place_restarts = Integer(
        100,
        help="Restarts a kernel process takes in place (the worker is replaced, the process and the "
        "frontend's connection stay) before a restart replaces the process itself (from the "
        "provisioner's spare); 0: never in place. Only with jax-kernel's provisioner.",
    ).tag(config=True)

    max_kernel_memory = Integer(
        1024**3,
        help="Bytes of resident memory of the kernel process above which a restart replaces the process "
        "instead of restarting in place (it never runs user code, so this is a leak bound); 0: no bound.",
    ).tag(config=True)
