"""Dumps in the layouts other tools write (issue 11 §5): the layer order they store, dumps
without labels, ids beside the layers, thingsvision's folders, torch ``.pt`` dicts, and the
update format and sources of ``analyze``.  Every analysis is checked against analysing the same
arrays in memory with :func:`bundlelab.analyze_layers`.
"""

import json

import numpy as np
import pytest

import bundlelab
from bundlelab import BundleLabError
from bundlelab.cli import run
from bundlelab.io import analyze_dump, open_dump, save_dump
from bundlelab.io.analysis import W_NOT_GIVEN
from bundlelab.io.dumps import ORDER_BY_NAME, ORDER_GIVEN, ORDER_STORED, ORDER_TORCHLENS

h5py = pytest.importorskip("h5py")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

N = 40
W = 0.5  # given everywhere the w warning is not the subject


@pytest.fixture
def labels():
    return np.arange(N) % 4


def network(rng, names):
    """Layers of a small ReLU MLP in network order (rounded, so some samples bundle)."""
    x = rng.standard_normal((N, 6)).astype(np.float32)
    layers = {}
    for name in names:
        if name.startswith(("linear", "fc")):
            x = np.round(x @ rng.standard_normal((x.shape[1], 5)).astype(np.float32), 1)
        else:
            x = np.maximum(x, 0)
        layers[name] = x.copy()
    return layers


def same_as_in_memory(report, layers, labels, **options):
    """The dump's report equals analyze_layers on the same arrays, layer for layer."""
    memory = bundlelab.analyze_layers(layers, labels, **options)
    got = report.to_dict(include_ids=True)["layers"]
    assert [r["layer"] for r in got] == list(layers)
    assert got == memory.to_dict(include_ids=True)["layers"]


def cli(capsys, *argv):
    code = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# torchlens' short labels: sorted by name they interleave wrongly (linear_10 before linear_2)
TORCHLENS_SHORT = [f"{kind}_{i}" for i in range(1, 12) for kind in ("linear", "relu")]


# -- layer order ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["bundlelab.order", "layer_order", "order"])
def test_safetensors_order_in_the_metadata_is_honoured(tmp_path, rng, labels, key):
    layers = network(rng, TORCHLENS_SHORT)
    path = tmp_path / "torchlens.safetensors"
    safetensors_numpy.save_file({**layers, "labels": labels}, str(path),
                                metadata={key: json.dumps(list(layers))})
    with open_dump(path) as dump:
        assert dump.layer_names == TORCHLENS_SHORT and dump.order == ORDER_STORED
        report = analyze_dump(dump, weight_amplitude=W)
    same_as_in_memory(report, layers, labels, weight_amplitude=W)
    assert report.params["layer_order"] == ORDER_STORED


def test_safetensors_without_an_order_is_sorted_by_name_and_says_so(tmp_path, rng, labels):
    layers = network(rng, TORCHLENS_SHORT)
    path = tmp_path / "plain.safetensors"
    # a foreign 'order' key that is no list of names is not an order
    safetensors_numpy.save_file({**layers, "labels": labels}, str(path), metadata={"order": "C"})
    with open_dump(path) as dump:
        assert dump.order == ORDER_BY_NAME and dump.layer_names[:3] == ["linear_1", "linear_2", "linear_3"]
    safetensors_numpy.save_file({**layers, "labels": labels}, str(path),
                                metadata={"bundlelab.order": json.dumps(["linear_1", "nope"])})
    with pytest.raises(BundleLabError) as excinfo:
        open_dump(path)
    assert "bundlelab.order" in one_line(excinfo)


