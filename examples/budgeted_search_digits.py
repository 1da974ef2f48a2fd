"""Budgeted super networks at CPU scale: searched ResNet-fabric architectures vs plain ResNets.

Reproduces, small, the protocol of Veniat & Denoyer (CVPR 2018): a ResNet fabric (3 groups of
n = 3 blocks with the extra cross-group connections, so ResNet-8, -14 and -20 are among its
sub-networks) is searched under several FLOP budgets; each found architecture is retrained
from scratch and compared with the best plain ResNet whose cost is within the same budget,
trained with the same data, split and epochs.  The paper reports budgeted ResNets as accurate
as the ResNet of the same cost or better on CIFAR (its Tables 5-9).

Checks printed and saved (``budgeted-search.json``, ``budgeted-search.png``):

* for each budget: the architecture's cost is at most the budget (or the run says it was not
  met), and its test accuracy is within 1 point of the best ResNet within the budget or better;
* mean ± std over seeds, and the bundle entropy H^L of every retrained architecture.

Scale: scikit-learn's digits resized to 32 x 32 (``--image-size 32``), the fabric at width
x 0.25 (4/8/16 filters).  There more cost buys accuracy: ResNet-8, -14 and -20 (0.80, 1.69 and
2.58 M MACs) reached 65%, 86% and 91% test accuracy after 12 epochs (seed 0), while on the
8 x 8 digits ResNet-8 was already the best.  The default budgets 1.2, 2.0 and 3.0 M MACs each
let in one more member of the family.  Each seed's sweep resumes from OUT/seed-N when the
script is killed and started again.  Default (3 seeds, 3 budgets; 15 minutes measured on a 2-core CPU shared with other jobs,
one thread)::

    python examples/budgeted_search_digits.py --out results/search

Full size (CIFAR-10 files from the user, a GPU)::

    python examples/budgeted_search_digits.py --data cifar10:/data/cifar --width-multiplier 1 \\
        --n 18 --budgets 4e7 8e7 1.6e8 --warmup-epochs 50 --search-epochs 250 \\
        --retrain-epochs 300 --seeds 3 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bundlelab.search import default_lambdas, resnet_fabric, sweep
from bundlelab.training import TrainConfig

from _common import load_data

FAMILY = (1, 2, 3, 5, 7, 9, 18)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--image-size", type=int, default=32,
                        help="resize digits to this side (default 32: there more cost buys "
                             "accuracy; at 8 px the smallest ResNet is the best)")
    parser.add_argument("--n", type=int, default=3, help="blocks per group of the fabric")
    parser.add_argument("--width-multiplier", type=float, default=0.25)
    parser.add_argument("--cost", default="flops")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.2e6, 2.0e6, 3.0e6],
                        help="default: between the family's costs at 32 px x 0.25 (ResNet-8 "
                             "0.80 M, -14 1.69 M, -20 2.58 M MACs)")
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--search-epochs", type=int, default=8)
    parser.add_argument("--retrain-epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--gate-lr", type=float, default=0.1)
    parser.add_argument("--penalty", default="hinge", choices=("hinge", "abs"))
    parser.add_argument("--lambdas-per-budget", type=int, default=1,
                        help="1: lambda = 10^-m for a budget of magnitude m; k > 1: k values "
                             "log-spaced over 10^(-m-1) .. 10^(-m+1), chosen on validation")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and numba threads (1 is fastest on a shared 2-core CPU)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="run seeds first-seed .. first-seed + seeds - 1 (split a run over "
                             "processes; a later run over all seeds resumes their folders)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("results/search"))
    parser.add_argument("--quick", action="store_true", help="a tiny run (for the tests)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.width_multiplier, args.budgets, args.image_size = 1, 0.25, [6e4, 1.2e5], 8
        args.warmup_epochs, args.search_epochs, args.retrain_epochs = 1, 1, 1
        args.seeds, args.n_train = 1, 256
    return args


def mean_std(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    args = parse()
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    started = time.perf_counter()
    data = load_data(args.data, image_size=args.image_size, n_train=args.n_train)
    shape = data.input_shape
    fabric = resnet_fabric(args.n, width_multiplier=args.width_multiplier, input_shape=shape,
                           n_classes=data.n_classes)
    family = [resnet_fabric(m, extra=False, width_multiplier=args.width_multiplier,
                            input_shape=shape, n_classes=data.n_classes)
              for m in FAMILY if m <= args.n]
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        config = TrainConfig(optimizer="adam", learning_rate=2e-3, weight_decay=1e-4, seed=seed,
                             batch_size=args.batch_size, device=args.device,
                             n_samples=512)
        lambdas = None
        if args.lambdas_per_budget > 1:
            lambdas = sorted({lam for budget in args.budgets
                              for lam in default_lambdas(budget, count=args.lambdas_per_budget)})
        result = sweep(fabric, data, budgets=args.budgets, cost=args.cost, lambdas=lambdas,
                       search={"warmup_epochs": args.warmup_epochs,
                               "search_epochs": args.search_epochs,
                               "gate_learning_rate": args.gate_lr, "penalty": args.penalty},
                       config=config, retrain_epochs=args.retrain_epochs, family=family,
                       directory=args.out / f"seed-{seed}", progress=True)
        runs.append(result.to_dict())
    summary = summarize(runs, args.budgets, [m.name for m in family])
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "supernet": fabric.name, "seconds": time.perf_counter() - started,
               "summary": summary, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budgeted-search.json").write_text(json.dumps(payload, indent=2) + "\n",
                                                   encoding="utf-8")
    plot(summary, args.out / "budgeted-search.png", args.cost)
    report(summary)


def summarize(runs: list, budgets: list, family: list) -> dict:
    per_budget = []
    for k, budget in enumerate(budgets):
        checks = [run["checks"][k] for run in runs]
        chosen = [next(p for p in run["points"] if p["name"] == c["architecture"])
                  for run, c in zip(runs, checks)]
        acc, acc_sd = mean_std(100 * c["test_accuracy"] for c in checks)
        cost, cost_sd = mean_std(c["cost"] for c in checks)
        fam = [c["family_test_accuracy"] for c in checks if c["family_test_accuracy"] is not None]
        fam_acc, fam_sd = mean_std(100 * a for a in fam) if fam else (None, None)
        per_budget.append({
            "budget": budget, "cost_mean": cost, "cost_std": cost_sd,
            "met_budget": [c["met_budget"] for c in checks],
            "test_accuracy_mean": acc, "test_accuracy_std": acc_sd,
            "entropy_mean": mean_std(p["final_entropy"] for p in chosen)[0],
            "best_family_member": checks[0]["best_family_member"],
            "family_test_accuracy_mean": fam_acc, "family_test_accuracy_std": fam_sd,
            "within_one_point_mean": None if fam_acc is None else acc >= fam_acc - 1.0,
            "within_one_point_per_seed": [c["within_one_point"] for c in checks],
        })
    members = []
    for name in family:
        rows = [next(m for m in run["family"] if m["name"] == name) for run in runs]
        acc, sd = mean_std(100 * m["test_accuracy"] for m in rows)
        members.append({"name": name, "cost": rows[0]["cost"], "test_accuracy_mean": acc,
                        "test_accuracy_std": sd,
                        "entropy_mean": mean_std(m["final_entropy"] for m in rows)[0]})
    return {"budgets": per_budget, "family": members}


def plot(summary: dict, path: Path, cost: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.5))
    fam = summary["family"]
    ax.errorbar([m["cost"] for m in fam], [m["test_accuracy_mean"] for m in fam],
                yerr=[m["test_accuracy_std"] for m in fam], fmt="s--", color="tab:grey",
                capsize=3, label="plain ResNets")
    for m in fam:
        ax.annotate(m["name"], (m["cost"], m["test_accuracy_mean"]), fontsize=8,
                    textcoords="offset points", xytext=(4, -10))
    rows = summary["budgets"]
    ax.errorbar([r["cost_mean"] for r in rows], [r["test_accuracy_mean"] for r in rows],
                xerr=[r["cost_std"] for r in rows], yerr=[r["test_accuracy_std"] for r in rows],
                fmt="o-", color="tab:blue", capsize=3, label="budgeted (searched)")
    for r in rows:
        ax.axvline(r["budget"], color="tab:red", alpha=0.25, linestyle=":")
    ax.set_xlabel(f"{cost} of the architecture (dotted: budgets)")
    ax.set_ylabel("test accuracy [%] (mean ± std over seeds)")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(summary: dict) -> None:
    print("budget     cost (mean±std)        test acc [%]     best ResNet within budget   "
          "within 1 pt")
    for r in summary["budgets"]:
        family = ("-" if r["best_family_member"] is None else
                  f"{r['best_family_member']} {r['family_test_accuracy_mean']:.1f}±"
                  f"{r['family_test_accuracy_std']:.1f}")
        print(f"{r['budget']:<10.3g} {r['cost_mean']:>10.4g}±{r['cost_std']:<9.3g} "
              f"{r['test_accuracy_mean']:6.1f}±{r['test_accuracy_std']:<5.1f}  {family:<27} "
              f"{r['within_one_point_mean']}  (met: {r['met_budget']})")
    for m in summary["family"]:
        print(f"family {m['name']}: cost {m['cost']:.4g}, test {m['test_accuracy_mean']:.1f}"
              f"±{m['test_accuracy_std']:.1f}%, H^L {m['entropy_mean']:.3g}")


if __name__ == "__main__":
    main()
