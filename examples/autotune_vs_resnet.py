"""Table 1 of the paper at CPU scale: the auto-tune against the best ResNet, under two watch rules.

The auto-tune (section 3.6, :func:`bundlelab.autotune.autotune`) starts from the 120-layer
plain net, trains it, and when a checked epoch finds a block with ``H^l(t) > 0`` removes it
together with the rest of its stage, then restarts from scratch with the pruned net.  Two
rules say which epochs are checked (``--watch``, the auto-tune's ``check_epochs``): ``1``, the
paper's (after the first epoch of every run; a run that passes it trains to the end), and
``all`` (every epoch of every run, so a conflict that appears late also prunes; the library's
default).  The baselines are residual nets of the same family (default ResNet-10, -20 and -50)
trained as long; the best of them by mean test accuracy over the seeds is the comparison, as
in the paper.  Every network is trained with each seed; the script reports layers, test
accuracy (mean of the last 5 epochs), memory (size of a weights-only checkpoint in MB) and
inference time of one batch of 64 test images (ms per step) as mean +- std over seeds, the
issue's goal per rule (within 1 point of the best ResNet, fewer layers, smaller checkpoint,
less time per step), and the auto-tune's evolution table (epoch, blocks per stage a-d) of
every seed and rule (the supplementary's table).

What the paper reports (Table 1; full width, 120 epochs, Ranger): the auto-tune finds 17-24
layers (Mnist 17 +- 1 layers, 99.3%, 54 MB, 40 ms, against ResNet-50's 99.4%, 116 MB, 88 ms;
Cifar 19 +- 0.9 layers, 85.3% against ResNet-76's 85.7%), so about the accuracy of the best
ResNet at half the memory and inference time, and it prunes at most three times, within the
first three epochs.

Defaults: scikit-learn's digits resized to 32 x 32 (``--image-size 32``, bilinear; on 8 x 8
images stages c and d see 1 x 1 maps, at 32 px the stem leaves 16 x 16 and stage d 2 x 2),
width multiplier 0.125, 20 epochs, seeds 0 1 2, AdamW at learning rate 1e-2 on a cosine
schedule (the library's default), batch 64, no random crops on digits but the brightness
augmentation.  The learning rate also sets the bundle metric's resolution (``lr / batch``), so
1e-2 bundles more coarsely than the paper's 1e-3.  One epoch of plain-120 takes 4.4 s (5.9 s
with the bundle measurement) on one thread of an idle 2-core CPU; the whole default run took
37 minutes on that CPU shared with five other jobs (load 4-10).  Times per step are
measured on whatever CPU runs the script (shared machines make them noisy).  ``--resume``
keeps every run's folder under OUT/runs, so a killed run continues where it stopped.
Closer to the paper, with the data files in DIR (a GPU and days)::

    python examples/autotune_vs_resnet.py --data cifar10:DIR --optimizer ranger --lr 1e-3 \\
        --epochs 120 --width-multiplier 1 --resnets resnet-50 resnet-76
    python examples/autotune_vs_resnet.py --data mnist:DIR --optimizer ranger --lr 1e-3 \\
        --epochs 120 --width-multiplier 1 --resnets resnet-50

Writes ``autotune-vs-resnet.json`` and ``autotune-vs-resnet.png`` to ``--out`` (default
``results/autotune_vs_resnet``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bundlelab.autotune import autotune  # noqa: E402
from bundlelab.spec import preset, stage_depths  # noqa: E402
from bundlelab.training import fit  # noqa: E402

from _common import (add_training_arguments, data_description, dataset_summary,  # noqa: E402
                     fill_defaults, pinned_threads, run_folder, run_trials, save_png,
                     start_experiment, trial_data, training_config, write_results)

AUTOTUNE = "auto-tune"
METRICS = {"layers": "layers", "test_accuracy": "test accuracy",
           "checkpoint_mb": "memory [MB]", "ms_per_step": "time / step [ms]"}
FULL = {"start": "plain-120", "resnets": ["resnet-10", "resnet-20", "resnet-50"], "epochs": 20,
        "seeds": [0, 1, 2], "n_train": None, "n_test": None, "image_size": 32}
QUICK = {"start": "plain-20", "resnets": ["resnet-10"], "epochs": 2, "seeds": [0],
         "n_train": 300, "n_test": 100, "image_size": 16}


def watch_name(watch) -> str:
    """The row name of the auto-tune under one watch rule (``check_epochs``)."""
    return f"{AUTOTUNE} (all epochs)" if watch == "all" else (
        f"{AUTOTUNE} (epoch 1)" if watch == 1 else f"{AUTOTUNE} (epochs 1-{watch})")


def watch_rule(text: str):
    """``--watch`` values: a positive int (first epochs checked) or ``all``."""
    if text == "all":
        return "all"
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--watch takes a positive int or 'all'; got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", help="the auto-tune's starting net (default plain-120)")
    parser.add_argument("--resnets", nargs="+", help="baselines (default resnet-20 resnet-50)")
    parser.add_argument("--width-multiplier", type=float, default=0.125)
    parser.add_argument("--watch", type=watch_rule, nargs="+", default=[1, "all"],
                        help="the auto-tune's check_epochs rules to run, each a positive int "
                             "(the first epochs of a run are checked; 1 is the paper's rule) "
                             "or 'all' (every epoch of every run); default: 1 all")
    add_training_arguments(parser, Path("results/autotune_vs_resnet"), lr=1e-2,
                           epochs_help="epochs of every final run (default 20)")
    args = parser.parse_args(argv)
    fill_defaults(args, QUICK, FULL)
    if not args.start.startswith("plain-"):
        parser.error(f"--start must be a plain net such as plain-120; got {args.start!r}")
    if not all(name.startswith("resnet-") for name in args.resnets):
        parser.error(f"--resnets must be residual nets such as resnet-50; got {args.resnets}")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def figures(result) -> dict:
    """The Table 1 figures of a :class:`TrainingResult`."""
    entropy = result.bundle_entropy
    return {"layers": result.layers, "test_accuracy": result.test_accuracy,
            "checkpoint_mb": result.checkpoint_mb, "ms_per_step": result.ms_per_step,
            "parameters": result.parameters, "blocks": stage_depths(result.spec),
            "final_train_accuracy": result.history[-1].train_accuracy,
            "bundle_entropy_last": list(entropy.values())[-1] if entropy else 0.0,
            "conflicting_layers": sum(h > 0 for h in entropy.values())}


def run_one(task: dict) -> dict:
    """Train ``task["name"]`` with ``task["seed"]`` (a trial, :func:`_common.run_trials`):
    auto-tuned from ``task["start"]`` under the check rule ``task["watch"]`` when it is not
    None, else the preset ``task["name"]``.

    ``task`` also holds ``width_multiplier``, ``config`` (a seeded TrainConfig), ``folder``
    (the run folder or None), ``data`` (:func:`_common.data_description`) and ``threads``.
    """
    name, seed, watch = task["name"], task["seed"], task["watch"]
    data = trial_data(task["data"])
    config, folder = task["config"], task["folder"]
    spec = preset(task["start"] if watch is not None else name, input_shape=data.input_shape,
                  n_classes=data.n_classes, width_multiplier=task["width_multiplier"])
    start = time.perf_counter()
    with pinned_threads(task["threads"]):
        if watch is not None:
            tuned = autotune(spec, data, config=config, directory=folder, check_epochs=watch)
            row = {**figures(tuned.training), "watch": watch,
                   "restarts": len(tuned.restarts) - 1,
                   "epochs_total": sum(r.epochs for r in tuned.restarts),
                   "pruned_after_epochs": [r.epochs for r in tuned.restarts[:-1]],
                   "evolution": tuned.evolution()}
        else:
            row = figures(fit(spec, data, config=config, directory=folder))
    run = {"name": name, "seed": seed, **row, "seconds": time.perf_counter() - start}
    extra = (f", {run['restarts']} restarts, {run['epochs_total']} epochs in all"
             if watch is not None else "")
    print(f"{name:<24} seed {seed}: {run['layers']} layers {run['blocks']}, test "
          f"{run['test_accuracy']:.3f}, {run['checkpoint_mb']:.3f} MB, "
          f"{run['ms_per_step']:.2f} ms/step, H^L {run['bundle_entropy_last']:.3g}"
          f"{extra} ({run['seconds']:.0f} s)", flush=True)
    return run


def goal(summary: dict, tuned: str, best: str) -> dict:
    """The issue's Table 1 goal for one auto-tune row against the best ResNet (means)."""
    a, b = summary[tuned], summary[best]
    return {"accuracy_gap_points": 100 * (a["test_accuracy"] - b["test_accuracy"]),
            "within_one_point": a["test_accuracy"] >= b["test_accuracy"] - 0.01,
            "fewer_layers": a["layers"] < b["layers"],
            "smaller_checkpoint": a["checkpoint_mb"] < b["checkpoint_mb"],
            "less_time_per_step": a["ms_per_step"] < b["ms_per_step"]}


