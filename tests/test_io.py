"""Activation dumps on disk: every format round-trips, reads lazily in chunks, fails in one line."""

import json
import sys
import zipfile

import numpy as np
import pytest

import bundlelab
from bundlelab import BundleLabError
from bundlelab._errors import MissingDependencyError
from bundlelab.io import analyze_dump, open_dump, save_dump, select_layers
from bundlelab.io.analysis import plan_chunk_rows
from bundlelab.io.dumps import release_pages

h5py = pytest.importorskip("h5py")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
ml_dtypes = pytest.importorskip("ml_dtypes")

N = 53  # not a multiple of any chunk size used below


@pytest.fixture
def layers(rng):
    """Layers in network order, with bundles (rounded values repeat) and several dtypes."""
    return {
        "layer10": rng.integers(0, 3, (N, 4)).astype(np.float32),  # written first on purpose
        "layer2": rng.random((N, 3, 2)),  # float64, 3-D
        "layer3": (rng.integers(0, 2, (N, 5)) * 1000).astype(np.float16),
    }


@pytest.fixture
def labels(rng):
    return rng.integers(0, 4, N)


def write_npz(path, layers, labels):
    save_dump(path / "dump.npz", layers, labels)
    return path / "dump.npz"


def write_npz_compressed(path, layers, labels):
    np.savez_compressed(path / "dump.npz", **layers, labels=labels)
    return path / "dump.npz"


def write_npy_dir(path, layers, labels):
    folder = path / "dump"
    folder.mkdir()
    for name, array in layers.items():
        np.save(folder / f"{name}.npy", array)
    np.save(folder / "labels.npy", labels)
    return folder


def write_safetensors(path, layers, labels):
    safetensors_numpy.save_file({**layers, "labels": labels}, str(path / "dump.safetensors"))
    return path / "dump.safetensors"


def write_hdf5(path, layers, labels):
    with h5py.File(path / "dump.h5", "w") as file:
        group = file.create_group("net")
        for name, array in layers.items():
            group.create_dataset(name, data=array, chunks=(8,) + array.shape[1:])
        file["labels"] = labels
        file["step"] = 7  # a scalar: not a layer
    return path / "dump.h5"


WRITERS = {
    "npz": (write_npz, ["layer10", "layer2", "layer3"]),  # write order
    "npz-compressed": (write_npz_compressed, ["layer10", "layer2", "layer3"]),
    "npy-dir": (write_npy_dir, ["layer2", "layer3", "layer10"]),  # natural order
    "safetensors": (write_safetensors, ["layer2", "layer3", "layer10"]),
    "hdf5": (write_hdf5, ["net/layer2", "net/layer3", "net/layer10"]),
}


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    return message


@pytest.mark.parametrize("kind", WRITERS)
def test_every_format_round_trips_whole_and_in_chunks(kind, tmp_path, layers, labels):
    writer, expected_order = WRITERS[kind]
    with open_dump(writer(tmp_path, layers, labels)) as dump:
        assert dump.layer_names == expected_order
        np.testing.assert_array_equal(dump.labels, labels)
        for name in dump.layer_names:
            original = layers[name.removeprefix("net/")]
            info = dump.info(name)
            assert info.shape == original.shape and info.dtype == original.dtype.name
            whole = dump[name]
            assert whole.dtype == original.dtype and whole.flags.writeable
            np.testing.assert_array_equal(whole, original)
            for chunk_rows in (1, 7, 1000):
                chunks = list(dump.iter_chunks(name, chunk_rows))
                assert all(chunk.flags.writeable for chunk in chunks)
                assert [len(c) for c in chunks][:-1] == [chunk_rows] * (len(chunks) - 1)
                np.testing.assert_array_equal(np.concatenate(chunks), original)
        loaded = dict(dump.layers())
        np.testing.assert_array_equal(loaded[expected_order[0]](), dump[expected_order[0]])


def memory_map_of(array):
    """The np.memmap that ``array`` views, or None when it holds its own (copied) data."""
    while isinstance(array, np.ndarray) and not isinstance(array, np.memmap):
        array = array.base
    return array if isinstance(array, np.memmap) else None


