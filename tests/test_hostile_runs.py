"""Hostile and broken input to runs and outputs (issue 10): state files that name files outside
their folder or are malformed, output paths that are links, pipes or devices, leftovers of
killed writes, read-only folders, absurd budgets, and a kill at every rename of a training run
and of an auto-tune."""

import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from bundlelab import BundleLabError
from bundlelab._atomic import atomic_open, atomic_path, atomic_write_text
from bundlelab.autotune import autotune
from bundlelab.cli import run as cli_run
from bundlelab.datasets import load_dataset
from bundlelab.search import SearchConfig, default_lambdas, sweep
from bundlelab.search._search import BudgetedSearch, validation_split
from bundlelab.spec import fully_connected, to_dict
from bundlelab.training import RunFolder, TrainConfig, Training, fit

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=256, n_test=100)


CONFIG = TrainConfig(epochs=3, optimizer="adamw", n_samples=128, device="cpu")


def small(data):
    return fully_connected(8, 2, input_shape=data.input_shape)


def cli(capsys, *argv):
    code = cli_run([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(error) -> str:
    text = str(error.value if hasattr(error, "value") else error)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def two_epochs(digits, tmp_path_factory):
    """A run folder holding the first two of three epochs."""
    folder = tmp_path_factory.mktemp("two-epochs")
    with Training(small(digits), digits, config=CONFIG, directory=folder) as run:
        run.train_epoch()
        run.train_epoch()
    return folder


def edited_copy(source, target, edit):
    shutil.copytree(source, target)
    state = json.loads((target / "run.json").read_text())
    edit(state)
    (target / "run.json").write_text(json.dumps(state))
    return target


# -- a state file names only files of its own folder, and is checked field by field ----------


@pytest.mark.parametrize("name", ["../victim/precious.pt", "/etc/passwd", "sub/checkpoint.pt",
                                  "..", ""])
def test_a_checkpoint_outside_the_folder_is_refused_and_left_alone(digits, two_epochs, tmp_path,
                                                                   name):
    victim = tmp_path / "victim" / "precious.pt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    folder = edited_copy(two_epochs, tmp_path / "run", lambda s: s.update(checkpoint=name))
    with pytest.raises(BundleLabError) as error:
        Training(small(digits), digits, config=CONFIG, directory=folder)
    assert "not a file of its own folder" in one_line(error)
    assert victim.read_bytes() == b"precious"


def test_a_checkpoint_that_is_a_link_out_of_the_folder_is_not_read(digits, two_epochs, tmp_path):
    victim = tmp_path / "precious.pt"
    victim.write_bytes(b"precious")
    folder = edited_copy(two_epochs, tmp_path / "run", lambda s: None)
    checkpoint = json.loads((folder / "run.json").read_text())["checkpoint"]
    (folder / checkpoint).unlink()
    (folder / checkpoint).symlink_to(victim)
    with pytest.raises(BundleLabError) as error:
        Training(small(digits), digits, config=CONFIG, directory=folder)
    assert "which is not a regular file" in one_line(error)
    assert victim.read_bytes() == b"precious"


def test_epochs_done_without_a_checkpoint_are_refused_not_restarted(digits, two_epochs, tmp_path):
    # before: the two epochs were kept in the history and training went on from fresh weights
    folder = edited_copy(two_epochs, tmp_path / "run", lambda s: s.update(checkpoint=None))
    with pytest.raises(BundleLabError) as error:
        Training(small(digits), digits, config=CONFIG, directory=folder)
    assert "lists 2 epochs done but names no checkpoint" in one_line(error)


def _set_record(index, **fields):
    return lambda s: s["history"][index].update(fields)


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s.update(history="x"), "'history' must be a list of 2 epoch records, got 'x'"),
    (lambda s: s.update(history=None), "'history' must be a list of 2 epoch records, got None"),
    (lambda s: s.pop("history"), "'history' must be a list of 2 epoch records"),
    (lambda s: s.update(history=[5, 6]), "'history[0]' must be the record of epoch 1, got 5"),
    (lambda s: s.update(epochs_done="2"), "'epochs_done' must be an int >= 0, got '2'"),
    (lambda s: s.pop("epochs_done"), "'epochs_done' must be an int >= 0, got None"),
    (lambda s: s.update(epochs_done=3), "'history' must be a list of 3 epoch records"),
    (_set_record(1, epoch=7), "'history[1]' must be the record of epoch 2"),
    (_set_record(1, train_loss="low"), "'history[1].train_loss' must be a number, got 'low'"),
    (_set_record(0, test_accuracy=True), "'history[0].test_accuracy' must be a number"),
    (_set_record(0, report=[1, 2]), "'history[0].report' must be a bundle report or null"),
    (_set_record(0, report={"layers": "x"}), "'history[0].report' must be a bundle report"),
    (_set_record(0, extra=1), "'history[0]' must be a record of the fields epoch, report"),
    (lambda s: s["history"][0].pop("seconds"), "'history[0]' must be a record of the fields"),
    (lambda s: s.update(checkpoint=5), "names the checkpoint 5, not a file of its own folder"),
    (lambda s: s.update(checkpoint="checkpoint-0009.pt"),
     "names the checkpoint 'checkpoint-0009.pt', which is missing"),
])
def test_a_malformed_run_state_is_one_line_naming_the_field(digits, two_epochs, tmp_path, edit,
                                                            fragment):
    # before: AttributeError/TypeError tracebacks ("internal error" in the CLI), or accepted
    folder = edited_copy(two_epochs, tmp_path / "run", edit)
    with pytest.raises(BundleLabError) as error:
        Training(small(digits), digits, config=CONFIG, directory=folder)
    assert fragment in one_line(error)


