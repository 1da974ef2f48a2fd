"""How a spec is trained: one validated, serialisable set of options shared by every backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .._errors import BundleLabError
from .._validation import check_choice, check_positive_float, check_positive_int

OPTIMIZERS = ("ranger", "adam", "sgd")
#: images narrower than this get no random crops by default
MIN_CROP_SIDE = 16


@dataclass(frozen=True)
class TrainConfig:
    """Training options; the defaults are the paper's setup (section 3.1).

    Parameters
    ----------
    epochs : int, default=120
        Epochs of the run (the paper: 120 for conv nets, 50 for fully connected ones).
    optimizer : {"ranger", "adam", "sgd"}, default="ranger"
        ``"ranger"`` is RAdam (eps 1e-6, decoupled weight decay) wrapped in Lookahead
        (k=6, alpha=0.5), as the paper and the authors' code; ``"sgd"`` has momentum 0.9.
    learning_rate : float, default=1e-3
    weight_decay : float, default=0.01
        Decoupled (AdamW-style) for ranger and adam, L2 for sgd.
    batch_size : int, default=64
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
    measure_samples : int, default=2048
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
    measure_samples: int = 2048
    measure_every: int = 1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive_float("learning_rate", self.learning_rate)
        check_positive_float("weight_decay", self.weight_decay, allow_zero=True)
        check_positive_int("batch_size", self.batch_size)
        if self.crop_padding is not None and not _is_int(self.crop_padding, 0):
            raise _bad("crop_padding", "None or an int in [0, inf)", self.crop_padding)
        if self.flip is not None and not isinstance(self.flip, bool):
            raise _bad("flip", "None or a bool", self.flip)
        if not isinstance(self.augment, bool):
            raise _bad("augment", "a bool", self.augment)
        check_positive_float("brightness", self.brightness, allow_zero=True)
        check_positive_int("average_last", self.average_last)
        check_positive_int("measure_samples", self.measure_samples)
        check_positive_int("measure_every", self.measure_every)
        if not _is_int(self.seed, 0):
            raise _bad("seed", "an int in [0, inf)", self.seed)
        if not isinstance(self.device, str) or not self.device:
            raise _bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'", self.device)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes``."""
        return TrainConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleLabError(
                f"unknown training option {unknown[0]!r}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def crop_for(self, input_shape: tuple) -> int:
        """Crop padding for inputs of ``input_shape`` (0 for flat inputs or no augmentation)."""
        if not self.augment or len(input_shape) != 3:
            return 0
        if self.crop_padding is not None:
            return self.crop_padding
        side = input_shape[-1]
        return side // 8 if side >= MIN_CROP_SIDE else 0


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _bad(name: str, expected: str, value: Any) -> BundleLabError:
    return BundleLabError(f"The {name!r} parameter must be {expected}. Got {value!r} instead.")