def save_with_numpy(suffix):
    def write(path, layers, labels):
        if suffix == "npy":
            return write_npy_dir(path, layers, labels)
        if suffix == "safetensors":
            return write_safetensors(path, layers, labels)
        save_dump(path / f"dump.{suffix}", layers, labels)
        return path / f"dump.{suffix}"
    return write


@pytest.mark.parametrize("suffix", ["npz", "npy", "safetensors", "h5"])
def test_stored_layers_are_memory_mapped_in_place_not_copied(suffix, tmp_path, rng, labels):
    layers = {
        "wide": rng.integers(0, 3, (N, 64)).astype(np.float32),
        "double": np.round(rng.random((N, 4, 8)), 1),
        "half": (rng.integers(0, 2, (N, 16)) * 1000).astype(np.float16),
    }
    if suffix == "safetensors":
        layers["brain"] = layers["wide"].astype(ml_dtypes.bfloat16)
    path = save_with_numpy(suffix)(tmp_path, layers, labels)
    with open_dump(path) as dump:
        for name, original in layers.items():
            whole = dump[name]
            mapped = memory_map_of(whole)
            assert mapped is not None and mapped.mode == "c", name  # copy-on-write, no copy
            assert whole.flags.c_contiguous and whole.flags.writeable and whole.flags.aligned
            assert whole.dtype == original.dtype and whole.dtype.isnative
            np.testing.assert_array_equal(whole, original)
            chunks = list(dump.iter_chunks(name, 7))
            assert all(np.shares_memory(chunk, memory_map_of(chunk)) for chunk in chunks)
            for chunk in chunks:  # what the analysis does after each chunk: pages re-read later
                release_pages(chunk)
            np.testing.assert_array_equal(np.concatenate(chunks), original)
            whole[...] = 0  # a write stays in this process: the file is unchanged
        del whole, mapped, chunks
    with open_dump(path) as dump:
        for name, original in layers.items():
            np.testing.assert_array_equal(dump[name], original)
        threshold = {"mode": "threshold", "gamma": 1e-3}
        for options, chunk_rows in (({}, None), ({}, 6), (threshold, None)):
            in_order = {name: layers[name] for name in dump.layer_names}
            memory = bundlelab.analyze_layers(in_order, labels, weight_amplitude=0.5, **options)
            report = analyze_dump(dump, weight_amplitude=0.5, chunk_rows=chunk_rows, **options)
            assert (report.to_dict(include_ids=True)["layers"]
                    == memory.to_dict(include_ids=True)["layers"])


def resident_bytes(array) -> int:
    """Rss of the mapping that holds ``array`` (Linux /proc/self/smaps)."""
    address, found = array.ctypes.data, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and ":" not in first:
                low, high = (int(part, 16) for part in first.split("-"))
                found = low <= address < high
            elif found and line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds the array")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_released_chunks_leave_memory_and_read_back_from_the_file(tmp_path, rng):
    layer = rng.standard_normal((1024, 1024), dtype=np.float32)  # 4 MiB
    folder = tmp_path / "dump"
    folder.mkdir()
    np.save(folder / "layer.npy", layer)
    np.save(folder / "labels.npy", np.arange(1024) % 3)
    with open_dump(folder) as dump:
        chunks = list(dump.iter_chunks("layer", 256))
        total = sum(float(chunk.sum()) for chunk in chunks)  # every page touched
        assert resident_bytes(chunks[0]) >= layer.nbytes
        for chunk in chunks:
            release_pages(chunk)
        assert resident_bytes(chunks[0]) < layer.nbytes // 8
        np.testing.assert_array_equal(np.concatenate(chunks), layer)
        assert sum(float(chunk.sum()) for chunk in chunks) == total