def mean_std(runs: list, name: str) -> dict:
    """Mean and (population) std over seeds of every Table 1 figure of ``name``."""
    chosen = [r for r in runs if r["name"] == name]
    out = {"name": name, "seeds": len(chosen)}
    for key in METRICS:
        values = [r[key] for r in chosen]
        out[key], out[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    return out


def plot(document: dict, path: Path) -> None:
    """Bars (mean +- std over seeds) of accuracy, layers, memory and time: auto-tune vs ResNets."""
    tuned = [watch_name(w) for w in document["watch"]]
    rows = [document["summary"][n] for n in tuned + document["resnets"]]
    names = [r["name"].replace(" (", "\n(") for r in rows]
    colours = ["C2", "C1", "C3", "C4"][:len(tuned)] + [
        "C0" if n == document["best_resnet"] else "lightsteelblue" for n in document["resnets"]]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4.0))
    for ax, (key, label) in zip(axes, METRICS.items()):
        means = [r[key] for r in rows]
        ax.bar(range(len(rows)), means, yerr=[r[f"{key}_std"] for r in rows], color=colours,
               capsize=4)
        for x, value in enumerate(means):
            ax.text(x, value, f"{value:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), names, fontsize=8)
        ax.set_title(label)
    axes[list(METRICS).index("test_accuracy")].set_ylim(0, 1.1)
    fig.suptitle(f"auto-tune from {document['start']} vs ResNets (best: {document['best_resnet']}, "
                 f"dark blue); mean +- std over {len(document['seeds'])} seed(s)", fontsize=10)
    save_png(fig, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    data, started = start_experiment(args)
    tuned = [watch_name(w) for w in args.watch]
    jobs = [(watch_name(w), w) for w in args.watch] + [(n, None) for n in args.resnets]
    tasks, names = [], []
    for seed in args.seeds:
        for name, watch in jobs:
            slug = f"autotune-watch-{watch}" if watch is not None else name
            names.append(f"{slug}-s{seed}")  # the run folder's name
            tasks.append({"name": name, "seed": seed, "watch": watch, "start": args.start,
                          "width_multiplier": args.width_multiplier,
                          "config": training_config(args, seed),
                          "folder": run_folder(args, names[-1]),
                          "data": data_description(args), "threads": args.threads})
    runs = run_trials(run_one, tasks, names, args)
    summary = {name: mean_std(runs, name) for name in tuned + args.resnets}
    best = max(args.resnets, key=lambda name: summary[name]["test_accuracy"])
    document = {
        "experiment": "autotune_vs_resnet",
        "reproduces": "Peer et al. 2021, table 1 and the supplementary's evolution tables "
                      "(section 3.6)",
        "data": dataset_summary(data),
        "config": {"epochs": args.epochs, "watch": args.watch,
                   "image_size": args.image_size,
                   "optimizer": args.optimizer, "learning_rate": args.lr,
                   "batch_size": args.batch_size, "crop_padding": args.crop_padding,
                   "width_multiplier": args.width_multiplier,
                   "n_samples": args.n_samples, "threads": args.threads,
                   "device": args.device},
        "start": args.start, "watch": args.watch, "resnets": args.resnets,
        "seeds": args.seeds, "best_resnet": best, "summary": summary,
        "goal": {name: goal(summary, name, best) for name in tuned},
        "evolution": {name: {str(r["seed"]): r["evolution"] for r in runs if r["name"] == name}
                      for name in tuned},
        "runs": runs,
    }
    write_results(document, args.out, "autotune-vs-resnet", plot=plot, started=started)

    print(f"\n{'name':<24} {'layers':>12} {'accuracy':>15} {'MB':>15} {'ms/step':>13}")
    for name in tuned + args.resnets:
        s = summary[name]
        print(f"{name:<24} {s['layers']:>6.1f} ± {s['layers_std']:<4.1f}"
              f"{s['test_accuracy']:>8.3f} ± {s['test_accuracy_std']:<5.3f}"
              f"{s['checkpoint_mb']:>8.3f} ± {s['checkpoint_mb_std']:<5.3f}"
              f"{s['ms_per_step']:>7.2f} ± {s['ms_per_step_std']:<5.2f}"
              + ("  <- best ResNet" if name == best else ""))
    for name in tuned:
        print(f"{name} against {best}: {document['goal'][name]}")
        for seed, rows in document["evolution"][name].items():
            print(f"evolution of {name}, seed {seed}:")
            for row in rows:
                print("  " + ", ".join(f"{k} {v}" for k, v in row.items() if v != ""))
    print(f"wrote {args.out / 'autotune-vs-resnet.json'} and {args.out / 'autotune-vs-resnet.png'} "
          f"({document['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
