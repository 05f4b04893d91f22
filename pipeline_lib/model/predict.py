"""Monte Carlo prediction: S weight draws in one compiled call, the predictive mixture, paths.

All values here are in model space (transformed, standardised target); see
:mod:`pipeline_lib.model.forecast` for units and the output contract.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from pipeline_lib.contract import QUANTILE_LEVELS, sample_quantiles
from pipeline_lib.data.features import LAG_COLUMN, neutral_context
from pipeline_lib.model.layers import TILED
from pipeline_lib.model.network import BayesianForecaster, choose_strategy

_COMPILED: weakref.WeakKeyDictionary[BayesianForecaster, dict] = weakref.WeakKeyDictionary()


def _compiled(model: BayesianForecaster, key: tuple, build):
    cache = _COMPILED.setdefault(model, {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


@dataclass(frozen=True)
class PredictiveSamples:
    """Samples of the predictive mixture for ``B`` windows.

    ``samples``: ``(S * k, B)`` draws of y (k per weight draw); ``draw_means`` and
    ``draw_variances``: ``(S, B)`` mean and variance of y under each weight draw.
    """

    samples: np.ndarray
    draw_means: np.ndarray
    draw_variances: np.ndarray

    @property
    def epistemic_variance(self) -> np.ndarray:
        """Variance of the sampled means (uncertainty about the weights): ``(B,)``."""
        return self.draw_means.var(axis=0)

    @property
    def aleatoric_variance(self) -> np.ndarray:
        """Mean of the sampled variances (noise the model expects in the data): ``(B,)``."""
        return self.draw_variances.mean(axis=0)


@dataclass(frozen=True)
class PredictiveDistribution:
    """Summary of the predictive mixture, each array of shape ``(B,)``; ``quantiles``: ``(Q, B)``."""

    mean: np.ndarray
    std: np.ndarray
    epistemic_variance: np.ndarray
    aleatoric_variance: np.ndarray
    levels: tuple[float, ...]
    quantiles: np.ndarray


def _one_step_sampler(model: BayesianForecaster, num_samples: int, samples_per_draw: int, strategy: str):
    @tf.function(reduce_retracing=True)
    def sample(x, context, seed):
        batch = tf.shape(x)[0]
        draws = model.draw(num_samples, batch, strategy, seed)
        params = model.forward(tf.tile(x[None], [num_samples, 1, 1, 1]), draws)
        distribution = model.distribution(params, context[None])
        y = distribution.sample(samples_per_draw, seed=tf.random.experimental.stateless_fold_in(seed, 99))
        return tf.reshape(y, [-1, batch]), distribution.mean(), distribution.variance()

    return sample


def sample_one_step(
    model: BayesianForecaster,
    inputs: np.ndarray,
    num_samples: int,
    samples_per_draw: int = 10,
    seed: int = 0,
    batch_size: int = 256,
    strategy: str = "auto",
    context: np.ndarray | None = None,
) -> PredictiveSamples:
    """Sample the one-day-ahead predictive mixture for windows ``inputs`` ``(N, T, F)``.

    ``context`` ``(N, 3)``: per-window ``[offset, scale, shift]`` for heads in units (samples are
    then in units); ignored by heads in model space.

    ``num_samples`` weight draws run as one batched call per chunk of ``batch_size``
    windows; each draw contributes ``samples_per_draw`` values of y, which sharpens the
    tail quantiles at no extra network cost.
    """
    chosen = choose_strategy(len(inputs)) if strategy == "auto" else strategy
    sampler = _compiled(model, ("one_step", num_samples, samples_per_draw, chosen),
                        lambda: _one_step_sampler(model, num_samples, samples_per_draw, chosen))
    context = neutral_context(len(inputs)) if context is None else context
    parts = [
        sampler(tf.constant(inputs[start:start + batch_size]), tf.constant(context[start:start + batch_size]),
                tf.constant([seed, start], tf.int32))
        for start in range(0, len(inputs), batch_size)
    ]
    return PredictiveSamples(
        samples=np.concatenate([p[0].numpy() for p in parts], axis=1),
        draw_means=np.concatenate([p[1].numpy() for p in parts], axis=1),
        draw_variances=np.concatenate([p[2].numpy() for p in parts], axis=1),
    )


def predict_distribution(
    model: BayesianForecaster,
    inputs: np.ndarray,
    num_samples: int,
    levels: tuple[float, ...] = QUANTILE_LEVELS,
    seed: int = 0,
    samples_per_draw: int = 10,
    context: np.ndarray | None = None,
) -> PredictiveDistribution:
    """Mean, std, epistemic/aleatoric variance and quantiles of the predictive mixture.

    Quantiles come from sampled y (not mean +- z * std of the means), so skew and heavy
    tails of the mixture are kept. Total variance = epistemic + aleatoric (law of total
    variance); ``std`` is the sample std of y, which estimates its square root.
    """
    draws = sample_one_step(model, inputs, num_samples, samples_per_draw, seed, context=context)
    return PredictiveDistribution(
        mean=draws.samples.mean(axis=0),
        std=draws.samples.std(axis=0),
        epistemic_variance=draws.epistemic_variance,
        aleatoric_variance=draws.aleatoric_variance,
        levels=tuple(levels),
        quantiles=sample_quantiles(draws.samples, levels, axis=0),
    )


def _path_steps(model: BayesianForecaster):
    @tf.function(reduce_retracing=True)
    def first_day(x, draws, context, seed):
        params, states = model.forward_with_state(tf.unstack(x, axis=2), draws)
        return model.distribution(params, context[None]).sample(seed=seed), states

    @tf.function(reduce_retracing=True)
    def next_day(row, draws, states, context, seed):
        params, states = model.forward_with_state([row], draws, states)
        return model.distribution(params, context[None]).sample(seed=seed), states

    return first_day, next_day


def sample_paths(
    model: BayesianForecaster,
    inputs: np.ndarray,
    future_rows: np.ndarray,
    num_samples: int,
    seed: int = 0,
    context: np.ndarray | None = None,
) -> np.ndarray:
    """Sample ``num_samples`` joint paths over ``H`` days for windows ``inputs`` ``(B, T, F)``.

    Each path keeps one weight draw for all its days and feeds its own sampled value back
    as the next day's lagged target. ``future_rows`` ``(H, B, F)`` holds the known parts of
    the feature rows of days 2..H+1 after the window (column 0, the lagged target, is
    replaced by the sampled value; only rows ``0..H-2`` are used).

    The window runs once; each further day is one more recurrent step from the carried
    state (``T + H - 1`` steps instead of ``H`` reruns of ``T``-step windows), so day ``h``
    is conditioned on the window plus the ``h - 1`` sampled days.

    ``context`` ``(B, 3)``, or ``(H, B, 3)`` for one per day (weekday offsets): as in
    :func:`sample_one_step`; a head in units feeds its samples back through ``head.to_lag``
    with the context of the day it was drawn for.

    Returns ``(num_samples, B, H)`` samples in the head's space.
    """
    horizon = future_rows.shape[0]
    batch = inputs.shape[0]
    base_seed = tf.constant([seed, 7], tf.int32)
    draws = model.draw(num_samples, batch, TILED, base_seed)
    first_day, next_day = _compiled(model, ("path",), lambda: _path_steps(model))
    x = tf.tile(tf.constant(inputs)[None], [num_samples, 1, 1, 1])
    known = tf.constant(future_rows)
    context = np.asarray(neutral_context(batch) if context is None else context, dtype=np.float32)
    daily = tf.constant(np.broadcast_to(context, (horizon, *context.shape)) if context.ndim == 2 else context)
    y, states = first_day(x, draws, daily[0], tf.random.experimental.stateless_fold_in(base_seed, 0))
    paths = [y]
    for h in range(1, horizon):
        # The sampled value becomes LAG_COLUMN (0) of the next row; the rest is known.
        rest = tf.broadcast_to(known[h - 1][None, :, LAG_COLUMN + 1:], [num_samples, batch, known.shape[-1] - 1])
        lag = tf.clip_by_value(model.head.to_lag(y, daily[h - 1][None]), -50.0, 50.0)
        row = tf.concat([lag[..., None], rest], axis=-1)
        y, states = next_day(row, draws, states, daily[h], tf.random.experimental.stateless_fold_in(base_seed, h))
        paths.append(y)
    return tf.stack(paths, axis=-1).numpy()
