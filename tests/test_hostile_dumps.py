"""Hostile and broken activation dumps: nothing outside the dump is read, declared sizes are
checked before anything is allocated, names from a file cannot drive the terminal, and every
corrupt file is one line (``BundleLabError`` in Python, ``error: ...`` and exit 2 in the CLI).

The fuzz test at the end runs truncated and bit-flipped dumps of every format through
``bundlelab analyze`` and ``bundlelab info``.
"""

import io
import json
import os
import random
import sys
import zipfile

import numpy as np
import pytest

import bundlelab
from bundlelab import BundleLabError
from bundlelab.cli import run
from bundlelab.io import analyze_dump, open_dump, save_dump

h5py = pytest.importorskip("h5py")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

N = 12
LABELS = np.arange(N) % 3


def cli(capsys, *argv):
    code = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, out, err, *fragments):
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "internal error" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def npy_bytes(header: dict, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    """A .npy file with any header (a forged shape), or raw header text."""
    buffer = io.BytesIO()
    if raw_header is None:
        np.lib.format.write_array_header_1_0(buffer, header)
    else:
        text = raw_header + b" " * (-(len(raw_header) + 11) % 64) + b"\n"
        buffer.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text)
    return buffer.getvalue() + data


def float_layer(shape=(N, 2)) -> bytes:
    """A float32 .npy file of zeros."""
    return npy_bytes({"descr": "<f4", "fortran_order": False, "shape": shape},
                     bytes(4 * int(np.prod(shape))))


def labels_npy(labels=LABELS) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, labels)
    return buffer.getvalue()


def write_npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name + ".npy", data)
    return path


def write_npy_dir(folder, members: dict[str, bytes]):
    folder.mkdir()
    for name, data in members.items():
        (folder / f"{name}.npy").write_bytes(data)
    return folder


def both_formats(tmp_path, layer: bytes, labels: bytes | None = None):
    """The same members as an .npz and as a directory of .npy files."""
    members = {"labels": labels_npy() if labels is None else labels, "layer": layer}
    return [write_npz(tmp_path / "dump.npz", members), write_npy_dir(tmp_path / "dump", members)]


# -- HDF5: only data stored in the file itself ---------------------------------------------------


@pytest.fixture
def victim(tmp_path):
    """Another HDF5 file, and a file of raw bytes standing in for /etc/passwd."""
    with h5py.File(tmp_path / "victim.h5", "w") as file:
        file["secret"] = np.ones((N, 2))
    (tmp_path / "passwd").write_bytes(np.ones((N, 2), np.float32).tobytes())
    return tmp_path


def test_hdf5_external_link_is_refused(victim, capsys):
    with h5py.File(victim / "dump.h5", "w") as file:
        file["labels"] = LABELS
        file["net/layer"] = h5py.ExternalLink(str(victim / "victim.h5"), "/secret")
    with pytest.raises(BundleLabError, match="external link.*reads only data stored inside"):
        open_dump(victim / "dump.h5")
    for command in ("analyze", "info"):
        one_line_error(*cli(capsys, command, victim / "dump.h5"), "'net/layer' is an external link")


def test_hdf5_external_link_is_refused_before_a_soft_link_can_follow_it(victim, capsys):
    with h5py.File(victim / "dump.h5", "w") as file:
        file["labels"] = LABELS
        file["a_alias"] = h5py.SoftLink("/z_outside/secret")  # listed before the link itself
        file["z_outside"] = h5py.ExternalLink(str(victim / "victim.h5"), "/")
    one_line_error(*cli(capsys, "analyze", victim / "dump.h5"), "'z_outside' is an external link")


def test_hdf5_external_raw_storage_is_refused(victim, capsys):
    with h5py.File(victim / "dump.h5", "w") as file:
        file["labels"] = LABELS
        file.create_dataset("layer", (N, 2), "f4", external=[(str(victim / "passwd"), 0, N * 8)])
    with pytest.raises(BundleLabError, match="external file.*passwd"):
        analyze_dump(victim / "dump.h5")
    one_line_error(*cli(capsys, "info", victim / "dump.h5"), "stores its data in the external file")


