"""The worker-side snapshot engine (jax_kernel.worker.state), in-process, with real JAX on CPU.

Saves run here (or in a subprocess where the device count matters); restores run in a fresh
interpreter, as the next worker would, and print what they got so the two sides can be compared
bit for bit.  The kernel-side tests (crashes through jupyter_client) live elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import blake3
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jax_kernel.worker.state import Budgets, RestoreReport, StateKeeper, Summary

ROOT = str(Path(__file__).resolve().parent.parent)
BUDGETS = Budgets(max_total_bytes=4 << 30, max_value_bytes=2 << 30, max_seconds=600.0)

# What both sides run to describe values: dtype, shape, devices, sharding and a digest of the bits.
DESCRIBE = """
import hashlib, numpy as np
def leaf(x):
    import jax
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        host = np.asarray(jax.random.key_data(x))
    else:
        host = np.asarray(x)
    out = {"type": type(x).__name__, "dtype": str(x.dtype), "shape": list(x.shape),
           "sha": hashlib.sha256(np.ascontiguousarray(host).reshape(-1).view(np.uint8)).hexdigest()}
    if isinstance(x, jax.Array):
        out["devices"] = sorted(d.id for d in x.devices())
        out["sharding"] = repr(x.sharding)
    return out
def tree(t):
    import jax
    return [leaf(x) for x in jax.tree_util.tree_leaves(t)]
"""

CELL = """
import numpy as np
import jax, jax.numpy as jnp
count = 3
title = "mlp"
lr = 0.5
keys = jax.random.split(jax.random.key(0), 2)
params = {"w1": jax.random.normal(keys[0], (64, 512)), "b1": jnp.zeros(512),
          "w2": jax.random.normal(keys[1], (512, 8)), "b2": jnp.zeros(8)}
data = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
def predict(p, x):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return (h @ p["w2"] + p["b2"]) * lr
class Scaler:
    def __init__(self, k):
        self.k = k
    def __call__(self, x):
        return x * self.k + count
scale = Scaler(2.0)
fast = jax.jit(predict)
def power(x, n):
    return x ** n
