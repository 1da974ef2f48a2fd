"""Optimizers for training specs in Keras: the paper's Ranger (RAdam + Lookahead), Adam, AdamW,
SGD, step for step as the PyTorch backend's (:mod:`bundlelab.adapters.torch`).

``"ranger"`` is :class:`RAdam` (epsilon 1e-6, decoupled weight decay) inside :class:`Lookahead`
(k=6, alpha=0.5); ``"adam"`` is :class:`TorchAdam` with weight decay as an L2 penalty
(``torch.optim.Adam``); ``"adamw"`` is :class:`TorchAdam` with decoupled weight decay
(``torch.optim.AdamW``); ``"sgd"`` is :class:`L2SGD` (momentum 0.9, L2 weight decay as in
``torch.optim.SGD``).  Keras 3 has neither RAdam nor Lookahead, its Adam adds epsilon before
the bias correction, and its ``weight_decay`` is always decoupled, hence the small classes
here.  They use ``keras.ops`` only, but :class:`Lookahead` has no ``stateless_apply``,
so ``"ranger"`` does not train on JAX, and :class:`RAdam` computes its per-step scalars in
float64 (which Apple's MPS lacks).
"""

from __future__ import annotations

from ..._validation import check_choice, check_float, checked_keywords
from ._import import keras

ops = keras.ops

#: the names :func:`make_optimizer` takes, as :data:`bundlelab.training.OPTIMIZERS`
OPTIMIZERS = ("ranger", "adam", "adamw", "sgd")
RANGER_EPSILON = 1e-6
LOOKAHEAD_K = 6
LOOKAHEAD_ALPHA = 0.5
SGD_MOMENTUM = 0.9


class _AdamMoments(keras.optimizers.Optimizer):
    """What Adam and RAdam share: the first and second moments ``m``, ``v`` of each variable,
    updated as torch does, and the hyperparameters ``beta_1``, ``beta_2``, ``epsilon``."""

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._m = self.add_optimizer_variables(variables, "m")
        self._v = self.add_optimizer_variables(variables, "v")

    def _update_moments(self, gradient, variable):
        """Update and return ``(m, v)`` of ``variable`` for ``gradient`` (cast to its dtype)."""
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m, v = self._m[index], self._v[index]
        self.assign(m, ops.add(m, ops.multiply(_constant(1 - self.beta_1, dtype),
                                               ops.subtract(gradient, m))))
        self.assign(v, ops.add(ops.multiply(_constant(self.beta_2, dtype), v),
                               ops.multiply(_constant(1 - self.beta_2, dtype),
                                            ops.square(gradient))))
        return m, v

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


def _constant(value, dtype):
    # from the Python float: Keras would turn a bare 0.999 into float32 first, and
    # 1 - float32(0.999) is 1.3e-5 off 0.001
    return ops.convert_to_tensor(value, dtype)


