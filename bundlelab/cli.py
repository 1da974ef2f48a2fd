"""The ``bundlelab`` command line.

Importing this module is cheap: numba, the kernels, h5py, safetensors, scikit-learn,
matplotlib, onnx and onnxruntime are imported inside the commands that use them, so
``bundlelab --help`` is instant.
Every error is printed as one ``error: ...`` line on stderr with exit status 2 (bad input) or
1 (a bug; ``BUNDLELAB_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ._errors import BundleLabError

app = typer.Typer(
    name="bundlelab",
    help="Find the layers that hurt a network's training: conflicting bundles in its activations.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs
)

#: keyword of BundleOptions -> the CLI option that sets it (to word errors in CLI terms)
OPTION_FLAGS = {
    "learning_rate": "--lr",
    "batch_size": "--batch-size",
    "weight_amplitude": "--weight-amplitude",
    "gamma": "--gamma",
    "epsilon": "--epsilon",
}
#: a run longer than this reports progress lines even when stderr is not a terminal
LONG_RUN_S = 30.0
#: off a terminal, at most one progress line per this many seconds for per-batch progress
NOTE_EVERY_S = 10.0
#: bytes of tapped layer outputs one forward pass of ``audit`` may produce (picks the batch)
AUDIT_BATCH_BYTES = 256 << 20


class Mode(str, Enum):
    resolution = "resolution"
    threshold = "threshold"


class Nonfinite(str, Enum):
    raise_ = "raise"
    exclude = "exclude"
    keep = "keep"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Provider(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"bundlelab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Find the layers that hurt a network's training: conflicting bundles in its activations.

    Start with: bundlelab analyze --demo
    """


#: help of each option of ``analyze`` (kept here so the signature stays readable)
HELP = {
    "dump": "Activation dump: .npz, .safetensors, .h5/.hdf5, or a directory of .npy files.",
    "labels": "Name of the array with the class labels.",
    "lr": "Training learning rate alpha.",
    "batch_size": "Training batch size |B|.",
    "weight_amplitude": "w: the largest absolute weight of the model (resolution mode).",
    "mode": "Bundle rule: float resolution (released code) or the paper's threshold gamma.",
    "gamma": "Threshold of the paper's eq. 1 (threshold mode).",
    "epsilon": "0: exact entropy; 1e-5 reproduces the released ln(p + 1e-5).",
    "layers": "Layers to analyse: names or glob patterns; repeat the option or use commas.",
    "nonfinite": "Samples with NaN/Inf activations: fail, leave them out, or compare as IEEE.",
    "device": "Where to compute.",
    "format": "Output format; default: from the --output suffix (.json/.csv), else table.",
    "output": "Write the report to this file (atomically) instead of stdout.",
    "plot": "Save a bar chart of bundle entropy per layer (PNG).",
    "chunk_rows": "Stream every layer in chunks of N samples (default: only layers too big).",
    "bundle_ids": "Include every sample's bundle id in JSON output.",
    "demo": "Generate a demo dump (digits through a healthy and a deep narrow ReLU net).",
    "output_dir": "Where --demo writes bundlelab-demo.npz.",
    "model": "An ONNX model file (.onnx); its external data must lie in the same folder.",
    "data": "Inputs and labels: an .npz or a folder of .npy files, the inputs under the model "
    "input's name or 'x'.",
    "samples": "Measure a random subset of this many samples (all when the data holds fewer).",
    "seed": "Seed of the random subset.",
    "audit_layers": "Layers to measure (tensor names or glob patterns); repeat the option or use "
    "commas. Default: every activation output.",
    "all_nodes": "Tap every node's float outputs, not only the activations'.",
    "model_weight_amplitude": "w: the largest absolute weight (default: max |value| over the "
    "model's float weights).",
    "providers": "onnxruntime execution provider (cuda needs onnxruntime-gpu).",
    "run_batch_size": "Samples per forward pass; only bounds memory (default: as many as keep "
    "the tapped outputs near 256 MiB, at most 256).",
}

