"""Sharded dumps: the report of the shards equals the report of the concatenated dump."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest

from bundlelab import BundleLabError, BundleStream
from bundlelab.cli import run
from bundlelab.io import analyze_dump, save_dump
from bundlelab.io.shards import shard_paths, shard_streams

N = 60
W = {"weight_amplitude": 2.0}


def make_layers(rng, n=N, *, string_labels=True):
    layers = {
        "block1": rng.integers(0, 3, (n, 2, 2)).astype(np.float32),
        "block2": rng.integers(0, 2, (n, 3)).astype(np.float64),
        "head": rng.choice([0.0, -0.0, 1.0, np.nan], size=(n, 2)).astype(np.float32),
    }
    labels = rng.integers(0, 3, n)
    if string_labels:  # classes compared as Python values across shards
        labels = np.array(["cat", "dog", "1"])[labels]
    return layers, labels


def write_shards(folder, layers, labels, cuts, suffixes):
    """Shards part-0, part-1, ... of the samples between ``cuts``, in the given formats."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, len(labels)]
    paths = []
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = folder / f"part-{k}{suffixes[k % len(suffixes)]}"
        save_dump(path, {name: value[lo:hi] for name, value in layers.items()}, labels[lo:hi])
        paths.append(path)
    return paths


def report_of(source, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return analyze_dump(source, nonfinite="keep", **W, **options).to_dict(include_ids=True)


@pytest.mark.parametrize("suffixes", [[".npz"], [".safetensors"], [".npz", ".h5"]],
                         ids=["npz", "safetensors", "npz+h5"])
def test_shards_give_the_report_of_the_concatenated_dump(tmp_path, rng, suffixes):
    if ".h5" in suffixes:
        pytest.importorskip("h5py")
    if ".safetensors" in suffixes:
        pytest.importorskip("safetensors")
    layers, labels = make_layers(rng, string_labels=".safetensors" not in suffixes)
    whole = tmp_path / f"whole{suffixes[0]}"
    save_dump(whole, layers, labels)
    expected = report_of(whole)
    write_shards(tmp_path / "shards", layers, labels, [7, 8, 31], suffixes)
    assert report_of(tmp_path / "shards") == expected
    # a glob, chunked streaming inside the tasks, and a list of paths
    assert report_of(str(tmp_path / "shards" / "part-*"), chunk_rows=5) == expected
    assert report_of(shard_paths(tmp_path / "shards")) == expected
    # the NaN rows of every shard stay distinct bundles
    assert max(expected["layers"][2]["bundle_ids"]) >= 2


def test_the_processes_executor_gives_the_same_report(tmp_path, rng):
    layers, labels = make_layers(rng, string_labels=False)
    save_dump(tmp_path / "whole.npz", layers, labels)
    write_shards(tmp_path / "shards", layers, labels, [20, 45], [".npz", ".safetensors"])
    from bundlelab.executors import get_executor

    with get_executor("processes", workers=2, progress=False) as executor:
        sharded = report_of(tmp_path / "shards", executor=executor)
    assert sharded == report_of(tmp_path / "whole.npz")


def test_shards_are_sorted_by_name_in_natural_order(tmp_path, rng):
    # 12 shards: sorted as text, part-10 would come before part-2 and the ids would change
    layers, labels = make_layers(rng, n=24)
    paths = write_shards(tmp_path / "s", layers, labels, list(range(2, 24, 2)), [".npz"])
    assert shard_paths(tmp_path / "s") == paths
    assert shard_paths(str(tmp_path / "s" / "part-*.npz")) == paths
    save_dump(tmp_path / "whole.npz", layers, labels)
    assert report_of(tmp_path / "s") == report_of(tmp_path / "whole.npz")
    text_order = sorted(paths, key=lambda path: path.name)
    assert text_order != paths
    assert report_of(text_order) != report_of(tmp_path / "whole.npz")


def test_a_single_dump_is_not_taken_for_shards(tmp_path, rng):
    layers, labels = make_layers(rng, n=10)
    save_dump(tmp_path / "one.npz", layers, labels)
    assert shard_paths(tmp_path / "one.npz") is None
    npy_dir = tmp_path / "npy"
    npy_dir.mkdir()
    for name, value in {**layers, "labels": labels}.items():
        np.save(npy_dir / f"{name}.npy", value)
    (npy_dir / "notes.h5").write_bytes(b"")  # a folder with .npy files is one dump
    assert shard_paths(npy_dir) is None


def test_shards_that_are_folders_of_npy_files_are_given_by_a_glob(tmp_path, rng):
    layers, labels = make_layers(rng, n=30)
    save_dump(tmp_path / "whole.npz", layers, labels)
    bounds = [0, 11, 30]
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        folder = tmp_path / "acts" / f"rank{k}"
        folder.mkdir(parents=True)
        for name, value in {**layers, "labels": labels}.items():
            np.save(folder / f"{name}.npy", value[lo:hi])
        (folder / "layers.txt").write_text("\n".join(layers))
    assert report_of(str(tmp_path / "acts" / "rank*")) == report_of(tmp_path / "whole.npz")


def test_only_the_streams_travel(tmp_path, rng):
    layers, labels = make_layers(rng, n=400)
    layers["block2"] = rng.standard_normal((400, 256))
    (path,) = write_shards(tmp_path, layers, labels, [], [".npz"])
    options = {"names": list(layers), "labels_key": "labels", "chunk_rows": None,
               "memory_budget": None, "tasks_per_machine": None,
               "keywords": {"nonfinite": "keep", **W}}
    streams = shard_streams((str(path), options))
    assert list(streams) == list(layers)
    assert all(isinstance(stream, BundleStream) for stream in streams.values())
    payload = len(pickle.dumps(streams))
    assert payload < 400 * 3 * 18 + 6000  # fingerprint, code, flag per sample and layer
    assert payload < layers["block2"].nbytes / 20


def error_of(source, **options):
    with pytest.raises(BundleLabError) as exc:
        report_of(source, **options)
    message = str(exc.value)
    assert "\n" not in message.strip()
    return message


def test_shards_with_different_layers_are_one_line_errors(tmp_path, rng):
    layers, labels = make_layers(rng, n=20)
    write_shards(tmp_path / "a", layers, labels, [10], [".npz"])
    save_dump(tmp_path / "a" / "part-2.npz", {"block1": layers["block1"][:3]}, labels[:3])
    message = error_of(tmp_path / "a")
    assert "part-2.npz" in message and "'block2'" in message and "same layers" in message

    write_shards(tmp_path / "b", layers, labels, [10], [".npz"])
    wider = {**layers, "block2": np.zeros((20, 4))}
    save_dump(tmp_path / "b" / "part-2.npz", {k: v[:5] for k, v in wider.items()}, labels[:5])
    message = error_of(tmp_path / "b")
    assert "part-2.npz" in message and "'block2'" in message and "4 float64" in message
    assert "3 float64" in message

    write_shards(tmp_path / "c", layers, labels, [10], [".npz"])
    more = {**layers, "extra": np.zeros((20, 2), np.float32)}
    save_dump(tmp_path / "c" / "part-2.npz", {k: v[:5] for k, v in more.items()}, labels[:5])
    message = error_of(tmp_path / "c")
    assert "part-2.npz" in message and "'extra'" in message and "part-0.npz" in message
    # picking the common layers analyses them
    report_of(tmp_path / "c", layers=list(layers))

    write_shards(tmp_path / "d", layers, labels, [10], [".npz"])
    np.savez(tmp_path / "d" / "part-2.npz", **{k: v[:5] for k, v in layers.items()},
             labels=labels[:4])
    assert "part-2.npz" in error_of(tmp_path / "d")


def test_bad_shard_sets_are_one_line_errors(tmp_path, rng):
    layers, labels = make_layers(rng, n=20)
    write_shards(tmp_path / "s", layers, labels, [10], [".npz"])
    assert "threshold mode" in error_of(tmp_path / "s", mode="threshold")
    assert "no file matches it" in error_of(str(tmp_path / "s" / "nothing-*.npz"))
    assert "no shard given" in error_of([])
    assert "must be paths" in error_of([tmp_path / "s" / "part-0.npz", 3])


def cli(capsys, *argv):
    code = run([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_analyses_a_folder_or_a_glob_of_shards(tmp_path, rng, capsys):
    layers, labels = make_layers(rng, string_labels=False)
    save_dump(tmp_path / "whole.npz", layers, labels)
    write_shards(tmp_path / "shards", layers, labels, [25], [".npz", ".safetensors"])
    common = ["-f", "json", "--bundle-ids", "--nonfinite", "keep", "--weight-amplitude", "2"]
    code, whole, _ = cli(capsys, "analyze", tmp_path / "whole.npz", *common)
    assert code == 0
    code, folder, _ = cli(capsys, "analyze", tmp_path / "shards", *common)
    assert code == 0 and json.loads(folder) == json.loads(whole)
    code, pattern, _ = cli(capsys, "analyze", tmp_path / "shards" / "part-*", *common,
                           "--executor", "processes", "--workers", "2")
    assert code == 0 and json.loads(pattern) == json.loads(whole)
    code, text, _ = cli(capsys, "analyze", tmp_path / "shards", "--nonfinite", "keep")
    assert code == 0 and "(2 shards)" in text


def test_the_cli_says_executor_options_do_not_apply_to_a_single_dump(tmp_path, rng, capsys):
    layers, labels = make_layers(rng, n=10)
    save_dump(tmp_path / "one.npz", layers, labels)
    code, _, err = cli(capsys, "analyze", tmp_path / "one.npz", "--nonfinite", "keep",
                       "--executor", "processes")
    assert code == 0 and "apply to a sharded dump" in err


def test_layers_and_order_apply_to_every_shard(tmp_path, rng):
    layers, labels = make_layers(rng, n=30)
    save_dump(tmp_path / "whole.npz", layers, labels)
    write_shards(tmp_path / "s", layers, labels, [9, 10], [".npz", ".h5"])
    picked = {"layers": ["block*"], "order": ["block2", "block1"]}
    sharded = report_of(tmp_path / "s", **picked)
    assert sharded == report_of(tmp_path / "whole.npz", **picked)
    assert [layer["layer"] for layer in sharded["layers"]] == ["block2", "block1"]
    assert sharded["params"]["layer_order"] == "given"
