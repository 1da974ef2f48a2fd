"""``bundlelab analyze`` and ``bundlelab info``: activation dumps saved to files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer

from .._errors import BundleLabError
from .._validation import UPDATE_FORMATS
from ._app import (
    BATCH_SIZE,
    EPSILON,
    FORMAT,
    GAMMA,
    LABELS,
    LR,
    MODE,
    NONFINITE,
    OUTPUT,
    PLOT,
    Device,
    Format,
    Mode,
    Nonfinite,
    Progress,
    app,
    bundle_options,
    choices,
    describe_params,
    emit_report,
    note,
    output_format,
    plain_text,
    printable,
    require_plot,
    shape_text,
    stdout_console,
)
from ._executor import EXECUTOR, RAY_ADDRESS, WORKERS, ExecutorName, executor_from_options

UpdateFormat = choices("UpdateFormat", UPDATE_FORMATS)

HELP = {
    "dump": (
        "Activation dump: .npz, .safetensors, .h5/.hdf5, .pt (a dict of tensors), or a "
        "directory of .npy files or of thingsvision layer folders. Or its shards (disjoint "
        "samples of the same layers): a folder of dump files, or a quoted glob such as "
        "'acts/part-*.npz'; shards are taken sorted by name in natural order (part-2 before "
        "part-10), which is the sample order."
    ),
    "weight_amplitude": (
        "w: the largest absolute weight of the model (resolution mode); 1.0 with a warning "
        "when not given."
    ),
    "update_format": (
        "Format of the weight update t = w - a*lr/|B| (auto: the activations' format, float32 "
        "for float16/bfloat16 activations, as mixed-precision training updates float32 master "
        "weights; activations: the activations' own format)."
    ),
    "order": (
        "Layer order instead of the one stored in the dump: a text file with one layer name per "
        "line, or 'layers' for the order of --layers."
    ),
    "layers": "Layers to analyse: names or glob patterns; repeat the option or use commas.",
    "device": "Where to compute (auto: the GPU when CuPy and a GPU are there).",
    "chunk_rows": "Stream every layer in chunks of N samples (default: only layers too big).",
    "bundle_ids": "Include every sample's bundle id in JSON output.",
    "demo": "Generate a demo dump (digits through a healthy and a deep narrow ReLU net).",
    "output_dir": "Where --demo writes bundlelab-demo.npz.",
}

DEMO_OUTRO = (
    "Your own network: save one array per layer plus 'labels' (bundlelab.io.save_dump) and run "
    "bundlelab analyze FILE.npz; --format json for the full report."
)


@app.command()
def analyze(
    context: typer.Context,
    dump: Optional[Path] = typer.Argument(
        None, metavar="DUMP", show_default=False, help=HELP["dump"]
    ),
    labels: str = LABELS,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    weight_amplitude: Optional[float] = typer.Option(
        None, "--weight-amplitude", show_default=False, help=HELP["weight_amplitude"]
    ),
    update_format: UpdateFormat = typer.Option(
        UpdateFormat("auto"), "--update-format", help=HELP["update_format"]
    ),
    mode: Mode = MODE,
    gamma: float = GAMMA,
    epsilon: float = EPSILON,
    layers: Optional[List[str]] = typer.Option(
        None, "--layers", "-l", show_default=False, help=HELP["layers"]
    ),
    order: Optional[str] = typer.Option(
        None, "--order", metavar="FILE|layers", show_default=False, help=HELP["order"]
    ),
    nonfinite: Nonfinite = NONFINITE,
    device: Device = typer.Option(Device("auto"), "--device", help=HELP["device"]),
    fmt: Optional[Format] = FORMAT,
    output: Optional[Path] = OUTPUT,
    plot: Optional[Path] = PLOT,
    chunk_rows: Optional[int] = typer.Option(
        None, "--chunk-rows", min=1, show_default=False, help=HELP["chunk_rows"]
    ),
    bundle_ids: bool = typer.Option(False, "--bundle-ids", help=HELP["bundle_ids"]),
    demo: bool = typer.Option(False, "--demo", help=HELP["demo"]),
    output_dir: Path = typer.Option(Path("."), "--output-dir", help=HELP["output_dir"]),
    executor: ExecutorName = EXECUTOR,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Find conflicting bundles in every layer of an activation dump.

    DUMP holds one array of shape (n_samples, ...) per layer, in network order, and one array of
    class labels. Samples whose layer outputs are equal at the float resolution of a weight
    update form a bundle; a bundle holding several classes is conflicting, and from the first
    conflicting layer on the network cannot tell those samples apart.

    Layers too big for memory are streamed in row chunks. Arrays that are not float
    activations (image ids, indices) are skipped with a note. The layer order is the one stored
    in the dump, else sorted by name (--order to give one); the report says which.

    A dump written as shards (one file per data-parallel worker, say) is analysed shard by
    shard where --executor runs its tasks (here, local processes or Ray), and the per-sample
    fingerprints are merged in shard order: the report equals the one of the concatenated dump.

    Try it: bundlelab analyze --demo
    """
    if demo == (dump is not None):
        raise BundleLabError(
            "pass an activation dump (bundlelab analyze DUMP) or --demo, not both"
            if demo else "missing DUMP: pass an activation dump, or --demo to try a generated one"
        )
    options = bundle_options(
        mode=mode.value, learning_rate=lr, batch_size=batch_size, gamma=gamma, epsilon=epsilon,
        nonfinite=nonfinite.value, device=device.value,
    )
    # only what the command line gave counts as given (report params["sources"])
    if weight_amplitude is not None:
        options.update(bundle_options(weight_amplitude=weight_amplitude))
    if _source(context, "update_format") == "given":
        options.update(bundle_options(update_format=update_format.value))
    sources = {"learning_rate": _source(context, "lr"),
               "batch_size": _source(context, "batch_size")}
    out_format = output_format(fmt, output)
    require_plot(plot)
    if demo:
        from ..io.demo import demo_weight_amplitude, write_demo_dump

        dump = Path(write_demo_dump(output_dir))
        if weight_amplitude is None:  # the demo knows its networks' weights
            weight_amplitude = demo_weight_amplitude()
            options.update(bundle_options(weight_amplitude=weight_amplitude))
            sources["weight_amplitude"] = "the demo networks' weights"
    from ..io import analyze_dump, open_dump
    from ..io.analysis import W_NOT_GIVEN, ordered_selection
    from ..io.shards import shard_paths

    shards = shard_paths(dump)
    if shards is not None:
        report, shapes = _analyze_shards(
            shards, executor_from_options(executor, workers, ray_address), labels=labels,
            layers=layers, order=order, chunk_rows=chunk_rows, sources=sources, options=options,
        )
        if weight_amplitude is None and mode.value == "resolution":
            note(f"warning: {W_NOT_GIVEN}")
        emit_report(
            report, out_format, output=output, plot=plot, bundle_ids=bundle_ids,
            title=f"{printable(dump.name)} ({len(shards)} shards), {describe_params(report)}, "
            f"layer order: {report.params['layer_order']}",
            shapes=shapes,
        )
        return
    if executor.value != "inprocess" or workers is not None or ray_address is not None:
        note("note: --executor, --workers and --ray-address apply to a sharded dump (a folder "
             "of dump files or a glob); this single dump is analysed in this process")

    with open_dump(dump, labels_key=labels) as opened:
        names, order_text = ordered_selection(opened, layers, order)
        if order is not None:  # the order was applied here: analyse the names as they stand
            opened.reorder(names)
        infos = [opened.info(name) for name in names]
        with Progress(sum(info.n_samples for info in infos), "analysing") as progress:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=W_NOT_GIVEN[:20])
                report = analyze_dump(
                    opened, layers=layers, chunk_rows=chunk_rows, sources=sources,
                    progress=_per_layer(progress, len(infos)), **options,
                )
        report.params["layer_order"] = order_text
        shapes = {info.name: info.shape[1:] for info in infos}
        n_labels = len(opened.labels)
    if weight_amplitude is None and mode.value == "resolution":
        note(f"warning: {W_NOT_GIVEN}")

    emit_report(
        report, out_format, output=output, plot=plot, bundle_ids=bundle_ids,
        title=f"{printable(dump.name)}, {describe_params(report)}, layer order: {order_text}",
        shapes=shapes,
        intro=_demo_intro(dump, n_labels) if demo else None,
        outro=DEMO_OUTRO if demo else None,
    )


