"""Random augmentation of a batch, in numpy, so every backend trains on the same pixels."""

from __future__ import annotations

import numpy as np

from .._validation import check_bool, check_int, check_positive_float, checked_keywords


@checked_keywords
def augment_batch(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_padding: int = 0,
    flip: bool = False,
    brightness: float = 0.0,
) -> np.ndarray:
    """A randomly cropped, flipped and brightened copy of a batch of standardised images.

    Parameters
    ----------
    x : ndarray of shape (batch, channels, height, width) or (batch, features)
        Standardised inputs (mean 0, std 1 per channel), so zero padding is the mean colour
        and brightness is in units of one standard deviation.
    rng : numpy.random.Generator
    crop_padding : int, default=0
        Pad every side by this many zeros, then crop a random window of the original size.
    flip : bool, default=False
        Mirror each image left-right with probability 1/2.
    brightness : float, default=0.0
        Add one ``U(-brightness, brightness)`` offset per image.

    Returns
    -------
    ndarray, same shape and dtype as ``x``
        Flat inputs (2-D) are returned unchanged.
    """
    crop_padding = check_int("crop_padding", crop_padding, low=0)
    flip = check_bool("flip", flip)
    brightness = check_positive_float("brightness", brightness, allow_zero=True)
    if x.ndim != 4 or not (crop_padding or flip or brightness):
        return x
    n, _, height, width = x.shape
    out = x
    if crop_padding:
        p = crop_padding
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        top = rng.integers(0, 2 * p + 1, size=n)
        left = rng.integers(0, 2 * p + 1, size=n)
        # One gather for the whole batch: row and column indices of each sample's window.
        rows = (top[:, None] + np.arange(height))[:, None, :, None]
        cols = (left[:, None] + np.arange(width))[:, None, None, :]
        out = padded[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None], rows, cols]
    if flip:
        mirrored = rng.random(n) < 0.5
        out = out.copy() if out is x else out
        out[mirrored] = out[mirrored, :, :, ::-1]
    if brightness:
        offsets = rng.uniform(-brightness, brightness, size=(n, 1, 1, 1)).astype(x.dtype)
        out = out + offsets
    return np.ascontiguousarray(out, dtype=x.dtype)