fast_power = jax.jit(power, static_argnums=1)
stream = (i for i in range(10))
same = params
shared = np.arange(20000.0)
holders = {"a": shared, "b": [shared]}
"""

CALLS = """
calls = {
    "predict": leaf(predict(params, data[:4])),
    "fast": leaf(fast(params, data[:4])),
    "scale": float(scale(3.0)),
    "power": float(fast_power(2.0, 3)),
    "isinstance": isinstance(scale, Scaler),
}
"""


def _run(code: str, devices: int | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (the next worker); it prints one JSON line last."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" if devices else ""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _restore_code(root: Path, expected: str | None, body: str = "") -> str:
    return (
        "import json, sys\n"
        "from jax_kernel.worker.state import StateKeeper\n"
        f"ns = {{}}\nreport = StateKeeper.restore({str(root)!r}, ns, {expected!r})\n"
        f"{DESCRIBE}\n{body}\n"
    )


def _objects(root: Path) -> set[str]:
    return {p.name for p in (root / "objects").iterdir()}


def _steps(keeper: StateKeeper, seconds: float = 0.02) -> list[float]:
    took = []
    while keeper.pending():
        start = time.perf_counter()
        keeper.step(seconds)
        took.append(time.perf_counter() - start)
    return took


@pytest.fixture
def cell_ns(tmp_path: Path) -> Any:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(CELL, ns)
    ns["log"] = open(tmp_path / "log.txt", "w")  # noqa: SIM115 - an open file is the point
    yield ns
    ns["log"].close()


def test_round_trip_into_a_fresh_process(tmp_path: Path, cell_ns: dict[str, Any]) -> None:
    root = tmp_path / "state"
    root.mkdir()
    summary = StateKeeper(str(root), BUDGETS).save_now(cell_ns, 7, set())
    json.dumps(summary.to_json())  # the wire is JSON only
    assert summary.cell == 7 and summary.digest
    assert summary.skipped == {
        "stream": "generator: not saveable",
        "log": "TextIOWrapper (an open file): not saveable",
    }
    assert summary.values["params"]["kind"] == "pytree"
    assert summary.values["data"]["kind"] == "array"
    assert summary.values["fast"]["kind"] == "jitted function"
    assert summary.values["Scaler"]["kind"] == "class" and summary.values["np"]["kind"] == "module"

    ns = cell_ns
    exec(DESCRIBE + CALLS, ns)
    expected = {
        "params": ns["tree"](ns["params"]),
        "data": ns["leaf"](ns["data"]),
        "calls": ns["calls"],
        "lr2": ns["leaf"](ns["predict"](ns["params"], ns["data"][:4]) * 2),
    }
    body = (
        "names = sorted(k for k in ns if not k.startswith('__'))\n"
        "globals().update(ns)\n"
        + CALLS
        + "ns['lr'] = 1.0\n"  # functions read the namespace they were restored into
        "lr2 = leaf(ns['predict'](params, data[:4]))\n"
        "shared_ok = holders['a'] is holders['b'][0] and holders['a'] is shared\n"
        "print(json.dumps({'report': report.to_json(), 'params': tree(params), 'data': leaf(data),\n"
        "  'calls': calls, 'lr2': lr2, 'names': names, 'same': same is params, 'shared': shared_ok,\n"
        "  'writable': bool(shared.flags.writeable)}))\n"
    )
    got = _run(_restore_code(root, summary.digest, body))
    report = got["report"]
    assert report["cell"] == 7
    assert report["not_restored"] == summary.skipped
    saved = {n for n in cell_ns if not n.startswith("_")} - {
        "stream",
        "log",
        "leaf",
        "tree",
        "calls",
        "hashlib",
    }
    assert set(got["names"]) == saved == set(report["restored"])
    assert got["params"] == expected["params"] and got["data"] == expected["data"]
    assert got["calls"] == expected["calls"]
    assert got["lr2"] == expected["lr2"]
    assert got["same"] and got["shared"] and got["writable"]


SAVE_SHARDED = (
    DESCRIBE
    + """
import json, sys, jax, jax.numpy as jnp
from jax_kernel.worker.state import StateKeeper, Budgets
mesh = jax.make_mesh((2, 2), ("x", "y"))
ns = {"__name__": "__main__", "mesh": mesh}
ns["sharded"] = jax.device_put(jnp.arange(128 * 256, dtype=jnp.float32).reshape(128, 256),
                               jax.NamedSharding(mesh, jax.P("x", "y")))
