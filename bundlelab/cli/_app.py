"""The typer app of ``bundlelab``: entry point, error mapping, shared options and helpers.

The command modules (``_analyze``, ``_audit``, ``_train``, ``_search``) register their commands
on :data:`app` and import only from here.  Nothing heavy is imported at module level: numba, the
kernels, h5py, safetensors, scikit-learn, matplotlib, the frameworks, onnx and onnxruntime are
imported inside the commands that use them, so ``bundlelab --help`` is instant and works with
only the core installed.  Every error is printed as one ``error: ...`` line on stderr with exit
status 2 (bad input) or 1 (a bug; ``BUNDLELAB_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import os
import sys
import time
import unicodedata
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from .._errors import BundleLabError, require
from .._validation import DEVICES, MODES, NONFINITE_POLICIES
from ._values import light_coercion

#: a run longer than this reports progress lines even when stderr is not a terminal
LONG_RUN_S = 30.0
#: off a terminal, at most one progress line per this many seconds for per-batch progress
NOTE_EVERY_S = 10.0


# -- help rendering ----------------------------------------------------------------------------


def _untyped_flags(params: list) -> list:
    """On/off flags take no value, so their help shows no type (typer would print <bool>)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose usage line names its arguments as click does (``DUMP``, ``[SPEC]``)
    and whose options are converted without pydantic where that gives the same value."""

    def get_params(self, ctx):
        return light_coercion(_untyped_flags(super().get_params(ctx)))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = param.metavar or param.name.upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


class Group(TyperGroup):
    def get_params(self, ctx):
        return light_coercion(_untyped_flags(super().get_params(ctx)))


class _Typer(typer.Typer):
    """A typer app whose commands are :class:`Command` unless told otherwise."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or Command, **kwargs)