def _analyze_shards(shards, executor, *, labels, layers, order, chunk_rows, sources, options):
    """The report of the shards of a dump and each layer's shape (of the first shard)."""
    from ..io import analyze_dump, open_dump
    from ..io.analysis import W_NOT_GIVEN

    with executor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=W_NOT_GIVEN[:20])
            report = analyze_dump(
                shards, labels_key=labels, layers=layers, order=order, chunk_rows=chunk_rows,
                sources=sources, executor=executor, **options,
            )
    with open_dump(shards[0], labels_key=labels) as first:
        shapes = {name: first.info(name).shape[1:] for name in report.names}
    return report, shapes


def _source(context: typer.Context, key: str) -> str:
    """'given' when the option was on the command line, else 'default'."""
    source = context.get_parameter_source(key)
    return "given" if source is not None and source.name == "COMMANDLINE" else "default"


def _demo_intro(dump: Path, n_samples: int) -> str:
    from ..io.demo import NETWORKS

    networks = ", ".join(
        f"{name} = {len(widths)} layers of width {widths[0]}" for name, widths in NETWORKS.items()
    )
    return (
        f"Demo: {n_samples} digit images (8x8 pixels, 10 classes) through two random ReLU "
        f"networks (He-normal weights, fixed seed): {networks}. Activations saved to {dump}."
    )