def test_hdf5_virtual_dataset_is_refused(victim, capsys):
    layout = h5py.VirtualLayout((N, 2), "f8")
    layout[:] = h5py.VirtualSource(str(victim / "victim.h5"), "secret", shape=(N, 2))
    with h5py.File(victim / "dump.h5", "w") as file:
        file["labels"] = LABELS
        file.create_virtual_dataset("layer", layout)
    one_line_error(*cli(capsys, "analyze", victim / "dump.h5"), "'layer' is a virtual dataset")


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_hdf5_link_cycles_are_one_line(tmp_path, capsys, kind):
    with h5py.File(tmp_path / "dump.h5", "w") as file:
        file["labels"] = LABELS
        group = file.create_group("net")
        group["layer"] = np.ones((N, 2), np.float32)
        group["loop"] = h5py.SoftLink("/net") if kind == "soft" else group
    with pytest.raises(BundleLabError, match="'net/loop' leads back to the group 'net'"):
        open_dump(tmp_path / "dump.h5")
    one_line_error(*cli(capsys, "info", tmp_path / "dump.h5"), "a cycle")


def test_hdf5_aliases_without_a_cycle_are_listed_once(tmp_path):
    with h5py.File(tmp_path / "dump.h5", "w") as file:
        file["labels"] = LABELS
        file["net/layer"] = np.ones((N, 2), np.float32)
        file["same_net"] = file["net"]  # a second hard link to the group
        file["alias"] = h5py.SoftLink("/net/layer")  # a soft link to a dataset: listed
    with open_dump(tmp_path / "dump.h5") as dump:  # natural order of the names
        assert dump.layer_names == ["alias", "net/layer"]


def test_hdf5_deep_groups_are_no_recursion_error(tmp_path):
    with h5py.File(tmp_path / "dump.h5", "w") as file:
        file["labels"] = LABELS
        group = file
        for _ in range(1200):  # deeper than Python's recursion limit
            group = group.create_group("g")
        group["layer"] = np.ones((N, 2), np.float32)
    with open_dump(tmp_path / "dump.h5") as dump:
        assert dump.layer_names == ["g/" * 1200 + "layer"]


def test_hdf5_corrupt_metadata_is_one_line(tmp_path, capsys):
    path = tmp_path / "dump.h5"
    with h5py.File(path, "w", libver="earliest") as file:
        file["net/layer"] = np.ones((N, 2), np.float32)
        file["labels"] = LABELS
    data = bytearray(path.read_bytes())
    data[data.index(b"HEAP")] ^= 0xFF  # a group's local heap: "Link iteration failed"
    path.write_bytes(bytes(data))
    with pytest.raises(BundleLabError, match="truncated or corrupt"):
        open_dump(path)
    for command in ("analyze", "info"):
        one_line_error(*cli(capsys, command, path), "looks truncated or corrupt")


def test_hdf5_empty_datasets_are_not_layers_and_empty_labels_are_one_line(tmp_path, capsys):
    with h5py.File(tmp_path / "dump.h5", "w") as file:
        file["labels"] = LABELS
        file["layer"] = np.ones((N, 2), np.float32)
        file["nothing"] = h5py.Empty("f4")
    with open_dump(tmp_path / "dump.h5") as dump:
        assert dump.layer_names == ["layer"]
    code, out, _ = cli(capsys, "info", tmp_path / "dump.h5")
    assert code == 0 and "nothing" not in out
    with h5py.File(tmp_path / "empty_labels.h5", "w") as file:
        file["labels"] = h5py.Empty("i8")
        file["layer"] = np.ones((N, 2), np.float32)
    for command in ("analyze", "info"):
        one_line_error(*cli(capsys, command, tmp_path / "empty_labels.h5"), "empty dataset")


