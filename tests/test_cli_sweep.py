"""``bundlelab search`` and ``bundlelab autotune`` with --seeds and the executor options: each
seed (and each compared network per seed) is a trial, in-process or in worker processes with
the same results."""

import json

import pytest

from bundlelab.cli import run as cli_run

torch = pytest.importorskip("torch")

TINY = ["--n-train", "64", "--n-test", "32", "--device", "cpu"]


def cli(capsys, *argv):
    code = cli_run([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def untimed(rows):
    return [{k: v for k, v in row.items() if k != "ms_per_step"} for row in rows]


# -- search ---------------------------------------------------------------------------------


def test_search_seeds_run_every_trial_and_print_their_means(tmp_path, capsys):
    code, out, err = cli(capsys, "search", "conv-fabric-2", "--budget", "1e9", "--seeds", "2",
                         "--warmup-epochs", "0", "--search-epochs", "1", "--retrain-epochs",
                         "1", "--width-multiplier", "0.03", "--no-family", "--out", tmp_path,
                         *TINY)
    assert code == 0, err
    assert "means over 2 seeds" in out and "±" in out
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["seeds"] == [0, 1] and [p["seed"] for p in saved["points"]] == [0, 1]
    summary = json.loads((tmp_path / "sweep-progress.json").read_text())
    assert (summary["done"], summary["total"]) == (2, 2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "flops-1e+09-lam1e-09-seed0", "flops-1e+09-lam1e-09-seed1"]


def test_search_hands_seeds_threads_and_the_executor_to_the_sweep(tmp_path, capsys,
                                                                    monkeypatch):
    import bundlelab.search

    seen = {}

    def recorded(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(bundlelab.search, "sweep", recorded)
    code, _, err = cli(capsys, "search", "conv-fabric-2", "--budget", "1e9", "--seeds", "3",
                       "--seed", "5", "--executor", "processes", "--workers", "2", "--threads",
                       "1", "--out", tmp_path, *TINY)
    assert code == 0, err
    assert seen["seeds"] == 3 and seen["config"].seed == 5 and seen["threads"] == 1
    assert seen["executor"].name == "processes" and seen["executor"].workers == 2


@pytest.mark.parametrize("argv, fragment", [
    (["--ray-address", "auto"], "--ray-address joins a Ray cluster, which needs --executor ray"),
    (["--workers", "2"], "'--workers' option must be 1"),
    (["--seeds", "0"], "--seeds"),
    (["--threads", "0"], "--threads"),
    (["--executor", "cluster"], "--executor"),
])
def test_search_bad_executor_options_are_one_line(tmp_path, capsys, argv, fragment):
    code, _, err = cli(capsys, "search", "conv-fabric-2", "--budget", "1e9", "--out",
                       tmp_path, *TINY, *argv)
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "sweep-progress.json").exists()


# -- autotune -------------------------------------------------------------------------------


AUTOTUNE = ["autotune", "fc-3x8", "--epochs", "1", "--seeds", "2", "--compare", "fc-1x8",
            "--n-samples", "32", *TINY]


@pytest.mark.slow
def test_autotune_seeds_in_worker_processes_equal_the_in_process_ones(tmp_path, capsys):
    results = {}
    for executor in ("inprocess", "processes"):
        out_dir = tmp_path / executor
        code, out, err = cli(capsys, *AUTOTUNE, "--executor", executor, "--out", out_dir,
                             *(["--workers", "2"] if executor == "processes" else []))
        assert code == 0, err
        assert "seed 0: auto-tune evolution" in out and "seed 1: auto-tune evolution" in out
        summary = json.loads((out_dir / "autotune-progress.json").read_text())
        assert [t["name"] for t in summary["tasks"]] == [
            "seed-0", "fc-1x8-seed-0", "seed-1", "fc-1x8-seed-1"]
        assert summary["done"] == 4
        results[executor] = {
            "rows": untimed(json.loads((out_dir / "comparison.json").read_text())),
            "evolution": [(out_dir / f"seed-{s}" / "evolution.csv").read_text()
                          for s in (0, 1)],
            "runs": [json.loads(p.read_text())["history"]
                     for p in sorted(out_dir.glob("**/run.json"))],
        }
    for run in results["inprocess"]["runs"] + results["processes"]["runs"]:
        for record in run:
            record.pop("seconds")
    assert results["processes"] == results["inprocess"]
    rows = results["inprocess"]["rows"]
    assert [r["name"] for r in rows] == ["auto-tune", "fc-1x8"] and rows[0]["seeds"] == 2


def test_autotune_hands_each_seed_and_network_to_the_executor(tmp_path, capsys, monkeypatch):
    import bundlelab.cli._train as train

    made = {}
    real = train.executor_from_options

    def spy(executor, workers=None, ray_address=None, **kwargs):
        made.update(executor=getattr(executor, "value", executor), workers=workers)
        return real("inprocess")

    seen = []

    def trial(task):
        seen.append((task.kind, task.spec["name"], task.config.seed, task.directory,
                     task.threads))
        assert task.check_epochs == 2
        return {"seed": task.config.seed, "layers": 3, "test_accuracy": 0.5,
                "checkpoint_mb": 1.0, "ms_per_step": 2.0, "final_entropy": 0.0,
                "evolution_csv": "epoch\nstart\n" if task.kind == "autotune" else None}

    monkeypatch.setattr(train, "executor_from_options", spy)
    monkeypatch.setattr("bundlelab._trials.run_training_trial", trial)
    code, out, err = cli(capsys, *AUTOTUNE, "--executor", "processes", "--workers", "3",
                         "--threads", "1", "--check-epochs", "2", "--out", tmp_path)
    assert code == 0, err
    assert made == {"executor": "processes", "workers": 3}
    folder = tmp_path.absolute()
    assert [(kind, seed, directory, threads) for kind, _, seed, directory, threads in seen] == [
        ("autotune", 0, str(folder / "seed-0"), 1), ("fit", 0, str(folder / "fc-1x8-seed-0"), 1),
        ("autotune", 1, str(folder / "seed-1"), 1), ("fit", 1, str(folder / "fc-1x8-seed-1"), 1)]
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert [(r["name"], r["seeds"]) for r in rows] == [("auto-tune", 2), ("fc-1x8", 2)]


@pytest.mark.parametrize("argv, fragment", [
    (["--check-epochs", "0"], "The '--check-epochs' option must be an int >= 1 or 'all'"),
    (["--check-epochs", "first"], "Got 'first' instead"),
    (["--ray-address", "auto"], "needs --executor ray"),
    (["--seeds", "0"], "--seeds"),
])
def test_autotune_bad_options_are_one_line_before_any_trial(tmp_path, capsys, monkeypatch, argv,
                                                            fragment):
    monkeypatch.setattr("bundlelab._trials.run_training_trial",
                        lambda task: pytest.fail("a trial ran"))
    code, _, err = cli(capsys, "autotune", "fc-3x8", *TINY, "--out", tmp_path, *argv)
    assert code == 2 and fragment in err and err.count("\n") == 1, err