def test_torchlens_labels_follow_the_position_they_carry(tmp_path, rng, labels):
    # torchlens' layer labels: type, count of that type, position (``relu_10_20``)
    names = [f"{kind}_{i}_{2 * i - (kind == 'linear')}" for i in range(1, 11) for kind in ("linear", "relu")]
    layers = network(rng, names)
    path = tmp_path / "torchlens.safetensors"
    safetensors_numpy.save_file({**layers, "labels": labels}, str(path))
    with open_dump(path) as dump:
        assert dump.layer_names == names and dump.order == ORDER_TORCHLENS
    # VGG's relu_<block>_<layer> names are no torchlens labels: natural order
    vgg = {name: np.zeros((N, 2), np.float32) for name in ("relu_2_1", "relu_1_2", "relu_1_1")}
    safetensors_numpy.save_file({**vgg, "labels": labels}, str(tmp_path / "vgg.safetensors"))
    with open_dump(tmp_path / "vgg.safetensors") as dump:
        assert dump.layer_names == ["relu_1_1", "relu_1_2", "relu_2_1"] and dump.order == ORDER_BY_NAME


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".h5", ".hdf5"])
def test_save_dump_stores_the_order_in_every_format(tmp_path, rng, labels, suffix):
    names = ["stem", "block10", "block2", "a_head"]  # neither sorted nor natural order
    layers = network(rng, ["linear_a", "relu_a", "linear_b", "relu_b"])
    layers = dict(zip(names, layers.values()))
    save_dump(tmp_path / f"dump{suffix}", layers, labels)
    with open_dump(tmp_path / f"dump{suffix}") as dump:
        assert dump.layer_names == names and dump.order == ORDER_STORED
        report = analyze_dump(dump, weight_amplitude=W)
    same_as_in_memory(report, layers, labels, weight_amplitude=W)