def test_hdf5_fill_values_declared_without_storage_are_refused_at_once(tmp_path, capsys):
    with h5py.File(tmp_path / "dump.h5", "w") as file:
        file["labels"] = LABELS
        # 256 TiB of fill values, no chunk written: reading it would never end
        file.create_dataset("layer", (N, 2**41 // 3), "f8", chunks=(1, 4096))
    for command in ("analyze", "info"):
        one_line_error(*cli(capsys, command, tmp_path / "dump.h5"),
                       "declares shape", "TiB", "holds 0 B of chunks or data")


def test_hdf5_compressed_and_partly_written_datasets_still_open(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "dump.h5", "w") as file:
        file["labels"] = np.arange(4096) % 3
        # a dead layer: all zeros, deflated far below its size
        file.create_dataset("dead", data=np.zeros((4096, 512), np.float32), chunks=(512, 512),
                            compression="gzip", compression_opts=9, shuffle=True)
        file.create_dataset("lzf", data=np.zeros((4096, 64), np.float32), compression="lzf")
        file.create_dataset("live", data=rng.random((4096, 8)))
        file.create_dataset("strings", data=np.array(["a", "b"] * 2048, dtype=h5py.string_dtype()))
        file.create_dataset("unwritten", (4096, 2), "f4")  # small: fill values are harmless
    with open_dump(tmp_path / "dump.h5") as dump:
        assert dump.layer_names == ["dead", "live", "lzf", "strings", "unwritten"]
        assert dump.load("dead").shape == (4096, 512)


# -- declared sizes checked before anything is allocated ---------------------------------------


def test_a_shape_that_overflows_is_refused(tmp_path, capsys):
    layer = npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (4, 2**62)}, bytes(64))
    for path in both_formats(tmp_path, layer, labels_npy(np.arange(4) % 2)):
        with pytest.raises(BundleLabError, match=r"declares shape \(4, 4611686018427387904\)"):
            open_dump(path)
        for command in ("analyze", "info"):
            one_line_error(*cli(capsys, command, path), "header corrupt or forged")


def test_a_negative_shape_is_refused(tmp_path, capsys):
    layer = npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (-4, 3)}, bytes(64))
    for path in both_formats(tmp_path, layer):
        for command in ("analyze", "info"):
            one_line_error(*cli(capsys, command, path), "negative dimension")


def forge_zip64_size(data: bytes, true_size: int, forged: int) -> bytes:
    """Replace the uncompressed size in every zip64 extra field (local and central)."""
    old, new = true_size.to_bytes(8, "little"), forged.to_bytes(8, "little")
    assert old in data
    return data.replace(old, new)


def test_a_deflated_member_declaring_more_than_deflate_can_hold_is_refused(tmp_path, capsys):
    rows = 2**26  # 4 GiB of float32 declared, about 1 KiB stored
    header = npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (rows, 16)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("labels.npy", labels_npy(np.zeros(rows, np.uint8)))
        with archive.open("layer.npy", "w", force_zip64=True) as member:
            member.write(header + bytes(1 << 20))
    true_size = len(header) + (1 << 20)
    path.write_bytes(forge_zip64_size(path.read_bytes(), true_size, len(header) + rows * 64))
    with pytest.raises(BundleLabError, match="deflated data .*at most .* once inflated"):
        open_dump(path)
    for command in ("analyze", "info"):
        one_line_error(*cli(capsys, command, path), "'layer' declares shape (67108864, 16)")


def test_a_stored_member_whose_data_runs_past_the_end_of_the_file_is_refused(tmp_path, capsys):
    """Stored members are memory-mapped at an offset computed from the zip and .npy headers:
    data that would run past the end of the file is refused when the dump opens."""
    rows = 2**16  # 4 MiB declared, 1 MiB stored, the zip sizes forged to match the header
    header = npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (rows, 16)})
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("labels.npy", labels_npy(np.zeros(rows, np.uint8)))
        with archive.open("layer.npy", "w", force_zip64=True) as member:
            member.write(header + bytes(1 << 20))
    true_size = len(header) + (1 << 20)
    forged = len(header) + rows * 64
    data = forge_zip64_size(path.read_bytes(), true_size, forged)  # local header
    data = data.replace(true_size.to_bytes(4, "little"), forged.to_bytes(4, "little"))  # central
    path.write_bytes(data)
    assert zipfile.ZipFile(path).getinfo("layer.npy").file_size == forged
    with pytest.raises(BundleLabError, match="ends past the end of the file"):
        open_dump(path)
    for command in ("analyze", "info"):
        one_line_error(*cli(capsys, command, path), "short.npz", "'layer'")


def test_members_not_aligned_for_their_type_are_read_not_mapped(tmp_path):
    """np.savez puts a member's data wherever the zip headers end; a float32 array at an odd
    offset is read into an aligned buffer (the kernels read aligned values)."""
    layer = np.arange(N * 4, dtype=np.float32).reshape(N, 4)
    path = tmp_path / "odd.npz"
    np.savez(path, a=layer, labels=LABELS)  # 'a.npy': the data starts at an odd offset
    member = zipfile.ZipFile(path).getinfo("a.npy")
    assert (member.header_offset + 30 + len("a.npy") + 20 + 128) % 4  # odd: the case under test
    with open_dump(path) as dump:
        for array in (dump["a"], *dump.iter_chunks("a", 7)):
            assert array.flags.aligned and array.flags.writeable
        np.testing.assert_array_equal(dump["a"], layer)
        np.testing.assert_array_equal(np.concatenate(list(dump.iter_chunks("a", 7))), layer)
    memory = bundlelab.analyze_layers({"a": layer}, LABELS, weight_amplitude=1.0)
    report = analyze_dump(path, weight_amplitude=1.0)
    assert report.to_dict(include_ids=True)["layers"] == memory.to_dict(include_ids=True)["layers"]


