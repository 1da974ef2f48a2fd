"""The budgeted search end to end through the torch backend, on the embedded digits."""

import json
import sys

import numpy as np
import pytest

from bundlelab import BundleLabError
from bundlelab.cli import run as cli_run
from bundlelab.datasets import load_dataset
from bundlelab.search import (
    BudgetWarning,
    BudgetedSearch,
    GatedGraph,
    SearchConfig,
    cheapest_architecture,
    get_cost,
    resnet_fabric,
    sweep,
)
from bundlelab.spec import fully_connected, measured_layers
from bundlelab.training import TrainConfig

torch = pytest.importorskip("torch")

CONFIG = TrainConfig(optimizer="adamw", learning_rate=1e-3, n_samples=128, device="cpu",
                     augment=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=320, n_test=100)


@pytest.fixture(scope="module")
def fabric(digits):
    return resnet_fabric(1, k=2, filters=(4, 8), input_shape=digits.input_shape)


def cheapest(spec, cost="flops"):
    return cheapest_architecture(GatedGraph(spec), get_cost(cost))[1]


@pytest.mark.slow
def test_a_tight_budget_drives_the_architecture_under_it(digits, fabric):
    graph = GatedGraph(fabric)
    full = get_cost("flops")(graph, *graph.real_architecture(graph.all_on()[None]))[0]
    budget = cheapest(fabric) + 0.25 * (full - cheapest(fabric))
    settings = SearchConfig(budget=budget, lam=20 / full, warmup_epochs=1, search_epochs=6,
                            gate_learning_rate=0.2)
    result = BudgetedSearch(fabric, digits, settings, config=CONFIG).run()
    assert result.met_budget and result.cost <= budget
    assert result.cost == get_cost("flops")(
        GatedGraph(result.spec), *GatedGraph(result.spec).real_architecture(
            GatedGraph(result.spec).all_on()[None]))[0]
    assert result.history[0]["warmup"] and not result.history[-1]["warmup"]
    # the warm-up leaves the gates alone; the search moved them
    assert np.allclose(result.history[0]["probabilities"], 1 / (1 + np.exp(-3.0)))
    assert not np.allclose(result.history[-1]["probabilities"], result.history[0]["probabilities"])
    assert set(measured_layers(result.spec)) <= set(measured_layers(fabric))


