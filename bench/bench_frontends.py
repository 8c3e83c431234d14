#!/usr/bin/env python
"""Widgets and progress bars on the ``jax`` kernel vs the stock ``python3`` ipykernel, one run.

Why: comm traffic takes an extra hop here (frontend -> kernel -> worker and back), and a
slider or a progress bar that feels sluggish is the first thing a notebook user notices.
Two measurements, interleaved between the kernels so machine noise hits both:

- widget round trip: the frontend sets an IntSlider's value (the ``comm_msg`` JupyterLab
  sends), the observer in the kernel answers with a custom widget message; the clock runs
  until that answer arrives on IOPub;
- a cell with a 1,000-step ``tqdm.auto`` loop (a progress-bar widget), request to idle.

Usage::

    python bench/bench_frontends.py            # 300 round trips, 10 tqdm cells per kernel
    python bench/bench_frontends.py --quick    # 30 and 3
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import JAX, PY, BenchError, BenchKernel, settle, started  # noqa: E402
from tables import Row, ratio, report, spread  # noqa: E402

TARGET = 1.2
SLIDER_CELL = """
import ipywidgets as widgets
bench_slider = widgets.IntSlider(value=0, max=10**9)
bench_slider.observe(lambda change: bench_slider.send({'ack': change['new']}), 'value')
bench_slider.model_id
"""
TQDM_CELL = "from tqdm.auto import tqdm\nfor _ in tqdm(range(1000)):\n    pass"


def slider_id(kernel: BenchKernel) -> str:
    cell = kernel.run_ok(SLIDER_CELL)
    result = cell.of("execute_result")
    if not result:
        raise BenchError(f"{kernel.name} kernel: the slider cell gave no result")
    return result[0]["data"]["text/plain"].strip("'")


def widget_round_trip(kernel: BenchKernel, model_id: str, value: int, timeout: float = 30.0) -> float:
    """Set the slider's value as JupyterLab does; time until the observer's answer arrives."""
    kc = kernel.kc
    assert kc is not None
    msg = kc.session.msg(
        "comm_msg",
        {"comm_id": model_id, "data": {"method": "update", "state": {"value": value}, "buffer_paths": []}},
    )
    t0 = time.perf_counter()
    kc.shell_channel.send(msg)
    deadline = t0 + timeout
    while True:
        try:
            out = kc.get_iopub_msg(timeout=max(deadline - time.perf_counter(), 0.01))
        except queue.Empty:
            raise BenchError(f"{kernel.name} kernel: no answer to slider value {value}") from None
        data = out["content"].get("data", {}) if out["msg_type"] == "comm_msg" else {}
        if data.get("method") == "custom" and data.get("content") == {"ack": value}:
            return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 round trips and 3 tqdm cells per kernel")
    args = parser.parse_args(argv)
    n, cells = (30, 3) if args.quick else (300, 10)
    t_start = time.perf_counter()
    kernels = {JAX: started(JAX), PY: started(PY)}
    try:
        ids = {name: slider_id(k) for name, k in kernels.items()}
        settle()  # the standby and spare processes warm up first: steady state is what is compared
        trips: dict[str, list[float]] = {JAX: [], PY: []}
        print(f"widget round trips: 10 warm-up + {n} each…", file=sys.stderr, flush=True)
        for i in range(10 + n):
            order = (JAX, PY) if i % 2 == 0 else (PY, JAX)
            for name in order:
                seconds = widget_round_trip(kernels[name], ids[name], i + 1)
                if i >= 10:
                    trips[name].append(seconds)
        bars: dict[str, list[float]] = {JAX: [], PY: []}
        print(f"tqdm cells: 1 warm-up + {cells} each…", file=sys.stderr, flush=True)
        for i in range(1 + cells):
            order = (JAX, PY) if i % 2 == 0 else (PY, JAX)
            for name in order:
                seconds = kernels[name].run_ok(TQDM_CELL).seconds
                if i >= 1:
                    bars[name].append(seconds)
    finally:
        BenchKernel.shutdown_all()
    rows = [
        Row(
            "Widget round trip: slider value set by the frontend → observer's reply on IOPub",
            spread(trips[JAX]),
            f"python3: {spread(trips[PY])}",
            ratio(trips[JAX], trips[PY], TARGET),
            str(n),
        ),
        Row(
            "Cell with a 1,000-step `tqdm.auto` loop (a progress-bar widget), request → idle",
            spread(bars[JAX]),
            f"python3: {spread(bars[PY])}",
            ratio(bars[JAX], bars[PY], TARGET),
            str(cells),
        ),
    ]
    return report(["bench/bench_frontends.py", *argv], rows, t_start)


if __name__ == "__main__":
    sys.exit(main())