def test_the_cli_says_which_field_of_run_json_is_malformed(two_epochs, tmp_path, capsys):
    folder = edited_copy(two_epochs, tmp_path / "run", lambda s: s.update(history=[{}, {}]))
    code, _, err = cli(capsys, "train", "fc-2x8", "--epochs", "3", "--optimizer", "adamw",
                       "--n-train", "256", "--n-test", "100", "--n-samples", "128",
                       "--device", "cpu", "--out", folder)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "'history[0]' must be the record of epoch 1" in err


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s.update(restarts="x"), "'restarts' must be a non-empty list of restarts"),
    (lambda s: s.update(restarts=[]), "'restarts' must be a non-empty list of restarts"),
    (lambda s: s["restarts"][0].update(epochs="1"), "'restarts[0].epochs' must be an int >= 0"),
    (lambda s: s["restarts"][0].pop("epoch"), "'restarts[0]' must be a restart of the fields"),
    (lambda s: s["restarts"][0].update(pruned_layer=5), "'restarts[0].pruned_layer' must be"),
    (lambda s: s["restarts"][0].update(spec={"name": "other"}),
     "'restarts[0].spec' must be the auto-tune's spec"),
])
def test_a_malformed_autotune_state_is_one_line_naming_the_field(digits, tmp_path, edit, fragment):
    spec = small(digits)
    options = {"backend": "torch", "spec": to_dict(spec), "config": CONFIG.to_dict(),
               "check_epochs": 1}
    state = {**options, "restarts": [{"spec": to_dict(spec), "epochs": 1, "epoch": 1,
                                      "pruned_layer": "dense2", "entropy": 0.5},
                                     {"spec": to_dict(spec), "epochs": 0, "epoch": 0,
                                      "pruned_layer": None, "entropy": None}]}
    edit(state)
    with RunFolder(tmp_path, "autotune.json", "bundlelab.autotune/1", epochs=False) as folder:
        folder.write(state)
    with pytest.raises(BundleLabError) as error:
        autotune(spec, digits, config=CONFIG, directory=tmp_path, check_epochs=1)
    assert fragment in one_line(error)