# Options that analyze and audit share (one declaration each).
LR = typer.Option(1e-3, "--lr", help=HELP["lr"])
BATCH_SIZE = typer.Option(64, "--batch-size", help=HELP["batch_size"])
MODE = typer.Option(Mode.resolution, "--mode", help=HELP["mode"])
GAMMA = typer.Option(1e-8, "--gamma", help=HELP["gamma"])
EPSILON = typer.Option(0.0, "--epsilon", help=HELP["epsilon"])
NONFINITE = typer.Option(Nonfinite.raise_, "--nonfinite", help=HELP["nonfinite"])
FORMAT = typer.Option(None, "--format", "-f", show_default=False, help=HELP["format"])
OUTPUT = typer.Option(None, "--output", "-o", help=HELP["output"])
PLOT = typer.Option(None, "--plot", help=HELP["plot"])


@app.command()
def analyze(
    dump: Optional[Path] = typer.Argument(
        None, metavar="DUMP", show_default=False, help=HELP["dump"]
    ),
    labels: str = typer.Option("labels", "--labels", help=HELP["labels"]),
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    weight_amplitude: float = typer.Option(
        1.0, "--weight-amplitude", help=HELP["weight_amplitude"]
    ),
    mode: Mode = MODE,
    gamma: float = GAMMA,
    epsilon: float = EPSILON,
    layers: Optional[List[str]] = typer.Option(
        None, "--layers", "-l", show_default=False, help=HELP["layers"]
    ),
    nonfinite: Nonfinite = NONFINITE,
    device: Device = typer.Option(Device.auto, "--device", help=HELP["device"]),
    fmt: Optional[Format] = FORMAT,
    output: Optional[Path] = OUTPUT,
    plot: Optional[Path] = PLOT,
    chunk_rows: Optional[int] = typer.Option(
        None, "--chunk-rows", min=1, show_default=False, help=HELP["chunk_rows"]
    ),
    bundle_ids: bool = typer.Option(False, "--bundle-ids", help=HELP["bundle_ids"]),
    demo: bool = typer.Option(False, "--demo", help=HELP["demo"]),
    output_dir: Path = typer.Option(Path("."), "--output-dir", help=HELP["output_dir"]),
) -> None:
    """Find conflicting bundles in every layer of an activation dump.

    DUMP holds one array of shape (n_samples, ...) per layer, in network order, and one array of
    class labels. Samples whose layer outputs are equal at the float resolution of a weight
    update form a bundle; a bundle holding several classes is conflicting, and from the first
    conflicting layer on the network cannot tell those samples apart.

    Layers too big for memory are streamed in row chunks. Try it: bundlelab analyze --demo
    """
    if demo == (dump is not None):
        raise BundleLabError(
            "pass an activation dump (bundlelab analyze DUMP) or --demo, not both"
            if demo else "missing DUMP: pass an activation dump, or --demo to try a generated one"
        )
    options = _bundle_options(
        mode=mode.value, learning_rate=lr, batch_size=batch_size,
        weight_amplitude=weight_amplitude, gamma=gamma, epsilon=epsilon,
        nonfinite=nonfinite.value, device=device.value,
    )
    out_format = _output_format(fmt, output)
    if demo:
        from .io.demo import write_demo_dump

        dump = Path(write_demo_dump(output_dir))
    from .io import analyze_dump, open_dump, select_layers

    with open_dump(dump, labels_key=labels) as opened:
        names = select_layers(opened.layer_names, layers, where=opened.path.name)
        infos = [opened.info(name) for name in names]
        with _Progress(sum(info.n_samples for info in infos), "analysing") as progress:
            report = analyze_dump(
                opened, layers=names, chunk_rows=chunk_rows,
                progress=_per_layer(progress, len(infos)), **options,
            )
        shapes = {info.name: info.shape[1:] for info in infos}
        n_labels = len(opened.labels)

    _emit_report(
        report, out_format, output=output, plot=plot, bundle_ids=bundle_ids,
        title=f"{dump.name}, {_describe_params(report.params)}", shapes=shapes,
        intro=_demo_intro(dump, n_labels) if demo else None,
    )