def test_an_honestly_deflated_dead_layer_is_read(tmp_path):
    """Zeros deflate about 1000:1; the bound is deflate's own, so a dead layer still opens."""
    zeros = np.zeros((2**14, 256), np.float32)  # 16 MiB
    save_dump(tmp_path / "dead.npz", {"dead": zeros}, np.arange(2**14) % 2, compress=True)
    member = zipfile.ZipFile(tmp_path / "dead.npz").getinfo("dead.npy")
    assert member.file_size > 500 * member.compress_size
    report = analyze_dump(tmp_path / "dead.npz")
    assert report[0].n_bundles == 1


def test_other_zip_compression_methods_are_refused(tmp_path, capsys):
    path = write_npz(tmp_path / "dump.npz", {"labels": labels_npy(), "layer": float_layer()},
                     compression=zipfile.ZIP_BZIP2)
    one_line_error(*cli(capsys, "info", path), "stored or deflated")


def test_sparse_labels_larger_than_memory_are_refused_before_reading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bundlelab.io.dumps.physical_memory", lambda: 1 << 30)
    folder = tmp_path / "dump"
    folder.mkdir()
    rows = 2**33
    for name, descr, width in (("labels", "<i8", 8), ("layer", "<f4", 4)):
        with open(folder / f"{name}.npy", "wb") as file:
            shape = (rows,) if name == "labels" else (rows, 1)
            np.lib.format.write_array_header_1_0(
                file, {"descr": descr, "fortran_order": False, "shape": shape}
            )
            file.truncate(file.tell() + rows * width)  # a sparse file: nothing on disk
    for command in ("analyze", "info"):
        err = one_line_error(*cli(capsys, command, folder), "8589934592 samples (64.0 GiB)",
                             "more than this machine's memory")
        assert "--chunk-rows" not in err


def test_out_of_memory_advice_only_where_chunking_helps(tmp_path, capsys, monkeypatch):
    save_dump(tmp_path / "dump.npz", {"layer": np.ones((N, 2), np.float32)}, LABELS)

    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr("bundlelab.io.npz.NpzDump._read_labels", no_memory)
    code, _, err = cli(capsys, "info", tmp_path / "dump.npz")
    assert code == 1 and err == "error: out of memory\n"
    code, _, err = cli(capsys, "analyze", tmp_path / "dump.npz")
    assert code == 1 and "--chunk-rows N" in err and "--inference-batch-size" not in err


# -- headers that do not parse ------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (12, 2), 'x': '''}",  # TokenError
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (12, 2.5), }",
    b"{'descr': '<f4', 'fortran_order': False, 'shape': " + b"(" * 300 + b"}",
    b"{'descr': [('a', '<f4', (1, 2, 3)), 7], 'fortran_order': False, 'shape': (12,), }",
])
def test_corrupt_npy_headers_are_one_line(tmp_path, capsys, raw):
    for path in both_formats(tmp_path, npy_bytes({}, bytes(96), raw_header=raw)):
        with pytest.raises(BundleLabError, match="truncated or corrupt"):
            open_dump(path)
        for command in ("analyze", "info"):
            one_line_error(*cli(capsys, command, path), "truncated or corrupt")


def test_layer_order_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    folder = write_npy_dir(tmp_path / "dump", {"labels": labels_npy(), "layer": float_layer()})
    (folder / "layers.txt").write_bytes(b"\xff\xfe layer\n")
    one_line_error(*cli(capsys, "info", folder), "layers.txt", "the layer order")


# -- the Python API: one-line errors ------------------------------------------------------------


@pytest.fixture
def dump(tmp_path):
    save_dump(tmp_path / "dump.npz", {"layer": np.ones((N, 2), np.float32)}, LABELS)
    return tmp_path / "dump.npz"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_pipe_is_refused_instead_of_read_forever(tmp_path, capsys):
    os.mkfifo(tmp_path / "dump.h5")
    one_line_error(*cli(capsys, "info", tmp_path / "dump.h5"), "not a regular file")


