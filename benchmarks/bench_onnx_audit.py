"""``bundlelab audit M.onnx`` against a plain onnxruntime process over the same inputs.

Run:  python benchmarks/bench_onnx_audit.py             (MLP and conv net, best of 5)
      python benchmarks/bench_onnx_audit.py --quick     (MLP only, best of 3)
      python benchmarks/bench_onnx_audit.py --no-baseline   (without the commit-before column)

The models are built offline with ``onnx.helper`` (no exporter needed), shaped as a torch
export writes them: ``mlp``, 24 hidden ``Gemm`` + ``Relu`` layers of 512 on 784 inputs; ``conv``,
a 3x32x32 input, a stride-2 stem and 16 ``Conv`` + ``Relu`` layers of 32 channels at 16x16.  The
data is 2048 samples with labels (an ``.npz``), all of them measured (``--n-samples 2048``).

The floor is a fresh ``python`` that imports onnxruntime, loads the ``.npz``, creates a
session of the model file (onnxruntime's defaults) and runs every sample in the batches the
audit runs (256).  Both are fresh processes, run interleaved (floor, audit, floor, audit, ...)
so a busy machine slows both alike, best of ``--repeats``, with the audit of commit
``PREVIOUS`` (a temporary git worktree, the same venv) in the same rounds; byte code is cached
(``PYTHONPYCACHEPREFIX`` in a temporary folder) as it is in an installed package, and each runs
once before the clock.  The target of issue 13: the audit <= 1.5 x the floor.

It then says where the audit's time goes, from one more process whose model setup, forward
passes and fingerprinting are timed by wrapping them: imports (the command's modules and
onnx), model setup (reading the model, onnx's shape inference, importing onnxruntime, the
tapped session, any probe batches), forward passes, bundle work, and the rest (the data, the
report, Python's start is not counted).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _rows import row

ROOT = Path(__file__).resolve().parent.parent
N_SAMPLES = 2048
#: samples per forward pass of the floor: what the audit picks for these models
FLOOR_BATCH = 256
TARGET = 1.5
#: the integrated state before issue 13's ONNX audit work, measured side by side
PREVIOUS = "f1570a2"

FLOOR = """
import sys
import numpy as np
import onnxruntime as ort
data = np.load(sys.argv[2])
x, labels = data["x"], data["labels"]
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
for start in range(0, x.shape[0], {batch}):
    session.run(None, {{name: x[start:start + {batch}]}})
