"""Data set loaders: every format written small into tmp_path, then loaded and checked."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from bundlelab._errors import BundleLabError
from bundlelab.datasets import DATASETS, Dataset, load_dataset


def check_dataset(data, *, input_shape, n_train, n_test, n_classes):
    assert isinstance(data, Dataset)
    assert data.input_shape == input_shape and data.n_classes == n_classes
    for x, y, n in ((data.x_train, data.y_train, n_train), (data.x_test, data.y_test, n_test)):
        assert x.shape == (n,) + input_shape and x.dtype == np.float32 and x.flags.c_contiguous
        assert y.shape == (n,) and y.dtype == np.int64
        assert y.min() >= 0 and y.max() < n_classes
    # standardised per channel with the training split's statistics
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=(0, 2, 3)), 1, atol=1e-4)


def expected_standardised(raw_train, raw):
    """The reference: float64 statistics per channel of the raw training images."""
    train = raw_train.astype(np.float64)
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True)
    return ((raw.astype(np.float64) - mean) / std).astype(np.float32)


# -- digits ----------------------------------------------------------------------------------
def test_digits_split_and_shapes():
    data = load_dataset("digits")
    check_dataset(data, input_shape=(1, 8, 8), n_train=1347, n_test=450, n_classes=10)
    assert data.flip is False and data.classes == tuple("0123456789")
    # sklearn's stratified split with random_state=0, in the original sample order
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    _, test = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=0,
                               stratify=labels)
    np.testing.assert_array_equal(data.y_test, labels[np.sort(test)])
    assert np.bincount(data.y_test).min() >= 43
    assert "digits" in DATASETS


def test_subset_is_seeded_sorted_and_independent_per_split():
    data = load_dataset("digits")
    a = data.subset(100, 30, seed=1)
    b = data.subset(100, 30, seed=1)
    c = data.subset(100, 30, seed=2)
    assert len(a.y_train) == 100 and len(a.y_test) == 30 and a.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    # the test subset does not depend on the training subset
    np.testing.assert_array_equal(data.subset(None, 30, seed=1).x_test, a.x_test)
    # sorted by index: the subset keeps the original order
    rows = [np.flatnonzero((data.x_train == row).all(axis=(1, 2, 3)))[0] for row in a.x_train]
    assert rows == sorted(rows)
    with pytest.raises(BundleLabError, match="n_train=5000"):
        data.subset(5000)
    with pytest.raises(BundleLabError, match="n_test"):
        data.subset(n_test=0)


def test_load_dataset_subset_uses_the_subset_statistics():
    data = load_dataset("digits", n_train=200, n_test=50, seed=3)
    check_dataset(data, input_shape=(1, 8, 8), n_train=200, n_test=50, n_classes=10)
    again = load_dataset("digits", n_train=200, n_test=50, seed=3)
    np.testing.assert_array_equal(data.x_test, again.x_test)


# -- mnist -----------------------------------------------------------------------------------
def write_idx(path, array, *, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    content = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(content)
    else:
        path.write_bytes(content)


def write_mnist(folder, rng, *, gz=False, dotted=False, n_train=12, n_test=5):
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10,
    }
    for name, array in arrays.items():
        file_name = name.replace("-idx", ".idx") if dotted else name
        write_idx(folder / file_name, array, gz=gz)
    return arrays


@pytest.mark.parametrize("gz, dotted", [(False, False), (True, False), (False, True)])
def test_mnist_idx(tmp_path, rng, gz, dotted):
    arrays = write_mnist(tmp_path, rng, gz=gz, dotted=dotted)
    data = load_dataset(f"mnist:{tmp_path}")
    check_dataset(data, input_shape=(1, 28, 28), n_train=12, n_test=5, n_classes=10)
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    train = arrays["train-images-idx3-ubyte"][:, None]
    test = arrays["t10k-images-idx3-ubyte"][:, None]
    np.testing.assert_allclose(data.x_train, expected_standardised(train, train), atol=1e-5)
    # the test split uses the training statistics
    np.testing.assert_allclose(data.x_test, expected_standardised(train, test), atol=1e-5)
    assert data.flip is False


def test_mnist_truncated_file(tmp_path, rng):
    write_mnist(tmp_path, rng)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleLabError, match="truncated"):
        load_dataset("mnist", tmp_path)


def test_mnist_truncated_gzip(tmp_path, rng):
    write_mnist(tmp_path, rng, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(BundleLabError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_mnist_wrong_type_code(tmp_path, rng):
    write_mnist(tmp_path, rng)
    path = tmp_path / "train-labels-idx1-ubyte"
    content = bytearray(path.read_bytes())
    content[2] = 0x0D
    path.write_bytes(bytes(content))
    with pytest.raises(BundleLabError, match="0x0D"):
        load_dataset("mnist", tmp_path)


def test_mnist_missing_file_names_it(tmp_path, rng):
    write_mnist(tmp_path, rng)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(BundleLabError, match="'t10k-labels-idx1-ubyte'") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


# -- cifar10 ---------------------------------------------------------------------------------
def cifar_arrays(rng, n_per_batch=4, n_test=6):
    train = rng.integers(0, 256, (5 * n_per_batch, 3072)).astype(np.uint8)
    # distinct channel levels, so a per-channel (not global) standardisation is visible
    train[:, :1024] //= 4
    return train, np.arange(5 * n_per_batch) % 10, rng.integers(0, 256, (n_test, 3072)).astype(
        np.uint8), np.arange(n_test) % 10


def write_cifar_py(folder, rng, *, meta=True):
    folder.mkdir(parents=True)
    x_train, y_train, x_test, y_test = cifar_arrays(rng)
    batches = np.split(x_train, 5), np.split(y_train, 5)
    for i, (x, y) in enumerate(zip(*batches), start=1):
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": y.tolist(),
                 b"data": x, b"filenames": [b"img%d.png" % j for j in range(len(y))]}
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": y_test.tolist(),
                     b"data": x_test, b"filenames": [b"t.png"] * len(y_test)}, f, protocol=2)
    if meta:
        names = [b"plane", b"car", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
                 b"truck"]
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": names, b"num_vis": 3072, b"num_cases_per_batch": 4},
                        f, protocol=2)
    return x_train, y_train, x_test, y_test


def check_cifar(data, x_train, y_train, x_test, y_test):
    check_dataset(data, input_shape=(3, 32, 32), n_train=len(y_train), n_test=len(y_test),
                  n_classes=10)
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.y_test, y_test)
    train, test = x_train.reshape(-1, 3, 32, 32), x_test.reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(data.x_train, expected_standardised(train, train), atol=1e-5)
    np.testing.assert_allclose(data.x_test, expected_standardised(train, test), atol=1e-5)
    assert data.flip is True


@pytest.mark.parametrize("inside", [True, False])
def test_cifar_python_batches(tmp_path, rng, inside):
    folder = tmp_path / "cifar-10-batches-py"
    arrays = write_cifar_py(folder, rng)
    data = load_dataset("cifar10", tmp_path if inside else folder)
    check_cifar(data, *arrays)
    assert data.classes[:2] == ("plane", "car")


def test_cifar_str_keys_and_default_names(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x_train, y_train, x_test, y_test = cifar_arrays(rng)
    for i, (x, y) in enumerate(zip(np.split(x_train, 5), np.split(y_train, 5)), start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x, "labels": y}, f)  # str keys, numpy labels, protocol 5
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": x_test, "labels": y_test}, f)
    data = load_dataset("cifar10", tmp_path)
    check_cifar(data, x_train, y_train, x_test, y_test)
    assert data.classes[0] == "airplane"


def test_cifar_binary_batches_are_preferred(tmp_path, rng):
    write_cifar_py(tmp_path / "cifar-10-batches-py", rng)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    x_train, y_train, x_test, y_test = cifar_arrays(rng)
    for i, (x, y) in enumerate(zip(np.split(x_train, 5), np.split(y_train, 5)), start=1):
        np.hstack([y[:, None].astype(np.uint8), x]).tofile(folder / f"data_batch_{i}.bin")
    np.hstack([y_test[:, None].astype(np.uint8), x_test]).tofile(folder / "test_batch.bin")
    data = load_dataset(f"cifar10:{tmp_path}")
    check_cifar(data, x_train, y_train, x_test, y_test)
    assert data.classes[0] == "airplane"
    with open(folder / "test_batch.bin", "ab") as f:
        f.write(b"\x01\x02")
    with pytest.raises(BundleLabError, match="3073-byte records"):
        load_dataset("cifar10", folder)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_malicious_pickle_is_refused(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder, rng)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(BundleLabError, match=r"refusing .*'(posix|nt|os)\.system'"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    # the same file through plain pickle would have run the command: the test is meaningful
    with open(folder / "data_batch_3", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_cifar_missing_batch_is_named(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder, rng)
    (folder / "data_batch_4").unlink()
    with pytest.raises(BundleLabError, match="'data_batch_4'") as info:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_5" in str(info.value) and str(folder) in str(info.value)


def test_cifar_empty_folder(tmp_path):
    with pytest.raises(BundleLabError, match="cifar-10-batches-py.*cifar-10-batches-bin"):
        load_dataset("cifar10", tmp_path)


# -- svhn ------------------------------------------------------------------------------------
def test_svhn_mat_files(tmp_path, rng):
    savemat = pytest.importorskip("scipy.io").savemat
    x_train = rng.integers(0, 256, (32, 32, 3, 7)).astype(np.uint8)
    y_train = np.array([[10], [1], [2], [3], [10], [9], [5]], dtype=np.uint8)
    x_test = rng.integers(0, 256, (32, 32, 3, 3)).astype(np.uint8)
    y_test = np.array([[4], [10], [8]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x_train, "y": y_train})
    savemat(tmp_path / "test_32x32.mat", {"X": x_test, "y": y_test})
    data = load_dataset(f"svhn:{tmp_path}")
    check_dataset(data, input_shape=(3, 32, 32), n_train=7, n_test=3, n_classes=10)
    np.testing.assert_array_equal(data.y_train, [0, 1, 2, 3, 0, 9, 5])
    np.testing.assert_array_equal(data.y_test, [4, 0, 8])
    train = x_train.transpose(3, 2, 0, 1)
    np.testing.assert_allclose(data.x_train, expected_standardised(train, train), atol=1e-5)
    np.testing.assert_allclose(
        data.x_test, expected_standardised(train, x_test.transpose(3, 2, 0, 1)), atol=1e-5)
    assert data.flip is False
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(BundleLabError, match="'test_32x32.mat'"):
        load_dataset("svhn", tmp_path)


# -- image folders ---------------------------------------------------------------------------
def write_image_folder(root, rng, *, test_name="val"):
    image = pytest.importorskip("PIL.Image")
    colours = {"cat": (200, 10, 10), "dog": (10, 200, 10), "emu": (10, 10, 200)}
    for split, count in (("train", 3), (test_name, 1)):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                # non-square, so resize + center crop is exercised; a noisy constant colour
                pixels = np.clip(np.array(colour) + rng.integers(-5, 6, (20, 30, 3)), 0, 255)
                image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return list(colours)


@pytest.mark.parametrize("test_name", ["val", "test"])
def test_image_folder(tmp_path, rng, test_name):
    classes = write_image_folder(tmp_path, rng, test_name=test_name)
    data = load_dataset("imagefolder", tmp_path, image_size=16)
    check_dataset(data, input_shape=(3, 16, 16), n_train=9, n_test=3, n_classes=3)
    assert data.classes == tuple(classes) and data.flip is True
    np.testing.assert_array_equal(data.y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(data.y_test, [0, 1, 2])
    # the red channel is high for cats only, in both splits (same statistics)
    assert (data.x_train[:3, 0] > 0).all() and (data.x_train[3:, 0] < 0).all()
    assert (data.x_test[0, 0] > 0).all() and (data.x_test[1:, 0] < 0).all()
    default = load_dataset(f"imagenette:{tmp_path}", n_train=4, n_test=2, seed=1)
    assert default.input_shape == (3, 64, 64) and len(default.y_train) == 4
    assert default.name == "imagenette" and len(default.y_test) == 2


def test_image_folder_unknown_test_class(tmp_path, rng):
    write_image_folder(tmp_path, rng)
    (tmp_path / "val" / "yak").mkdir()
    with pytest.raises(BundleLabError, match="'yak'"):
        load_dataset("imagefolder", tmp_path)


def test_image_folder_missing_train(tmp_path):
    with pytest.raises(BundleLabError, match="no 'train' folder"):
        load_dataset("imagefolder", tmp_path)


# -- names and arguments ---------------------------------------------------------------------
def test_unknown_name_lists_the_names():
    with pytest.raises(BundleLabError) as info:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "imagefolder"])
def test_file_based_sets_need_a_folder(name):
    with pytest.raises(BundleLabError, match=f"'{name}:/path"):
        load_dataset(name)


def test_missing_folder(tmp_path):
    with pytest.raises(BundleLabError, match="does not exist"):
        load_dataset(f"mnist:{tmp_path / 'nowhere'}")


@pytest.mark.parametrize("kwargs, match", [
    ({"n_train": 0}, "n_train"),
    ({"n_test": 2.5}, "n_test"),
    ({"seed": -1}, "seed"),
    ({"image_size": 32}, "image_size"),
    ({"root": "/tmp"}, "no folder"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(BundleLabError, match=match):
        load_dataset("digits", **kwargs)


def test_folder_given_twice(tmp_path):
    with pytest.raises(BundleLabError, match="twice"):
        load_dataset(f"mnist:{tmp_path}", tmp_path)
