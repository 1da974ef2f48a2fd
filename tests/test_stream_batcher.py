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


def test_later_batches_of_a_layer_equal_plain_updates_whatever_their_type_or_layout():
    """A layer's later batches skip the checks its first batch passed (the layer's lane) only
    when they have the same array type, dtype and per-sample shape; torch tensors, strided
    (non-contiguous) arrays, a switch of type and a batch too large for a block all give the
    plain updates' result, and a batch of another width is still refused."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    values = np.array([0.0, -0.0, 1.0, np.nan, np.inf], np.float32)

    def rows(n, shape=(3, 4)):
        return values[rng.integers(0, 5, size=(n, *shape))]

    batches = [
        rows(4), rows(3),  # numpy: the first opens the lane, the second takes it
        torch.from_numpy(rows(5)),  # another type: checked again, a new lane
        torch.from_numpy(rows(2)),
        torch.from_numpy(rows(6)).transpose(1, 2).contiguous().transpose(1, 2),  # strided
        rows(3, (4, 3)).transpose(0, 2, 1),  # strided numpy, same per-sample shape
        rows(40),  # too large for a block (direct_bytes below): straight to the stream
        rows(1),
    ]
    plain = BundleStream(layer="x", nonfinite="keep")
    gathered = BundleStream(layer="x", nonfinite="keep")
    batcher = StreamBatcher({"x": gathered}, direct_bytes=1000, block_bytes=300,
                            background=False)
    for batch in batches:
        labels = rng.integers(0, 3, batch.shape[0])
        plain.update(batch, labels)
        batcher.update("x", batch, labels)
    refused = [
        (rows(2, (4, 4)), [0, 1], "batch has 16 float32 values per sample"),
        (rows(2).astype(np.float64), [0, 1], "earlier batches had 12 float32"),
        (rows(2), [0], "labels"),  # a lane's batch still has its labels checked
    ]
    for batch, labels, message in refused:
        ok, ok_labels = rows(2), [1, 2]  # (re)opens the lane the refused batch meets
        plain.update(ok, ok_labels)
        batcher.update("x", ok, ok_labels)
        with pytest.raises(BundleLabError, match=message):
            batcher.update("x", batch, labels)
    batcher.flush()
    assert_same_result(gathered.result(), plain.result())


def test_blocks_reuse_the_memory_of_fingerprinted_blocks():
    """A fresh buffer costs a page fault per 4 KiB on its first fill: a block takes the
    memory of the last fingerprinted one, so a long measurement allocates its blocks once."""

    def memory_of(block):
        array = block.buffer
        while array.base is not None:
            array = array.base
        return array

    for background in (False, True):
        stream, plain = BundleStream(layer="a"), BundleStream(layer="a")
        batcher = StreamBatcher({"a": stream}, direct_bytes=10_000, block_bytes=400,
                                background=background)
        rng = np.random.default_rng(0)
        buffers = []  # every block's memory, kept alive so that none is another's by address
        for _ in range(30):  # a 20-row block per update: 30 blocks
            rows, labels = rng.random((20, 5), dtype=np.float32), rng.integers(0, 3, 20)
            batcher.update("a", rows, labels)
            plain.update(rows, labels)
            memory = memory_of(batcher._blocks[next(iter(batcher._blocks))])
            if not any(memory is seen for seen in buffers):
                buffers.append(memory)
        batcher.flush()
        assert len(buffers) <= 2  # the block being filled and the one in flight
        assert_same_result(stream.result(), plain.result())
        assert batcher._spare is None  # flush() lets the memory go


def test_fingerprinting_in_the_calling_thread_leaves_its_numba_threads_as_they_were(
        monkeypatch):
    """Without the background thread, a block's kernel runs on one Numba thread (the other
    cores are the forward pass's) and the calling thread's count is put back after."""
    numba = pytest.importorskip("numba")
    import bundlelab.kernels.cpu  # noqa: F401  (the Numba kernels, as in a long-running process)

    before = numba.config.NUMBA_NUM_THREADS
    if before < 2:
        pytest.skip("Numba runs on one thread here")
    numba.set_num_threads(before)
    counts, set_threads = [], numba.set_num_threads

    def spy(count):
        counts.append(count)
        set_threads(count)

    monkeypatch.setattr(numba, "set_num_threads", spy)
    stream = BundleStream(layer="a")
    batcher = StreamBatcher({"a": stream}, block_bytes=40, background=False)
    batcher.update("a", np.ones((4, 5), np.float32), [0, 1, 0, 1])  # fills a block
    batcher.update("a", np.ones((4, 5), np.float32), [0, 1, 0, 1])  # fingerprints it
    batcher.flush()
    assert counts[:2] == [1, before] and len(counts) % 2 == 0
    assert counts[::2] == [1] * (len(counts) // 2)
    assert numba.get_num_threads() == before and stream.result().n_bundles == 1
