"""``bundlelab audit``: an ONNX model run by onnxruntime, a thin call to
:func:`bundlelab.adapters.onnx.audit`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from .._errors import BundleLabError
from .._validation import UPDATE_FORMATS
from ._executor import EXECUTOR, RAY_ADDRESS, WORKERS, ExecutorName, executor_from_options
from ._app import (
    BATCH_SIZE,
    EPSILON,
    FORMAT,
    GAMMA,
    LABELS,
    LR,
    MODE,
    NONFINITE,
    NOTE_EVERY_S,
    OUTPUT,
    PLOT,
    Format,
    Mode,
    Nonfinite,
    Progress,
    app,
    bundle_options,
    choices,
    describe_params,
    emit_report,
    flags_in_errors,
    output_format,
    require_plot,
)

Provider = choices("Provider", ("cpu", "cuda"))
UpdateFormat = choices("UpdateFormat", UPDATE_FORMATS)

HELP = {
    "model": "An ONNX model file (.onnx); its external data must lie in the same folder.",
    "data": "Inputs and labels: an .npz or a folder of .npy files, the inputs under the model "
    "input's name or 'x'.",
    "n_samples": "Measure a seeded random subset of this many samples (all when the data holds "
    "fewer).",
    "seed": "Seed of the random subset.",
    "layers": "Layers to measure: names or glob patterns (matched against the layer names, the "
    "tensor names with or without their leading '/', and the torch module names); repeat the "
    "option or use commas. 'all': every activation, squeeze-excitation gates and attention "
    "softmaxes included; 'blocks': the outputs of the repeated blocks (layer1.0, blocks.3) of a "
    "torch export. Default: every activation output but the gates and softmaxes.",
    "all_nodes": "Tap every node's float outputs, not only the activations' (tensors whose "
    "first axis is not the batch are skipped and named).",
    "update_format": "Format of the weight update t = w - a*lr/|B| (default: the format of "
    "the model's Conv/Gemm/MatMul weights if float32/float64, else float32; auto: the activations' format, float32 for "
    "float16/bfloat16 activations; activations: the activations' own format).",
    "weight_amplitude": "w: the largest absolute weight (default: max |value| over the "
    "model's float weights).",
    "providers": "onnxruntime execution provider (cuda needs onnxruntime-gpu).",
    "inference_batch_size": "Samples per forward pass; only bounds memory, never the result "
    "(default: as many as keep the tapped outputs near 256 MiB, at most 256; a model with a "
    "fixed batch size runs at that size).",
}


@app.command()
def audit(
    context: typer.Context,
    model: Path = typer.Argument(..., metavar="MODEL", show_default=False, help=HELP["model"]),
    data: Path = typer.Option(..., "--data", "-d", show_default=False, help=HELP["data"]),
    labels: str = LABELS,
    n_samples: int = typer.Option(2048, "--n-samples", "-n", min=1, help=HELP["n_samples"]),
    seed: int = typer.Option(0, "--seed", help=HELP["seed"]),
    layers: Optional[List[str]] = typer.Option(
        None, "--layers", "-l", show_default=False, help=HELP["layers"]
    ),
    all_nodes: bool = typer.Option(False, "--all-nodes", help=HELP["all_nodes"]),
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    weight_amplitude: Optional[float] = typer.Option(
        None, "--weight-amplitude", show_default=False, help=HELP["weight_amplitude"]
    ),
    update_format: Optional[UpdateFormat] = typer.Option(
        None, "--update-format", show_default=False, help=HELP["update_format"]
    ),
    mode: Mode = MODE,
    gamma: float = GAMMA,
    epsilon: float = EPSILON,
    nonfinite: Nonfinite = NONFINITE,
    fmt: Optional[Format] = FORMAT,
    output: Optional[Path] = OUTPUT,
    plot: Optional[Path] = PLOT,
    providers: Provider = typer.Option(Provider("cpu"), "--providers", help=HELP["providers"]),
    inference_batch_size: Optional[int] = typer.Option(
        None, "--inference-batch-size", min=1, show_default=False,
        help=HELP["inference_batch_size"],
    ),
    executor: ExecutorName = EXECUTOR,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Find conflicting bundles inside an ONNX model, run by onnxruntime on your data.

    MODEL is an ONNX file (ONNX only: export a PyTorch model with torch.onnx.export, a Keras
    model with tf2onnx; a TorchScript file is not read). Every activation output (Relu,
    Sigmoid, Tanh, Gelu, and GELU, SiLU, HardSwish or Mish written as arithmetic) except the
    logits, squeeze-excitation gates and attention softmaxes is a layer, named after the
    torch module when the export records it; stderr says what was picked and left out.
    --layers all keeps the gates, --layers blocks taps the repeated blocks' outputs,
    --all-nodes taps every node.
    The model runs in batches on a seeded random subset of --n-samples samples of DATA, and
    each layer's outputs are bundled as by analyze (w defaults to the model's largest weight).
    With --executor processes or ray the subset is cut into --workers consecutive slices, each
    run by a worker on its own copy of the model (MODEL must be where every worker can read
    it), and the report equals the one-process report.
    The same as bundlelab.adapters.onnx.audit in Python.
    """
    options = bundle_options(
        mode=mode.value, learning_rate=lr, batch_size=batch_size,
        weight_amplitude=1.0 if weight_amplitude is None else weight_amplitude,
        gamma=gamma, epsilon=epsilon, nonfinite=nonfinite.value,
    )
    options["weight_amplitude"] = weight_amplitude  # None: the model's largest weight
    for key in ("learning_rate", "batch_size"):  # the report says given or default
        if not _given(context, "lr" if key == "learning_rate" else key):
            options[key] = None
    selection = layers[0] if layers and len(layers) == 1 and layers[0] in ("all", "blocks") \
        else layers
    out_format = output_format(fmt, output)
    require_plot(plot)
    from ..adapters.onnx import audit as audit_model

    if executor.value == "inprocess" and ray_address is None:
        runner = contextlib.nullcontext()  # one pass here (--workers N: N slices in turn)
        split = {"executor": None if workers is None else "inprocess", "workers": workers}
    else:
        on_gpu = providers.value == "cuda" and executor.value == "ray"
        runner = executor_from_options(executor, workers, ray_address,
                                       resources={"num_gpus": 1} if on_gpu else None)
        split = {"executor": runner, "workers": workers}
    shapes: dict[str, tuple] = {}
    # over workers the executor shows the slices' progress: one live display on stderr
    display = Progress(None, "running the model", note_every=NOTE_EVERY_S) \
        if split["executor"] in (None, "inprocess") else _Silent()
    with runner, display as progress:
        done = {"batches": 0, "rows": 0}

        def on_batch(n_rows: int, batch_shapes: dict) -> None:
            done["batches"] += 1
            done["rows"] += n_rows
            for layer, shape in batch_shapes.items():
                shapes.setdefault(layer, tuple(shape))
            progress.advance(n_rows)
            progress.describe(f"batch {done['batches']} done, {done['rows']} samples")

        try:
            with flags_in_errors():
                report = audit_model(
                    model, data, labels_key=labels, layers=selection, all_nodes=all_nodes,
                    update_format=None if update_format is None else update_format.value,
                    n_samples=n_samples, seed=seed, inference_batch_size=inference_batch_size,
                    providers=providers.value, progress=on_batch, **split, **options,
                )
        except BundleLabError as exc:
            # the Python audit's hints name its keywords; here they are flags
            text = str(exc)
            for keyword, flag in _KEYWORD_FLAGS.items():
                text = text.replace(keyword, flag)
            if text == str(exc):
                raise
            raise BundleLabError(text) from None
    n_measured = report[0].n_samples if len(report) else 0
    emit_report(
        report, out_format, output=output, plot=plot, bundle_ids=False,
        title=f"{model.name} on {n_measured} samples of {data.name}, "
        f"{describe_params(report)}",
        shapes=shapes,
    )



#: the Python audit's keywords in its hints -> the flags that say the same
_KEYWORD_FLAGS = {
    "all_nodes=True": "--all-nodes",
    "layers='all'": "--layers all",
    "mode='resolution'": "--mode resolution",
    "executor='inprocess'": "--executor inprocess",
}


class _Silent:
    """The progress of a split audit, whose executor shows the slices' progress itself."""

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def advance(self, n_rows: int) -> None:
        pass

    def describe(self, description: str) -> None:
        pass


def _given(context: typer.Context, key: str) -> bool:
    """Whether the option was on the command line (the report says "given", else "default")."""
    source = context.get_parameter_source(key)
    return source is not None and source.name == "COMMANDLINE"