ns["replicated"] = jax.device_put(jnp.ones((64, 512)), jax.NamedSharding(mesh, jax.P()))
ns["on3"] = jax.device_put(jnp.arange(40000.0), jax.devices()[3])
ns["small_on2"] = jax.device_put(jnp.arange(4.0), jax.devices()[2])
ns["tree"] = {"a": ns["sharded"], "b": [ns["on3"], ns["small_on2"]]}
s = StateKeeper(ROOT_DIR, Budgets(1 << 30, 1 << 30, 60.0)).save_now(ns, 3, set())
print(json.dumps({"digest": s.digest, "values": {n: tree(ns[n]) for n in ("sharded", "replicated", "on3", "small_on2", "tree")}}))
"""
)


def test_shardings_and_devices_come_back_and_fall_back(tmp_path: Path) -> None:
    saved = _run(SAVE_SHARDED.replace("ROOT_DIR", repr(str(tmp_path))), devices=4)
    names = ("sharded", "replicated", "on3", "small_on2", "tree")
    show = f"print(json.dumps({{'report': report.to_json(), 'values': {{n: tree(ns[n]) for n in {names!r} if n in ns}}}}))"
    same = _run(_restore_code(tmp_path, saved["digest"], show), devices=4)
    assert same["report"]["notes"] == [] and same["report"]["not_restored"] == {}
    assert same["values"] == saved["values"]
    assert "spec=P('x', 'y')" in saved["values"]["sharded"][0]["sharding"]

    fewer = _run(_restore_code(tmp_path, saved["digest"], show), devices=1)
    report = fewer["report"]
    for name in names:  # the bits are the same, on the one device left
        for got, was in zip(fewer["values"][name], saved["values"][name], strict=True):
            assert got["sha"] == was["sha"] and got["dtype"] == was["dtype"] and got["devices"] == [0]
    notes = "\n".join(report["notes"])
    assert "sharded: devices cpu:1-3 are gone: placed on the default device" in notes
    assert "on3: device cpu:3 is gone: placed on the default device" in notes
    assert "device cpu:1 is gone" in report["not_restored"]["mesh"]  # a Mesh needs its devices


def test_unchanged_names_cost_nothing_and_a_changed_array_is_written_once(tmp_path: Path) -> None:
    mib = 1 << 20
    ns: dict[str, Any] = {"a": np.ones(mib // 8), "b": np.zeros(mib // 8), "c": jnp.ones(mib // 4), "n": 1}
    keeper = StateKeeper(str(tmp_path), BUDGETS)
    keeper.save_now(ns, 1, set())
    before, files = keeper.stats(), _objects(tmp_path)
    assert len(files) == 3

    keeper.cell_done(ns, 2, set())  # nothing changed: numpy arrays are hashed, nothing written
    _steps(keeper)
    after = keeper.stats()
    assert after["written_bytes"] == before["written_bytes"]
    assert after["hashed_bytes"] - before["hashed_bytes"] == 2 * mib  # a and b; not the JAX array
    assert _objects(tmp_path) == files

    def cell(n: int) -> dict[str, int]:
        was = keeper.stats()
        keeper.cell_done(ns, n, set())
        _steps(keeper)
        return {k: v - was[k] for k, v in keeper.stats().items()}

    ns["a"] += 1  # in place, after being unchanged: hashed, found new, then hashed while written
    ns["n"] = 2
    assert cell(3) == {"hashed_bytes": 3 * mib, "written_bytes": mib, "files_written": 1}
    assert len(_objects(tmp_path) - files) == 1 and len(_objects(tmp_path)) == 3  # the old file collected
    ns["a"] += 1  # it changes every cell now: hashed while written, one pass over it
    assert cell(4) == {"hashed_bytes": 2 * mib, "written_bytes": mib, "files_written": 1}
    ns["c"] = ns["c"] * 2  # a new JAX array: hashed while written (and a, which changed last time)
    assert cell(5) == {"hashed_bytes": 3 * mib, "written_bytes": 2 * mib, "files_written": 2}
    assert cell(6) == {"hashed_bytes": 2 * mib, "written_bytes": 0, "files_written": 0}  # all settled
    assert keeper.summary().cell == 6 and len(list(tmp_path.glob("manifest-*.json"))) == 1


def test_steps_stay_short_and_a_new_cell_keeps_the_progress(tmp_path: Path) -> None:
    big = np.random.default_rng(1).standard_normal(50_000_000 // 2).astype(np.float64)  # 200 MB
    ns: dict[str, Any] = {"big": big, "x": 1}
    keeper = StateKeeper(str(tmp_path), BUDGETS)
    keeper.cell_done(ns, 1, set())
    for _ in range(3):  # a few steps, then a new cell
        keeper.step(0.02)
    assert keeper.pending() and keeper.summary().cell is None
    ns["x"] = 2
    keeper.cell_done(ns, 2, set())
    took = _steps(keeper)
    assert keeper.summary().cell == 2 and keeper.summary().values["big"]["bytes"] == big.nbytes
    assert len(took) + 3 > 4, "the array was written in pieces"
    assert max(took) < 0.25, f"longest step {max(took):.3f} s"
    # The half-written file was continued, not started over (its prefix re-hashed, not re-written).
    assert keeper.stats()["written_bytes"] == big.nbytes


def test_the_time_budget_leaves_the_rest_for_the_next_idle_time(tmp_path: Path) -> None:
    ns = {"big": jnp.ones(16 << 20), "slow": np.ones(32 << 20)}  # 64 MiB, 256 MiB
    keeper = StateKeeper(str(tmp_path), Budgets(1 << 30, 1 << 30, max_seconds=0.05))
    keeper.cell_done(ns, 1, set())
    _steps(keeper, 0.01)
    assert not keeper.pending() and keeper.summary().cell is None
    for cell in range(2, 400):  # each idle period gets 0.05 s; the JAX array's file grows across them
        keeper.cell_done(ns, cell, set())
        _steps(keeper, 0.01)
        if keeper.summary().cell is not None:
            break
    summary = keeper.summary()
    assert summary.values["big"]["bytes"] == 64 << 20
    assert keeper.stats()["written_bytes"] == 64 << 20
    # A numpy array can change in any cell, so it has to fit in one idle period's time.
    assert summary.skipped["slow"] == "256.0 MiB of numpy arrays, over the 0.05 s time budget (max_seconds)"


def test_budgets_skip_with_sizes_and_the_setting(tmp_path: Path) -> None:
    mib = 1 << 20
    budgets = Budgets(5 * mib // 2, 2 * mib, 60.0, value_setting="WorkerManager.state_value_bytes")
    ns = {
        "huge": np.ones(4 * mib // 8),
        "a": np.ones(3 * mib // 16),
        "b": jnp.ones(3 * mib // 8, jnp.float32),
        "many": list(range(1_000_000)),
        "ok": 1,
    }
    summary = StateKeeper(str(tmp_path), budgets).save_now(ns, 1, set())
    assert summary.skipped["huge"] == "4.0 MiB, over the 2.0 MiB budget (WorkerManager.state_value_bytes)"
    assert summary.skipped["b"] == "1.5 MiB, over what is left of the 2.5 MiB total budget (max_total_bytes)"
    assert summary.skipped["many"].startswith("more than 2.0 MiB pickled, over the 2.0 MiB budget")
    assert set(summary.values) == {"a", "ok"}


def test_bfloat16_and_other_ml_dtypes_round_trip_bit_equal(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ns = {
        "bf_np": rng.standard_normal(100_000).astype(ml_dtypes.bfloat16),
        "bf_jax": jnp.asarray(rng.standard_normal(100_000), jnp.bfloat16),
        "bf_small": jnp.asarray([1.5, -2.25], jnp.bfloat16),
        "f8": rng.standard_normal(70_000).astype(ml_dtypes.float8_e4m3fn),
    }
    summary = StateKeeper(str(tmp_path), BUDGETS).save_now(ns, 1, set())
    back: dict[str, Any] = {}
    report = StateKeeper.restore(str(tmp_path), back, summary.digest)
    assert sorted(report.restored) == sorted(ns) and not report.not_restored
    for name, value in ns.items():
        assert back[name].dtype == value.dtype and type(back[name]) is type(value)
        assert np.asarray(back[name]).view(np.uint8).tobytes() == np.asarray(value).view(np.uint8).tobytes()
    # The files are plain .npy: numpy reads them (as same-width integers; the manifest names the dtype).
    stored = [np.load(p) for p in (tmp_path / "objects").glob("*.npy")]
    assert sorted(str(a.dtype) for a in stored) == ["uint16", "uint16", "uint8"]


def _saved(tmp_path: Path) -> tuple[dict[str, Any], Summary]:
    ns = {"w": np.arange(50_000.0), "v": jnp.arange(30_000.0), "obj": {"k": list(range(20000))}, "n": 5}
    return ns, StateKeeper(str(tmp_path), BUDGETS).save_now(ns, 4, set())


def _file_of(tmp_path: Path, summary: Summary, name: str) -> Path:
    manifest = json.loads((tmp_path / f"manifest-{summary.digest}.json").read_text())
    record = manifest["values"][name]
    ref = record.get("array") or record["pickle"]
    return tmp_path / "objects" / (ref["digest"] + (".npy" if "array" in record else ".pkl"))


def test_a_tampered_or_truncated_file_loses_only_its_value(tmp_path: Path) -> None:
    ns, summary = _saved(tmp_path)
    path = _file_of(tmp_path, summary, "w")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with open(_file_of(tmp_path, summary, "v"), "r+b") as f:  # an OOM kill mid-write
        f.truncate(1000)
    back: dict[str, Any] = {}
    report = StateKeeper.restore(str(tmp_path), back, summary.digest)
    assert report.not_restored == {
        "w": "its saved data failed its check: not restored",
        "v": "its saved data was truncated or changed: not restored",
    }
    assert sorted(report.restored) == ["n", "obj"] and back["obj"] == ns["obj"]


def test_a_tampered_pickle_never_runs(tmp_path: Path) -> None:
    _, summary = _saved(tmp_path)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> Any:
            return (open, (str(marker), "w"))

    _file_of(tmp_path, summary, "obj").write_bytes(pickle.dumps(Evil()))
    report = StateKeeper.restore(str(tmp_path), {}, summary.digest)
    assert report.not_restored == {"obj": "its saved data failed its check: not restored"}
    assert not marker.exists()


@pytest.mark.parametrize("expected", ["recorded", None])
def test_a_tampered_manifest_restores_nothing(tmp_path: Path, expected: str | None) -> None:
    _, summary = _saved(tmp_path)
    manifest = tmp_path / f"manifest-{summary.digest}.json"
    manifest.write_text(manifest.read_text().replace('"cell":4', '"cell":5'))
    report = StateKeeper.restore(str(tmp_path), {}, summary.digest if expected else None)
    assert report.restored == [] and report.notes == ["the snapshot failed its check: not restored"]
    other = StateKeeper.restore(str(tmp_path), {}, "0" * 64)  # not the snapshot the kernel recorded
    assert other.restored == [] and other.notes == ["the snapshot failed its check: not restored"]


def test_a_snapshot_committed_after_the_kernels_record_is_restored_with_a_note(tmp_path: Path) -> None:
    """The worker died between committing and telling the kernel: the newer snapshot on disk
    still passes its own checks, so it comes back, and the report says why it is not the one
    the kernel recorded."""
    ns, _summary = _saved(tmp_path)
    back: dict[str, Any] = {}
    report = StateKeeper.restore(str(tmp_path), back, "0" * 64)
    assert "n" in report.restored and back["n"] == ns["n"]
    assert any("the kernel had heard of" in note for note in report.notes), report.notes


def test_snapshots_import_no_jax_into_a_worker_without_it(tmp_path: Path) -> None:
    code = f"""
