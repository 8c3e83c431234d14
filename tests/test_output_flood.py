"""Cells that print a lot, as training loops do: each finishes, every line arrives in order, the next cell runs.

Each case runs on the stock ``python3`` kernel too, in the same test, and the jax kernel must deliver at
least what the stock kernel delivers.  The jax kernel runs each case five times in a row: the hang these
tests guard against (the kernel left the worker's reply unread in its buffer) depended on timing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from conftest import Kernel, Result, start_kernel, stop_kernel

ROUNDS = 5
TIMEOUT = 120


@pytest.fixture(scope="module")
def stock() -> Iterator[Kernel]:
    """The stock IPython kernel, the baseline a user compares with."""
    km, kc = start_kernel(kernel_name="python3")
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def _numbers(text: str, tag: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^{tag} (\d+)$", text, flags=re.M)]


def _compare(
    kernel: Kernel, stock: Kernel, code: str, check: Callable[[Result], int], rounds: int = ROUNDS
) -> None:
    """Run ``code`` on the stock kernel once and on the jax kernel ``rounds`` times.

    ``check`` asserts what one run delivered (order included) and returns how many items arrived."""
    baseline = check(stock.ok(code, timeout=TIMEOUT))
    for i in range(rounds):
        res = kernel.run(code, timeout=TIMEOUT)
        assert res.reply["status"] == "ok", (i, res.reply)
        delivered = check(res)
        assert delivered >= baseline, f"round {i}: {delivered} items, the stock kernel delivered {baseline}"
        assert kernel.ok("1 + 1").of("execute_result")[0]["data"]["text/plain"] == "2"


def _lines(n: int, name: str = "stdout", tag: str = "line") -> Callable[[Result], int]:
    def check(res: Result) -> int:
        got = _numbers(res.stream(name), tag)
        assert got == list(range(n)), f"{len(got)} of {n} lines, first gap near {_gap(got)}"
        return len(got)

    return check


def _gap(got: list[int]) -> int:
    return next((i for i, v in enumerate(got) if v != i), len(got))


@pytest.mark.parametrize("n", [3000, 20000])
def test_flushed_prints_all_arrive_in_order(kernel: Kernel, stock: Kernel, n: int) -> None:
    _compare(kernel, stock, f"for i in range({n}):\n    print('line', i, flush=True)", _lines(n))


def test_logging_loop_to_stdout(kernel: Kernel, stock: Kernel) -> None:
    code = (
        "import logging, sys\n"
        "log = logging.getLogger('flood')\n"
        "log.handlers[:] = [logging.StreamHandler(sys.stdout)]\n"
        "log.handlers[0].setFormatter(logging.Formatter('%(message)s'))\n"
        "log.setLevel(logging.INFO)\n"
        "log.propagate = False\n"
        "for i in range(3000):\n"
        "    log.info('record %d', i)\n"
    )
    _compare(kernel, stock, code, _lines(3000, tag="record"))


def test_pool_children_that_print(kernel: Kernel, stock: Kernel) -> None:
    code = (
        "import multiprocessing as mp\n"
        "def chatter(k):\n"
        "    for i in range(1000):\n"
        "        print(f'child{k} {i}', flush=True)\n"
        "    return k\n"
        "with mp.get_context('fork').Pool(2) as pool:\n"
        "    done = pool.map(chatter, [0, 1])\n"
        "print('done', len(done))\n"
    )

    def check(res: Result) -> int:
        total = 0
        for k in (0, 1):
            got = _numbers(res.stdout, f"child{k}")
            assert got == sorted(got), f"child {k}'s lines out of order"
            assert len(set(got)) == len(got), f"child {k}'s lines repeated"
            total += len(got)
        assert "done 1" in res.stdout or "done 2" in res.stdout
        return total

    _compare(kernel, stock, code, check)


def test_interleaved_stdout_and_stderr_floods(kernel: Kernel, stock: Kernel) -> None:
    code = (
        "import sys\n"
        "for i in range(3000):\n"
        "    print('out', i, flush=True)\n"
        "    print('err', i, file=sys.stderr, flush=True)\n"
    )
    out, err = _lines(3000, "stdout", "out"), _lines(3000, "stderr", "err")

    def check(res: Result) -> int:
        return out(res) + err(res)

    _compare(kernel, stock, code, check)


def test_burst_of_displays(kernel: Kernel, stock: Kernel) -> None:
    code = (
        "from IPython.display import display, HTML\nfor i in range(2000):\n    display(HTML(f'<i>{i}</i>'))\n"
    )

    def check(res: Result) -> int:
        got = [d["data"]["text/html"] for d in res.of("display_data")]
        assert got == [f"<i>{i}</i>" for i in range(2000)]
        return len(got)

    _compare(kernel, stock, code, check)