@pytest.fixture(scope="module")
def searched(digits, tmp_path_factory):
    from bundlelab.search import resnet_fabric

    fabric = resnet_fabric(1, k=2, filters=(4, 8), input_shape=digits.input_shape)
    settings = SearchConfig(budget=1e9, warmup_epochs=1, search_epochs=1)
    folder = tmp_path_factory.mktemp("search")
    with BudgetedSearch(fabric, digits, settings, config=CONFIG, directory=folder) as run:
        run.train_epoch()
    return fabric, settings, folder


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["history"][0].update(cost="cheap"), "'history[0].cost' must be a number or null"),
    (lambda s: s["history"][0].update(probabilities=[0.5]),
     "'history[0].probabilities' must be a list of"),
    (lambda s: s["history"][0].update(warmup="yes"), "'history[0].warmup' must be a bool"),
    (lambda s: s["history"][0].pop("gates_on"), "'history[0]' must be a record of the fields"),
    (lambda s: s.update(checkpoint=None), "lists 1 epochs done but names no checkpoint"),
    (lambda s: s.update(checkpoint="../x.pt"), "not a file of its own folder"),
])
def test_a_malformed_search_state_is_one_line_naming_the_field(digits, searched, tmp_path, edit,
                                                               fragment):
    fabric, settings, source = searched
    folder = tmp_path / "search"
    shutil.copytree(source, folder)
    state = json.loads((folder / "search.json").read_text())
    edit(state)
    (folder / "search.json").write_text(json.dumps(state))
    with pytest.raises(BundleLabError) as error:
        BudgetedSearch(fabric, digits, settings, config=CONFIG, directory=folder)
    assert fragment in one_line(error)


# -- leftovers of a killed write are removed by the next run of the folder --------------------


def test_leftovers_of_killed_writes_are_removed_by_the_next_run_and_nothing_else(
        digits, two_epochs, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(two_epochs, folder)
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"keep")
    leftovers = [".run.json.k2j4x_0a.tmp", ".checkpoint-0003.pt.tmp", "checkpoint-0001.pt",
                 "checkpoint-0003.pt", ".weights-ab12cd34.pt", ".result.json.0123abcd.tmp",
                 ".entropy.png.zz99zz99.png", ".write-probe.abcdefgh.tmp"]
    for name in leftovers:
        (folder / name).write_bytes(b"half")
    (folder / ".spec.yaml.qqqqqqqq.tmp").symlink_to(outside)  # a link: removed, not followed
    kept = ["notes.txt", ".hidden", ".run.json.tmp", "checkpoint.pt", "my-checkpoint-0001.pt"]
    for name in kept:
        (folder / name).write_bytes(b"mine")
    (folder / "sub").mkdir()
    (folder / "sub" / ".run.json.k2j4x_0a.tmp").write_bytes(b"below")
    (folder / "checkpoint-0005.pt.d").mkdir()  # a folder of that name is not a checkpoint
    with Training(small(digits), digits, config=CONFIG, directory=folder) as run:
        assert run.epochs_done == 2
        left = sorted(os.listdir(folder))
    named = json.loads((folder / "run.json").read_text())["checkpoint"]
    assert named == "checkpoint-0002.pt"
    assert left == sorted([".lock", "run.json", "spec.yaml", named, "sub", "checkpoint-0005.pt.d",
                           *kept])
    assert outside.read_bytes() == b"keep"
    assert (folder / "sub" / ".run.json.k2j4x_0a.tmp").exists()


def test_a_run_that_cannot_resume_removes_nothing(digits, two_epochs, tmp_path):
    folder = edited_copy(two_epochs, tmp_path / "run", lambda s: s.update(history=None))
    (folder / ".run.json.k2j4x_0a.tmp").write_bytes(b"half")
    with pytest.raises(BundleLabError):
        Training(small(digits), digits, config=CONFIG, directory=folder)
    assert (folder / "checkpoint-0002.pt").exists()
    assert (folder / ".run.json.k2j4x_0a.tmp").exists()


# -- output paths: links resolved, pipes and devices written through, files atomic -----------


def test_a_link_stays_a_link_and_its_target_gets_the_content(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "report.txt"
    target.write_text("old")
    link = tmp_path / "report.txt"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path / "real")) == ["report.txt"]
    assert sorted(os.listdir(tmp_path)) == ["real", "report.txt"]


def test_a_dangling_link_creates_its_target(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "made.json")
    atomic_write_text(link, "{}")
    assert link.is_symlink() and (tmp_path / "made.json").read_text() == "{}"