import json, sys
import numpy as np
from jax_kernel.worker.state import StateKeeper, Budgets
ns = {{"__name__": "__main__", "a": np.ones(100000), "s": "text", "np": np}}
exec("def f(x):\\n    return x + 1", ns)
keeper = StateKeeper({str(tmp_path)!r}, Budgets(1 << 30, 1 << 30, 60.0))
s = keeper.save_now(ns, 1, set())
back = {{}}
r = StateKeeper.restore({str(tmp_path)!r}, back, s.digest)
print(json.dumps({{"jax": "jax" in sys.modules, "restored": sorted(r.restored), "f": back["f"](1)}}))
"""
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "jax": False,
        "restored": ["a", "f", "np", "s"],
        "f": 2,
    }


def test_hidden_names_discard_and_reports(tmp_path: Path) -> None:
    ns = {
        "_private": 1,
        "In": [],
        "Out": {},
        "get_ipython": print,
        "exit": 0,
        "quit": 0,
        "setup": 2,
        "kept": 3,
    }
    keeper = StateKeeper(str(tmp_path), BUDGETS)
    summary = keeper.save_now(ns, 2, {"setup"})
    assert set(summary.values) == {"kept"}
    assert StateKeeper(str(tmp_path), BUDGETS).summary().digest == summary.digest  # read back from disk
    keeper.discard()
    assert keeper.summary() == Summary() and _objects(tmp_path) == set()
    report = StateKeeper.restore(str(tmp_path), {}, None)
    assert isinstance(report, RestoreReport) and report.notes == ["there is no snapshot to restore"]
    json.dumps(report.to_json())


def test_members_keep_separate_snapshots(tmp_path: Path) -> None:
    for member in ("0", "1"):
        StateKeeper(str(tmp_path), BUDGETS, member=member).save_now({"rank": int(member)}, 1, set())
    for member in ("0", "1"):
        back: dict[str, Any] = {}
        StateKeeper.restore(str(tmp_path), back, None, member=member)
        assert back == {"rank": int(member)}


def test_file_names_are_content_digests(tmp_path: Path) -> None:
    _, summary = _saved(tmp_path)
    for path in (tmp_path / "objects").iterdir():
        assert blake3.blake3(path.read_bytes()).hexdigest() == path.name.split(".")[0]
    head = json.loads((tmp_path / "HEAD").read_text())
    assert head["digest"] == summary.digest
    assert hashlib.sha256((tmp_path / head["manifest"]).read_bytes()).hexdigest() == summary.digest


def test_a_numpy_array_changed_mid_write_is_written_again(tmp_path: Path) -> None:
    big = np.zeros(8 << 20)  # 64 MiB
    ns: dict[str, Any] = {"big": big}
    keeper = StateKeeper(str(tmp_path), BUDGETS)
    keeper.cell_done(ns, 1, set())
    while keeper.stats()["written_bytes"] < big.nbytes // 4:
        keeper.step(0.01)
    big[0] = 7.0  # the next cell changes the part already written
    keeper.cell_done(ns, 2, set())
    _steps(keeper)
    assert keeper.stats()["written_bytes"] > big.nbytes  # started over
    back: dict[str, Any] = {}
    StateKeeper.restore(str(tmp_path), back, keeper.summary().digest)
    assert back["big"][0] == 7.0 and np.array_equal(back["big"], big)


def test_a_worker_killed_mid_pass_leaves_the_last_snapshot(tmp_path: Path) -> None:
    ns: dict[str, Any] = {"big": jnp.ones(32 << 20), "n": 1}  # 128 MiB
    first = StateKeeper(str(tmp_path), BUDGETS).save_now(ns, 1, set())
    keeper = StateKeeper(str(tmp_path), BUDGETS)
    ns.update(big=ns["big"] + 1, n=2)
    keeper.cell_done(ns, 2, set())
    while keeper.stats()["written_bytes"] == 0:
        keeper.step(0.001)  # a half-written file, then the worker dies
    assert keeper.summary().cell == 1
    assert any(p.name.startswith("tmp-") for p in (tmp_path / "objects").iterdir())
    back: dict[str, Any] = {}
    after = StateKeeper(str(tmp_path), BUDGETS)  # the next worker's keeper, made before or after its restore
    assert after.summary().digest == first.digest
    report = StateKeeper.restore(str(tmp_path), back, first.digest)
    assert report.cell == 1 and back["n"] == 1 and float(back["big"][0]) == 1.0
    # Its first commit reuses the restored file (not hashed, not written) and sweeps the dead one's leftovers.
    summary = after.save_now(back, 3, set())
    assert after.stats() == {"hashed_bytes": 0, "written_bytes": 0, "files_written": 0} and summary.cell == 3
    assert not any(p.name.startswith("tmp-") for p in (tmp_path / "objects").iterdir())


def test_deleted_jax_arrays_and_the_namespace_itself(tmp_path: Path) -> None:
    gone = jnp.ones(100_000)
    gone.delete()
    ns: dict[str, Any] = {"__name__": "__main__", "gone": gone, "holder": {"w": gone}, "k": 2}
    ns["g"] = ns  # globals() kept in a variable comes back as the namespace it is restored into
    summary = StateKeeper(str(tmp_path), BUDGETS).save_now(ns, 1, set())
    assert summary.skipped["gone"].startswith("jax array: deleted")
    assert summary.skipped["holder"].startswith("dict: not saveable (holds a jax array: deleted")
    back: dict[str, Any] = {"__builtins__": "kept"}
    StateKeeper.restore(str(tmp_path), back, summary.digest)
    assert back["g"] is back and back["k"] == 2 and back["__builtins__"] == "kept"


def test_the_accelerator_copy_path_gives_the_same_bytes() -> None:
    """ShardSource on a GPU slices on the device; on CPU it uses the host view. Force the former."""
    from jax_kernel.worker.state.jaxarrays import ShardSource

    x = jnp.arange(3 * 70_000, dtype=jnp.float32).reshape(3, 70_000)
    source = ShardSource(x, [s for s in x.addressable_shards if s.replica_id == 0])
    source._parts = [(*part[:4], None) for part in source._parts]  # as if the shards were not host memory
    size = source.chunk_size(1 << 18)
    data = b"".join(
        bytes(source.read(i, min(size, source.data_bytes - i))) for i in range(0, source.data_bytes, size)
    )
    assert data == np.asarray(x).tobytes()


MEMBER = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(f"127.0.0.1:{PORT}", num_processes=2, process_id=PID)
import jax.numpy as jnp, numpy as np
from jax_kernel.worker.state import StateKeeper, Budgets
sharding = jax.NamedSharding(jax.make_mesh((4,), ("x",)), jax.P("x"))
if MODE == "save":
    local = np.arange(PID * 50000, (PID + 1) * 50000, dtype=np.float32).reshape(2, 25000)
    ns = {"g": jax.make_array_from_process_local_data(sharding, local), "rank": PID}
    s = StateKeeper(ROOT_DIR, Budgets(1 << 30, 1 << 30, 60.0), member=str(PID)).save_now(ns, 1, set())
    print(json.dumps({"skipped": s.skipped, "kind": s.values["g"]["kind"], "sum": float(jnp.sum(ns["g"]))}))
else:
    ns = {}
    r = StateKeeper.restore(ROOT_DIR, ns, None, member=str(PID))
    print(json.dumps({"report": r.to_json(), "sum": float(jnp.sum(ns["g"])), "rank": ns["rank"],
                      "sharding": repr(ns["g"].sharding)}))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set_of_two(tmp_path: Path, mode: str) -> list[dict[str, Any]]:
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
    code = [
        MEMBER.replace("PORT", str(port)).replace("PID", str(i)).replace("MODE", repr(mode)) for i in range(2)
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", c.replace("ROOT_DIR", repr(str(tmp_path)))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in code
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_a_set_of_processes_keeps_each_members_shards(tmp_path: Path) -> None:
    saved = _set_of_two(tmp_path, "save")
    assert [s["skipped"] for s in saved] == [{}, {}] and saved[0]["kind"] == "jax array"
    back = _set_of_two(tmp_path, "restore")  # a replacement set of the same size and layout
    for rank, got in enumerate(back):
        assert got["report"]["not_restored"] == {} and got["rank"] == rank
        assert got["sum"] == saved[0]["sum"] and "spec=P('x',)" in got["sharding"]
    # One process alone cannot rebuild an array that needs the other member's shards.
    alone = _run(_restore_code(tmp_path / "0", None, "print(json.dumps(report.to_json()))"), devices=4)
    assert "g" in alone["not_restored"] and alone["restored"] == ["rank"]


def test_a_full_disk_is_reported_not_raised(tmp_path: Path) -> None:
    code = f"""
