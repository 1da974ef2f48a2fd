"""``bundlelab analyze`` and ``bundlelab info``: activation dumps saved to files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .._errors import BundleLabError
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
    describe_params,
    emit_report,
    output_format,
    plain_text,
    printable,
    require_plot,
    shape_text,
    stdout_console,
)

HELP = {
    "dump": "Activation dump: .npz, .safetensors, .h5/.hdf5, or a directory of .npy files.",
    "weight_amplitude": "w: the largest absolute weight of the model (resolution mode).",
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
    dump: Optional[Path] = typer.Argument(
        None, metavar="DUMP", show_default=False, help=HELP["dump"]
    ),
    labels: str = LABELS,
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
    options = bundle_options(
        mode=mode.value, learning_rate=lr, batch_size=batch_size,
        weight_amplitude=weight_amplitude, gamma=gamma, epsilon=epsilon,
        nonfinite=nonfinite.value, device=device.value,
    )
    out_format = output_format(fmt, output)
    require_plot(plot)
    if demo:
        from ..io.demo import write_demo_dump

        dump = Path(write_demo_dump(output_dir))
    from ..io import analyze_dump, open_dump, select_layers

    with open_dump(dump, labels_key=labels) as opened:
        names = select_layers(opened.layer_names, layers, where=opened.path.name)
        infos = [opened.info(name) for name in names]
        with Progress(sum(info.n_samples for info in infos), "analysing") as progress:
            report = analyze_dump(
                opened, layers=names, chunk_rows=chunk_rows,
                progress=_per_layer(progress, len(infos)), **options,
            )
        shapes = {info.name: info.shape[1:] for info in infos}
        n_labels = len(opened.labels)

    emit_report(
        report, out_format, output=output, plot=plot, bundle_ids=bundle_ids,
        title=f"{printable(dump.name)}, {describe_params(report.params)}", shapes=shapes,
        intro=_demo_intro(dump, n_labels) if demo else None,
        outro=DEMO_OUTRO if demo else None,
    )


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
    """List the layers of an activation dump (shape, dtype, size) and its labels, reading none."""
    from rich.table import Table

    from ..io import open_dump

    with open_dump(dump, labels_key=labels) as opened:
        table = Table(title=plain_text(f"{opened.path.name} ({opened.format})"),
                      title_justify="left")
        for column in ("layer", "samples", "shape", "dtype", "size"):
            table.add_column(column, justify="left" if column in ("layer", "dtype") else "right")
        for name in opened.layer_names:
            layer = opened.info(name)
            table.add_row(plain_text(name), str(layer.n_samples), shape_text(layer.shape[1:]),
                          plain_text(layer.dtype), _size(layer.nbytes))
        values = opened.labels
        n_classes = _n_classes(values)
        console = stdout_console()
        console.print(table)
        console.print(plain_text(
            f"{len(opened)} layers; labels {labels!r}: {len(values)} samples, {n_classes} classes"
        ))


def _n_classes(labels) -> int:
    import numpy as np

    try:
        return int(np.unique(labels).shape[0])
    except TypeError:  # values that do not sort
        return len(set(labels.tolist()))


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""
