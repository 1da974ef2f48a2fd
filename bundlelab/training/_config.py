"""How a spec is trained: one validated, serialisable set of options shared by every backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .._errors import BundleLabError
from .._validation import (
    check_bool,
    check_choice,
    check_keywords,
    check_optional_int,
    check_positive_float,
    check_positive_int,
    check_seed,
    checked_keywords,
    short_repr,
)

#: the optimizer vocabulary, the same in every backend
OPTIMIZERS = ("ranger", "adam", "adamw", "sgd")
#: images narrower than this get no random crops by default
MIN_CROP_SIDE = 16


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training options; the defaults are the paper's setup (section 3.1).

    Parameters
    ----------
    epochs : int, default=120
        Epochs of the run (the paper: 120 for conv nets, 50 for fully connected ones).
    optimizer : {"ranger", "adam", "adamw", "sgd"}, default="ranger"
        ``"ranger"`` is RAdam (eps 1e-6, decoupled weight decay) wrapped in Lookahead
        (k=6, alpha=0.5), as the paper and the authors' code; ``"adam"`` is Adam
        (``torch.optim.Adam``, ``keras.optimizers.Adam``), ``"adamw"`` AdamW; ``"sgd"`` has
        momentum 0.9.
    learning_rate : float, default=1e-3
    weight_decay : float, default=0.01
        Decoupled from the gradient for ranger and adamw; L2 (added to the gradient) for adam
        and sgd.
    batch_size : int, default=64
        The training batch size |B| (it enters the bundle metric too).
    crop_padding : int or None, default=None
        Random crops: pad each side by this many pixels (zeros, after standardisation) and
        crop back to the input size.  None: an eighth of the image side (4 px on 32 px
        images, as is usual for CIFAR) for images of 16 px or more, and no crops on smaller
        ones (on the 8x8 digits a one-pixel shift cost a 2x32 MLP 11 points of accuracy and a
        ResNet-20 40 points in our runs).  0 turns crops off.  Applies to every image input,
        whatever the network; flat inputs are never cropped.
    flip : bool or None, default=None
        Random horizontal flips; None: as the dataset allows (never for digits).
    brightness : float, default=0.1
        Random brightness: each image gets ``+ U(-b, b) * std`` added (in standardised units);
        0 turns it off.
    augment : bool, default=True
        False turns every augmentation off.
    average_last : int, default=5
        The reported test accuracy is the mean over the last this many epochs (the paper: 5).
    n_samples : int, default=2048
        Training samples (seeded, fixed for the run) on which ``H^l(t)`` is measured after
        each epoch; as in the paper.
    measure_every : int, default=1
        Measure bundles after every this many epochs (and after the last).
    seed : int, default=0
        Seeds the weights, the shuffling and the augmentation of every epoch: a resumed run
        trains exactly as an uninterrupted one.
    device : str, default="auto"
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; ``"auto"``: the GPU when there is one.
    """

    epochs: int = 120
    optimizer: str = "ranger"
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    crop_padding: int | None = None
    flip: bool | None = None
    brightness: float = 0.1
    augment: bool = True
    average_last: int = 5
    n_samples: int = 2048
    measure_every: int = 1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        # the checks convert (numpy scalars to Python ones), so the config is JSON-ready
        checked = {
            "epochs": check_positive_int("epochs", self.epochs),
            "optimizer": check_choice("optimizer", self.optimizer, OPTIMIZERS),
            "learning_rate": check_positive_float("learning_rate", self.learning_rate),
            "weight_decay": check_positive_float("weight_decay", self.weight_decay,
                                                 allow_zero=True),
            "batch_size": check_positive_int("batch_size", self.batch_size),
            "crop_padding": check_optional_int("crop_padding", self.crop_padding, low=0),
            "flip": None if self.flip is None else check_bool("flip", self.flip),
            "brightness": check_positive_float("brightness", self.brightness, allow_zero=True),
            "augment": check_bool("augment", self.augment),
            "average_last": check_positive_int("average_last", self.average_last),
            "n_samples": check_positive_int("n_samples", self.n_samples),
            "measure_every": check_positive_int("measure_every", self.measure_every),
            "seed": check_seed("seed", self.seed),
            "device": _check_device(self.device),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes``."""
        return TrainConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready data (what a run folder records)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config of :meth:`to_dict`'s data; an unknown option is a one-line error."""
        check_keywords("TrainConfig.from_dict()", data, [f.name for f in fields(cls)])
        return cls(**data)

    def crop_for(self, input_shape: tuple) -> int:
        """Crop padding for inputs of ``input_shape`` (0 for flat inputs or no augmentation)."""
        if not self.augment or len(input_shape) != 3:
            return 0
        if self.crop_padding is not None:
            return self.crop_padding
        side = input_shape[-1]
        return side // 8 if side >= MIN_CROP_SIDE else 0


def _check_device(device: Any) -> str:
    if not isinstance(device, str) or not device.strip():
        raise BundleLabError(
            "The 'device' parameter must be 'auto', 'cpu', 'cuda' or 'cuda:N'. Got "
            f"{short_repr(device)} instead."
        )
    return device


TrainConfig.__init__ = checked_keywords(TrainConfig.__init__)  # type: ignore[method-assign]