@pytest.mark.parametrize("path", [None, 5, ""])
def test_open_dump_of_something_that_is_no_path_is_one_line(path):
    with pytest.raises(BundleLabError, match="'path' parameter must be a file or directory path"):
        open_dump(path)


@pytest.mark.parametrize("options, message", [
    ({"memory_budget": "x"}, "'memory_budget' parameter must be an int"),
    ({"layers": 5}, "'layers' parameter must be None, a layer name"),
    ({"layers": [5]}, "it holds 5"),
    ({"progress": 5}, "'progress' parameter must be None or a callable"),
])
def test_analyze_dump_odd_options_are_one_line(dump, options, message):
    with pytest.raises(BundleLabError, match=message):
        analyze_dump(dump, **options)


def test_analyze_dump_takes_one_pattern_as_a_string(tmp_path):
    save_dump(tmp_path / "dump.npz", {"block1": np.ones((N, 2)), "head": np.ones((N, 3))}, LABELS)
    report = analyze_dump(tmp_path / "dump.npz", layers="block*")
    assert [result.layer for result in report] == ["block1"]


@pytest.mark.parametrize("n_labels", [N + 1, N - 1])
def test_save_dump_refuses_a_label_count_that_is_not_the_sample_count(tmp_path, n_labels):
    with pytest.raises(BundleLabError, match=f"layer 'layer' has {N} samples but there are "
                                             f"{n_labels} labels"):
        save_dump(tmp_path / "dump.npz", {"layer": np.ones((N, 2))}, np.arange(n_labels))
    assert not (tmp_path / "dump.npz").exists()


def test_save_dump_refuses_scalar_layers_and_odd_arguments(tmp_path):
    with pytest.raises(BundleLabError, match="layer 'step' has a scalar"):
        save_dump(tmp_path / "dump.npz", {"layer": np.ones((N, 2)), "step": 7}, LABELS)
    with pytest.raises(BundleLabError, match="'layers' parameter must be a dict"):
        save_dump(tmp_path / "dump.npz", [np.ones((N, 2))], LABELS)
    with pytest.raises(BundleLabError, match="'path' parameter"):
        save_dump(None, {"layer": np.ones((N, 2))}, LABELS)


# -- names from a file are printed with control characters escaped ------------------------------

FORGED = "\x1b[2J\x1b[H FAKE: no conflicting layer"


def test_control_characters_in_layer_names_are_escaped_in_tables_and_summaries(tmp_path, capsys):
    save_dump(tmp_path / "dump.npz", {FORGED: np.zeros((N, 2), np.float32)}, LABELS)
    for argv in (["analyze", tmp_path / "dump.npz"], ["info", tmp_path / "dump.npz"]):
        code, out, err = cli(capsys, *argv)
        assert code == 0 and "\x1b" not in out + err
        assert "\\x1b[2J\\x1b[H FAKE" in out
    code, out, _ = cli(capsys, "analyze", tmp_path / "dump.npz", "-o", tmp_path / "report.txt")
    text = (tmp_path / "report.txt").read_text()
    assert code == 0 and "\x1b" not in text and "\\x1b[2J" in text
    # JSON keeps the exact name, escaped as JSON
    code, out, _ = cli(capsys, "analyze", tmp_path / "dump.npz", "-f", "json")
    assert code == 0 and "\x1b" not in out and "\\u001b[2J" in out


def test_bidi_and_newlines_in_names_are_escaped(tmp_path, capsys):
    names = {"evil\u202etxt.exe": np.zeros((N, 2), np.float32),
             "two\nlines": np.ones((N, 2), np.float32)}
    save_dump(tmp_path / "dump.npz", names, LABELS)
    code, out, _ = cli(capsys, "info", tmp_path / "dump.npz")
    assert code == 0 and "\u202e" not in out and "evil\\u202etxt.exe" in out
    assert "two\\nlines" in out


def test_markup_in_layer_names_is_shown_literally_in_every_output(tmp_path, capsys):
    name = "[/oops] :warning: [bold]b"
    save_dump(tmp_path / "dump.npz", {name: np.zeros((N, 2), np.float32)}, LABELS)
    code, out, _ = cli(capsys, "analyze", tmp_path / "dump.npz")
    assert code == 0 and name in out
    code, _, err = cli(capsys, "analyze", tmp_path / "dump.npz", "-o", tmp_path / "report.txt")
    assert code == 0, err
    assert name in (tmp_path / "report.txt").read_text()