"""


def build_mlp(path: Path, rng: np.random.Generator) -> np.ndarray:
    """24 Gemm + Relu layers of 512 (names as torch.onnx writes them); the inputs."""
    from onnx import helper, numpy_helper

    nodes, weights, previous, width = [], [], "input", 784
    for i in range(24):
        w = (rng.standard_normal((512, width)) * np.sqrt(2.0 / width)).astype(np.float32)
        b = (rng.standard_normal(512) * 0.01).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"fc.{i}.weight"),
                    numpy_helper.from_array(b, f"fc.{i}.bias")]
        nodes += [
            helper.make_node("Gemm", [previous, f"fc.{i}.weight", f"fc.{i}.bias"],
                             [f"/fc.{i}/Gemm_output_0"], name=f"/fc.{i}/Gemm", transB=1),
            helper.make_node("Relu", [f"/fc.{i}/Gemm_output_0"], [f"/act.{i}/Relu_output_0"],
                             name=f"/act.{i}/Relu"),
        ]
        previous, width = f"/act.{i}/Relu_output_0", 512
    weights.append(numpy_helper.from_array(
        (rng.standard_normal((10, width)) * 0.05).astype(np.float32), "head.weight"))
    nodes.append(helper.make_node("Gemm", [previous, "head.weight"], ["logits"],
                                  name="/head/Gemm", transB=1))
    _save(path, nodes, weights, ["batch", 784])
    x = rng.standard_normal((N_SAMPLES, 784)).astype(np.float32)
    x[rng.random(N_SAMPLES) < 0.25] = 0.0  # some duplicated samples: bundles to find
    return x


def build_conv(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A stride-2 stem and 16 Conv + Relu layers of 32 channels at 16x16; the inputs."""
    from onnx import helper, numpy_helper

    nodes, weights, previous, channels = [], [], "input", 3
    for i in range(17):
        fan_in = channels * 9
        w = (rng.standard_normal((32, channels, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"conv.{i}.weight"),
                    numpy_helper.from_array(np.zeros(32, np.float32), f"conv.{i}.bias")]
        nodes += [
            helper.make_node("Conv", [previous, f"conv.{i}.weight", f"conv.{i}.bias"],
                             [f"/conv.{i}/Conv_output_0"], name=f"/conv.{i}/Conv",
                             pads=[1, 1, 1, 1], kernel_shape=[3, 3],
                             strides=[2, 2] if i == 0 else [1, 1]),
            helper.make_node("Relu", [f"/conv.{i}/Conv_output_0"],
                             [f"/act.{i}/Relu_output_0"], name=f"/act.{i}/Relu"),
        ]
        previous, channels = f"/act.{i}/Relu_output_0", 32
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["/pool/Output_0"], name="/pool/Pool"),
        helper.make_node("Flatten", ["/pool/Output_0"], ["/flat/Output_0"], name="/flat/Flatten"),
        helper.make_node("Gemm", ["/flat/Output_0", "head.weight"], ["logits"],
                         name="/head/Gemm", transB=1),
    ]
    weights.append(numpy_helper.from_array(
        (rng.standard_normal((10, 32)) * 0.1).astype(np.float32), "head.weight"))
    _save(path, nodes, weights, ["batch", 3, 32, 32])
    x = rng.standard_normal((N_SAMPLES, 3, 32, 32)).astype(np.float32)
    x[rng.random(N_SAMPLES) < 0.25] = 0.0
    return x


def _save(path: Path, nodes: list, weights: list, input_shape: list) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="bench_onnx_audit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


BUILDERS = {"mlp": build_mlp, "conv": build_conv}


def seconds(command: list[str], env: dict) -> float:
    """Wall seconds of one fresh process (which must succeed)."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr.decode()[-2000:]}")
    return wall


BREAKDOWN = """
import sys, time
start = time.perf_counter()
from bundlelab.cli._app import main
from bundlelab.adapters.onnx import OnnxAdapter
from bundlelab import streaming
clock = {"model setup": 0.0, "forward passes": 0.0, "bundle work": 0.0}
imported = time.perf_counter() - start
iterate = OnnxAdapter.iter_layer_outputs
# the fingerprinting: a batch added now, or a block of small batches (where the core has them)
work = [(streaming.BundleStream, "_add_batch"), (getattr(streaming, "StreamBatcher", None),
        "_fingerprint")]
work = [(owner, name) for owner, name in work if owner is not None and hasattr(owner, name)]
work = work or [(streaming.BundleStream, "update")]

def timed_iterate(*args, **kwargs):
    batches = iterate(*args, **kwargs)
    while True:
        began = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            clock["forward passes"] += time.perf_counter() - began
        yield batch

def timed(method):
    def run(*args, **kwargs):
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            clock["bundle work"] += time.perf_counter() - began
    return run

setup_depth = [0]

def timed_setup(method):
    # reading the model, inferring its types, the tapped session, the probe batches; the
    # outermost call only (selected() reads the model through model())
    def run(*args, **kwargs):
        began = time.perf_counter()
        setup_depth[0] += 1
        try:
            return method(*args, **kwargs)
        finally:
            setup_depth[0] -= 1
            if not setup_depth[0]:
                clock["model setup"] += time.perf_counter() - began
    return run

OnnxAdapter.model = timed_setup(OnnxAdapter.model)
OnnxAdapter.selected = timed_setup(OnnxAdapter.selected)
OnnxAdapter.iter_layer_outputs = timed_iterate
for owner, name in work:
    setattr(owner, name, timed(getattr(owner, name)))