@keras.saving.register_keras_serializable(package="bundlelab")
class RAdam(_AdamMoments):
    """Rectified Adam (Liu et al., 2019), step for step as ``torch.optim.RAdam``.

    While the variance of the adaptive rate is intractable (``rho_t <= 5``, the first 5 steps
    with ``beta_2 = 0.999``) the step is momentum SGD with the bias-corrected first moment;
    afterwards it is Adam's step times the rectification term ``r_t``.  ``weight_decay`` is
    Keras' (decoupled: ``w -= learning_rate * weight_decay * w`` before the step), which is
    ``torch.optim.RAdam(decoupled_weight_decay=True)``.

    Parameters
    ----------
    learning_rate : float, default=1e-3
    beta_1, beta_2 : float, default=0.9, 0.999
    epsilon : float, default=1e-8
        Added to ``sqrt(v)`` before the bias correction, as torch does.
    **kwargs
        Keras' optimizer keywords (``weight_decay``, ``name``, ...).
    """

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        m, v = self._update_moments(ops.cast(gradient, dtype), variable)
        # The step's scalars in float64, as torch computes them: rho_t is a difference of two
        # numbers near 2 / (1 - beta_2) = 1999, which float32 knows only to ~1e-4.
        t = ops.cast(self.iterations + 1, "float64")
        beta_2_t = ops.power(_constant(self.beta_2, "float64"), t)
        correction1 = 1 - ops.power(_constant(self.beta_1, "float64"), t)
        correction2 = 1 - beta_2_t
        rho_inf = 2 / (1 - self.beta_2) - 1
        rho_t = rho_inf - 2 * t * beta_2_t / correction2
        rectification = ops.sqrt(ops.maximum(  # used only where rho_t > 5; no NaN elsewhere
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t), 0.0
        ))
        step = ops.multiply(ops.divide(m, ops.cast(correction1, dtype)),
                            ops.cast(learning_rate, dtype))
        adaptive = ops.divide(ops.cast(ops.sqrt(correction2), dtype),
                              ops.add(ops.sqrt(v), _constant(self.epsilon, dtype)))
        rectified = ops.multiply(ops.multiply(step, adaptive), ops.cast(rectification, dtype))
        # rho_t <= 5 (the first 5 steps with beta_2 = 0.999): the adaptive rate's variance is
        # intractable, so the step is momentum SGD
        self.assign_sub(variable, ops.where(ops.greater(rho_t, 5.0), rectified, step))