def test_markup_in_layer_names_does_not_break_the_progress_bar(tmp_path, capsys, monkeypatch):
    save_dump(tmp_path / "dump.npz", {"[/oops]\x1b[2J": np.zeros((N, 2), np.float32)}, LABELS)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar shows the layer name
    code, out, err = cli(capsys, "analyze", tmp_path / "dump.npz", "-f", "json")
    assert code == 0 and json.loads(out)["layers"][0]["layer"] == "[/oops]\x1b[2J", err


def test_control_characters_in_error_lines_are_escaped(tmp_path, capsys):
    folder = write_npy_dir(tmp_path / "dump", {"labels": labels_npy(), "layer": float_layer()})
    (folder / "layers.txt").write_text("\x1b]0;pwned\x07\x1b[2J\n")
    _, _, err = cli(capsys, "info", folder)
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;pwned\\x07" in err
    one_line_error(*cli(capsys, "info", folder))


def test_printable_escapes_only_what_drives_a_terminal():
    from bundlelab.cli._app import printable

    assert printable("block1/conv[3] α→β 日本") == "block1/conv[3] α→β 日本"
    assert printable("a\x1bb\x7fc\x9bd\u200be\U000e0001f") == (
        "a\\x1bb\\x7fc\\x9bd\\u200be\\U000e0001f"
    )
    assert printable("tab\there\u2028") == "tab\\there\\u2028"


# -- fuzz: truncated and bit-flipped dumps of every format through analyze and info -------------


def _base_dump(fmt: str, folder):
    rng = np.random.default_rng(7)
    layers = {"dense": rng.integers(0, 3, (N, 3)).astype(np.float32),
              "half": rng.random((N, 2)).astype(np.float16)}
    labels = LABELS
    folder.mkdir()
    if fmt in ("npz", "npz-deflated"):
        save_dump(folder / "d.npz", layers, labels, compress=fmt == "npz-deflated")
        return folder / "d.npz"
    if fmt == "npy-dir":
        for name, array in {**layers, "labels": labels}.items():
            np.save(folder / f"{name}.npy", array)
        return folder
    if fmt == "safetensors":
        safetensors_numpy.save_file({**layers, "labels": labels}, str(folder / "d.safetensors"))
        return folder / "d.safetensors"
    if fmt == "pt":
        torch = pytest.importorskip("torch")
        torch.save({**{k: torch.from_numpy(v) for k, v in layers.items()},
                    "labels": torch.from_numpy(labels)}, folder / "d.pt")
        return folder / "d.pt"
    if fmt == "thingsvision":
        for name, array in layers.items():
            (folder / name).mkdir()
            if name == "half":
                with h5py.File(folder / name / "features.hdf5", "w") as file:
                    file.create_dataset("features", data=array)
            else:
                np.save(folder / name / "features.npy", array)
        np.save(folder / "targets.npy", labels)
        return folder
    with h5py.File(folder / "d.h5", "w") as file:
        group = file.create_group("net")
        for name, array in layers.items():
            group.create_dataset(name, data=array, chunks=(4,) + array.shape[1:],
                                 compression="gzip" if name == "dense" else None)
        file["labels"] = labels
    return folder / "d.h5"


FORMATS = ["npz", "npz-deflated", "npy-dir", "safetensors", "hdf5", "pt", "thingsvision"]


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    """Truncated, or a few bits flipped (half of the time in the first or last 256 bytes,
    where the headers, the zip directory and the HDF5 superblock live)."""
    if rnd.random() < 0.35:
        return data[: rnd.randrange(len(data))]
    data = bytearray(data)
    for _ in range(rnd.choice([1, 1, 2, 3, 8])):
        if rnd.random() < 0.5:
            edge = min(256, len(data))
            pos = rnd.randrange(edge) if rnd.random() < 0.5 else len(data) - 1 - rnd.randrange(edge)
        else:
            pos = rnd.randrange(len(data))
        data[pos] ^= 1 << rnd.randrange(8)
    return bytes(data)