def test_what_cannot_be_mapped_is_read_into_one_buffer(tmp_path, rng, labels):
    """Deflated npz members, compressed or chunked HDF5 datasets and big-endian data are read
    (the last mapped, then converted once); each gives what the in-memory analysis gives."""
    layer = rng.integers(0, 3, (N, 40)).astype(np.float32)
    save_dump(tmp_path / "deflated.npz", {"layer": layer}, labels, compress=True)
    save_dump(tmp_path / "gzip.h5", {"layer": layer}, labels, compress=True)
    with h5py.File(tmp_path / "chunked.h5", "w") as file:
        file.create_dataset("layer", data=layer, chunks=(5, 40))
        file.create_dataset("big_endian", data=layer.astype(">f4"))
        file["labels"] = labels
    for path in (tmp_path / "deflated.npz", tmp_path / "gzip.h5", tmp_path / "chunked.h5"):
        with open_dump(path) as dump:
            for name in dump.layer_names:
                whole = dump[name]
                assert memory_map_of(whole) is None and whole.dtype == np.float32
                assert whole.dtype.isnative and whole.flags.c_contiguous
                np.testing.assert_array_equal(whole, layer)
                np.testing.assert_array_equal(np.concatenate(list(dump.iter_chunks(name, 7))),
                                              layer)
            expected = {name: layer for name in dump.layer_names}
            memory = bundlelab.analyze_layers(expected, labels, weight_amplitude=0.5)
            report = analyze_dump(dump, weight_amplitude=0.5)
            assert (report.to_dict(include_ids=True)["layers"]
                    == memory.to_dict(include_ids=True)["layers"])


@pytest.mark.parametrize("kind", WRITERS)
def test_streamed_analysis_equals_in_memory_and_find_bundles(kind, tmp_path, layers, labels):
    writer, _ = WRITERS[kind]
    with open_dump(writer(tmp_path, layers, labels)) as dump:
        for mode in ("resolution", "threshold"):
            whole = analyze_dump(dump, mode=mode, gamma=1e-3)
            streamed = analyze_dump(dump, mode=mode, gamma=1e-3, chunk_rows=6)
            assert streamed.to_dict(include_ids=True) == whole.to_dict(include_ids=True)
            for result in whole:
                direct = bundlelab.find_bundles(
                    layers[result.layer.removeprefix("net/")], labels, mode=mode, gamma=1e-3,
                    layer=result.layer,
                )
                assert result.to_record(include_ids=True) == direct.to_record(include_ids=True)


def test_layers_bigger_than_the_memory_budget_are_streamed(tmp_path, layers, labels):
    path = write_npz(tmp_path, layers, labels)
    with open_dump(path) as dump:
        info = dump.info("layer10")
        assert plan_chunk_rows(info, chunk_rows=None, memory_budget=10**9) is None
        rows = plan_chunk_rows(info, chunk_rows=None, memory_budget=4 * 16 * 10)
        assert rows == 10  # a quarter of the budget per chunk, 16 bytes per row
        assert plan_chunk_rows(info, chunk_rows=5, memory_budget=10**9) == 5
        seen = []
        tiny = analyze_dump(dump, memory_budget=200, progress=lambda layer, n: seen.append((layer, n)))
        assert tiny.to_dict(include_ids=True) == analyze_dump(dump).to_dict(include_ids=True)
    assert seen[0] == ("layer10", 0) and sum(n for layer, n in seen if layer == "layer10") == N
    assert len([n for layer, n in seen if layer == "layer10" and n]) > 1  # several chunks


def test_npz_rows_are_read_from_a_deflated_member_without_loading_it_whole(tmp_path, rng):
    big = rng.random((4000, 16)).astype(np.float32)
    path = tmp_path / "big.npz"
    save_dump(path, {"big": big}, np.arange(4000) % 3, compress=True)
    with open_dump(path) as dump:
        chunks = dump.iter_chunks("big", 1000)
        first = next(chunks)
        np.testing.assert_array_equal(first, big[:1000])
        np.testing.assert_array_equal(np.concatenate([first, *chunks]), big)


def test_npy_directory_order_from_layers_txt(tmp_path, layers, labels):
    folder = write_npy_dir(tmp_path, layers, labels)
    (folder / "layers.txt").write_text("# network order\nlayer10\n\nlayer2  # stem\n")
    with open_dump(folder) as dump:
        assert dump.layer_names == ["layer10", "layer2"]
    (folder / "layers.txt").write_text("layer10\nlayer20\n")
    with pytest.raises(BundleLabError) as excinfo:
        open_dump(folder)
    assert "layer20" in one_line_error(excinfo) and "layers.txt" in str(excinfo.value)


