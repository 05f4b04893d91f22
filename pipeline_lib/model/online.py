"""Online Bayesian updates: refine a trained posterior on newly arrived days, no retraining.

Bayes' rule applied sequentially: after training, ``q_old(w)`` approximates
``p(w | D_old)``. When days ``D_new`` arrive, the posterior given both is proportional to
``p(D_new | w) p(w | D_old)``, so the old posterior *is* the prior of the update. The
variational update maximises

    ELBO_new(q) = E_q[log p(D_new | w)] - KL(q || q_old)

(per example: ``mean NLL + KL / N_new``) by a few gradient steps started from ``q_old``
(variational continual learning, Nguyen et al., 2018). Both are factorised Gaussians, so the
KL is analytic. Demand changes over time, so before the update the old posterior is widened
by a random-walk step on the weights (``drift_std``, as a Kalman filter's prediction step).
With few new days the KL keeps the network close to what it knew; days that contradict it
(a level or scale shift) move the weights they need.

Cost: ``steps`` mini-batch steps on the new windows (seconds), against a full retrain's tens
of epochs over the whole history. The monitoring uses it as the first response to a breach
streak when ``monitoring.first_response`` is ``online_update`` (docs/monitoring.md).

An update is only as good as the days it learned from: a one-off spike (a promotion week)
looks like a shift to it. :func:`check_on_held_out_day` therefore repeats the update without
each series' last day and asks whether it forecasts that day better than the model it
started from (scaled CRPS of the one-day-ahead samples); the monitoring promotes an update only
then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from pipeline_lib.contract import CRPS_LEVELS, sample_quantiles
from pipeline_lib.data.features import WindowSet, actuals_for
from pipeline_lib.data.validate import Panel
from pipeline_lib.errors import TrainingDivergedError
from pipeline_lib.evaluation.metrics import scaled_crps, seasonal_naive_scales
from pipeline_lib.model.forecast import ForecastModel
from pipeline_lib.model.network import BayesianForecaster
from pipeline_lib.model.training import make_train_step

tfd = tfp.distributions


def update_windows(model: ForecastModel, panel: Panel, days: dict[int, np.ndarray]) -> WindowSet:
    """One-day-ahead windows of ``days`` (per series position) with the model's own scalers
    and centring, targets in model space and in units."""
    inputs = model.one_step_inputs(panel, days)
    units = np.concatenate([panel.series[k].target[d] for k, d in days.items()]).astype(np.float32)
    scaled = np.concatenate([model.scaler_for(panel.series[k]).forward(panel.series[k].target[d])
                             for k, d in days.items()])
    targets = (scaled - inputs.levels).astype(np.float32)
    series_index = np.concatenate([np.full(len(d), k) for k, d in days.items()])
    return WindowSet(inputs.windows.astype(np.float32), targets, series_index, np.concatenate(list(days.values())),
                     inputs.levels, units=units, context=inputs.context)


def _kl_to_snapshot(network: BayesianForecaster, drift_std: float):
    """``() -> KL(q || prior)`` summed over every weight, where the prior is the posterior at
    call time with its variance widened by ``drift_std^2``."""
    pairs = []
    for layer in network.variational_layers():
        for name in layer._posterior_names:
            loc, scale = layer.posterior(name)
            widened = np.sqrt(scale.numpy() ** 2 + drift_std**2)
            pairs.append((layer, name, tf.constant(loc.numpy()), tf.constant(widened)))

    def kl():
        total = tf.constant(0.0)
        for layer, name, old_loc, old_scale in pairs:
            loc, scale = layer.posterior(name)
            total += tf.reduce_sum(tfd.kl_divergence(tfd.Normal(loc, scale), tfd.Normal(old_loc, old_scale)))
        return total

    return kl


def online_update(model: ForecastModel, windows: WindowSet, steps: int = 60, learning_rate: float = 1e-2,
                  drift_std: float = 0.05, batch_size: int = 256, kl_weight: float = 1.0, clip_norm: float = 5.0,
                  seed: int = 0) -> ForecastModel:
    """A copy of ``model`` whose posterior is updated on ``windows`` (the new days); the
    input model is not changed. The calibration, the pool with ETS (which runs forward over
    the new days itself) and the 8-bit storage of a quantized model are carried over.

    ``drift_std``: how far each weight may have drifted since training (the prediction step
    of a Kalman filter with random-walk weights): the prior of the update is ``q_old`` with
    its variance widened by ``drift_std^2``. Without it a trained posterior, whose stds are
    ~1e-3, pins the weights and the update cannot follow a shift.

    Raises:
        TrainingDivergedError: the update's loss became NaN or infinite.
        ValueError: ``windows`` is empty.
    """
    if len(windows) == 0:
        raise ValueError("no new windows to update on")
    updated = ForecastModel.create(model.spec, model.scalers, model.model_config)
    updated.network.set_weights(model.network.get_weights())
    updated.calibration, updated.pool = model.calibration, model.pool
    network = updated.network
    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = tf_keras.optimizers.Adam(learning_rate=learning_rate)
    beta = tf.Variable(kl_weight, trainable=False, dtype=tf.float32)
    step = make_train_step(network, optimizer, len(windows), beta, clip_norm,
                           kl_fn=_kl_to_snapshot(network, drift_std))
    targets, context = windows.head_targets(network.head.space), windows.head_context()
    for i in range(steps):
        index = rng.choice(len(windows), size=min(batch_size, len(windows)), replace=False)
        loss, _, _ = step(windows.inputs[index], targets[index], context[index])
        if not np.isfinite(float(loss)):
            raise TrainingDivergedError(f"online update diverged at step {i + 1}: loss {float(loss)}")
    # An 8-bit champion (serving.quantized_posterior) stays 8-bit, and is judged as such.
    return updated.quantized_copy() if model.quantized else updated


@dataclass(frozen=True)
class HeldOutCheck:
    """An update learned without each series' last day, scored on that day against the model
    it started from. ``crps_*``: the promotion gate's scaled CRPS
    (:func:`pipeline_lib.evaluation.metrics.scaled_crps`) over the ``windows`` held-out
    series, one day each."""

    crps_before: float
    crps_after: float
    windows: int

    @property
    def improved(self) -> bool:
        return self.crps_after <= self.crps_before

    def describe(self) -> str:
        verdict = "better" if self.improved else "worse"
        return (f"on the held-out last day ({self.windows} series) the update is {verdict}: scaled CRPS "
                f"{self.crps_after:.3f} vs {self.crps_before:.3f} without it")


def check_on_held_out_day(model: ForecastModel, panel: Panel, days: dict[int, np.ndarray], seed: int = 0,
                          num_samples: int = 200, **update) -> HeldOutCheck:
    """Update ``model`` on ``days`` minus each series' last day, then score both models'
    one-day-ahead forecasts of those last days (same seed, ``num_samples`` paths).
    ``update``: keyword arguments of :func:`online_update`.

    Raises:
        ValueError: no series has two or more days (nothing to learn from and to hold out).
    """
    learned = {k: d[:-1] for k, d in days.items() if len(d) >= 2}
    held_out = {k: d[-1:] for k, d in days.items() if len(d) >= 2}
    if not learned:
        raise ValueError("an update check needs two or more new days of a series")
    probe = online_update(model, update_windows(model, panel, learned), seed=seed, **update)
    actuals, _ = actuals_for(panel, held_out)
    scales = seasonal_naive_scales([panel.series[k].target for k in held_out], [d[0] for d in held_out.values()])
    one_per_series = np.arange(len(held_out))

    def score(candidate: ForecastModel) -> float:
        samples = candidate.one_step(panel, held_out, num_samples=num_samples, seed=seed).samples
        return scaled_crps(actuals, sample_quantiles(samples, CRPS_LEVELS, axis=0), one_per_series, scales)

    return HeldOutCheck(score(model), score(probe), len(held_out))
