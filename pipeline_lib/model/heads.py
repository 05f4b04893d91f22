"""Distribution heads: map the output layer's raw parameters to a predictive distribution.

Every head returns an object with ``log_prob(y)``, ``sample(n, seed)``, ``mean()`` and
``variance()``, so training (the ELBO), the Monte Carlo sampler and the sample paths treat
them alike. ``params`` has shape ``(..., num_params)``; the distribution's batch shape is
``params.shape[:-1]``.

Two target spaces (``Head.space``):

- ``model``: ``y`` is the centred, standardised target of :mod:`pipeline_lib.data.features`;
  samples go back to units through the series' scaler.
- ``units``: ``y`` is the raw count. The head needs each window's ``context`` ``(..., 3)`` =
  ``[offset, scale, shift]`` of the log-demand, so that ``log(mean) = p0 * scale + offset``
  with ``offset = loc + level * scale`` (the scaler's location plus the window's recent
  level; ``shift`` is the weekday offset its fed-back lags are net of, see
  :func:`pipeline_lib.data.features.window_context`): the network still learns on
  standardised inputs, the likelihood sees integers.

Heads (``model.head``):

- ``normal``: heteroscedastic Normal, ``scale = min_scale + softplus(p1)``.
- ``student_t``: location-scale Student-t with ``df = 2 + softplus(p2)`` learned per window
  (> 2, so the variance exists): heavy tails for spiky demand.
- ``count``: zero-inflated negative binomial on counts, ``P(0) = pi + (1 - pi) NB(0)``:
  slow movers with many zero days. Samples are integers, so are the quantiles.
- ``count_mixture``: the count head's zero inflation over a mixture of two negative
  binomials, everyday sales and bulk orders (a mean at least the everyday one).
- ``quantile``: quantile regression at ``model.quantile_levels`` by the pinball loss; the
  quantile nearest the median is ``p0`` and the others step away from it by positive gaps
  ``softplus(p1) * softplus(p_k)`` (a common scale times a shape), so they cannot cross.
  The "distribution" is the piecewise-linear quantile function through them (linear tails).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

MODEL_SPACE = "model"
UNITS_SPACE = "units"
_MAX_LOG_MEAN = 20.0  # exp(20) ~ 5e8 units a day: guards the NB against overflow


class Head(Protocol):
    """What training, the Monte Carlo sampler and the sample paths ask of a head.

    ``num_params``: raw parameters the output layer emits per window. ``space``: where
    ``y`` lives (``MODEL_SPACE`` or ``UNITS_SPACE``, see the module docstring).
    ``needs_counts``: the head only fits whole-number, non-negative demand.
    """

    num_params: int
    space: str
    needs_counts: bool

    def distribution(self, params: tf.Tensor, context: tf.Tensor | None = None):
        """``params`` ``(..., num_params)`` -> an object with ``log_prob``, ``sample``, ``mean``
        and ``variance`` whose batch shape is ``params.shape[:-1]``."""

    def to_lag(self, y: tf.Tensor, context: tf.Tensor | None = None) -> tf.Tensor:
        """A sampled ``y`` as the next day's lagged-target feature (model space)."""


# name -> head class (built by its ``from_config(min_scale, quantile_levels)``): adding a
# head is its class, one ``@register_head`` line, its test, and its name in
# ``ModelConfig.head`` (a test keeps that list equal to this registry).
HEADS: dict[str, type] = {}


def register_head(name: str):
    """Class decorator: make the head buildable as ``model.head: <name>``."""

    def add(cls):
        HEADS[name] = cls
        return cls

    return add