def test_hdf5_groups_created_with_track_order_keep_creation_order(tmp_path, labels):
    with h5py.File(tmp_path / "ordered.h5", "w") as file:
        group = file.create_group("blocks", track_order=True)
        for name in ("z_last_name_first", "b", "a10", "a2"):
            group[name] = np.zeros((N, 2), np.float32)
        file["meta/labels"] = labels
    with open_dump(tmp_path / "ordered.h5", labels_key="/meta/labels") as dump:
        assert dump.layer_names == ["blocks/z_last_name_first", "blocks/b", "blocks/a10", "blocks/a2"]
        np.testing.assert_array_equal(dump.labels, labels)


def test_hdf5_string_labels(tmp_path):
    names = np.array(["cat", "dog", "cat"], dtype=object)
    with h5py.File(tmp_path / "s.h5", "w") as file:
        file["layer"] = np.array([[0.0], [0.0], [1.0]], np.float32)
        file.create_dataset("labels", data=names, dtype=h5py.string_dtype())
    report = analyze_dump(tmp_path / "s.h5")
    assert report[0].n_bundles == 2 and report[0].n_conflicting == 1


def test_safetensors_bfloat16_is_analysed_in_bfloat16(tmp_path, rng, labels):
    values = rng.random((N, 8)).astype(ml_dtypes.bfloat16)
    safetensors_numpy.save_file({"bf": values, "labels": labels}, str(tmp_path / "bf.safetensors"))
    with open_dump(tmp_path / "bf.safetensors") as dump:
        assert dump.info("bf").dtype == "bfloat16" and dump["bf"].dtype == values.dtype
        np.testing.assert_array_equal(np.concatenate(list(dump.iter_chunks("bf", 10))), values)
        report = analyze_dump(dump)
    expected = bundlelab.find_bundles(values, labels, layer="bf")
    assert report[0].dtype == "bfloat16"
    assert report[0].to_record(include_ids=True) == expected.to_record(include_ids=True)


@pytest.mark.parametrize("order", ["C", "F"])
def test_big_endian_and_fortran_order_arrays_come_back_native(tmp_path, rng, labels, order):
    values = np.asarray(rng.random((N, 3)), dtype=">f4", order=order)
    save_dump(tmp_path / "be.npz", {"be": values}, labels)
    folder = tmp_path / "dir"
    folder.mkdir()
    np.save(folder / "be.npy", values)
    np.save(folder / "labels.npy", labels)
    for path in (tmp_path / "be.npz", folder):
        with open_dump(path) as dump:
            assert dump.info("be").dtype == "float32"
            for array in (dump["be"], np.concatenate(list(dump.iter_chunks("be", 4)))):
                assert array.dtype == np.float32 and array.dtype.isnative
                np.testing.assert_array_equal(array, values)


def test_select_layers_by_name_glob_and_comma(tmp_path):
    names = ["stem", "block1/conv1", "block1/conv2", "block2/conv1", "head"]
    assert select_layers(names, None) == names
    assert select_layers(names, ["head", "block1/*"]) == ["block1/conv1", "block1/conv2", "head"]
    assert select_layers(names, ["head,stem", "*/conv1"]) == ["stem", "block1/conv1", "block2/conv1", "head"]
    with pytest.raises(BundleLabError) as excinfo:
        select_layers(names, ["blok1/conv2"], where="d.npz")
    assert "did you mean 'block1/conv2'" in one_line_error(excinfo)
    with pytest.raises(BundleLabError) as excinfo:
        select_layers(names, ["block9*"])
    assert "matches no layer" in one_line_error(excinfo)