def test_a_fifo_is_written_through_to_its_reader(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "through the pipe\n")
    reader.join(timeout=30)
    assert got == ["through the pipe\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["pipe"]


def _device(tmp_path, name, minor):
    """A copy of /dev/null (minor 3) or /dev/full (minor 7) in tmp_path where this process may
    make device nodes (root), so a regression cannot replace the machine's own; else the
    machine's device (which this process cannot replace)."""
    path = tmp_path / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        with open(path, "wb"):
            pass
    except OSError:
        if os.access("/dev", os.W_OK):
            pytest.skip("cannot make a device node here, and /dev is writable")
        return f"/dev/{name}"
    return path


def test_dev_null_is_written_through_and_stays_a_device(tmp_path):
    null = _device(tmp_path, "null", 3)
    atomic_write_text(null, "x" * 100_000)
    with atomic_open(null, "wb") as handle:
        handle.write(b"bytes")
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_dev_full_is_one_line_and_stays_a_device(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo saves its activations in the working folder
    full = _device(tmp_path, "full", 7)
    with pytest.raises(BundleLabError) as error:
        atomic_write_text(full, "x")
    assert one_line(error) == f"cannot write {full}: No space left on device"
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    code, out, err = cli(capsys, "analyze", "--demo", "-f", "json", "-o", full)
    assert code == 2 and err.endswith(f"\nerror: cannot write {full}: No space left on device\n")
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_the_cli_writes_through_a_link_and_to_dev_null(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    null = _device(tmp_path, "null", 3)
    code, _, err = cli(capsys, "analyze", "--demo", "-f", "json", "-o", null)
    assert code == 0, err
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    (tmp_path / "reports").mkdir()
    link = tmp_path / "report.json"
    link.symlink_to(tmp_path / "reports" / "demo.json")
    code, _, err = cli(capsys, "analyze", "--demo", "-o", link)
    assert code == 0, err
    assert link.is_symlink() and json.loads((tmp_path / "reports" / "demo.json").read_text())


def test_a_regular_file_is_still_replaced_atomically(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_open(path) as handle:
        handle.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["result.json"]
    inode = os.stat(path).st_ino
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and os.stat(path).st_ino != inode  # a rename, not a rewrite
    with atomic_path(path) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp != str(path)
        with open(tmp, "w") as handle:
            handle.write("by path")
    assert path.read_text() == "by path" and os.listdir(tmp_path) == ["result.json"]


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.mkdir(), "it is a folder"),
    (lambda p: (os.symlink(p.name + "2", p), os.symlink(p.name, str(p) + "2")),
     "Too many levels of symbolic links"),
])
def test_outputs_that_cannot_be_written_are_one_line(tmp_path, make, fragment):
    path = tmp_path / "out"
    make(path)
    with pytest.raises(BundleLabError) as error:
        atomic_write_text(path, "x")
    assert fragment in one_line(error)


# -- read-only folders -----------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """A function making a folder read-only (a read-only bind mount as root, whom permissions
    do not stop; chmod otherwise), undone at the end."""
    undo = []

    def make(folder):
        folder = str(folder)
        if os.geteuid() != 0:
            os.chmod(folder, 0o555)
            undo.append(lambda: os.chmod(folder, 0o755))
            return
        mount = shutil.which("mount")
        done = mount and subprocess.run([mount, "--bind", folder, folder],
                                        capture_output=True).returncode == 0
        if not done:
            pytest.skip("root cannot make a folder read-only here (no bind mount)")
        undo.append(lambda: subprocess.run(["umount", folder], capture_output=True))
        if subprocess.run([mount, "-o", "remount,bind,ro", folder],
                          capture_output=True).returncode:
            pytest.skip("root cannot remount a folder read-only here")

    yield make
    for step in reversed(undo):
        step()


def test_a_read_only_folder_is_refused_before_any_epoch(digits, tmp_path, read_only,
                                                       monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("")  # left by an earlier run: the lock alone proves nothing
    read_only(folder)
    trained = []
    monkeypatch.setattr(Training, "train_epoch", lambda self, **kw: trained.append(1))
    with pytest.raises(BundleLabError) as error:
        fit(small(digits), digits, config=CONFIG, directory=folder)
    assert one_line(error).startswith(f"cannot write in {folder}:")
    assert not trained


def test_a_finished_run_in_a_read_only_folder_is_still_reported(digits, tmp_path, read_only,
                                                               capsys):
    folder = tmp_path / "run"
    config = CONFIG.replace(epochs=2)
    done = fit(small(digits), digits, config=config, directory=folder)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    read_only(folder)
    again = fit(small(digits), digits, config=config, directory=folder)
    assert [r.to_dict() for r in again.history] == [r.to_dict() for r in done.history]
    assert again.test_accuracy == done.test_accuracy
    assert again.checkpoint_mb == done.checkpoint_mb
    code, out, err = cli(capsys, "train", "fc-2x8", "--epochs", "2", "--optimizer", "adamw",
                         "--n-train", "256", "--n-test", "100", "--n-samples", "128",
                         "--device", "cpu", "--out", folder)
    assert code == 0, err  # the same run: read and reported, nothing written
    assert "fc-2x8-relu" in out
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before


def test_an_unfinished_run_in_a_read_only_folder_is_one_line(digits, two_epochs, tmp_path,
                                                            read_only):
    folder = tmp_path / "run"
    shutil.copytree(two_epochs, folder)
    read_only(folder)
    with pytest.raises(BundleLabError) as error:
        fit(small(digits), digits, config=CONFIG, directory=folder)
    assert f"cannot write in {folder}, whose run has trained 2 of its 3 epochs" in one_line(error)


# -- absurd options of runs and searches ------------------------------------------------------


@pytest.mark.parametrize("budget", [1e-320, 5e-324, 1e-309])
def test_budgets_too_small_for_a_lambda_are_one_line(digits, budget):
    # before: OverflowError (34, 'Numerical result out of range')
    with pytest.raises(BundleLabError, match="must be a float >= 2.22507e-308"):
        SearchConfig(budget=budget)
    with pytest.raises(BundleLabError, match="must be a float >= 2.22507e-308"):
        default_lambdas(budget)
    with pytest.raises(BundleLabError, match="must be a float >= 2.22507e-308"):
        sweep(small(digits), digits, budgets=[budget])
    assert SearchConfig(budget=1e-300).lam_value == 1e300


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf"), "1", None])
def test_budgets_that_are_no_positive_finite_float_are_one_line(budget):
    with pytest.raises(BundleLabError) as error:
        SearchConfig(budget=budget)
    assert "'budget'" in one_line(error)


@pytest.mark.parametrize("changes", [{"validation_fraction": "0.1"},
                                     {"validation_fraction": float("nan")},
                                     {"validation_fraction": 1.0}])
def test_validation_fractions_are_checked(changes):
    with pytest.raises(BundleLabError):
        SearchConfig(budget=1.0, **changes)


@pytest.mark.parametrize("seed", [2**63, 2**64, 2**64 + 5, -1])
def test_seeds_past_64_bits_are_one_line(digits, seed):
    with pytest.raises(BundleLabError, match="'seed'"):
        CONFIG.replace(seed=seed)
    with pytest.raises(BundleLabError, match="'seed'"):
        validation_split(digits, seed=seed)


@pytest.mark.parametrize("argv, fragment", [
    (["search", "conv-fabric-2", "--budget", "1e6", "--width-multiplier", "nan"],
     "The '--width-multiplier' option must be a float in (0, inf). Got nan instead."),
    (["search", "resnet-fabric-8", "--budget", "1e6", "--width-multiplier", "inf"],
     "The '--width-multiplier' option must be a float in (0, inf). Got inf instead."),
    (["search", "resnet-fabric-8", "--budget", "1e-320"],
     "The '--budget' option must be a float >= 2.22507e-308"),
    (["search", "resnet-fabric-8", "--budget", "1e6", "--budget", "nan"],
     "The '--budget' option must be a float in (0, inf). Got nan instead."),
    (["search", "resnet-fabric-8", "--budget", "1e6", "--seed", str(2**64)],
     "The '--seed' option must be an int in [0, 9223372036854775807]"),
    (["train", "fc-2x8", "--width-multiplier", "nan"], "'--width-multiplier'"),
    (["train", "fc-2x8", "--width-multiplier", "inf"], "'--width-multiplier'"),
    (["autotune", "fc-2x8", "--width-multiplier", "nan"], "'--width-multiplier'"),
    (["train", "fc-2x8", "--seed", str(2**64)], "'--seed' option must be an int in [0, "),
])
def test_absurd_cli_options_are_one_line_before_any_data_is_loaded(tmp_path, capsys, argv,
                                                                  fragment):
    code, _, err = cli(capsys, *argv, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert not (tmp_path / "out").exists()


# -- an auto-tune killed after its final run's last epoch, before recording it ---------------


def test_an_autotune_killed_before_recording_its_finished_final_run_resumes_exactly(
        digits, tmp_path, monkeypatch):
    # before: autotune.json kept the final restart with the epochs recorded before the crash
    spec = fully_connected(8, 40, input_shape=digits.input_shape)
    config = CONFIG.replace(epochs=2)
    expected = autotune(spec, digits, config=config, directory=tmp_path / "straight")
    original = RunFolder.write
    final_epochs = expected.restarts[-1].epochs

    def dies_recording_the_final_epoch(self, state):
        last = state.get("restarts", [{}])[-1]
        if last.get("pruned_layer") is None and last.get("epochs") == final_epochs:
            raise KeyboardInterrupt
        return original(self, state)

    monkeypatch.setattr(RunFolder, "write", dies_recording_the_final_epoch)
    with pytest.raises(KeyboardInterrupt):
        autotune(spec, digits, config=config, directory=tmp_path / "killed")
    monkeypatch.setattr(RunFolder, "write", original)
    resumed = autotune(spec, digits, config=config, directory=tmp_path / "killed")
    assert [(r.epochs, r.epoch) for r in resumed.restarts] == \
        [(r.epochs, r.epoch) for r in expected.restarts]
    for name in ("autotune.json", "evolution.csv"):
        assert (tmp_path / "killed" / name).read_text() == \
            (tmp_path / "straight" / name).read_text()


# -- a kill at every rename: the resumed run ends exactly as an uninterrupted one -------------

#: Runs in one process under ``strace -f -e inject=rename:signal=SIGKILL:when=LIMIT``.  strace
#: counts a syscall's calls per process, so a forked child that first renames a scratch file
#: LIMIT - k times is killed at its own k-th rename: one import for every kill point.  A first
#: child runs the job uninterrupted (``reference``; it also fills Numba's cache, so that the
#: others do the same renames), then for k = 1, 2, ... a child is killed at its k-th rename
#: (folder ``k``) and another resumes that folder, until a child finishes unkilled.  The parent
#: only imports (a fork of a process that ran OpenMP is unsafe); single-threaded, so that every
#: child computes the same bits.
KILLER = textwrap.dedent('''
    import json, os, signal, sys, traceback
    job, base, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import torch
    torch.set_num_threads(1)
    from bundlelab.autotune import autotune
    from bundlelab.datasets import load_dataset
    from bundlelab.spec import fully_connected
    from bundlelab.training import TrainConfig, fit

    if job == "train":
        data = load_dataset("digits", n_train=256, n_test=100)
        spec = fully_connected(8, 2, input_shape=data.input_shape)
        config = TrainConfig(epochs=3, optimizer="adamw", n_samples=128, device="cpu")
        run = lambda folder: fit(spec, data, config=config, directory=folder)
    else:
        data = load_dataset("digits", n_train=256, n_test=100)
        spec = fully_connected(8, 40, input_shape=data.input_shape)
        config = TrainConfig(epochs=2, optimizer="adamw", n_samples=128, device="cpu")
        run = lambda folder: autotune(spec, data, config=config, directory=folder)

    def child(folder, renames):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                scratch = os.path.join(base, "scratch")
                open(scratch, "w").close()
                for i in range(renames):
                    os.rename(*((scratch, scratch + "~") if i % 2 == 0 else (scratch + "~", scratch)))
                run(folder)
            except BaseException:
                traceback.print_exc()
                os._exit(3)
            os._exit(0)
        return os.waitpid(pid, 0)[1]

    if child(os.path.join(base, "reference"), 0) != 0:  # also fills Numba's cache on disk
        sys.exit("the uninterrupted run failed")
    killed = []
    for k in range(1, limit):
        folder = os.path.join(base, str(k))
        status = child(folder, limit - k)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            break
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            sys.exit(f"the run killed at rename {k} failed otherwise: status {status}")
        killed.append(k)
        status = child(folder, 0)
        if status != 0:
            sys.exit(f"the run killed at rename {k} did not resume: status {status}")
    print(json.dumps({"killed": killed, "finished_at": k}))
''')
#: one more rename than any job does, and fewer than strace's limit (65535)
LIMIT = 100


def kill_at_every_rename(job, base):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace): the kill test needs it")
    if platform.machine() != "x86_64":
        pytest.skip("the kill test injects into the rename syscall, which x86_64 has")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           # fewer mmap/munmap calls, each a stop under strace
           "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    command = [strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=rename",
               "-e", f"inject=rename:signal=SIGKILL:when={LIMIT}",
               sys.executable, "-c", KILLER, job, str(base), str(LIMIT)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode and "ptrace" in done.stderr and "not permitted" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["killed"] == list(range(1, outcome["finished_at"]))
    return outcome["killed"]


def _tree(folder):
    """Every file below ``folder`` (but the lock files), relative, with its content."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if name != ".lock":
                found[os.path.relpath(path, folder)] = path
    return found