@pytest.mark.slow
def test_a_killed_search_resumes_with_the_same_gate_state(digits, fabric, tmp_path, monkeypatch):
    settings = SearchConfig(budget=cheapest(fabric) * 2, warmup_epochs=1, search_epochs=2,
                            gate_learning_rate=0.1)
    straight = BudgetedSearch(fabric, digits, settings, config=CONFIG).run()

    first = BudgetedSearch(fabric, digits, settings, config=CONFIG, directory=tmp_path)
    first.train_epoch()
    first.train_epoch()
    saved = first.trainee.gate_probabilities()
    steps = {"n": 0}
    original = first.trainee.train_step

    def dies_mid_epoch(*args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(first.trainee, "train_step", dies_mid_epoch)
    with pytest.raises(KeyboardInterrupt):
        first.train_epoch()
    first.close()  # the process dies here: the kernel drops its lock
    resumed = BudgetedSearch(fabric, digits, settings, config=CONFIG, directory=tmp_path)
    assert resumed.epochs_done == 2
    np.testing.assert_array_equal(resumed.trainee.gate_probabilities(), saved)
    result = resumed.run()
    np.testing.assert_allclose(result.probabilities, straight.probabilities, rtol=1e-6)
    assert (tmp_path / "architecture.yaml").exists()
    assert (tmp_path / "gates.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "result.json").read_text())["met_budget"] in (True, False)


def test_a_budget_below_the_cheapest_architecture_names_the_minimum(digits, fabric):
    minimum = cheapest(fabric)
    with pytest.raises(BundleLabError, match=f"at least {minimum:g}"):
        BudgetedSearch(fabric, digits, SearchConfig(budget=minimum / 2), config=CONFIG)


def test_a_spec_without_gates_has_nothing_to_search(digits):
    spec = fully_connected(8, 2, input_shape=digits.input_shape)
    with pytest.raises(BundleLabError, match="no optional edges"):
        BudgetedSearch(spec, digits, SearchConfig(budget=1e9), config=CONFIG)


@pytest.mark.slow
def test_sweep_retrains_audits_and_compares_with_the_family(digits, fabric, tmp_path):
    family = [resnet_fabric(1, k=2, filters=(4, 8), extra=False, input_shape=digits.input_shape)]
    budgets = [cheapest(fabric) * 1.5, cheapest(fabric) * 4]
    result = sweep(fabric, digits, budgets=budgets, search={"warmup_epochs": 1, "search_epochs": 1},
                   config=CONFIG, retrain_epochs=1, family=family, directory=tmp_path)
    assert [p["budget"] for p in result.points] == budgets
    assert any(p["pareto"] for p in result.points)
    for point in result.points:
        assert 0 <= point["test_accuracy"] <= 1 and point["final_entropy"] >= 0
        assert set(point["costs"]) >= {"flops", "params", "parallel:1"}
    assert result.family[0]["name"] == family[0].name
    assert [c["budget"] for c in result.checks] == budgets
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "sweep.csv").read_text().startswith(
        "name,budget,lam,cost,met_budget,dropped_gates,budget_note")
    assert all(p["met_budget"] and "within the budget" in p["budget_note"]
               for p in result.points)


def cli(capsys, *argv):
    code = cli_run([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, fragment", [
    (["--cost", "energy", "--budget", "1e6"], "unknown cost 'energy'"),
    (["--budget", "1e6", "--lambda", "0"], "The '--lambda' option must be a float in (0"),
    (["--budget", "10"], "below the cheapest architecture"),
])
def test_search_command_bad_input_is_one_line(tmp_path, capsys, argv, fragment):
    code, out, err = cli(capsys, "search", "resnet-fabric-8", *argv, "--out", tmp_path,
                         "--device", "cpu", "--n-train", "200")
    assert code == 2, err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1


def test_search_command_writes_the_chosen_spec(tmp_path, capsys):
    code, out, err = cli(capsys, "search", "resnet-fabric-8", "--width-multiplier", "0.25",
                         "--budget", "3e5", "--warmup-epochs", "1", "--search-epochs", "1",
                         "--retrain-epochs", "1", "--no-family", "--out", tmp_path,
                         "--device", "cpu", "--n-train", "200", "--n-test", "50")
    assert code == 0, err
    assert "budgeted search of resnet-fabric-8" in out
    assert len(list(tmp_path.glob("*/architecture.yaml"))) == 1


@pytest.mark.parametrize("cost", ["latency", "parallel:2", "params"])
def test_every_cost_can_be_the_constraint(digits, fabric, cost):
    budget = 1e9 if cost != "latency" else 10.0  # seconds: every architecture meets it
    run = BudgetedSearch(fabric, digits, SearchConfig(budget=budget, cost=cost, warmup_epochs=0,
                                                      search_epochs=1), config=CONFIG)
    if cost == "latency":
        seconds = run.cost.node_seconds
        assert seconds.shape == (len(fabric.nodes),) and seconds[0] == 0 and (seconds >= 0).all()
        assert seconds.sum() > 0
    record = run.train_epoch()
    assert record["sampled_cost_mean"] > 0 and record["cost"] > 0
    assert run.result().met_budget


def test_a_search_resumes_under_the_policy_of_a_training_run(digits, fabric, tmp_path):
    settings = SearchConfig(budget=cheapest(fabric) * 2, warmup_epochs=0, search_epochs=1)
    with BudgetedSearch(fabric, digits, settings, config=CONFIG, directory=tmp_path) as run:
        run.run()
    with pytest.raises(BundleLabError) as error:
        BudgetedSearch(fabric, digits, settings, config=CONFIG.replace(learning_rate=0.01),
                       directory=tmp_path)
    assert ("holds a search with other options (learning_rate=0.001, now 0.01); a resume may "
            "change only epochs, search_epochs, device: use the same options or another folder"
            ) in str(error.value)
    with pytest.raises(BundleLabError, match=r"\(gate_init=3.0, now 2.0\)"):
        BudgetedSearch(fabric, digits, SearchConfig(budget=settings.budget, warmup_epochs=0,
                                                    search_epochs=1, gate_init=2.0),
                       config=CONFIG, directory=tmp_path)
    longer = SearchConfig(budget=settings.budget, warmup_epochs=0, search_epochs=2)
    with BudgetedSearch(fabric, digits, longer, config=CONFIG.replace(epochs=7, device="auto"),
                        directory=tmp_path) as run:
        assert run.epochs_done == 1
        assert [r["epoch"] for r in run.run().history] == [1, 2]
    with pytest.raises(BundleLabError, match="already ran 2 epochs, more than the 1 asked for"):
        BudgetedSearch(fabric, digits, settings, config=CONFIG, directory=tmp_path)


def test_a_second_search_on_a_folder_in_use_stops_naming_it(digits, fabric, tmp_path):
    settings = SearchConfig(budget=cheapest(fabric) * 2, warmup_epochs=1, search_epochs=1)
    with BudgetedSearch(fabric, digits, settings, config=CONFIG, directory=tmp_path):
        with pytest.raises(BundleLabError, match=f"{tmp_path} is in use by another bundlelab"):
            BudgetedSearch(fabric, digits, settings, config=CONFIG, directory=tmp_path)


def test_a_sweep_without_matplotlib_warns_and_keeps_its_results(digits, fabric, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.warns(UserWarning) as caught:
        result = sweep(fabric, digits, budgets=[cheapest(fabric) * 2], lambdas=[1e-3],
                       search={"warmup_epochs": 0, "search_epochs": 1}, config=CONFIG,
                       retrain_epochs=1, directory=tmp_path)
    warned = [str(w.message) for w in caught]
    assert any("front.png not drawn: plotting requires matplotlib. You can install it with "
               "`pip install 'bundlelab[plot]'`" in line for line in warned)
    assert len(warned) == 3 and not any("\n" in line for line in warned)  # search, retrain, sweep
    assert len(result.points) == 1
    assert json.loads((tmp_path / "sweep.json").read_text())["points"][0]["name"]
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize("call, fragment", [
    (lambda f, d: SearchConfig(budget=1.0, warmup=1), "did you mean 'warmup_epochs'?"),
    (lambda f, d: BudgetedSearch(f, d, SearchConfig(budget=1e9), confg=CONFIG),
     "did you mean 'config'?"),
    (lambda f, d: sweep(f, d, budget=[1e9]), "did you mean 'budgets'?"),
    (lambda f, d: sweep(f, d, budgets=[1e9], search={"budget": 2}), "sets itself"),
    (lambda f, d: sweep(f, d, budgets=[1e9], search={"warmup": 2}),
     "did you mean 'warmup_epochs'?"),
])
def test_unknown_keywords_are_one_line_at_the_call(digits, fabric, call, fragment):
    with pytest.raises(BundleLabError) as error:
        call(fabric, digits)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def _stuck_gates_search(fabric, digits, budget, **options):
    # gates that barely learn: the deterministic architecture keeps every gate on
    settings = SearchConfig(budget=budget, warmup_epochs=0, search_epochs=1,
                            gate_learning_rate=1e-6, **options)
    return BudgetedSearch(fabric, digits, settings, config=CONFIG).run()


def test_the_final_budget_step_fits_an_architecture_over_its_budget(digits, fabric):
    graph = GatedGraph(fabric)
    full = get_cost("flops")(graph, *graph.real_architecture(graph.all_on()[None]))[0]
    budget = (cheapest(fabric) + full) / 2
    found = _stuck_gates_search(fabric, digits, budget)
    assert found.met_budget and found.cost <= budget and found.dropped_gates
    assert found.cost == get_cost("flops")(
        GatedGraph(found.spec), *GatedGraph(found.spec).real_architecture(
            GatedGraph(found.spec).all_on()[None]))[0]
    assert f"-within-{budget:g}" in found.spec.name
    assert "within the budget" in found.budget_note and "\n" not in found.budget_note
    summary = found.summary()
    assert summary["dropped_gates"] == [list(g) for g in found.dropped_gates]
    assert summary["gates_on"] == graph.n_gates - len(found.dropped_gates)


def test_without_the_budget_step_an_architecture_over_budget_is_said_in_one_line(digits, fabric):
    budget = cheapest(fabric) * 1.01
    with pytest.warns(BudgetWarning, match="over the budget") as caught:
        found = _stuck_gates_search(fabric, digits, budget, budget_step=False)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert not found.met_budget and found.cost > budget and not found.dropped_gates
    assert f"-over-{budget:g}" in found.spec.name