def _fuzz(fmt: str, tmp_path, capsys, n_cases: int, seed: int) -> None:
    rnd = random.Random(f"{fmt}-{seed}")
    failures = []
    outcomes = {"ok": 0, "error": 0}
    for case in range(n_cases):
        target = _base_dump(fmt, tmp_path / f"case{case}")
        victims = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        victim = rnd.choice(victims)
        victim.write_bytes(_mutate(victim.read_bytes(), rnd))
        for command in ("analyze", "info"):
            try:
                code = run([command, str(target)])
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                code = f"raised {type(exc).__name__}: {exc}"
            out, err = capsys.readouterr()
            if code == 0:
                outcomes["ok"] += 1
            elif code == 2 and err.startswith("error: ") and err.count("\n") == 1 \
                    and "internal error" not in err:
                outcomes["error"] += 1
            else:
                failures.append((case, victim.name, command, code, err[-300:]))
    assert not failures, failures[:5]
    assert outcomes["error"] > 0  # the corpus does break files


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_truncated_and_bit_flipped_dumps_are_read_or_one_line(fmt, tmp_path, capsys):
    _fuzz(fmt, tmp_path, capsys, n_cases=30, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_many_more_broken_dumps(fmt, tmp_path, capsys):
    _fuzz(fmt, tmp_path, capsys, n_cases=400, seed=1)


# -- torch .pt dicts and thingsvision folders: the same rules ------------------------------------


class _Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pt_pickled_objects_are_refused_and_never_run(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    torch.save({"layer": torch.zeros(N, 2), "labels": torch.arange(N), "x": _Payload(marker)},
               tmp_path / "evil.pt")
    for command in ("analyze", "info"):
        one_line_error(*cli(capsys, command, tmp_path / "evil.pt"), "never unpickles")
    assert not marker.exists()


def test_pt_tensor_declaring_more_than_its_storage_is_refused(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    # a zero stride lets one stored float declare 4 TiB
    torch.save({"layer": torch.zeros(1).expand(N, 1 << 40), "labels": torch.arange(N)},
               tmp_path / "forged.pt")
    one_line_error(*cli(capsys, "info", tmp_path / "forged.pt"), "declares shape", "nothing was read")


def test_pt_compressed_members_and_huge_pickles_are_refused(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.save({"layer": torch.zeros(N, 2), "labels": torch.arange(N)}, tmp_path / "d.pt")
    with zipfile.ZipFile(tmp_path / "d.pt") as source, \
            zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            target.writestr(member.filename, source.read(member))
    one_line_error(*cli(capsys, "info", tmp_path / "deflated.pt"), "compressed with method 8")
    monkeypatch.setattr("bundlelab.io.torch_dump.MAX_PICKLE_BYTES", 16)
    one_line_error(*cli(capsys, "info", tmp_path / "d.pt"), "its pickle takes")


def test_thingsvision_layer_folders_that_lead_outside_are_refused(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "features.npy", np.zeros((N, 2), np.float32))
    dump = tmp_path / "dump"
    dump.mkdir()
    np.save(dump / "labels.npy", LABELS)
    (dump / "stolen").symlink_to(outside, target_is_directory=True)
    one_line_error(*cli(capsys, "info", dump), "leads out of the dump directory")
    (dump / "stolen").unlink()
    (dump / "conv").mkdir()
    (dump / "conv" / "features.npy").symlink_to(outside / "features.npy")
    one_line_error(*cli(capsys, "analyze", dump), "leads out of the dump directory")


def test_order_files_are_bounded_and_checked(tmp_path, capsys, monkeypatch):
    save_dump(tmp_path / "d.npz", {"a": np.zeros((N, 2), np.float32)}, LABELS)
    (tmp_path / "order.txt").write_text("a\n" * 10)
    one_line_error(*cli(capsys, "analyze", tmp_path / "d.npz", "--order", tmp_path / "order.txt"),
                   "names the layer 'a' twice")
    monkeypatch.setattr("bundlelab.io.dumps.MAX_ORDER_FILE_BYTES", 8)
    one_line_error(*cli(capsys, "analyze", tmp_path / "d.npz", "--order", tmp_path / "order.txt"),
                   "more than a list of layer names")
    one_line_error(*cli(capsys, "analyze", tmp_path / "d.npz", "--order", tmp_path / "nothing.txt"),
                   "no layer order file")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    one_line_error(*cli(capsys, "analyze", tmp_path / "d.npz", "--order", tmp_path / "bin.txt"),
                   "cannot read the layer order")