@keras.saving.register_keras_serializable(package="bundlelab")
class TorchAdam(_AdamMoments):
    """Adam step for step as ``torch.optim.Adam`` and ``torch.optim.AdamW``.

    Keras' own Adam adds ``epsilon`` to ``sqrt(v)`` before the bias correction and torch after
    it, which differs where gradients are small; here ``epsilon`` is added after, as torch does.
    ``l2`` adds ``l2 * w`` to the gradient (``torch.optim.Adam(weight_decay=l2)``); Keras'
    ``weight_decay`` is decoupled (``w -= learning_rate * weight_decay * w`` before the step:
    ``torch.optim.AdamW(weight_decay=...)``).

    Parameters
    ----------
    learning_rate : float, default=1e-3
    beta_1, beta_2 : float, default=0.9, 0.999
    epsilon : float, default=1e-8
    l2 : float, default=0.0
    **kwargs
        Keras' optimizer keywords (``weight_decay``, ``name``, ...).
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8, l2=0.0,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(_constant(self.l2, dtype), variable))
        m, v = self._update_moments(gradient, variable)
        # the bias corrections in float64, as torch computes them (in Python floats)
        t = ops.cast(self.iterations + 1, "float64")
        correction1 = 1 - ops.power(_constant(self.beta_1, "float64"), t)
        correction2 = 1 - ops.power(_constant(self.beta_2, "float64"), t)
        step_size = ops.cast(ops.divide(ops.cast(learning_rate, "float64"), correction1), dtype)
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.cast(ops.sqrt(correction2), dtype)),
                              _constant(self.epsilon, dtype))
        self.assign_sub(variable, ops.multiply(step_size, ops.divide(m, denominator)))

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(package="bundlelab")
class Lookahead(keras.optimizers.Optimizer):
    """Lookahead (Zhang et al., 2019) around another optimizer.

    The wrapped optimizer updates the *fast* weights every step; every ``k``-th of its steps
    the *slow* weights move ``slow += alpha * (fast - slow)`` and the fast weights restart from
    them.  The slow weights start at the weights of the first step (or of :meth:`build`).
    Its variables (saved with the model) are its own followed by the wrapped optimizer's.

    Parameters
    ----------
    optimizer : keras.optimizers.Optimizer
        The inner (fast) optimizer; learning rate and iterations are its.
    k : int, default=6
    alpha : float, default=0.5
    name : str, optional
    """

    def __init__(self, optimizer, k=LOOKAHEAD_K, alpha=LOOKAHEAD_ALPHA, name=None):
        # learning rate and iterations are delegated to the inner optimizer (as Keras'
        # LossScaleOptimizer does); this 0.0 only fills the base class' slot
        super().__init__(learning_rate=0.0, name=name)
        self.inner = optimizer
        self.k, self.alpha = k, alpha

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.inner.build(variables)
        self._slow = self.add_optimizer_variables(variables, "slow")
        for slow, fast in zip(self._slow, variables):
            slow.assign(fast)

    @property
    def variables(self):
        return self._variables + self.inner.variables

    @property
    def learning_rate(self):
        return self.inner.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner.iterations

    def apply(self, grads, trainable_variables=None):
        if not self.built:  # before the inner step: the slow weights are the initial ones
            self.build(list(trainable_variables))
        self.inner.apply(grads, trainable_variables)
        ops.cond(ops.equal(ops.mod(self.inner.iterations, self.k), 0), self._synchronise,
                 lambda: None)

    def _synchronise(self):
        for slow, fast in zip(self._slow, self._trainable_variables):
            slow.assign(ops.add(slow, ops.multiply(self.alpha, ops.subtract(fast, slow))))
            fast.assign(slow)

    def get_config(self):
        return {"name": self.name, "optimizer": keras.optimizers.serialize(self.inner),
                "k": self.k, "alpha": self.alpha}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.optimizers.deserialize(config.pop("optimizer"),
                                             custom_objects=custom_objects)
        return cls(inner, **config)


@keras.saving.register_keras_serializable(package="bundlelab")
class L2SGD(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 penalty, as ``torch.optim.SGD(weight_decay=...)``.

    Keras' own ``weight_decay`` is decoupled (``w -= learning_rate * weight_decay * w``,
    outside the momentum); here ``l2 * w`` is added to the gradient before the momentum, so
    the decay accumulates in the momentum buffer as it does in torch.

    Parameters
    ----------
    learning_rate : float, default=0.01
    momentum : float, default=0.0
    l2 : float, default=0.0
    **kwargs
        Keras' SGD keywords (not ``weight_decay``).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, l2=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(ops.cast(gradient, variable.dtype),
                               ops.multiply(ops.convert_to_tensor(self.l2, variable.dtype),
                                            variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@checked_keywords
def make_optimizer(
    name: str, *, learning_rate: float, weight_decay: float = 0.0
) -> keras.optimizers.Optimizer:
    """The optimizer ``name`` (one of :data:`OPTIMIZERS`), as the PyTorch backend makes it.

    Parameters
    ----------
    name : {'ranger', 'adam', 'adamw', 'sgd'}
    learning_rate : float
    weight_decay : float, default=0.0

    Returns
    -------
    keras.optimizers.Optimizer
        ``"ranger"``: ``Lookahead(RAdam(epsilon=1e-6, weight_decay), k=6, alpha=0.5)``
        (decoupled decay); ``"adam"``: ``TorchAdam(l2=weight_decay)`` (``torch.optim.Adam``);
        ``"adamw"``: ``TorchAdam(weight_decay=weight_decay)`` (``torch.optim.AdamW``, decoupled);
        ``"sgd"``: ``L2SGD(momentum=0.9, l2=weight_decay)``.
    """
    name = check_choice("optimizer", name, OPTIMIZERS)
    rate = check_float("learning_rate", learning_rate, low=0.0, low_open=True)
    decay = check_float("weight_decay", weight_decay, low=0.0)
    if name == "ranger":
        # Keras' base optimizer takes None, not 0, for no decay
        return Lookahead(RAdam(rate, epsilon=RANGER_EPSILON, weight_decay=decay or None))
    if name == "adam":
        return TorchAdam(rate, l2=decay)
    if name == "adamw":
        return TorchAdam(rate, weight_decay=decay or None)
    return L2SGD(rate, momentum=SGD_MOMENTUM, l2=decay)