def _per_layer(progress: Progress, n_layers: int):
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


@app.command()
def info(
    dump: Path = typer.Argument(..., metavar="DUMP", show_default=False, help=HELP["dump"]),
    labels: str = LABELS,
) -> None:
    """List the arrays of an activation dump (shape, dtype, size, role), its labels and layer
    order, reading no layer. Works on a dump without labels: it says which arrays could be."""
    from rich.table import Table

    from ..io import open_dump
    from ..io.dumps import FLOAT_DTYPES

    with open_dump(dump, labels_key=labels) as opened:
        candidates = opened.label_candidates()
        table = Table(title=plain_text(f"{opened.path.name} ({opened.format})"),
                      title_justify="left")
        for column in ("array", "samples", "shape", "dtype", "size", "role"):
            table.add_column(column, justify="right" if column in ("samples", "size") else "left")
        layers = set(opened.layer_names)
        n_layers = 0
        for name, array in opened.arrays.items():
            if not array.shape:  # scalars (a step counter, h5py.Empty) hold no samples
                continue
            role = _role(name, array, opened, layers, candidates, FLOAT_DTYPES)
            n_layers += role == "layer"
            table.add_row(plain_text(name), str(array.n_samples), shape_text(array.shape[1:]),
                          plain_text(array.dtype), _size(array.nbytes), role)
        console = stdout_console()
        console.print(table)
        summary = f"{n_layers} layers, layer order: {opened.order}; "
        if opened.has_labels:
            values = opened.labels
            summary += (f"labels {opened.labels_key!r}: {len(values)} samples, "
                        f"{_n_classes(values)} classes")
        elif candidates:
            listed = ", ".join(repr(name) for name in candidates[:6])
            summary += (f"no labels array {labels!r}; could be labels: {listed} "
                        f"(pass --labels {candidates[0]})")
        else:
            summary += (f"no labels array {labels!r}, and none could be labels (a 1-D integer "
                        "or string array with one value per sample): save the class labels")
        console.print(plain_text(summary))


def _role(name, array, dump, layers, candidates, float_dtypes) -> str:
    """What an array is to the analysis: layer, labels, a label candidate, or left out."""
    if dump.has_labels and name == dump.labels_key:
        return "labels"
    if name not in layers:
        return "scalar" if not array.shape else "not listed in the order"
    if array.dtype not in float_dtypes:
        return "could be labels (skipped)" if name in candidates else "skipped: not float"
    return "layer"


def _n_classes(labels) -> int:
    import numpy as np

    try:
        # return_counts: numpy's plain np.unique asks np.ma.is_masked first, which imports
        # numpy.ma (a fifth of numpy's import) into a process that never uses it
        return int(np.unique(labels, return_counts=True)[0].shape[0])
    except TypeError:  # values that do not sort
        return len(set(labels.tolist()))


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""
