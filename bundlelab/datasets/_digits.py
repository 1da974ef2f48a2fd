"""scikit-learn's embedded 8x8 digits, split 75/25 the same way every time."""

from __future__ import annotations

import numpy as np

from ._dataset import RawSplits

CLASSES = tuple(str(digit) for digit in range(10))
TEST_FRACTION = 0.25


def load_digits_splits(folder=None) -> RawSplits:
    """The 1,797 digits as 1,347 training and 450 test images (1, 8, 8), pixel values 0..16.

    The split is ``train_test_split(..., test_size=0.25, random_state=0, stratify=labels)``;
    both splits keep the original sample order.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = images.reshape(-1, 1, 8, 8).astype(np.uint8)  # intensities are the integers 0..16
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                   random_state=0, stratify=labels)
    train, test = np.sort(train), np.sort(test)
    labels = labels.astype(np.int64)
    return RawSplits(images[train], labels[train], images[test], labels[test], CLASSES)