def _run_state(path):
    state = json.loads(open(path).read())
    for record in state["history"]:
        record.pop("seconds")
    return state


def _result(path):
    result = json.loads(open(path).read())
    result.pop("ms_per_step")
    return result


def _same_folder(folder, reference):
    """The resumed folder holds the same files as the uninterrupted one, with the same
    results (times aside; the figures and checkpoints are not compared byte for byte)."""
    ours, theirs = _tree(folder), _tree(reference)
    assert sorted(ours) == sorted(theirs), f"{folder}: leftovers or missing files"
    for name, path in ours.items():
        base = os.path.basename(name)
        if base in ("run.json", "search.json"):
            assert _run_state(path) == _run_state(theirs[name]), f"{folder}/{name}"
        elif base == "result.json":
            assert _result(path) == _result(theirs[name]), f"{folder}/{name}"
        elif base.endswith((".csv", ".yaml")) or base == "autotune.json":
            assert open(path).read() == open(theirs[name]).read(), f"{folder}/{name}"


@pytest.mark.slow
def test_a_training_run_killed_at_any_rename_resumes_to_the_same_results(tmp_path):
    killed = kill_at_every_rename("train", tmp_path)
    assert len(killed) >= 9  # 3 epochs: checkpoint and run.json each, spec.yaml, the results
    for k in killed:
        _same_folder(tmp_path / str(k), tmp_path / "reference")