def _emit_report(report, out_format, *, output, plot, bundle_ids, title, shapes, intro) -> None:
    """Print or write the report; notes go to stderr unless a table goes to the screen."""
    demo = intro is not None
    to_screen = output is None and out_format == "table"
    console = _stdout_console() if to_screen else None
    if intro and console is not None:
        console.print(intro, markup=False)
    elif intro:
        _note(intro)
    if out_format == "json":
        text = report.to_json(include_ids=bundle_ids)
    elif out_format == "csv":
        text = report.to_csv()
    else:
        table = _table(report, shapes, title=title)
        summaries = _summaries(report, per_network=demo)
        if console is None:
            text = _render_plain(table, summaries)
        else:
            console.print(table)
            for line in summaries:
                console.print(line, markup=False)
            text = None
    if output is not None:
        from ._atomic import atomic_write_text

        atomic_write_text(output, text)
        _note(f"wrote the report to {output}")
    elif text is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
    if plot is not None:
        report.plot(plot)
        _note(f"saved the plot to {plot}")
    if demo and console is not None:
        console.print(
            "Your own network: save one array per layer plus 'labels' (bundlelab.io.save_dump) "
            "and run bundlelab analyze FILE.npz; --format json for the full report.",
            style="dim", markup=False,
        )


def _demo_intro(dump: Path, n_samples: int) -> str:
    from .io.demo import NETWORKS

    return (
        f"Demo: {n_samples} digit images (8x8 pixels, 10 classes) through two random ReLU "
        f"networks (He-normal weights, fixed seed): {_describe_networks(NETWORKS)}. "
        f"Activations saved to {dump}."
    )


@app.command()
def audit(
    model: Path = typer.Argument(..., metavar="MODEL", show_default=False, help=HELP["model"]),
    data: Path = typer.Option(..., "--data", "-d", show_default=False, help=HELP["data"]),
    labels: str = typer.Option("labels", "--labels", help=HELP["labels"]),
    samples: int = typer.Option(2048, "--samples", "-n", min=1, help=HELP["samples"]),
    seed: int = typer.Option(0, "--seed", help=HELP["seed"]),
    layers: Optional[List[str]] = typer.Option(
        None, "--layers", "-l", show_default=False, help=HELP["audit_layers"]
    ),
    all_nodes: bool = typer.Option(False, "--all-nodes", help=HELP["all_nodes"]),
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    weight_amplitude: Optional[float] = typer.Option(
        None, "--weight-amplitude", show_default=False, help=HELP["model_weight_amplitude"]
    ),
    mode: Mode = MODE,
    gamma: float = GAMMA,
    epsilon: float = EPSILON,
    nonfinite: Nonfinite = NONFINITE,
    fmt: Optional[Format] = FORMAT,
    output: Optional[Path] = OUTPUT,
    plot: Optional[Path] = PLOT,
    providers: Provider = typer.Option(Provider.cpu, "--providers", help=HELP["providers"]),
    run_batch_size: Optional[int] = typer.Option(
        None, "--run-batch-size", min=1, show_default=False, help=HELP["run_batch_size"]
    ),
) -> None:
    """Find conflicting bundles inside an ONNX model, run by onnxruntime on your data.

    MODEL is an ONNX file (ONNX only: export a PyTorch model with torch.onnx.export, a Keras
    model with tf2onnx; a TorchScript file is not read). Every activation output (Relu,
    Sigmoid, Tanh, Gelu, ...) except the logits is a layer; --all-nodes taps every node.
    The model runs in batches on a seeded random subset of --samples samples of DATA, and each
    layer's outputs are bundled as by analyze (w defaults to the model's largest weight).
    """
    options = _bundle_options(
        mode=mode.value, learning_rate=lr, batch_size=batch_size,
        weight_amplitude=1.0 if weight_amplitude is None else weight_amplitude,
        gamma=gamma, epsilon=epsilon, nonfinite=nonfinite.value, device="auto",
    )
    out_format = _output_format(fmt, output)
    import numpy as np

    from .adapters import measure_bundles
    from .adapters.onnx import OnnxAdapter, load_data, load_model
    from .io import select_layers

    onnx_model = load_model(model)
    adapter = OnnxAdapter(all_nodes=all_nodes, providers=providers.value)
    available = adapter.layer_names(onnx_model)
    try:
        names = select_layers(available, layers, where=model.name)
    except BundleLabError as exc:
        hint = "" if all_nodes else " (only activation outputs are layers; --all-nodes taps all)"
        raise BundleLabError(f"{exc}{hint}") from None
    inputs, targets = load_data(data, [i.name for i in onnx_model.inputs], labels_key=labels)
    if samples < len(targets):
        chosen = np.sort(np.random.default_rng(seed).choice(len(targets), samples, replace=False))
        inputs = {name: array[chosen] for name, array in inputs.items()}
        targets = targets[chosen]
    onnx_model.feeds(inputs)  # a shape or type that does not fit fails before the first batch
    taps = {tap.layer: tap for tap in adapter.layers(onnx_model)}
    step = onnx_model.fixed_batch_size or run_batch_size or _run_batch_size(
        onnx_model.sample_bytes([taps[name] for name in names])
    )
    tracked = _TrackedAdapter(adapter, n_samples=len(targets), batch_size=step)
    with tracked.progress:
        report = measure_bundles(
            tracked, onnx_model, inputs, targets, layers=[_literal(name) for name in names],
            batch_size=step, train_batch_size=options.pop("batch_size"),
            weight_amplitude=weight_amplitude,
            **{key: value for key, value in options.items() if key != "weight_amplitude"},
        )
    _emit_report(
        report, out_format, output=output, plot=plot, bundle_ids=False,
        title=f"{model.name} on {len(targets)} samples of {data.name}, "
        f"{_describe_params(report.params)}",
        shapes=tracked.shapes, intro=None,
    )


