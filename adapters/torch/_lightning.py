"""BundleCallback: BundleHook as a Lightning callback, built only where Lightning is installed."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..._errors import require
from ..._validation import check_positive_int, checked_keywords
from ...tracker import BundleTracker
from ._hook import BundleHook, _scalars


def _lightning_callback() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            Callback = require(
                "lightning.pytorch", purpose="BundleCallback", package="lightning"
            ).Callback  # raises MissingDependencyError

    class BundleCallback(Callback):
        """Lightning callback: a :class:`BundleHook` run at the end of training epochs.

        At the end of each training epoch t = ``trainer.current_epoch + 1`` (the epochs
        completed), it measures when t is a multiple of ``every``, as the hook and
        :func:`bundlelab.training.fit` do.  The hook is built on the LightningModule at the
        first epoch end; unless given, the learning rate comes from the trainer's first
        optimizer and |B| from its train dataloader (pass ``batch_size=`` when that loader has
        no ``batch_size``).  Only the global-zero process measures; the scalars also go to
        ``trainer.logger``, under step t.

        Parameters
        ----------
        data : tensor, array, (inputs, labels), Dataset or DataLoader
            The TRAINING set, as for :func:`audit`.
        labels : array-like of shape (N,), optional
        every : int, default=1
        **hook_options
            Keywords of :class:`BundleHook` (layers, n_samples, batch_size, ...).
        """

        @checked_keywords
        def __init__(self, data: Any, labels: Any = None, *, every: int = 1, **hook_options):
            super().__init__()
            self.data, self.labels = data, labels
            self.every = check_positive_int("every", every)
            self.hook_options = hook_options
            self.hook: BundleHook | None = None

        @property
        def tracker(self) -> BundleTracker | None:
            return self.hook.tracker if self.hook is not None else None

        def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
            if not getattr(trainer, "is_global_zero", True):
                return
            if self.hook is None:
                options = dict(self.hook_options)
                optimizers = getattr(trainer, "optimizers", None) or [None]
                options.setdefault("optimizer", optimizers[0])
                loader = getattr(trainer, "train_dataloader", None)
                if getattr(loader, "batch_size", None) is not None:
                    options.setdefault("train_loader", loader)
                self.hook = BundleHook(
                    pl_module, self.data, self.labels, every=self.every, **options
                )
            t = int(trainer.current_epoch) + 1
            report = self.hook(t)
            logger = getattr(trainer, "logger", None)
            if report is not None and logger is not None:
                logger.log_metrics(_scalars(report, self.hook.tag), step=t)

    BundleCallback.__module__ = __package__  # its public home: bundlelab.adapters.torch
    return BundleCallback
