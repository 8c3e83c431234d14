"""What the sandbox costs: set-up per worker start, jitted throughput and downloads, on vs off.

    python bench/bench_sandbox.py            # full run, prints a Markdown table
    python bench/bench_sandbox.py --quick    # fewer repetitions

Set-up is measured on both sides of a worker start: the kernel resolving the policy (and
making the worker's cgroups, where it can) and the worker applying it in a fresh interpreter
(rlimits, cgroup join, namespaces, capabilities, Landlock, seccomp), before IPython or JAX.
Throughput runs the same jitted workload in fresh interpreters with the standard profile
applied and with it off, interleaved round by round so that drift on a shared machine hits
both alike; the table gives medians.  Targets (issue 4): set-up < 50 ms, ratio >= 0.98.

Downloads (issue 14): the same HTTP download of a file from a test host the bench makes itself
(tests/testhost.py: its own network namespace and a veth pair; no other address is a target),
in a fresh interpreter with the standard policy applied (so through the kernel's user-mode
egress, slirp4netns) and with it off, interleaved; the egress itself is made once per kernel.
Also (issue 15) writing 1,000 small files and a 1 GiB file in a notebook folder with the policy
applied vs off (target ratio <= 1.10), and the kernel's cost of Sandbox.active_outputs = sanitize
on a 1 MB HTML output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from testhost import TestHost, unavailable  # noqa: E402

from jax_kernel.policy.sandbox import Sandbox  # noqa: E402

APPLY = """
import json, sys, time
import ctypes, re, struct, typing  # imported by the worker anyway (IPython needs them)
t0 = time.perf_counter()
from jax_kernel.worker import sandbox
report = sandbox.apply(json.loads(sys.argv[1]))
t1 = time.perf_counter()
print(json.dumps({"apply_ms": (t1 - t0) * 1e3, "unavailable": report["unavailable"]}))
"""

WORKLOAD = """
import json, sys, time
from jax_kernel.worker import sandbox
sandbox.apply(json.loads(sys.argv[1]))
import jax, jax.numpy as jnp
@jax.jit
def step(x, w):
    for _ in range(4):
        x = jnp.tanh(x @ w) + 0.5 * x
    return x
key = jax.random.PRNGKey(0)
x = jax.random.normal(key, (512, 512)); w = jax.random.normal(key, (512, 512)) / 32
step(x, w).block_until_ready()
n, t0, c0 = 0, time.perf_counter(), time.process_time()
while time.perf_counter() - t0 < float(sys.argv[2]):
    x = step(x, w); n += 1
x.block_until_ready()
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"steps_per_s": n / wall, "steps_per_cpu_s": n / cpu}))
"""

DOWNLOAD = """
import json, sys, time, urllib.request
from jax_kernel.worker import sandbox
sandbox.apply(json.loads(sys.argv[1]))
t0 = time.perf_counter()
n = len(urllib.request.urlopen(sys.argv[2], timeout=60).read())
print(json.dumps({"mb_per_s": n / (time.perf_counter() - t0) / 1e6, "bytes": n}))
"""

FILES = """
import json, os, sys, time
from jax_kernel.worker import sandbox
sandbox.apply(json.loads(sys.argv[1]))
folder = sys.argv[2]
os.chdir(folder)
t0 = time.perf_counter()
os.mkdir("small")
for i in range(1000):
    with open(f"small/f{i}.txt", "w") as f:
        f.write("x" * 100)
small = time.perf_counter() - t0
chunk = b"y" * (1 << 20)
t0 = time.perf_counter()
with open("big.bin", "wb") as f:
    for _ in range(1024):
        f.write(chunk)