def _run_batch_size(sample_bytes: int | None) -> int:
    if sample_bytes is None:
        return 64
    return int(max(1, min(256, AUDIT_BATCH_BYTES // max(sample_bytes, 1))))


def _literal(name: str) -> str:
    """A glob pattern that matches exactly ``name`` (tensor names may hold '[', '*', '?')."""
    return re.sub(r"([*?\[])", r"[\1]", name)


class _TrackedAdapter:
    """An adapter that advances a progress bar per batch and notes each layer's shape."""

    def __init__(self, adapter, *, n_samples: int, batch_size: int):
        self.name = adapter.name
        self._adapter = adapter
        self.n_batches = -(-n_samples // batch_size)
        self.progress = _Progress(n_samples, "running the model", note_every=NOTE_EVERY_S)
        self.shapes: dict[str, tuple] = {}

    def layer_names(self, model, inputs=None):
        return self._adapter.layer_names(model, inputs)

    def weight_amplitude(self, model):
        return self._adapter.weight_amplitude(model)

    def iter_layer_outputs(self, model, inputs, *, layers, batch_size):
        batches = self._adapter.iter_layer_outputs(
            model, inputs, layers=layers, batch_size=batch_size
        )
        for index in itertools.count(1):
            if index <= self.n_batches:
                self.progress.describe(f"batch {index}/{self.n_batches}")
            item = next(batches, None)
            if item is None:
                return
            outputs = item[0] if isinstance(item, tuple) else item
            for layer, value in outputs.items():
                self.shapes.setdefault(layer, tuple(value.shape[1:]))
            yield item
            self.progress.advance(int(next(iter(outputs.values())).shape[0]))


@app.command()
def info(
    dump: Path = typer.Argument(..., metavar="DUMP", help=HELP["dump"]),
    labels: str = typer.Option("labels", "--labels", help=HELP["labels"]),
) -> None:
    """List the layers of an activation dump (shape, dtype, size) and its labels, reading none."""
    from rich.table import Table
    from rich.text import Text

    from .io import open_dump

    with open_dump(dump, labels_key=labels) as opened:
        table = Table(title=Text(f"{opened.path.name} ({opened.format})"), title_justify="left")
        for column in ("layer", "samples", "shape", "dtype", "size"):
            table.add_column(column, justify="left" if column in ("layer", "dtype") else "right")
        for name in opened.layer_names:
            layer = opened.info(name)
            shape = _shape(layer.shape[1:])
            table.add_row(Text(name), str(layer.n_samples), shape, layer.dtype, _size(layer.nbytes))
        values = opened.labels
        n_classes = len(set(values.tolist()))
        console = _stdout_console()
        console.print(table)
        console.print(
            f"{len(opened)} layers; labels {labels!r}: {len(values)} samples, {n_classes} classes",
            markup=False,
        )


# -- helpers ----------------------------------------------------------------------------------


def _bundle_options(**options) -> dict:
    """Validate the numeric options up front, naming the CLI flag in the error."""
    from .bundles import BundleOptions

    try:
        BundleOptions(**options)
    except BundleLabError as exc:
        message = str(exc)
        for name, flag in OPTION_FLAGS.items():
            message = message.replace(f"The {name!r} parameter", f"The '{flag}' option")
        raise BundleLabError(message) from None
    return options


def _output_format(fmt: Optional[Format], output: Optional[Path]) -> str:
    if fmt is not None:
        return fmt.value
    suffix = output.suffix.lower() if output is not None else ""
    return {".json": "json", ".csv": "csv"}.get(suffix, "table")


def _describe_params(params: dict) -> str:
    if params.get("mode") == "threshold":
        rule = f"threshold mode, gamma={params['gamma']:g}"
    else:
        rule = f"resolution mode, w={params.get('weight_amplitude', 1.0):g}"
    return f"{rule}, lr={params.get('learning_rate'):g}, batch size {params.get('batch_size')}"


def _describe_networks(networks: dict) -> str:
    return ", ".join(
        f"{name} = {len(widths)} layers of width {widths[0]}" for name, widths in networks.items()
    )


def _shape(shape: tuple) -> str:
    return "x".join(str(s) for s in shape) if shape else "1"


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""


def _marker() -> str:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return "\u25b6" if encoding.startswith("utf") else ">"


def _table(report, shapes: dict, *, title: str):
    from rich.table import Table
    from rich.text import Text

    first = report.first_conflicting
    marker = _marker()
    excluded = any(result.n_excluded for result in report)
    caption = f"{marker} first conflicting layer" if first else None
    table = Table(title=Text(title), title_justify="left", caption=caption, caption_justify="left")
    table.add_column("", width=1, no_wrap=True)
    table.add_column("layer", no_wrap=True)
    table.add_column("shape", justify="right")
    table.add_column("bundles", justify="right")
    table.add_column("conflicting", justify="right")
    table.add_column("bundle entropy", justify="right")
    table.add_column("ln(Nc)", justify="right")
    table.add_column("largest bundle", justify="right")
    if excluded:
        table.add_column("excluded", justify="right")
    group = None
    for result in report:
        top = result.layer.split("/", 1)[0] if "/" in result.layer else None
        if group is not None and top != group:
            table.add_section()
        group = top
        style = "red" if result.is_conflicting else None
        share = result.largest_bundle / max(result.n_samples, 1)
        row = [
            marker if first is not None and result is first else "",
            Text(result.layer),
            _shape(shapes.get(result.layer, (result.n_features,))),
            str(result.n_bundles),
            str(result.n_conflicting),
            f"{result.entropy:.4f}",
            f"{result.max_entropy:.4f}",
            f"{result.largest_bundle} ({share:.0%})",
        ]
        if excluded:
            row.append(str(result.n_excluded))
        table.add_row(*row, style=style)
    return table


def _summaries(report, *, per_network: bool) -> list[str]:
    """One sentence per report, or per network (top-level name) for the demo."""
    if not per_network:
        return [_summary(report.layers)]
    groups: dict[str, list] = {}
    for result in report:
        groups.setdefault(result.layer.split("/", 1)[0], []).append(result)
    return [_summary(results, network=name) for name, results in groups.items()]


def _summary(results: list, *, network: str | None = None) -> str:
    who = f"{network}: " if network else ""
    first = next((result for result in results if result.is_conflicting), None)
    if first is None:
        return (
            f"{who}no conflicting layer: in all {len(results)} layers every bundle holds "
            "samples of a single class."
        )
    index = results.index(first)
    text = (
        f"{who}the first conflicting layer is {first.layer} (layer {index + 1} of {len(results)}): "
        f"{first.n_conflicting} of its {first.n_bundles} bundles mix classes, bundle entropy "
        f"{first.entropy:.3f} of at most ln({first.n_classes}) = {first.max_entropy:.3f}."
    )
    collapsed = next((i for i, result in enumerate(results) if result.fully_conflicting), None)
    if collapsed is not None:
        layer = results[collapsed].layer
        if all(result.fully_conflicting for result in results[collapsed:]):
            text += f" From {layer} on, every sample is in one single bundle."
        else:
            text += f" {layer} puts every sample in one single bundle."
    return text


def _stdout_console():
    from rich.console import Console

    # Off a terminal rich would wrap at 80 columns; a report is more useful unwrapped.
    return Console(width=None if sys.stdout.isatty() else 120)


def _render_plain(table, lines: list[str]) -> str:
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=120, color_system=None, force_terminal=False)
    console.print(table)
    for line in lines:
        console.print(line)
    return buffer.getvalue()


def _note(message: str) -> None:
    sys.stderr.write(message + "\n")


class _Progress:
    """A rich progress bar over samples on a terminal's stderr; off a terminal, plain lines on
    stderr once the run is long (at most one per ``note_every`` seconds); never anything on
    stdout."""

    def __init__(self, total_rows: int, description: str, *, note_every: float = 0.0):
        self.total_rows = total_rows
        self.description = description
        self.note_every = note_every
        self.started = time.perf_counter()
        self._noted = -float("inf")
        self._bar = None

    def __enter__(self) -> "_Progress":
        if sys.stderr.isatty():
            from rich.console import Console
            from rich import progress

            self._bar = progress.Progress(
                progress.TextColumn("{task.description}"), progress.BarColumn(),
                progress.MofNCompleteColumn(), progress.TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total_rows)
        return self

    def describe(self, description: str) -> None:
        """Say what runs now: on the bar, or as a line on stderr once the run is long."""
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(self._task, description=description)
        elif now - self.started > LONG_RUN_S and now - self._noted >= self.note_every:
            self._noted = now
            _note(f"bundlelab: {description} ({now - self.started:.0f} s)")

    def advance(self, n_rows: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n_rows)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def _per_layer(progress: _Progress, n_layers: int):
    """The ``progress(layer, n_rows)`` callback of :func:`bundlelab.io.analyze_dump`."""
    started = 0

    def on_rows(layer: str, n_rows: int) -> None:
        nonlocal started
        if n_rows == 0:
            started += 1
            progress.describe(f"layer {started}/{n_layers} {layer}")
        else:
            progress.advance(n_rows)

    return on_rows


# -- entry point ------------------------------------------------------------------------------


def _click_exceptions():
    """The click exception classes typer raises (typer >= 0.16 vendors its own click)."""
    return sys.modules[typer.BadParameter.__module__]


def _error(message: str) -> None:
    sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["--help"]
    exceptions = _click_exceptions()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="bundlelab", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except BundleLabError as exc:
        _error(exc)
    except exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _error(exc.format_message().replace("Value error, ", "") + hint)
    except exceptions.ClickException as exc:
        _error(exc.format_message())
    except SystemExit as exc:  # typer exits itself on a broken pipe
        return exc.code if isinstance(exc.code, int) else 1
    except (typer.Abort, KeyboardInterrupt):
        _error("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `bundlelab analyze ... | head`
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 1
    except MemoryError:
        _error("out of memory: pass --chunk-rows N to stream the layers in chunks of N samples")
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}")
    except Exception as exc:  # noqa: BLE001 - a bug: one line unless debugging
        if os.environ.get("BUNDLELAB_DEBUG"):
            raise
        _error(
            f"internal error ({type(exc).__name__}: {exc}); rerun with BUNDLELAB_DEBUG=1 for the "
            "traceback and please report it"
        )
        return 1
    return 2


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``bundlelab`` script."""
    sys.exit(run(argv))


# The training and search commands live in their own modules; importing them registers them.
from . import cli_search, cli_training  # noqa: E402,F401

if __name__ == "__main__":
    main()
