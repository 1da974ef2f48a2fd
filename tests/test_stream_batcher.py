"""StreamBatcher: small batches of several layers gathered into blocks, one fingerprint kernel
call per block (issue 13); every stream's result must equal plain ``BundleStream.update``s."""

import os
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundlelab import BundleLabError
from bundlelab.streaming import BundleStream, StreamBatcher, merge_streams

sys.path.insert(0, os.path.dirname(__file__))
from equality import assert_same_result  # noqa: E402


LAYERS = {  # name -> (values per sample, dtype, stream options)
    "a": (5, np.float32, {}),
    "b": (5, np.float32, {}),  # same rows and transform as "a": the two share blocks
    "c": (5, np.float32, {"weight_amplitude": 2.0}),  # same width, another transform
    "d": (3, np.float64, {}),
    "e": (4, np.float32, {"update_format": "bfloat16"}),  # emulated kernel, still gathered
    "f": (4, np.float16, {}),  # narrow rows: streamed at once
    "g": (5, np.float32, {"mode": "threshold"}),  # streamed at once
}


def batch(rng, name, n):
    width, dtype, _ = LAYERS[name]
    # few distinct values: rows repeat within and across batches, some NaN, some inf, -0.0
    values = np.array([0.0, -0.0, 1.0, 0.5, np.nan, np.inf], dtype=dtype)
    weights = [0.35, 0.1, 0.3, 0.21, 0.02, 0.02]
    return values[rng.choice(6, size=(n, width), p=weights)]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=8),
    order=st.permutations(list(LAYERS)),
    block=st.integers(1, 400),
    budget=st.integers(1, 800),
    direct=st.integers(1, 300),
    background=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_blocks_give_every_stream_the_plain_updates_result(sizes, order, block, budget, direct,
                                                           background, seed):
    rng = np.random.default_rng(seed)
    options = {name: dict(layer=name, nonfinite="keep", **LAYERS[name][2]) for name in LAYERS}
    plain = {name: BundleStream(**options[name]) for name in LAYERS}
    gathered = {name: BundleStream(**options[name]) for name in LAYERS}
    batcher = StreamBatcher(gathered, direct_bytes=direct, block_bytes=block,
                            budget_bytes=budget, background=background)
    for n in sizes:  # one "pass": every layer, in a fixed but arbitrary order
        labels = rng.integers(0, 3, n)
        for name in order:
            rows = batch(rng, name, n)
            plain[name].update(rows, labels)
            batcher.update(name, rows, labels.copy() if name == "b" else labels)
            rows[...] = 7  # the caller may overwrite its rows at once
            assert sum(b.buffer.nbytes for b in batcher._blocks.values()) <= max(
                budget, block, max(sizes) * 24)  # one batch (at most 24 bytes a row) may exceed
    batcher.flush()
    for name in LAYERS:
        assert_same_result(gathered[name].result(), plain[name].result())
    # the filled-in state merges and pickles as a plain stream's does
    twice = merge_streams([gathered["a"], pickle.loads(pickle.dumps(gathered["a"]))])
    assert_same_result(twice.result(), merge_streams([plain["a"], plain["a"]]).result())


def test_a_waiting_batch_is_refused_until_flush_and_labels_refilled_in_place_count():
    streams = {"x": BundleStream(layer="x"), "y": BundleStream(layer="y")}
    batcher = StreamBatcher(streams)
    labels = np.array([0, 1])
    batcher.update("x", np.zeros((2, 3), np.float32), labels)
    labels[:] = [1, 1]  # refilled in place for the next batch: not the codes of [0, 1]
    batcher.update("y", np.zeros((2, 3), np.float32), labels)
    with pytest.raises(BundleLabError, match="still wait in a StreamBatcher; call its flush"):
        streams["x"].result()
    with pytest.raises(BundleLabError, match="flush"):
        merge_streams([streams["x"]])
    batcher.flush()
    assert streams["x"].result().n_bundles == 1 and streams["x"].result().entropy > 0
    assert streams["y"].result().entropy == 0  # one class: its labels were re-read
    assert batcher._worker is None  # no thread outlives flush()


def test_a_refused_batch_leaves_the_stream_and_the_blocks_as_they_were():
    streams = {"x": BundleStream(layer="x")}
    batcher = StreamBatcher(streams)
    batcher.update("x", np.ones((2, 3), np.float32), [0, 1])
    with pytest.raises(BundleLabError, match="batch has 4 float32 values per sample"):
        batcher.update("x", np.ones((2, 4), np.float32), [0, 1])
    with pytest.raises(BundleLabError):
        batcher.update("x", np.ones((2, 3), np.float32), [0])  # one label for two rows
    batcher.flush()
    assert streams["x"].n_samples == 2 and streams["x"].result().n_bundles == 1


def test_at_most_one_block_is_in_flight(monkeypatch):
    """The memory bound: the blocks being filled, plus one block being fingerprinted in the
    background, never two (a slow kernel makes the caller wait instead)."""
    import time

    from bundlelab import streaming

    real = streaming._fingerprint_rows

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "_fingerprint_rows", slow)
    streams = {"a": BundleStream(layer="a"), "b": BundleStream(layer="b")}
    batcher = StreamBatcher(streams, direct_bytes=10_000, block_bytes=400, budget_bytes=400)
    rng = np.random.default_rng(0)
    most = 0
    for _ in range(12):  # every update fills a 20-row block: one job per update
        labels = rng.integers(0, 3, 20)
        for name in streams:
            batcher.update(name, rng.random((20, 5), dtype=np.float32), labels)
            most = max(most, len(batcher._in_flight))
    batcher.flush()
    assert most == 1
    assert all(stream.result().n_samples == 240 for stream in streams.values())