@register_head("normal")
class NormalHead:
    """Heteroscedastic Normal: ``loc = p[..., 0]``, ``scale = min_scale + softplus(p[..., 1])``.

    ``min_scale`` (model-space units) keeps the likelihood bounded when the network becomes
    over-confident on a run of identical values (e.g. closed Saturdays).
    """

    num_params = 2
    space = MODEL_SPACE
    needs_counts = False

    def __init__(self, min_scale: float = 1e-3):
        self.min_scale = min_scale

    @classmethod
    def from_config(cls, min_scale: float, quantile_levels: tuple[float, ...]) -> Head:
        return cls(min_scale)

    def distribution(self, params: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        return tfd.Normal(loc=params[..., 0], scale=self.min_scale + tf.nn.softplus(params[..., 1]))

    def to_lag(self, y: tf.Tensor, context: tf.Tensor | None = None) -> tf.Tensor:
        """A sampled value as the next day's lagged-target feature (model space)."""
        return y


@register_head("student_t")
class StudentTHead(NormalHead):
    """Student-t with ``df = 2 + softplus(p[..., 2])``; loc and scale as :class:`NormalHead`."""

    num_params = 3

    def distribution(self, params: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        return tfd.StudentT(df=2.0 + tf.nn.softplus(params[..., 2]), loc=params[..., 0],
                            scale=self.min_scale + tf.nn.softplus(params[..., 1]))


def _negative_binomial(log_mean: tf.Tensor, raw_count: tf.Tensor) -> tfd.NegativeBinomial:
    """NB with mean ``exp(log_mean)`` and ``total_count = 1e-2 + softplus(raw_count)``
    (small = overdispersed)."""
    total_count = 1e-2 + tf.nn.softplus(raw_count)
    return tfd.NegativeBinomial(total_count=total_count, logits=log_mean - tf.math.log(total_count))


@register_head("count")
class CountHead:
    """Zero-inflated negative binomial on raw counts (``space = 'units'``).

    ``mean = exp(p0 * scale + offset)`` of the NB part, ``total_count = 1e-2 + softplus(p1)``
    (dispersion: small = overdispersed), zero-inflation ``pi = sigmoid(p2)``.
    """

    num_params = 3
    space = UNITS_SPACE
    needs_counts = True

    @classmethod
    def from_config(cls, min_scale: float, quantile_levels: tuple[float, ...]) -> Head:
        return cls()

    def distribution(self, params: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        log_mean = self._log_mean(params, context)
        zero_share = tf.sigmoid(params[..., 2])
        return tfd.Mixture(
            cat=tfd.Categorical(probs=tf.stack([zero_share, 1.0 - zero_share], axis=-1)),
            components=[tfd.Deterministic(tf.zeros_like(log_mean)), _negative_binomial(log_mean, params[..., 1])],
        )

    def _log_mean(self, params: tf.Tensor, context: tf.Tensor | None) -> tf.Tensor:
        """``p0 * scale + offset``: the NB part's log-mean in units."""
        if context is None:
            raise ValueError(f"the {type(self).__name__} needs each window's [offset, scale, shift] context")
        return tf.minimum(params[..., 0] * context[..., 1] + context[..., 0], _MAX_LOG_MEAN)

    def to_lag(self, y: tf.Tensor, context: tf.Tensor | None = None) -> tf.Tensor:
        """Counts -> the standardised, centred log1p lag the network reads (net of the
        day's weekday offset, ``context[..., 2]``, when the context carries one)."""
        lag = (tf.math.log1p(tf.maximum(y, 0.0)) - context[..., 0]) / context[..., 1]
        return lag - context[..., 2] if context.shape[-1] > 2 else lag


@register_head("count_mixture")
class CountMixtureHead(CountHead):
    """Zero-inflated mixture of two negative binomials on raw counts (``space = 'units'``):
    everyday sales and bulk orders (wholesale customers buy in packs, several times the
    everyday level, on a few days).

    Everyday part as :class:`CountHead` (``p0``, ``p1``, zero-inflation ``p2``); the bulk
    part has weight ``sigmoid(p3)`` among the non-zero components, a mean
    ``exp(softplus(p4))`` times the everyday mean (never below it, so the two cannot swap
    roles) and its own ``total_count = 1e-2 + softplus(p5)``.
    """

    num_params = 6

    def distribution(self, params: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        log_mean = self._log_mean(params, context)
        bulk_log_mean = tf.minimum(log_mean + tf.nn.softplus(params[..., 4]), _MAX_LOG_MEAN)
        zero_share = tf.sigmoid(params[..., 2])
        bulk_share = tf.sigmoid(params[..., 3])
        probs = tf.stack([zero_share, (1.0 - zero_share) * (1.0 - bulk_share), (1.0 - zero_share) * bulk_share], -1)
        return tfd.Mixture(
            cat=tfd.Categorical(probs=probs),
            components=[tfd.Deterministic(tf.zeros_like(log_mean)), _negative_binomial(log_mean, params[..., 1]),
                        _negative_binomial(bulk_log_mean, params[..., 5])],
        )


@register_head("quantile")
class QuantileHead(NormalHead):
    """Non-crossing quantiles at ``levels`` trained by the pinball loss (model space)."""

    def __init__(self, levels: tuple[float, ...], min_scale: float = 1e-3):
        super().__init__(min_scale)
        self.levels = tuple(float(level) for level in levels)
        self.num_params = len(self.levels) + 1  # anchor, common scale, one shape per gap
        self.anchor = int(np.argmin(np.abs(np.asarray(self.levels) - 0.5)))  # index of the median-most level

    @classmethod
    def from_config(cls, min_scale: float, quantile_levels: tuple[float, ...]) -> Head:
        return cls(quantile_levels, min_scale)

    def distribution(self, params: tf.Tensor, context: tf.Tensor | None = None) -> PiecewiseLinearQuantiles:
        # Anchored at the level nearest the median, the other quantiles step away from it by
        # positive gaps = a common scale (p1) times a shape (p2..): location, spread and shape
        # are separate outputs, and every level's pinball gradient reaches the common scale
        # (anchoring at the lowest level coupled location and spread, and per-gap scales got
        # only the sparse tail gradients: the spread then barely learned).
        a = self.anchor
        gaps = (self.min_scale + tf.nn.softplus(params[..., 1:2])) * tf.nn.softplus(params[..., 2:]) + 1e-6
        anchor = params[..., :1]
        below = anchor - tf.reverse(tf.cumsum(gaps[..., :a], axis=-1), axis=[-1])
        above = anchor + tf.cumsum(gaps[..., a:], axis=-1)
        return PiecewiseLinearQuantiles(tf.concat([below, anchor, above], axis=-1), self.levels)


class PiecewiseLinearQuantiles:
    """The distribution whose quantile function is linear between ``quantiles`` ``(..., K)``
    at ``levels`` ``(K,)`` and extends the outer segments linearly to levels 0 and 1.

    ``log_prob`` is the negative pinball loss summed over the levels (the log-density of an
    asymmetric-Laplace pseudo-likelihood up to constants), which is what quantile regression
    minimises; it ranks models like a log-likelihood but is not normalised.
    """

    _GRID = 200  # midpoint rule for mean and variance

    def __init__(self, quantiles: tf.Tensor, levels: tuple[float, ...]):
        self.quantiles = quantiles
        self.levels = tf.constant(levels, tf.float32)
        lv = np.asarray(levels, dtype=np.float32)
        low = quantiles[..., :1] - lv[0] * (quantiles[..., 1:2] - quantiles[..., :1]) / (lv[1] - lv[0])
        high = quantiles[..., -1:] + (1 - lv[-1]) * (quantiles[..., -1:] - quantiles[..., -2:-1]) / (lv[-1] - lv[-2])
        self._knots = np.concatenate([[0.0], lv, [1.0]]).astype(np.float32)
        self._values = tf.concat([low, quantiles, high], axis=-1)  # (..., K + 2)

    def log_prob(self, y: tf.Tensor) -> tf.Tensor:
        error = tf.convert_to_tensor(y)[..., None] - self.quantiles
        return -tf.reduce_sum(tf.maximum(self.levels * error, (self.levels - 1.0) * error), axis=-1)

    def quantile(self, u: tf.Tensor) -> tf.Tensor:
        """Quantile function at probabilities ``u`` with shape ``(n, ...)`` or the batch shape."""
        knots = tf.constant(self._knots)
        index = tf.clip_by_value(tf.searchsorted(knots, tf.reshape(u, [-1]), side="right"), 1, len(self._knots) - 1)
        index = tf.reshape(index, tf.shape(u))
        values = tf.broadcast_to(self._values, tf.concat([tf.shape(u), tf.shape(self._values)[-1:]], 0))
        right = tf.gather(values, index[..., None], batch_dims=len(u.shape))[..., 0]
        left = tf.gather(values, index[..., None] - 1, batch_dims=len(u.shape))[..., 0]
        k_right, k_left = tf.gather(knots, index), tf.gather(knots, index - 1)
        return left + (u - k_left) / (k_right - k_left) * (right - left)

    def sample(self, sample_shape=(), seed=None) -> tf.Tensor:
        shape = tf.concat([tf.reshape(tf.cast(sample_shape, tf.int32), [-1]), tf.shape(self.quantiles)[:-1]], 0)
        u = tf.random.stateless_uniform(shape, seed=seed) if seed is not None else tf.random.uniform(shape)
        return self.quantile(u)

    def _grid_values(self) -> tf.Tensor:
        u = (tf.range(self._GRID, dtype=tf.float32) + 0.5) / self._GRID
        u = tf.reshape(u, tf.concat([[self._GRID], tf.ones_like(tf.shape(self.quantiles)[:-1])], 0))
        return self.quantile(tf.broadcast_to(u, tf.concat([[self._GRID], tf.shape(self.quantiles)[:-1]], 0)))

    def mean(self) -> tf.Tensor:
        return tf.reduce_mean(self._grid_values(), axis=0)

    def variance(self) -> tf.Tensor:
        values = self._grid_values()
        return tf.math.reduce_variance(values, axis=0)


def make_head(kind: str, min_scale: float, quantile_levels: tuple[float, ...] = ()) -> Head:
    """The head registered as ``kind`` (see :data:`HEADS`)."""
    if kind == "auto":
        raise ValueError("head 'auto' is resolved from the data before a network is built "
                         "(PipelineConfig.resolved_model); pass a concrete head")
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; one of {', '.join(HEADS)}")
    return HEADS[kind].from_config(min_scale, quantile_levels)
