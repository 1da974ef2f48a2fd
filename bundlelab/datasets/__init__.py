"""Image classification data sets from local files, as numpy arrays (no framework, no download).

>>> from bundlelab.datasets import load_dataset, DATASETS
>>> data = load_dataset("digits")                       # embedded in scikit-learn
>>> data.x_train.shape, data.x_train.dtype.name
((1347, 1, 8, 8), 'float32')
>>> cifar = load_dataset("cifar10:/data/cifar", n_train=5000, seed=0)   # doctest: +SKIP

Every loader returns a :class:`Dataset`: channels-first float32 images standardised per channel
with the training split's statistics, int64 labels, class names and whether horizontal flips
are a valid augmentation.  Formats: ``digits``; ``mnist`` (IDX files, optionally gzipped);
``cifar10`` (python batches, unpickled with a restricted unpickler, or the binary batches);
``svhn`` (``.mat`` files, needs SciPy); ``imagefolder`` / ``imagenette`` (``train/<class>/``
and ``val/<class>/`` images, needs Pillow).
"""

from ._dataset import Dataset
from ._load import DATASETS, load_dataset
from ._source import DatasetSource

__all__ = ["DATASETS", "Dataset", "DatasetSource", "load_dataset"]