app = _Typer(
    name="bundlelab",
    cls=Group,
    help="Find the layers that hurt a network's training: conflicting bundles in its activations.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

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


# -- choices, from the Python vocabularies ----------------------------------------------------


def choices(name: str, values) -> type[Enum]:
    """A str Enum of ``values`` (typer lists an Enum's values as the option's choices)."""
    return Enum(name, [(value, value) for value in values], type=str)


Mode = choices("Mode", MODES)
Nonfinite = choices("Nonfinite", NONFINITE_POLICIES)
Device = choices("Device", DEVICES)
Format = choices("Format", ("table", "json", "csv"))


_OPTIMIZER_NOTES = {"ranger": "RAdam + Lookahead, the paper's", "adam": "Adam", "adamw": "AdamW",
                    "sgd": "momentum 0.9"}


def _optimizer_names() -> tuple[str, ...]:
    from ..training import OPTIMIZERS

    return tuple(OPTIMIZERS)


def __getattr__(name: str):
    """``Optimizer`` and ``OPTIMIZER_HELP``, built on first use: they import
    :mod:`bundlelab.training`, which only train, autotune and search need (PEP 562)."""
    if name == "Optimizer":
        value = choices("Optimizer", _optimizer_names())
    elif name == "OPTIMIZER_HELP":
        value = "Optimizer: " + ", ".join(
            f"{opt} ({_OPTIMIZER_NOTES[opt]})" if opt in _OPTIMIZER_NOTES else opt
            for opt in _optimizer_names()
        ) + "."
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


# -- options shared by several commands (one declaration each) --------------------------------

#: keyword of BundleOptions / TrainConfig -> the CLI option that sets it (to word errors in
#: CLI terms)
FLAGS = {
    "learning_rate": "--lr",
    "batch_size": "--batch-size",
    "weight_amplitude": "--weight-amplitude",
    "gamma": "--gamma",
    "epsilon": "--epsilon",
    "n_samples": "--n-samples",
    "inference_batch_size": "--inference-batch-size",
    "seed": "--seed",
    "epochs": "--epochs",
    "weight_decay": "--weight-decay",
    "measure_every": "--measure-every",
    "device": "--device",
    "n_train": "--n-train",
    "n_test": "--n-test",
    "image_size": "--image-size",
    "width_multiplier": "--width-multiplier",
    "lam": "--lambda",
    "budget": "--budget",
    "warmup_epochs": "--warmup-epochs",
    "search_epochs": "--search-epochs",
    "retrain_epochs": "--retrain-epochs",
    "gate_learning_rate": "--gate-lr",
    "check_epochs": "--check-epochs",
    "executor": "--executor",
    "workers": "--workers",
    "address": "--ray-address",
}

HELP = {
    "labels": "Name of the array with the class labels.",
    "lr": "Training learning rate alpha.",
    "batch_size": "Training batch size |B| (it enters the bundle rule through alpha/|B|).",
    "mode": "Bundle rule: float resolution (released code) or the paper's threshold gamma.",
    "gamma": "Threshold of the paper's eq. 1 (threshold mode).",
    "epsilon": "0: exact entropy; 1e-5 reproduces the released ln(p + 1e-5).",
    "nonfinite": "Samples with NaN/Inf activations: fail, leave them out, or compare as IEEE.",
    "format": "Output format; default: from the --output suffix (.json/.csv), else table.",
    "output": "Write the report to this file (atomically) instead of stdout.",
    "plot": "Save a bar chart of bundle entropy per layer (PNG; needs bundlelab[plot]).",
    "data": "digits (embedded), or mnist:DIR, cifar10:DIR, svhn:DIR, imagefolder:DIR (local "
    "files; nothing is downloaded).",
    "width": "Width multiplier of presets (filters or units), to run small on a CPU.",
    "device": "auto, cpu, cuda or cuda:N (auto: the GPU when there is one).",
    "seed": "Seed of the weights, shuffling, augmentation and measured subset.",
    "no_augment": "Turn off random crops, flips and brightness.",
    "n_train": "Use a seeded random subset of this many training samples (default: all).",
    "n_test": "Use a seeded random subset of this many test samples (default: all).",
    "image_size": "Image side for imagefolder data (resized and centre-cropped).",
}

# analyze and audit (LR and BATCH_SIZE: every command)
LABELS = typer.Option("labels", "--labels", help=HELP["labels"])
LR = typer.Option(1e-3, "--lr", help=HELP["lr"])
BATCH_SIZE = typer.Option(64, "--batch-size", help=HELP["batch_size"])
MODE = typer.Option(Mode("resolution"), "--mode", help=HELP["mode"])
GAMMA = typer.Option(1e-8, "--gamma", help=HELP["gamma"])
EPSILON = typer.Option(0.0, "--epsilon", help=HELP["epsilon"])
NONFINITE = typer.Option(Nonfinite("raise"), "--nonfinite", help=HELP["nonfinite"])
FORMAT = typer.Option(None, "--format", "-f", show_default=False, help=HELP["format"])
OUTPUT = typer.Option(None, "--output", "-o", show_default=False, help=HELP["output"])
PLOT = typer.Option(None, "--plot", show_default=False, help=HELP["plot"])

# train, autotune and search
DATA = typer.Option("digits", "--data", help=HELP["data"])
WEIGHT_DECAY_HELP = "Weight decay: decoupled for ranger and adamw, L2 for adam and sgd."
WEIGHT_DECAY = typer.Option(0.01, "--weight-decay", help=WEIGHT_DECAY_HELP)
WIDTH = typer.Option(1.0, "--width-multiplier", help=HELP["width"])
TRAIN_DEVICE = typer.Option("auto", "--device", help=HELP["device"])
SEED = typer.Option(0, "--seed", min=0, help=HELP["seed"])
NO_AUGMENT = typer.Option(False, "--no-augment", help=HELP["no_augment"])
N_TRAIN = typer.Option(None, "--n-train", min=1, show_default=False, help=HELP["n_train"])
N_TEST = typer.Option(None, "--n-test", min=1, show_default=False, help=HELP["n_test"])
IMAGE_SIZE = typer.Option(None, "--image-size", min=1, show_default=False,
                          help=HELP["image_size"])


# -- shared helpers ---------------------------------------------------------------------------

#: Unicode categories shown escaped: controls (ESC, newline, C1), format characters (bidi
#: overrides, zero-width), surrogates (undecodable file names), line and paragraph separators
_UNPRINTABLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: object) -> str:
    """``text`` with control characters escaped as Python writes them (``\\x1b``,
    ``\\u202e``), for every name read from a file that the CLI prints: a layer named
    ``"\\x1b[2J..."`` must not clear the screen or forge the lines after it."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if unicodedata.category(char) not in _UNPRINTABLE:
            out.append(char)
        elif char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def plain_text(text: object):
    """A rich ``Text`` of ``printable(text)``: shown literally (no markup, no emoji codes)."""
    from rich.text import Text

    return Text(printable(text))


@contextmanager
def flags_in_errors() -> Iterator[None]:
    """Word a Python keyword's error in CLI terms: "The '--lr' option must be ..."."""
    try:
        yield
    except BundleLabError as exc:
        message = str(exc)
        for name, flag in FLAGS.items():
            message = message.replace(f"The {name!r} parameter", f"The '{flag}' option")
        if message == str(exc):
            raise
        raise BundleLabError(message) from None