def test_save_dump_is_atomic_and_refuses_what_npz_cannot_hold(tmp_path, labels):
    path = tmp_path / "out.npz"
    save_dump(path, {"a": np.ones((N, 2), np.float32)}, labels)
    save_dump(path, {"b": np.zeros((N, 2), np.float32)}, labels)  # replaces
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]  # no temporary file left
    with open_dump(path) as dump:
        assert dump.layer_names == ["b"]
    bad = [
        ({"a": np.ones((N, 2))}, tmp_path / "out.npy", "name it *.npz"),
        ({"labels": np.ones((N, 2))}, path, "rename it"),
        ({"a": np.ones((N, 2), ml_dtypes.bfloat16)}, path, ".safetensors"),
        ({"a": np.array([object()] * N)}, path, "Python objects"),
        ({}, path, "no layers"),
    ]
    for layers, target, fragment in bad:
        with pytest.raises(BundleLabError) as excinfo:
            save_dump(target, layers, labels)
        assert fragment in one_line_error(excinfo)


# -- bad input: one line, naming the problem and the fix ----------------------------------------


class Exploit:
    """Unpickling this writes a file: proof that a dump was unpickled."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_object_arrays_are_refused_and_never_unpickled(tmp_path, labels):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    payload = np.empty(N, dtype=object)
    payload[:] = [Exploit()] * N
    np.savez(tmp_path / "evil.npz", layer=payload, labels=labels)
    np.savez(tmp_path / "evil_labels.npz", layer=np.zeros((N, 2)), labels=payload)
    with open_dump(tmp_path / "evil.npz") as dump:
        assert dump.info("layer").dtype == "object"
        for read in (lambda: dump["layer"], lambda: next(dump.iter_chunks("layer", 5)),
                     lambda: analyze_dump(dump)):
            with pytest.raises(BundleLabError) as excinfo:
                read()
            assert "Python objects" in one_line_error(excinfo)
    with open_dump(tmp_path / "evil_labels.npz") as dump, pytest.raises(BundleLabError) as excinfo:
        dump.labels
    assert "Python objects" in one_line_error(excinfo)
    assert not marker.exists()


def test_corrupt_and_truncated_files(tmp_path, layers, labels):
    npz = write_npz(tmp_path, layers, labels)
    data = npz.read_bytes()
    cases = {}
    (tmp_path / "half.npz").write_bytes(data[: len(data) // 2])
    cases["half.npz"] = "truncated or corrupt"
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all" * 10)
    cases["garbage.npz"] = "truncated or corrupt"
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:  # member shorter than its header says
        archive.writestr("labels.npy", _npy_bytes(labels))
        archive.writestr("layer.npy", _npy_bytes(np.ones((N, 4), np.float32))[:-40])
    cases["short.npz"] = "truncated"
    with zipfile.ZipFile(tmp_path / "header.npz", "w") as archive:
        archive.writestr("labels.npy", _npy_bytes(labels))
        archive.writestr("layer.npy", b"\x93NUMPY\x01\x00garbage")
    cases["header.npz"] = "'layer'"
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 64)
    cases["broken.safetensors"] = "truncated or corrupt"
    h5 = write_hdf5(tmp_path, layers, labels).read_bytes()
    (tmp_path / "cut.h5").write_bytes(h5[:2000])
    cases["cut.h5"] = "truncated or corrupt"
    folder = write_npy_dir(tmp_path, layers, labels)
    (folder / "layer2.npy").write_bytes((folder / "layer2.npy").read_bytes()[:-8])
    cases["dump"] = "layer2.npy"
    for name, fragment in cases.items():
        with pytest.raises(BundleLabError) as excinfo:
            with open_dump(tmp_path / name) as dump:
                analyze_dump(dump)
        message = one_line_error(excinfo)
        assert fragment in message, (name, message)
        assert "re-create" in message


def _npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_missing_labels_list_the_available_arrays(tmp_path, layers, labels):
    path = write_npz(tmp_path, layers, labels)
    # the dump opens without its labels (bundlelab info lists it); reading them is the error
    with open_dump(path, labels_key="label") as dump:
        assert not dump.has_labels and dump.layer_names == ["layer10", "layer2", "layer3", "labels"]
        for read in (lambda: dump.labels, lambda: analyze_dump(dump)):
            with pytest.raises(BundleLabError) as excinfo:
                read()
            message = one_line_error(excinfo)
            assert "'layer10', 'layer2', 'layer3', 'labels'" in message
            assert "--labels labels" in message and "could be labels: 'labels'" in message


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("dump.txt", "unknown dump format '.txt'"),
        ("single.npy", "a single .npy file holds one array"),
        ("missing.npz", "no such file or directory"),
    ],
)
def test_unknown_or_missing_paths(tmp_path, name, fragment):
    if name != "missing.npz":
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(BundleLabError) as excinfo:
        open_dump(tmp_path / name)
    assert fragment in one_line_error(excinfo)


def test_empty_dumps(tmp_path, labels):
    np.savez(tmp_path / "empty.npz")
    (tmp_path / "empty_dir").mkdir()
    np.savez(tmp_path / "only_labels.npz", labels=labels)
    for name, fragment in [("empty.npz", "empty dump"), ("empty_dir", "empty dump"),
                           ("only_labels.npz", "no layer")]:
        with pytest.raises(BundleLabError) as excinfo:
            open_dump(tmp_path / name)
        assert fragment in one_line_error(excinfo)


def test_layers_that_cannot_be_analysed_fail_before_any_work(tmp_path, labels):
    # a non-float array named exactly stays an error; unnamed ones are skipped with a note
    # (tests/test_dump_layouts.py), so a dump of nothing but them is an error too
    cases = {
        "ints": ({"good": np.zeros((N, 2), np.float32), "ints": np.zeros((N, 2), np.int64)},
                 "integer", ["good", "ints"]),
        "length": ({"short": np.zeros((N - 1, 2), np.float32)}, f"has {N - 1} samples", None),
        "strings": ({"names": np.array(["a"] * N)}, "refused", None),
        "only_ints": ({"ids": np.arange(N)}, "no float layer: layer 'ids': integer", None),
    }
    for name, (layers, fragment, selected) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **layers, labels=labels)  # save_dump refuses "length"
        calls = []
        with pytest.raises(BundleLabError) as excinfo:
            analyze_dump(tmp_path / f"{name}.npz", layers=selected,
                         progress=lambda *a: calls.append(a), weight_amplitude=1.0)
        assert fragment in one_line_error(excinfo) and not calls


def test_raw_two_byte_records_get_a_bfloat16_hint(tmp_path, labels):
    np.savez(tmp_path / "v2.npz", layer=np.ones((N, 2), ml_dtypes.bfloat16), labels=labels)
    with pytest.raises(BundleLabError) as excinfo:
        analyze_dump(tmp_path / "v2.npz")
    assert "bfloat16" in one_line_error(excinfo)


@pytest.mark.parametrize(
    "module, writer, hint",
    [
        ("h5py", write_hdf5, "requires h5py. You can install it with `pip install 'bundlelab[io]'`"),
        ("safetensors", write_safetensors, "`pip install 'bundlelab[io]'`"),
    ],
)
def test_optional_dependencies_have_an_install_hint(tmp_path, monkeypatch, layers, labels, module, writer, hint):
    path = writer(tmp_path, layers, labels)
    monkeypatch.setitem(sys.modules, module, None)  # import now fails
    with pytest.raises(MissingDependencyError) as excinfo:  # a BundleLabError and an ImportError
        open_dump(path)
    assert hint in one_line_error(excinfo)


def test_bfloat16_without_ml_dtypes_has_an_install_hint(tmp_path, monkeypatch, labels):
    values = np.ones((N, 2), ml_dtypes.bfloat16)
    safetensors_numpy.save_file({"bf": values, "labels": labels}, str(tmp_path / "bf.safetensors"))
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with open_dump(tmp_path / "bf.safetensors") as dump, pytest.raises(MissingDependencyError) as excinfo:
        dump["bf"]
    assert "requires ml_dtypes. You can install it with `pip install 'bundlelab[io]'`" in one_line_error(excinfo)


def test_report_of_a_dump_serialises(tmp_path, layers, labels):
    report = analyze_dump(write_npz(tmp_path, layers, labels), layers=["layer1*"])
    data = json.loads(report.to_json())
    assert [record["layer"] for record in data["layers"]] == ["layer10"]
