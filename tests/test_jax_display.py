"""How JAX values and JAX's own output look in a cell."""

from __future__ import annotations

import html
import re

from conftest import Kernel, start_kernel, stop_kernel


def test_array_result_has_a_rich_view_and_jaxs_own_text(kernel: Kernel) -> None:
    res = kernel.ok("import jax, jax.numpy as jnp\nx = jnp.arange(12.0).reshape(3, 4)\nx")
    data = res.of("execute_result")[0]["data"]
    plain = kernel.ok("repr(x)").of("execute_result")[0]["data"]["text/plain"]
    assert data["text/plain"] == eval(plain)  # exactly JAX's repr
    page = html.unescape(data["text/html"])
    assert "(3, 4)" in page and "float32" in page and "cpu:0" in page
    assert "48 bytes" in page
    assert "11." in page  # small arrays are shown whole


def test_large_array_view_shows_only_a_corner(kernel: Kernel) -> None:
    res = kernel.ok(
        "import jax.numpy as jnp\nbig = jnp.arange(1_000_000, dtype=jnp.int32).reshape(1000, 1000)\nbig"
    )
    page = res.of("execute_result")[0]["data"]["text/html"]
    assert "1,000,000 elements" in page
    assert "showing (6, 6) of (1000, 1000)" in html.unescape(page)
    assert "999999" not in page  # the far corner was never shown (nor copied to the host)
    assert len(page) < 5000


def test_sharded_array_view_names_its_devices() -> None:
    km, kc = start_kernel()
    kernel = Kernel(km, kc)
    try:
        kernel.ok("import os\nos.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'")
        res = kernel.ok(
            "import jax, jax.numpy as jnp\n"
            "from jax.sharding import NamedSharding, PartitionSpec as P\n"
            "mesh = jax.make_mesh((4,), ('i',))\n"
            "s = jax.device_put(jnp.arange(16.0), NamedSharding(mesh, P('i')))\n"
            "s"
        )
        page = html.unescape(res.of("execute_result")[0]["data"]["text/html"])
        assert "NamedSharding P('i',) over 4 devices (0, 1, 2, 3)" in page
        assert re.search(r"\[0\. 1\. 2\. 3\.\]\n… \(showing \(4,\) of \(16,\)\)", page)
    finally:
        stop_kernel(km, kc)


def test_jax_debug_output_lands_in_the_cell_that_ran_it(kernel: Kernel) -> None:
    res = kernel.ok(
        "import jax, jax.numpy as jnp\n"
        "@jax.jit\n"
        "def double(v):\n"
        "    jax.debug.print('inside double: {v}', v=v)\n"
        "    return v * 2\n"
        "y = double(jnp.arange(3.0))"
    )
    assert "inside double: [0. 1. 2.]" in res.stdout
    assert kernel.ok("'next cell'").stdout == ""


def test_a_cell_that_never_imports_jax_does_not_import_it(fresh_kernel: Kernel) -> None:
    fresh_kernel.ok("x = [1, 2, 3]\nx")
    res = fresh_kernel.ok("import sys\n'jax' in sys.modules")
    assert res.of("execute_result")[0]["data"]["text/plain"] == "False"


SLOW_COMPILE = """
import jax, jax.numpy as jnp
def body(x):
    for i in range(80):  # unrolled: XLA takes a second or more to compile this on 2 cores
        x = jnp.tanh(x * (1.0 + i / 1000.0)) + jnp.roll(x, i % 7)
    return x
jax.jit(body)(jnp.ones(64)).block_until_ready()
print('computed')
"""


def test_a_long_compile_shows_a_transient_line_that_goes_away() -> None:
    # No compilation cache: an earlier run's cached executable would make it no compile at all.
    km, kc = start_kernel(
        extra_arguments=["--JaxKernel.compile_notice_after=0.2", "--WorkerManager.compilation_cache=False"]
    )
    try:
        res = Kernel(km, kc).ok(SLOW_COMPILE, timeout=120)
    finally:
        stop_kernel(km, kc)
    shown = [c for t, c in res.outputs if t in ("display_data", "update_display_data")]
    assert shown, res.outputs
    display_id = shown[0]["transient"]["display_id"]
    assert shown[0]["data"]["text/plain"].startswith("XLA is compiling jit(body) (")
    assert all(c["transient"]["display_id"] == display_id for c in shown)
    # The last word on the line empties it, and it comes before the cell's own output ends.
    assert shown[-1]["data"] == {"text/plain": "", "text/html": ""}
    assert "computed" in res.stdout


def test_a_quick_compile_shows_no_line(kernel: Kernel) -> None:
    res = kernel.ok("import jax\njax.jit(lambda v: v * 3 + 1)(2.0)")
    assert not res.of("display_data") and not res.of("update_display_data")
    assert res.of("execute_result")[0]["data"]["text/plain"].startswith("Array(7.")


def test_the_array_card_gives_way_to_treescope_and_can_be_switched_off(kernel: Kernel) -> None:
    make = "import jax.numpy as jnp\nv = jnp.arange(4.0)\n"
    assert "jax-array" in kernel.ok(make + "v").of("execute_result")[0]["data"]["text/html"]
    kernel.ok("%jax_array_view off")
    off = kernel.ok("v").of("execute_result")[0]["data"]
    assert "text/html" not in off and off["text/plain"].startswith("Array(")  # JAX's text, as stock
    kernel.ok("%jax_array_view default")
    assert "jax-array" in kernel.ok("v").of("execute_result")[0]["data"]["text/html"]
    bad = kernel.run("%jax_array_view sometimes")
    assert bad.reply["status"] == "error" and "on|off|default" in bad.stderr + str(bad.reply)
    # The user's renderer for every object wins over our type-specific one.
    km, kc = start_kernel()
    other = Kernel(km, kc)
    try:
        other.ok("import treescope\ntreescope.basic_interactive_setup(autovisualize_arrays=True)")
        page = other.ok(make + "v").of("execute_result")
        html_out = "".join(r["data"].get("text/html", "") for r in page) + "".join(
            d["data"].get("text/html", "") for d in other.ok(make + "v").of("display_data")
        )
        assert "jax-array" not in html_out and "treescope" in html_out.lower()
    finally:
        stop_kernel(km, kc)