def bundle_options(**options) -> dict:
    """Validate the bundle options up front (before any data is read), naming the CLI flag in
    the error."""
    from ..bundles import BundleOptions

    with flags_in_errors():
        BundleOptions(**options)
    return options


def require_plot(plot: Optional[Path]) -> None:
    """Fail before the work, not after it, when --plot is asked for without matplotlib."""
    if plot is not None:
        require("matplotlib", purpose="--plot", extra="plot")


def output_format(fmt: Optional[Enum], output: Optional[Path]) -> str:
    if fmt is not None:
        return fmt.value
    suffix = output.suffix.lower() if output is not None else ""
    return {".json": "json", ".csv": "csv"}.get(suffix, "table")


def load_data(data: str, *, n_train, n_test, image_size, seed):
    """A data set of :mod:`bundlelab.datasets` (train, autotune, search)."""
    # No process-wide OMP_WAIT_POLICY: it also put torch's own workers to sleep after every
    # operation (epochs 4x slower); Numba's pool is chosen per library (kernels/_threads.py).
    from ..datasets import load_dataset

    with flags_in_errors():
        return load_dataset(data, n_train=n_train, n_test=n_test, image_size=image_size,
                            seed=seed)


def describe_params(report) -> str:
    """The numbers that scale ``t`` and where each came from, for a report's title: e.g.
    ``resolution mode, float32 updates (assumed (float16 activations)), w=1 (default),
    lr=0.001 (given), |B|=64 (default)``.

    ``report`` is a :class:`~bundlelab.BundleReport` (whose layers say which update format
    was used) or its ``params`` alone (which hold the requested value, e.g. ``auto``).
    """
    params = report if isinstance(report, dict) else report.params
    sources = params.get("sources")
    sources = sources if isinstance(sources, dict) else {}

    def sourced(key: str, text: str) -> str:
        source = sources.get(key)
        return f"{text} ({source})" if source else text

    if params.get("mode") == "threshold":
        parts = [f"threshold mode, gamma={params.get('gamma', 1e-8):g}"]
    else:
        parts = ["resolution mode", sourced("update_format", _update_formats(report))]
        weight = params.get("weight_amplitude", 1.0)
        weight = "per layer" if weight == "layer" else f"{weight:g}"
        parts.append(sourced("weight_amplitude", f"w={weight}"))
    parts.append(sourced("learning_rate", f"lr={params.get('learning_rate', 1e-3):g}"))
    parts.append(sourced("batch_size", f"|B|={params.get('batch_size', 64)}"))
    return ", ".join(parts)


def _update_formats(report) -> str:
    """``"float32 updates"`` (``"float32/float64 updates"`` when layers differ) from a report's
    layers; from params alone, what was requested (a report written before the option
    computed in the activations' format)."""
    if isinstance(report, dict) or not len(report):
        params = report if isinstance(report, dict) else report.params
        requested = str(params.get("update_format", "activations"))
        return {"activations": "updates in the activations' format",
                "auto": "updates in the auto format"}.get(requested, f"{requested} updates")
    return "/".join(dict.fromkeys(result.update_format for result in report)) + " updates"


def shape_text(shape: tuple) -> str:
    return "x".join(str(s) for s in shape) if shape else "1"


def emit_report(report, out_format: str, *, output, plot, bundle_ids, title, shapes,
                intro=None, outro=None) -> None:
    """Print or write the report; notes go to stderr unless a table goes to the screen."""
    to_screen = output is None and out_format == "table"
    console = stdout_console() if to_screen else None
    if intro and console is not None:
        console.print(plain_text(intro))
    elif intro:
        note(intro)
    if out_format == "json":
        text = report.to_json(include_ids=bundle_ids)
    elif out_format == "csv":
        text = report.to_csv()
    else:
        table = _table(report, shapes, title=title)
        summaries = _summaries(report, per_network=intro is not None)
        if console is None:
            text = _render_plain(table, summaries)
        else:
            console.print(table)
            for line in summaries:
                console.print(plain_text(line))
            text = None
    if output is not None:
        from .._atomic import atomic_write_text

        atomic_write_text(output, text)
        note(f"wrote the report to {output}")
    elif text is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
    if plot is not None:
        report.plot(plot)
        note(f"saved the plot to {plot}")
    if outro and console is not None:
        console.print(plain_text(outro), style="dim")


def _marker() -> str:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return "\u25b6" if encoding.startswith("utf") else ">"