big = time.perf_counter() - t0
print(json.dumps({"small_s": small, "big_s": big}))
"""


def run(code: str, policy: dict, *args: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(policy), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    starts = 5 if args.quick else 20
    rounds = 3 if args.quick else 7
    seconds = "1.5" if args.quick else "3"

    sandbox = Sandbox(profile="standard")
    t0 = time.perf_counter()
    egress = sandbox.user_mode_egress()  # once per kernel, not per worker start
    egress_ms = (time.perf_counter() - t0) * 1e3
    prepare_ms, apply_ms, unavailable = [], [], {}
    for _ in range(starts):
        t0 = time.perf_counter()
        ws = sandbox.prepare_worker()
        prepare_ms.append((time.perf_counter() - t0) * 1e3)
        res = run(APPLY, ws.policy)
        apply_ms.append(res["apply_ms"])
        unavailable = res["unavailable"]
        ws.release(wait=True)

    on: list[dict] = []
    off: list[dict] = []
    for i in range(rounds):
        ws = sandbox.prepare_worker()
        order = [(on, ws.policy), (off, {"profile": "off"})]
        for results, policy in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
            results.append(run(WORKLOAD, policy, seconds))
        ws.release(wait=True)

    downloads = download_rounds(sandbox, 3 if args.quick else 7) if egress is not None else None
    sanitize_ms, html_bytes = sanitize_cost(5 if args.quick else 20)
    files_on, files_off = file_rounds(sandbox, 3 if args.quick else 7)

    def ms(xs: list[float]) -> str:
        xs = sorted(xs)
        return f"{statistics.median(xs):.1f} (p90 {xs[int(0.9 * (len(xs) - 1))]:.1f})"

    total = [p + a for p, a in zip(prepare_ms, apply_ms, strict=True)]

    def med(rs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    ratio = med(on, "steps_per_s") / med(off, "steps_per_s")
    cpu_ratio = med(on, "steps_per_cpu_s") / med(off, "steps_per_cpu_s")
    print(
        f"Sandbox cost on {platform.node() or 'this host'}: {platform.machine()}, {os.cpu_count()} cores, "
        f"Linux {platform.release()}, uid {os.geteuid()}, {'quick' if args.quick else 'full'} run"
    )
    if sys.flags.dont_write_bytecode:
        print(
            "\nNote: PYTHONDONTWRITEBYTECODE is set, so each worker compiles the sandbox module from source "
            "(about 20 ms here) and the worker side reads high; an installed package has its bytecode."
        )
    print()
    print("| Measure | Value | Target |")
    print("|---|---|---|")
    print(f"| Kernel side: resolve policy + make cgroups (ms, median of {starts}) | {ms(prepare_ms)} | |")
    print(f"| Worker side: apply before imports (ms, median of {starts}) | {ms(apply_ms)} | |")
    print(f"| Set-up per worker start, total (ms) | {ms(total)} | < 50 |")
    print(
        f"| Jitted steps per wall second, sandbox on / off (median of {rounds}) "
        f"| {med(on, 'steps_per_s'):.1f} / {med(off, 'steps_per_s'):.1f} | |"
    )
    print(
        f"| Jitted steps per CPU second, sandbox on / off (median of {rounds}) "
        f"| {med(on, 'steps_per_cpu_s'):.1f} / {med(off, 'steps_per_cpu_s'):.1f} | |"
    )
    print(f"| Throughput ratio on/off, wall clock | {ratio:.3f} | >= 0.98 |")
    print(
        f"| Throughput ratio on/off, per CPU second (less sensitive to a busy machine) | {cpu_ratio:.3f} | >= 0.98 |"
    )
    if egress is None:
        print(f"| User-mode egress | unavailable: {sandbox._egress_error} | |")
    else:
        print(f"| User-mode egress set-up, once per kernel (ms) | {egress_ms:.0f} | |")
    if isinstance(downloads, str):
        print(f"| Download through user-mode egress | not measured: {downloads} | |")
    elif downloads is not None:
        d_on, d_off, size = downloads
        print(
            f"| Download of {size / 2**20:.0f} MiB from a test host, MB/s, egress / outside (median of "
            f"{len(d_on)}) | {statistics.median(d_on):.0f} / {statistics.median(d_off):.0f} | |"
        )
        print(
            f"| Download ratio egress/outside | {statistics.median(d_on) / statistics.median(d_off):.2f} | |"
        )
    for key, what in (("small_s", "1,000 small files in the notebook folder"), ("big_s", "a 1 GiB file")):
        on_s, off_s = (
            statistics.median(r[key] for r in files_on),
            statistics.median(r[key] for r in files_off),
        )
        print(
            f"| Write {what}, s, sandbox on / off (median of {len(files_on)}) "
            f"| {on_s:.3f} / {off_s:.3f} (ratio {on_s / off_s:.2f}) | <= 1.10 |"
        )
    print(
        f"| Sanitize (Sandbox.active_outputs) a {html_bytes / 1e6:.1f} MB HTML table, ms (median) "
        f"| {sanitize_ms:.1f} | |"
    )
    if unavailable:
        print()
        print("Unavailable here: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))


def file_rounds(sandbox: Sandbox, rounds: int) -> tuple[list[dict], list[dict]]:
    """Writes in a notebook folder with the standard policy applied (Landlock's ordinary-files-only
    rules among them) and with it off, interleaved; a fresh folder each time."""
    import shutil
    import tempfile

    on: list[dict] = []
    off: list[dict] = []
    for i in range(rounds):
        for results, sandboxed in [(on, True), (off, False)] if i % 2 == 0 else [(off, False), (on, True)]:
            folder = tempfile.mkdtemp(prefix="jax-kernel-bench-nb-", dir="/var/tmp")
            try:
                ws = sandbox.prepare_worker(cwd=folder) if sandboxed else None
                results.append(run(FILES, ws.policy if ws else {"profile": "off"}, folder))
                if ws is not None:
                    ws.release(wait=True)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    return on, off


def sanitize_cost(rounds: int) -> tuple[float, int]:
    """Median ms to clean a 1 MB HTML output (a pandas-like table with a script and a handler)."""
    from jax_kernel.kernel.active_outputs import sanitize_bundle

    rows = "".join(
        f"<tr><td class='n'>{i}</td><td>{i * 0.5}</td><td>row {i}</td></tr>" for i in range(20_000)
    )
    html = f"<style>td {{color: red}}</style><table class='dataframe'>{rows}</table><script>x()</script>"
    html = html[: 1_000_000 - 20] + "</table>" if len(html) > 1_000_000 else html
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sanitize_bundle({"text/html": html, "text/plain": "table"})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), len(html)


def download_rounds(sandbox: Sandbox, rounds: int) -> tuple[list[float], list[float], int] | str:
    """MB/s of one download through the egress and from outside, interleaved (or why not)."""
    import tempfile
    from pathlib import Path

    why = unavailable()
    if why:
        return why
    folder = Path(tempfile.mkdtemp(prefix="jax-kernel-bench-host-"))
    size = 64 * 2**20
    (folder / "blob").write_bytes(os.urandom(size))
    host = TestHost(folder)
    try:
        url = host.url + "blob"
        on: list[float] = []
        off: list[float] = []
        for i in range(rounds):
            ws = sandbox.prepare_worker()
            order = [(on, ws.policy), (off, {"profile": "off"})]
            for results, policy in order if i % 2 == 0 else order[::-1]:
                got = run(DOWNLOAD, policy, url)
                assert got["bytes"] == size, got
                results.append(got["mb_per_s"])
            ws.release(wait=True)
        return on, off, size
    finally:
        host.close()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