def test_save_dump_refuses_what_a_format_cannot_hold(tmp_path, labels):
    layer = {"a": np.zeros((N, 2), np.float32)}
    with pytest.raises(BundleLabError) as excinfo:
        save_dump(tmp_path / "s.safetensors", layer, np.array(["cat"] * N))
    assert "numbers only" in one_line(excinfo)
    with pytest.raises(BundleLabError) as excinfo:
        save_dump(tmp_path / "s.txt", layer, labels)
    assert ".safetensors, .h5" in one_line(excinfo)
    save_dump(tmp_path / "s.h5", layer, np.array(["cat", "dog"] * (N // 2)))
    with open_dump(tmp_path / "s.h5") as dump:
        assert dump.labels.tolist()[:2] == ["cat", "dog"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_h5py_file_created_with_track_order_keeps_creation_order(tmp_path, rng, labels):
    names = ["conv_z", "relu_z", "conv_a", "relu_a"]
    layers = dict(zip(names, network(rng, ["linear1", "relu1", "linear2", "relu2"]).values()))
    with h5py.File(tmp_path / "tracked.h5", "w", track_order=True) as file:
        for name, array in layers.items():
            file[name] = array
        file["labels"] = labels
    with open_dump(tmp_path / "tracked.h5") as dump:
        assert dump.layer_names == names and dump.order == ORDER_STORED
        report = analyze_dump(dump, weight_amplitude=W)
    same_as_in_memory(report, layers, labels, weight_amplitude=W)
    with h5py.File(tmp_path / "untracked.h5", "w") as file:
        for name, array in layers.items():
            file[name] = array
        file["labels"] = labels
    with open_dump(tmp_path / "untracked.h5") as dump:
        assert dump.layer_names == sorted(names) and dump.order == ORDER_BY_NAME


def test_a_given_order_file_list_or_the_layers_option(tmp_path, rng, labels, capsys):
    layers = network(rng, TORCHLENS_SHORT[:6])
    safetensors_numpy.save_file({**layers, "labels": labels}, str(tmp_path / "d.safetensors"))
    order_file = tmp_path / "order.txt"
    order_file.write_text("# network order\n" + "\n".join(layers) + "\n")
    with open_dump(tmp_path / "d.safetensors", order=order_file) as dump:
        assert dump.layer_names == list(layers) and dump.order == ORDER_GIVEN
    report = analyze_dump(tmp_path / "d.safetensors", order=list(layers), weight_amplitude=W)
    assert report.params["layer_order"] == ORDER_GIVEN
    same_as_in_memory(report, layers, labels, weight_amplitude=W)
    picked = ["relu_2", "linear_1", "relu_3"]
    report = analyze_dump(tmp_path / "d.safetensors", layers=picked, order="layers", weight_amplitude=W)
    assert [r.layer for r in report] == picked
    code, out, err = cli(capsys, "analyze", tmp_path / "d.safetensors", "--order", order_file,
                         "-f", "json", "--weight-amplitude", W)
    assert code == 0 and [r["layer"] for r in json.loads(out)["layers"]] == list(layers)
    assert json.loads(out)["params"]["layer_order"] == "given"
    code, out, err = cli(capsys, "analyze", tmp_path / "d.safetensors", "--weight-amplitude", W)
    assert code == 0 and "layer order: sorted by name (the file stores no order)" in out
    code, out, err = cli(capsys, "analyze", tmp_path / "d.safetensors", "--order", "layers",
                         "-l", "relu_2,linear_1", "-f", "json", "--weight-amplitude", W)
    assert [r["layer"] for r in json.loads(out)["layers"]] == ["relu_2", "linear_1"]
    order_file.write_text("linear_1\nrelu_9\n")
    code, out, err = cli(capsys, "analyze", tmp_path / "d.safetensors", "--order", order_file)
    assert code == 2 and "has no layer 'relu_9'" in err and err.count("\n") == 1
    code, out, err = cli(capsys, "analyze", tmp_path / "d.safetensors", "--order", "layers")
    assert code == 2 and "no layers were given" in err


# -- labels, ids, info ---------------------------------------------------------------------------


def test_info_works_without_labels_and_names_the_candidates(tmp_path, rng, labels, capsys):
    layers = network(rng, ["linear_1", "relu_1"])
    np.savez(tmp_path / "nolabels.npz", **layers, class_id=labels, image_index=np.arange(N),
             pixels_mean=np.zeros(3, np.float32))
    code, out, err = cli(capsys, "info", tmp_path / "nolabels.npz")
    assert code == 0, err
    assert "no labels array 'labels'; could be labels: 'class_id', 'image_index'" in out
    assert "--labels class_id" in out and "layer order: stored in the file" in out
    for name in ("linear_1", "relu_1", "class_id", "image_index", "pixels_mean"):
        assert name in out
    code, out, err = cli(capsys, "info", tmp_path / "nolabels.npz", "--labels", "class_id")
    assert code == 0 and f"labels 'class_id': {N} samples, 4 classes" in out
    code, out, err = cli(capsys, "analyze", tmp_path / "nolabels.npz")
    assert code == 2 and "could be labels: 'class_id', 'image_index'" in err


def test_ids_beside_the_layers_are_skipped_with_a_note(tmp_path, rng, labels, capsys):
    layers = network(rng, ["linear_1", "relu_1", "linear_2"])
    save_dump(tmp_path / "ids.npz", {"image_id": np.arange(N) + 1000, **layers,
                                     "index": np.arange(N, dtype=np.int32)}, labels)
    report = analyze_dump(tmp_path / "ids.npz", weight_amplitude=W)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 2 arrays that are not float activations" in err
    assert "'image_id' (int64)" in err and "'index' (int32)" in err
    assert report.params["skipped"] == {"image_id": "int64", "index": "int32"}
    same_as_in_memory(report, layers, labels, weight_amplitude=W)
    # a glob that catches an id skips it too; naming it stays an error
    globbed = analyze_dump(tmp_path / "ids.npz", layers="*_1,i*", weight_amplitude=W)
    assert [r.layer for r in globbed] == ["linear_1", "relu_1"] and len(globbed.params["skipped"]) == 2
    with pytest.raises(BundleLabError) as excinfo:
        analyze_dump(tmp_path / "ids.npz", layers=["relu_1", "index"], weight_amplitude=W)
    assert "integer activations (int32)" in one_line(excinfo)
    code, out, err = cli(capsys, "analyze", tmp_path / "ids.npz", "-f", "json", "--weight-amplitude", W)
    assert code == 0 and "skipped 2 arrays" in err
    assert [r["layer"] for r in json.loads(out)["layers"]] == list(layers)


# -- thingsvision's layout -----------------------------------------------------------------------


def write_thingsvision(root, layers, labels, *, hdf5=()):
    """thingsvision's save_features(features, out_path=root/<module>, file_format=...) per
    module, the targets at the top, and the image file names."""
    root.mkdir()
    for name, array in layers.items():
        (root / name).mkdir()
        if name in hdf5:
            with h5py.File(root / name / "features.hdf5", "w") as file:
                file.create_dataset("features", data=array)
        else:
            np.save(root / name / "features.npy", array)
    np.save(root / "targets.npy", labels)
    (root / "file_names.txt").write_text("\n".join(f"img{i}.jpg" for i in range(N)))
    (root / "images").mkdir()  # a folder that is no layer
    return root


def test_thingsvision_folders_read_as_one_dump(tmp_path, rng, labels, capsys):
    names = ["features.0", "features.2", "features.10", "classifier.1"]
    layers = dict(zip(names, network(rng, ["linear1", "relu1", "linear2", "relu2"]).values()))
    root = write_thingsvision(tmp_path / "tv", layers, labels, hdf5={"features.2", "classifier.1"})
    with open_dump(root) as dump:
        assert dump.format == "thingsvision" and dump.labels_key == "targets"
        assert dump.layer_names == ["classifier.1", "features.0", "features.2", "features.10"]
        assert dump.order == ORDER_BY_NAME
        for name in names:
            np.testing.assert_array_equal(np.concatenate(list(dump.iter_chunks(name, 7))), layers[name])
    (root / "layers.txt").write_text("\n".join(names) + "\n")
    report = analyze_dump(root, weight_amplitude=W)
    assert report.params["layer_order"] == ORDER_STORED
    same_as_in_memory(report, layers, labels, weight_amplitude=W)
    streamed = analyze_dump(root, weight_amplitude=W, chunk_rows=9)
    assert [r.n_bundles for r in streamed] == [r.n_bundles for r in report]
    code, out, _ = cli(capsys, "info", root)
    assert code == 0 and "(thingsvision)" in out and "labels 'targets'" in out


def test_thingsvision_folders_that_cannot_be_read_are_one_line(tmp_path, labels):
    root = write_thingsvision(tmp_path / "split", {"conv": np.zeros((N, 2), np.float32)}, labels)
    (root / "conv" / "features.npy").rename(root / "conv" / "features_01.npy")
    with pytest.raises(BundleLabError) as excinfo:
        open_dump(root)
    assert "merge them" in one_line(excinfo)
    root = write_thingsvision(tmp_path / "noname", {"conv": np.zeros((N, 2), np.float32)}, labels,
                              hdf5={"conv"})
    with h5py.File(root / "conv" / "features.hdf5", "w") as file:
        file["acts"] = np.zeros((N, 2), np.float32)
    with pytest.raises(BundleLabError) as excinfo:
        open_dump(root)
    assert "no dataset 'features'" in one_line(excinfo)


# -- torch .pt dicts -----------------------------------------------------------------------------


def test_torch_dict_of_tensors_reads_in_dict_order(tmp_path, rng, labels, capsys):
    torch = pytest.importorskip("torch")
    names = ["stem", "block10", "block2"]
    layers = dict(zip(names, network(rng, ["linear1", "relu1", "linear2"]).values()))
    torch.save({"acts": {name: torch.from_numpy(a) for name, a in layers.items()},
                "image_ids": torch.arange(N), "labels": torch.from_numpy(labels), "epoch": 3},
               tmp_path / "acts.pt")
    with open_dump(tmp_path / "acts.pt") as dump:
        assert dump.layer_names == ["acts/stem", "acts/block10", "acts/block2", "image_ids"]
        assert dump.order == ORDER_STORED and dump.format == "torch"
        report = analyze_dump(dump, weight_amplitude=W)
    assert "skipped 1 array" in capsys.readouterr().err
    same_as_in_memory(report, {f"acts/{k}": v for k, v in layers.items()}, labels, weight_amplitude=W)
    # labels as a plain list, bfloat16 activations
    torch.save({"x": torch.from_numpy(layers["stem"]).bfloat16(), "labels": labels.tolist()},
               tmp_path / "bf16.pt")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    report = analyze_dump(tmp_path / "bf16.pt", weight_amplitude=W, update_format="activations")
    same_as_in_memory(report, {"x": layers["stem"].astype(ml_dtypes.bfloat16)}, labels,
                      weight_amplitude=W, update_format="activations")


def test_torch_files_that_are_no_dict_of_tensors_are_one_line(tmp_path, labels):
    torch = pytest.importorskip("torch")
    torch.save(torch.zeros(N, 2), tmp_path / "tensor.pt")
    with pytest.raises(BundleLabError) as excinfo:
        open_dump(tmp_path / "tensor.pt")
    assert "not a dict of tensors" in one_line(excinfo)
    torch.save({"x": torch.zeros(N, 2), "labels": torch.from_numpy(labels)}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(BundleLabError) as excinfo:
        open_dump(tmp_path / "old.pt")
    assert "zip format" in one_line(excinfo)


def test_without_torch_a_pt_dump_gets_an_install_hint(tmp_path, labels, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.save({"x": torch.zeros(N, 2), "labels": torch.from_numpy(labels)}, tmp_path / "d.pt")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(BundleLabError) as excinfo:
        open_dump(tmp_path / "d.pt")
    message = one_line(excinfo)
    assert "pip install torch" in message and "safetensors" in message


# -- update format, sources, the w warning -------------------------------------------------------


def test_update_format_and_sources_of_a_dump(tmp_path, rng, labels):
    acts = (rng.standard_normal((N, 8)) * 1e-3).astype(np.float16)
    save_dump(tmp_path / "half.npz", {"half": acts}, labels)
    for update_format in ("auto", "activations", "float16", "float32", "float64"):
        report = analyze_dump(tmp_path / "half.npz", update_format=update_format, weight_amplitude=W)
        same_as_in_memory(report, {"half": acts}, labels, update_format=update_format,
                          weight_amplitude=W)
    # at w=0.5 float16 cannot resolve updates of 1e-3 * 1.6e-5: one bundle; float32 can
    assert analyze_dump(tmp_path / "half.npz", update_format="activations", weight_amplitude=W)[0].n_bundles == 1
    auto = analyze_dump(tmp_path / "half.npz", weight_amplitude=W)
    assert auto[0].update_format == "float32" and auto[0].n_bundles > 1
    assert auto.params["sources"]["update_format"] == "assumed (float16 activations)"
    assert auto.params["sources"]["weight_amplitude"] == "given"
    with pytest.warns(UserWarning, match="w was not given"):
        report = analyze_dump(tmp_path / "half.npz")
    assert report.params["sources"]["weight_amplitude"] == "default (not given)"


def test_analyze_warns_once_when_w_was_not_given(tmp_path, rng, labels, capsys):
    save_dump(tmp_path / "d.npz", network(rng, ["linear_1", "relu_1", "linear_2"]), labels)
    code, out, err = cli(capsys, "analyze", tmp_path / "d.npz", "-f", "json")
    assert code == 0 and err.count(W_NOT_GIVEN) == 1 and err.count("\n") == 1
    params = json.loads(out)["params"]
    assert params["sources"] == {"learning_rate": "default", "batch_size": "default",
                                 "weight_amplitude": "default (not given)", "update_format": "default"}
    code, out, err = cli(capsys, "analyze", tmp_path / "d.npz", "-f", "json", "--weight-amplitude", "2",
                         "--lr", "0.01", "--update-format", "float64")
    assert code == 0 and W_NOT_GIVEN not in err
    params = json.loads(out)["params"]
    assert params["update_format"] == "float64" and params["sources"] == {
        "learning_rate": "given", "batch_size": "default", "weight_amplitude": "given",
        "update_format": "given"}
    code, out, err = cli(capsys, "analyze", tmp_path / "d.npz", "--weight-amplitude", "2")
    assert "w=2 (given)" in out and "float32 updates" in out and "layer order: stored in the file" in out