def _table(report, shapes: dict, *, title: str):
    from rich.table import Table

    first = report.first_conflicting
    marker = _marker()
    excluded = any(result.n_excluded for result in report)
    caption = f"{marker} first conflicting layer" if first else None
    table = Table(title=plain_text(title), title_justify="left", caption=caption,
                  caption_justify="left")
    table.add_column("", width=1, no_wrap=True)
    table.add_column("layer", no_wrap=True)
    for column in ("shape", "bundles", "conflicting", "bundle entropy", "ln(Nc)",
                   "largest bundle"):
        table.add_column(column, justify="right")
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
            plain_text(result.layer),
            shape_text(shapes.get(result.layer, (result.n_features,))),
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


def stdout_console(width: int = 120):
    """A rich console on stdout, ``width`` columns wide when stdout is not a terminal."""
    from rich.console import Console

    # Off a terminal rich would wrap at 80 columns and cut a wide table's cells to "…"; a
    # report or a table in a log file is more useful whole.
    return Console(width=None if sys.stdout.isatty() else width)


def _render_plain(table, lines: list[str]) -> str:
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=120, color_system=None, force_terminal=False)
    console.print(table)
    for line in lines:
        console.print(plain_text(line))
    return buffer.getvalue()


def note(message: str) -> None:
    sys.stderr.write(printable(message) + "\n")


class Progress:
    """A rich progress bar over samples on a terminal's stderr; off a terminal, plain lines on
    stderr once the run is long (at most one per ``note_every`` seconds); never anything on
    stdout.  ``total_rows`` None: the total is not known (the bar counts up)."""

    def __init__(self, total_rows: int | None, description: str, *, note_every: float = 0.0):
        self.total_rows = total_rows
        self.description = description
        self.note_every = note_every
        self.started = time.perf_counter()
        self._noted = -float("inf")
        self._bar = None

    def __enter__(self) -> "Progress":
        if sys.stderr.isatty():
            from rich import progress
            from rich.console import Console

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
            from rich.markup import escape

            self._bar.update(self._task, description=escape(printable(description)))
        elif now - self.started > LONG_RUN_S and now - self._noted >= self.note_every:
            self._noted = now
            note(f"bundlelab: {description} ({now - self.started:.0f} s)")

    def advance(self, n_rows: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n_rows)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


# -- entry point ------------------------------------------------------------------------------


def _click_exceptions():
    """The click exception classes typer raises (typer >= 0.16 vendors its own click)."""
    return sys.modules[typer.BadParameter.__module__]


#: the longest error line the CLI prints; a message quoting a huge input is cut
ERROR_MAX_CHARS = 1000


def _error(message: str) -> None:
    text = str(message)
    line = printable(" ".join(text[: 4 * ERROR_MAX_CHARS].split()))
    if len(line) > ERROR_MAX_CHARS or len(text) > 4 * ERROR_MAX_CHARS:
        line = line[: ERROR_MAX_CHARS - 40].rstrip() + f" ... (cut from {len(text):,} characters)"
    sys.stderr.write("error: " + line + "\n")
    sys.stderr.flush()


#: what lowers the memory a command needs, where an option does
_MEMORY_ADVICE = {
    "analyze": ": stream the layers in smaller chunks with --chunk-rows N",
    "audit": ": run smaller forward passes with --inference-batch-size N",
}


def _command_name(command, argv: list[str]) -> str | None:
    """The subcommand ``argv`` runs (its first word that names one)."""
    return next((word for word in argv if word in getattr(command, "commands", {})), None)


#: the module that registers each command, in the order of the help's list of commands
COMMAND_MODULES = {
    "analyze": "_analyze",
    "info": "_analyze",
    "audit": "_audit",
    "train": "_train",
    "autotune": "_train",
    "search": "_search",
}


def load_commands(argv: list[str] | None = None):
    """Register the commands ``argv`` runs on :data:`app` and return it: only the module of the
    command named by ``argv``'s first word (``bundlelab info`` imports neither the training
    nor the search code), every module for anything else (the root help, an unknown
    command, ``argv`` None).  Idempotent; the help lists the commands in a fixed order
    whichever modules were imported first."""
    import importlib

    first = next((word for word in argv or () if not word.startswith("-")), None)
    names = [COMMAND_MODULES[first]] if first in COMMAND_MODULES else COMMAND_MODULES.values()
    for name in dict.fromkeys(names):
        importlib.import_module(f"{__package__}.{name}")
    order = list(COMMAND_MODULES)

    def position(info) -> int:
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        return order.index(name) if name in order else len(order)

    app.registered_commands.sort(key=position)
    return app


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["--help"]
    load_commands(argv)
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
        _error("out of memory" + _MEMORY_ADVICE.get(_command_name(command, argv), ""))
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