sys.argv = ["bundlelab", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
total = time.perf_counter() - start
rest = total - imported - sum(clock.values())
print(f"audit times: imports {imported:.2f} s, " + ", ".join(
    f"{k} {v:.2f} s" for k, v in clock.items()) + f", the rest {rest:.2f} s "
    f"(the data, the report, ...), of {total:.2f} s in-process", file=sys.stderr)
"""


def where_time_goes(audit: list[str], env: dict) -> str:
    """Where one more audit process spends its time, one line (the forward passes and the
    fingerprinting timed by wrapping them)."""
    command = [sys.executable, "-c", BREAKDOWN, *audit[3:]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          env=env)
    lines = [line for line in done.stderr.splitlines() if line.startswith("audit times:")]
    return lines[-1] if lines else "(no times reported: " + done.stderr[-300:] + ")"


def baseline_tree(folder: Path) -> Path | None:
    """A worktree of :data:`PREVIOUS` importable as ``bundlelab`` (its adapters linked in place,
    as the editable install maps them), or None when git cannot make one."""
    tree = folder / "baseline"
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                           PREVIOUS], capture_output=True)
    if done.returncode:
        return None
    (tree / "bundlelab" / "adapters").symlink_to(tree / "adapters", target_is_directory=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the MLP only, best of 3")
    parser.add_argument("--models", default=None, help="comma-separated: mlp,conv")
    parser.add_argument("--repeats", type=int, default=None, help="processes per figure")
    parser.add_argument("--no-baseline", action="store_true",
                        help=f"skip the audit of commit {PREVIOUS}")
    args = parser.parse_args()
    models = (args.models or ("mlp" if args.quick else "mlp,conv")).split(",")
    repeats = args.repeats or (3 if args.quick else 5)

    folder = Path(tempfile.mkdtemp(prefix="bench-onnx-audit-"))
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    baseline = None if args.no_baseline else baseline_tree(folder)
    try:
        import onnxruntime

        print(f"bench_onnx_audit: {N_SAMPLES} samples, best of {repeats} interleaved fresh "
              f"processes; python {platform.python_version()}, numpy {np.__version__}, "
              f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        results = []
        for name in models:
            rng = np.random.default_rng(0)
            model = folder / f"{name}.onnx"
            x = BUILDERS[name](model, rng)
            data = folder / f"{name}.npz"
            np.savez(data, x=x, labels=rng.integers(0, 10, N_SAMPLES))
            floor = [sys.executable, "-c", FLOOR.format(batch=FLOOR_BATCH), str(model),
                     str(data)]
            audit = [sys.executable, "-m", "bundlelab", "audit", str(model), "--data",
                     str(data), "--n-samples", str(N_SAMPLES), "--format", "json",
                     "--output", str(folder / f"{name}.json")]
            runs = {"floor": (floor, env), "audit": (audit, env)}
            if baseline is not None:
                runs["before"] = (audit, dict(env, PYTHONPATH=str(baseline)))
            for command, where in runs.values():  # warm: byte code, page cache, kernel cache
                seconds(command, where)
            best = {key: float("inf") for key in runs}
            for _ in range(repeats):
                for key, (command, where) in runs.items():
                    best[key] = min(best[key], seconds(command, where))
            results.append((name, best["floor"], best["audit"], best.get("before")))
            print(f"  {name}: {where_time_goes(audit, env)}")
        header = (f"{'model':6} {'floor s':>8} {'audit s':>8} {'x floor':>8} "
                  f"{PREVIOUS + ' s':>10} {'x floor':>8}")
        print(header)
        print("-" * len(header))
        for name, floor, audit, before in results:
            then = "" if before is None else f"{before:10.3f} {before / floor:7.2f}x"
            print(f"{name:6} {floor:8.3f} {audit:8.3f} {audit / floor:7.2f}x {then}")
        print("(floor: a fresh python running onnxruntime over the same 2048 samples; audit: "
              f"a fresh `python -m bundlelab audit`, of this tree and of commit {PREVIOUS})")
        for name, floor, audit, _ in results:
            ratio = audit / floor
            print(row(f"onnx audit CLI / plain onnxruntime process ({name})", f"{ratio:.2f}x",
                      f"<= {TARGET}x", ratio <= TARGET))
    finally:
        if baseline is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(baseline)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