import json, resource, signal
import numpy as np
from jax_kernel.worker.state import StateKeeper, Budgets
keeper = StateKeeper({str(tmp_path)!r}, Budgets(1 << 30, 1 << 30, 60.0))
first = keeper.save_now({{"small": np.ones(1000)}}, 1, set())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # no file over 1 MiB: as a full disk
after = keeper.save_now({{"small": np.ones(1000), "big": np.ones(1 << 20)}}, 2, set())
back = {{}}
report = StateKeeper.restore({str(tmp_path)!r}, back, None)
print(json.dumps({{"error": after.error, "cell": after.cell, "same": after.digest == first.digest,
                  "restored": report.restored, "pending": keeper.pending()}}))
"""
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["error"].startswith("OSError: [Errno 27] File too large")
    assert got["cell"] == 1 and got["same"] and got["restored"] == ["small"] and not got["pending"]


def test_strided_and_fortran_arrays_round_trip(tmp_path: Path) -> None:
    base = np.arange(400 * 500, dtype=np.float32).reshape(400, 500)
    ns = {"t": base.T, "every_other": base[::2], "fortran": np.asfortranarray(base), "mm": base.copy()}
    summary = StateKeeper(str(tmp_path), BUDGETS).save_now(ns, 1, set())
    assert all(v["kind"] == "array" for v in summary.values.values())
    back: dict[str, Any] = {}
    StateKeeper.restore(str(tmp_path), back, summary.digest)
    for name, value in ns.items():
        assert np.array_equal(back[name], value) and back[name].dtype == value.dtype
    assert len(_objects(tmp_path)) == 3  # "fortran" and "mm" hold the same values: one file


def test_an_interrupt_in_idle_time_loses_no_consistency(tmp_path: Path) -> None:
    import signal

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    ns: dict[str, Any] = {
        "a": np.arange(8 << 20, dtype=np.float64),
        "b": jnp.arange(16 << 20, dtype=jnp.float32),
    }
    keeper = StateKeeper(str(tmp_path), BUDGETS)
    keeper.cell_done(ns, 1, set())
    old = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    try:
        for _ in range(20):
            if not keeper.pending():
                break
            signal.setitimer(signal.ITIMER_REAL, 0.004)
            try:
                keeper.step(0.02)
                signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                interrupted += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _steps(keeper)
    assert interrupted and keeper.summary().cell == 1
    for path in (tmp_path / "objects").iterdir():  # every file is what its name says
        assert blake3.blake3(path.read_bytes()).hexdigest() == path.name.split(".")[0]
    back: dict[str, Any] = {}
    StateKeeper.restore(str(tmp_path), back, keeper.summary().digest)
    assert np.array_equal(back["a"], ns["a"]) and bool((back["b"] == ns["b"]).all())


def test_a_failed_cell_in_between_restarts_the_pass(tmp_path: Path) -> None:
    big = np.zeros(8 << 20)  # 64 MiB
    ns: dict[str, Any] = {"In": [""], "big": big}
    keeper = StateKeeper(str(tmp_path), BUDGETS)
    keeper.cell_done(ns, 1, set())
    while keeper.stats()["written_bytes"] < big.nbytes // 4:
        keeper.step(0.01)
    big[0] = 7.0  # a cell that fails after changing the part already written (no cell_done)
    ns["In"].append("big[0] = 7.0; 1 / 0")
    _steps(keeper)
    back: dict[str, Any] = {}
    StateKeeper.restore(str(tmp_path), back, keeper.summary().digest)
    assert keeper.summary().cell == 1 and np.array_equal(back["big"], big)
