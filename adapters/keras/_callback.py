"""BundleCallback: record the bundles during ``model.fit``."""

from __future__ import annotations

from typing import Any

from ..._selection import announce
from ..._validation import check_positive_int, checked_keywords
from ...tracker import BundleTracker
from ._adapter import KerasAdapter
from ._audit import Measurement
from ._data import checked_inputs, training_subset
from ._import import keras
from ._taps import model_graph


class BundleCallback(keras.callbacks.Callback):
    """Record ``H^l(t)`` per layer during ``model.fit`` into a :class:`bundlelab.BundleTracker`.

    ``t`` is the number of epochs completed: 1 after the first epoch (``fit(initial_epoch=k)``
    continues the count, its first epoch ends at t = k + 1).  The hidden layers are measured
    when ``t`` is a multiple of ``every`` (``every=2``: t = 2, 4, ...), as
    :class:`bundlelab.adapters.torch.BundleHook` and :mod:`bundlelab.training` count.  Every
    measurement uses the same seeded subset of the training data (drawn once, here) and the
    optimizer's learning rate of that moment.  With ``path`` the tracker is also written as
    JSON (atomically) after each measurement and at the end of training.

    Parameters
    ----------
    x, y
        Training inputs and labels, as for :func:`audit`.
    layers, n_samples, seed, learning_rate, batch_size, weight_amplitude, mode,
    inference_batch_size
        As for :func:`audit`; pass ``batch_size`` = the ``batch_size`` given to ``fit``.  What
        the default ``layers`` picked is printed once, when training begins.
    every : int, default=1
        Measure after every ``every``-th epoch.
    path : str or path-like, optional
        Where to write the tracker's JSON (``bundlelab.tracker/1``).
    **options
        gamma, epsilon, nonfinite: see :func:`bundlelab.find_bundles`.

    Attributes
    ----------
    tracker : bundlelab.BundleTracker
        The history, one record per measurement under step ``t``.

    Examples
    --------
    >>> callback = BundleCallback(x_train, y_train, batch_size=64)   # doctest: +SKIP
    >>> model.fit(x_train, y_train, batch_size=64, epochs=5, callbacks=[callback])  # doctest: +SKIP
    >>> callback.tracker.time_averaged()                              # doctest: +SKIP
    """

    @checked_keywords
    def __init__(
        self,
        x: Any,
        y: Any,
        *,
        every: int = 1,
        layers: Any = None,
        n_samples: int | None = 2048,
        seed: int = 0,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        weight_amplitude: str | float = "model",
        mode: str = "resolution",
        inference_batch_size: int = 256,
        path: Any = None,
        **options: Any,
    ):
        super().__init__()
        self._measurement = Measurement.checked(
            BundleCallback.__init__, layers=layers, learning_rate=learning_rate,
            batch_size=batch_size, weight_amplitude=weight_amplitude, mode=mode,
            inference_batch_size=inference_batch_size, options=options,
        )
        self.every = check_positive_int("every", every)
        self.path = path
        self.tracker = BundleTracker()
        self._inputs, self._labels = training_subset(x, y, n_samples=n_samples, seed=seed)

    def on_train_begin(self, logs=None):
        # fail before the first epoch, not after it: bad shapes, unknown layer names
        checked_inputs(model_graph(self.model, self._inputs), self._inputs)
        selection = KerasAdapter(layers=self._measurement.layers).selection(
            self.model, self._inputs
        )
        if self._measurement.layers is None:  # once per fit, not once per measurement
            announce(selection.summary)

    def on_epoch_end(self, epoch, logs=None):
        t = epoch + 1  # Keras passes the index of the epoch that ended
        if t % self.every:
            return
        report = self._measurement.run(
            self.model, self._inputs, self._labels, announce_selection=False
        )
        self.tracker.record(t, report)
        if self.path is not None:
            self.tracker.to_json(self.path)

    def on_train_end(self, logs=None):
        if self.path is not None:
            self.tracker.to_json(self.path)
