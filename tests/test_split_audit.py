"""Split audits: the measured subset cut into slices run by an executor's workers, the layer
streams merged in slice order; the report must equal the single-process audit's, field by
field (bundle ids, params, sources, selection)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundlelab import BundleLabError
from bundlelab.adapters import get_adapter, measure_bundles

sys.path.insert(0, os.path.dirname(__file__))
from equality import assert_same_report  # noqa: E402

torch = pytest.importorskip("torch")
nn = torch.nn
try:
    import onnx
    import onnxruntime  # noqa: F401
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # the torch tests run without them
    onnx = None
needs_onnx = pytest.mark.skipif(
    onnx is None, reason="onnx and onnxruntime are not installed (pip install 'bundlelab[onnx]')"
)

IR_VERSION = 10


def torch_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 12), nn.ReLU(),
        nn.Linear(12, 3),
    )


def torch_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    # 64 distinct inputs: repeated samples form bundles across slices, some conflicting
    x = torch.from_numpy(rng.integers(0, 2, (n, 6)).astype(np.float32))
    return x, rng.integers(0, 3, n)


def onnx_model(seed=0):
    rng = np.random.default_rng(seed)
    sizes = [4, 10, 10, 3]
    nodes, initializers, current = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        initializers += [numpy_helper.from_array(rng.normal(size=(a, b)).astype(np.float32),
                                                 f"W{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"z{i}"], name=f"mm{i}"))
        current = f"z{i}"
        if i < len(sizes) - 2:
            op = "Relu" if i % 2 == 0 else "Sigmoid"
            nodes.append(helper.make_node(op, [current], [f"h{i}"], name=f"act{i}"))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=IR_VERSION)


def onnx_data(n=250, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(-1, 2, (n, 4)).astype(np.float32), rng.integers(0, 4, n)


# -- torch -------------------------------------------------------------------------------------

@pytest.mark.slow  # two spawned workers import torch: about 10 s
def test_torch_split_in_processes_equals_single_process():
    model, (x, y) = torch_model(), torch_data()
    kwargs = dict(n_samples=200, seed=3, inference_batch_size=16, weight_amplitude="layer",
                  learning_rate=0.05, batch_size=32)
    single = torch_audit(model, x, y, **kwargs)
    split = torch_audit(model, x, y, executor="processes", workers=2, **kwargs)
    assert_same_report(split, single)
    assert single.params["weight_amplitude"] == "layer"  # per-layer w travelled to the tasks
    assert max(r.largest_bundle for r in single) > 1  # the merge joined bundles across slices


def torch_audit(*args, **kwargs):
    from bundlelab.adapters.torch import audit

    return audit(*args, **kwargs)


@settings(max_examples=15, deadline=None)
@given(workers=st.integers(1, 30), batch=st.integers(1, 70), n_samples=st.integers(1, 120))
def test_torch_any_slice_count_equals_single_pass(workers, batch, n_samples):
    # in-process slices: the same cutting and merging as over workers, without processes
    model, (x, y) = torch_model(), torch_data(n=150)
    kwargs = dict(n_samples=n_samples, inference_batch_size=batch, layers=["0", "3"])
    single = torch_audit(model, x, y, **kwargs)
    assert_same_report(torch_audit(model, x, y, executor="inprocess", workers=workers,
                                   **kwargs), single)
    assert n_samples < 65 or single[0].largest_bundle > 1


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, torch.as_tensor(y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, torch.as_tensor(y)

    def __iter__(self):
        return iter(zip(self.x, self.y))


@pytest.mark.parametrize("kind", ["dataset", "loader", "iterable", "dict"])
def test_torch_split_data_kinds(kind):
    model, (x, y) = torch_model(1), torch_data(n=120)
    if kind == "dataset":
        data, labels = Pairs(x, y), None
    elif kind == "loader":
        data, labels = torch.utils.data.DataLoader(Pairs(x, y), batch_size=7), None
    elif kind == "iterable":  # read in order once, kept, then cut at its batches
        data, labels = torch.utils.data.DataLoader(Stream(x, y), batch_size=9), None
    else:
        data, labels = {"input": x, "labels": torch.as_tensor(y)}, None
    kwargs = dict(n_samples=100, inference_batch_size=8,
                  input_key="input" if kind == "dict" else None)
    single = torch_audit(model, data, labels, **kwargs)
    split = torch_audit(model, data, labels, executor="inprocess", workers=3, **kwargs)
    assert_same_report(split, single)
    assert single[0].largest_bundle > 1


def test_torch_announces_once_and_leaves_model(capsys):
    model, (x, y) = torch_model(), torch_data(n=60)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch_audit(model, x, y, executor="inprocess", workers=4, inference_batch_size=8)
    assert capsys.readouterr().err.count("bundlelab:") == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_torch_split_errors():
    model, (x, y) = torch_model(), torch_data(n=40)
    with pytest.raises(BundleLabError, match="mode='resolution'"):
        torch_audit(model, x, y, mode="threshold", executor="inprocess", workers=2)
    with pytest.raises(BundleLabError, match="'workers'"):
        torch_audit(model, x, y, executor="processes", workers=0)
    with pytest.raises(BundleLabError, match="'executor'"):
        torch_audit(model, x, y, executor="cluster")


def test_torch_model_that_cannot_travel_is_one_line():
    def forward(self, x):
        return self.body(x)

    # a class made in a function cannot be pickled by reference
    cls = type("Unreachable", (nn.Module,), {"forward": forward})
    model = cls()
    model.body = torch_model()
    x, y = torch_data(n=40)
    with pytest.raises(BundleLabError, match="cannot send the model to the workers"):
        torch_audit(model, x, y, executor="processes", workers=2)


# -- measure_bundles ---------------------------------------------------------------------------

def test_measure_bundles_splits_arrays_and_refuses_iterators():
    model, (x, y) = torch_model(), torch_data(n=90)
    adapter = get_adapter("torch")
    single = measure_bundles(adapter, model, x, y, inference_batch_size=10)
    split = measure_bundles(adapter, model, x, y, inference_batch_size=10,
                            executor="inprocess", workers=4)
    assert_same_report(split, single)
    # a loader over an iterable dataset can only be read in order: one line, no task run
    loader = torch.utils.data.DataLoader(Stream(x, y), batch_size=8)
    with pytest.raises(BundleLabError, match="cannot split a DataLoader over workers"):
        measure_bundles(adapter, model, loader, executor="inprocess", workers=2)


def test_measure_bundles_label_count_checked_before_the_tasks():
    model, (x, y) = torch_model(), torch_data(n=50)
    adapter = get_adapter("torch")
    for labels, message in ((y[:40], "more samples than the 40 labels"),
                            (np.r_[y, y[:3]], "got 53 labels for 50 samples")):
        with pytest.raises(BundleLabError, match=message):
            measure_bundles(adapter, model, x, labels, inference_batch_size=10)
        with pytest.raises(BundleLabError, match=message):
            measure_bundles(adapter, model, x, labels, inference_batch_size=10,
                            executor="inprocess", workers=3)


# -- ONNX --------------------------------------------------------------------------------------

def onnx_audit(*args, **kwargs):
    from bundlelab.adapters.onnx import audit

    return audit(*args, **kwargs)


@needs_onnx
@pytest.mark.parametrize("source", ["path", "proto"])
def test_onnx_split_in_processes_equals_single_process(tmp_path, source):
    proto = onnx_model()
    if source == "path":
        onnx.save(proto, str(tmp_path / "mlp.onnx"))
        model = tmp_path / "mlp.onnx"
    else:
        model = proto
    x, y = onnx_data()
    kwargs = dict(n_samples=200, seed=2, inference_batch_size=24, learning_rate=0.1)
    single = onnx_audit(model, x, y, **kwargs)
    split = onnx_audit(model, x, y, executor="processes", workers=2, **kwargs)
    assert_same_report(split, single)
    assert max(r.largest_bundle for r in single) > 1


@needs_onnx
def test_onnx_split_data_file_and_progress(tmp_path):
    x, y = onnx_data(n=90)
    np.savez(tmp_path / "train.npz", x=x, labels=y)
    calls = {"single": [], "split": []}
    single = onnx_audit(onnx_model(), tmp_path / "train.npz", inference_batch_size=20,
                        progress=lambda n, shapes: calls["single"].append((n, shapes)))
    split = onnx_audit(onnx_model(), tmp_path / "train.npz", inference_batch_size=20,
                       executor="inprocess", workers=2,
                       progress=lambda n, shapes: calls["split"].append((n, shapes)))
    assert_same_report(split, single)
    # per slice, not per batch: 3 + 2 batches of 20 (the last of 10)
    assert [n for n, _ in calls["split"]] == [60, 30]
    assert calls["split"][0][1] == calls["single"][0][1]


@needs_onnx
def test_onnx_threshold_refused():
    x, y = onnx_data(n=30)
    with pytest.raises(BundleLabError, match="mode='resolution'"):
        onnx_audit(onnx_model(), x, y, mode="threshold", executor="inprocess", workers=2)


def keras_audit_pair(monkeypatch, executor, workers):
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # as test_adapter_keras: no TensorFlow needed
    keras = pytest.importorskip("keras")
    from bundlelab.adapters.keras import audit

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(12, activation="relu"),
        keras.layers.Dense(12, activation="tanh"), keras.layers.Dense(3),
    ])
    x, y = torch_data(n=150)
    kwargs = dict(n_samples=120, inference_batch_size=16, weight_amplitude="layer")
    single = audit(model, x.numpy(), y, **kwargs)
    return single, audit(model, x.numpy(), y, executor=executor, workers=workers, **kwargs)


def test_keras_split_equals_single_pass(monkeypatch):
    single, split = keras_audit_pair(monkeypatch, "inprocess", 3)
    assert_same_report(split, single)
    assert single[0].largest_bundle > 1


@pytest.mark.slow  # two spawned workers import keras and torch
def test_keras_split_in_processes_equals_single_process(monkeypatch):
    single, split = keras_audit_pair(monkeypatch, "processes", 2)
    assert_same_report(split, single)


# -- CLI ---------------------------------------------------------------------------------------

def cli(capsys, *argv):
    from bundlelab.cli import run

    code = run([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_onnx
def test_cli_audit_over_processes_prints_the_same_report(tmp_path, capsys):
    onnx.save(onnx_model(), str(tmp_path / "mlp.onnx"))
    x, y = onnx_data(n=120)
    np.savez(tmp_path / "train.npz", x=x, labels=y)
    base = ["audit", tmp_path / "mlp.onnx", "--data", tmp_path / "train.npz", "--format", "json",
            "--inference-batch-size", "16", "--lr", "0.1"]
    code, single, err = cli(capsys, *base)
    assert code == 0, err
    code, split, err = cli(capsys, *base, "--executor", "processes", "--workers", "2")
    assert code == 0, err
    assert split == single
    assert err.count("bundlelab:") == 1  # the selection, announced once by the driver
    assert json.loads(split)["params"]["selection"].startswith("2 activations")


@needs_onnx
def test_cli_audit_executor_errors(tmp_path, capsys):
    onnx.save(onnx_model(), str(tmp_path / "mlp.onnx"))
    x, y = onnx_data(n=20)
    np.savez(tmp_path / "train.npz", x=x, labels=y)
    base = ["audit", tmp_path / "mlp.onnx", "--data", tmp_path / "train.npz"]
    code, out, err = cli(capsys, *base, "--ray-address", "auto")
    assert code != 0 and "--ray-address" in err and "--executor ray" in err
    code, out, err = cli(capsys, *base, "--mode", "threshold", "--workers", "2")
    assert code != 0 and "needs --mode resolution" in err and "--executor inprocess" in err


def test_torch_task_runs_with_the_drivers_threads_on_a_copy():
    # a worker's own thread count (Ray: OMP_NUM_THREADS=1) must not change the forward passes
    import pickle

    from bundlelab.adapters.torch._audit import _SplittableAdapter
    from bundlelab.executors import torch_threads

    model = torch_model()
    with torch_threads(2):
        copy = pickle.loads(pickle.dumps(_SplittableAdapter(layers=["1"]).worker_copy(model)))
    with torch_threads(1):
        with copy.open(0) as (adapter, rebuilt):
            assert torch.get_num_threads() == 2
            assert rebuilt is not model and adapter.layers == ["1"]
            assert all(torch.equal(a, b) for a, b in zip(rebuilt.parameters(),
                                                         model.parameters()))
        assert torch.get_num_threads() == 1


@pytest.mark.slow  # two spawned workers import torch: about 10 s
def test_torch_split_in_processes_equals_the_cloning_single_pass(monkeypatch):
    """Workers consume each tap in its hook and gather small outputs into blocks; the merged
    report equals a single pass on the path that cloned every tap and streamed it per batch."""
    from bundlelab.adapters.torch import TorchAdapter
    from bundlelab.streaming import StreamBatcher

    model, (x, y) = torch_model(), torch_data()
    x[[5, 77, 150]] = float("nan")  # NaN rows keep sample-index fingerprints across slices
    kwargs = dict(n_samples=None, seed=3, inference_batch_size=24, weight_amplitude="layer",
                  learning_rate=0.05, batch_size=32, nonfinite="keep")
    split = torch_audit(model, x, y, executor="processes", workers=2, **kwargs)
    monkeypatch.delattr(TorchAdapter, "feed_layer_outputs")
    monkeypatch.setattr(StreamBatcher, "_update",  # what LayerFeed.take calls
                        lambda self, name, output, labels, codes: self.streams[name].update(
                            output, labels))
    single = torch_audit(model, x, y, **kwargs)
    assert_same_report(split, single)
    assert max(r.largest_bundle for r in single) > 1