@pytest.mark.slow
def test_an_autotune_killed_at_any_rename_resumes_to_the_same_results(tmp_path):
    killed = kill_at_every_rename("autotune", tmp_path)
    reference = json.loads((tmp_path / "reference" / "autotune.json").read_text())
    assert len(reference["restarts"]) >= 2  # it pruned: the kills hit both runs
    assert len(killed) >= 15
    for k in killed:
        _same_folder(tmp_path / str(k), tmp_path / "reference")


def test_a_figure_goes_through_a_link_or_to_a_device(tmp_path):
    pytest.importorskip("matplotlib")
    from bundlelab.plotting import _pyplot, save_figure

    figure = _pyplot().figure()
    try:
        (tmp_path / "figures").mkdir()
        link = tmp_path / "plot.png"
        link.symlink_to(tmp_path / "figures" / "real.png")
        save_figure(figure, link)
        assert link.is_symlink()
        assert (tmp_path / "figures" / "real.png").read_bytes().startswith(b"\x89PNG")
        null = _device(tmp_path, "null", 3)
        save_figure(figure, null)
        assert stat.S_ISCHR(os.lstat(null).st_mode)
        assert sorted(os.listdir(tmp_path / "figures")) == ["real.png"]
    finally:
        _pyplot().close(figure)


def test_a_sweep_removes_the_leftovers_of_its_killed_writes(digits, tmp_path, monkeypatch):
    import bundlelab.search._sweep as sweeps

    monkeypatch.setattr(sweeps, "_sweep", lambda *args, **kwargs: "swept")
    for name in (".sweep.json.k2j4x_0a.tmp", ".front.png.abcdefgh.png", "sweep.json"):
        (tmp_path / name).write_text("x")
    assert sweep(small(digits), digits, budgets=[1e6], directory=tmp_path) == "swept"
    assert sorted(os.listdir(tmp_path)) == [".lock", "sweep.json"]
