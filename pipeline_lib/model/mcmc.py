"""MCMC for comparison: Hamiltonian Monte Carlo over the output layer's weights.

Variational inference fits a factorised Gaussian, which is known to understate posterior
spread. To check it, the recurrent layers are frozen at their posterior means (the learned
features ``phi(x)``, ``D`` numbers per window) and the output layer ``params = phi(x) W + b``
gets an exact posterior by HMC (``tfp.mcmc``, step size tuned by dual averaging, started
at the variational means):

    p(W, b | D) ∝ prior(W, b) * prod_i p(y_i | head(phi(x_i) W + b))

with the model's own prior and head. Its predictive spread is then compared with the
variational output layer's on the same features (``spread_ratio``). It is slower (hundreds
of full-data gradient evaluations per sample) and only covers the last layer; it is a
sanity check on small data, not a serving path (docs/modelling.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from pipeline_lib.data.features import WindowSet
from pipeline_lib.data.validate import Panel
from pipeline_lib.model.forecast import ForecastModel, SampledForecast
from pipeline_lib.model.network import BayesianForecaster

tfd = tfp.distributions


def mean_features(network: BayesianForecaster, inputs: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Output-layer inputs ``(N, D)`` of windows ``(N, T, F)`` at the posterior means."""
    draws = network.mean_draws()
    return np.concatenate([
        network.features(tf.constant(inputs[start:start + batch_size])[None], draws)[0].numpy()
        for start in range(0, len(inputs), batch_size)
    ])


@dataclass(frozen=True)
class HmcResult:
    kernels: np.ndarray  # (M, D, P) posterior samples
    biases: np.ndarray  # (M, P)
    acceptance: float
    seconds: float


def hmc_linear(features: np.ndarray, targets: np.ndarray, log_likelihood, prior: tfd.Distribution,
               init: tuple[np.ndarray, np.ndarray], num_results: int = 200, num_burnin: int = 300,
               leapfrog_steps: int = 8, seed: int = 0) -> HmcResult:
    """HMC over ``(W (D, P), b (P,))`` of ``params = features @ W + b``.

    ``log_likelihood(params (N, P), targets (N,)) -> (N,)``; ``prior``: a scalar
    distribution applied to every weight; ``init``: the starting ``(W, b)``.
    """
    x = tf.constant(features, tf.float32)
    y = tf.constant(targets, tf.float32)

    def target_log_prob(kernel, bias):
        params = tf.matmul(x, kernel) + bias
        return (tf.reduce_sum(log_likelihood(params, y))
                + tf.reduce_sum(prior.log_prob(kernel)) + tf.reduce_sum(prior.log_prob(bias)))

    kernel = tfp.mcmc.DualAveragingStepSizeAdaptation(
        tfp.mcmc.HamiltonianMonteCarlo(target_log_prob, step_size=1e-3, num_leapfrog_steps=leapfrog_steps),
        num_adaptation_steps=int(0.8 * num_burnin))

    @tf.function
    def run():
        return tfp.mcmc.sample_chain(
            num_results=num_results, num_burnin_steps=num_burnin,
            current_state=[tf.constant(init[0], tf.float32), tf.constant(init[1], tf.float32)],
            kernel=kernel, trace_fn=lambda _, results: results.inner_results.is_accepted,
            seed=tf.constant([seed, 17], tf.int32))

    started = time.perf_counter()
    (kernels, biases), accepted = run()
    return HmcResult(kernels.numpy(), biases.numpy(), float(np.mean(accepted.numpy())),
                     time.perf_counter() - started)


@dataclass
class OutputLayerHmc:
    """A :class:`ForecastModel` whose output layer is replaced by HMC samples; forecasts like
    one (``one_step``) so the evaluation scores it unchanged."""

    teacher: ForecastModel
    result: HmcResult
    calibration: object | None = None
    pool: None = None  # no pool with ETS: the output layer is compared with the network alone

    @classmethod
    def fit(cls, model: ForecastModel, train: WindowSet, num_results: int = 200, num_burnin: int = 300,
            max_windows: int = 5000, seed: int = 0) -> OutputLayerHmc:
        """HMC on at most ``max_windows`` training windows (a seeded subsample: full-data
        gradients make every leapfrog step cost a pass over them)."""
        network = model.network
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(len(train), size=min(max_windows, len(train)), replace=False))
        features = mean_features(network, train.inputs[index])
        context = tf.constant(train.head_context()[index])

        def log_likelihood(params, y):
            return network.distribution(params, context).log_prob(y)

        layer = network.output_layer
        result = hmc_linear(features, train.head_targets(network.head.space)[index], log_likelihood, layer.prior,
                            (layer.kernel_loc.numpy(), layer.bias_loc.numpy()), num_results, num_burnin, seed=seed)
        return cls(model, result)

    def params(self, features: np.ndarray) -> np.ndarray:
        """``(M, N, P)`` output-layer parameters, one set per posterior sample."""
        return np.einsum("nd,mdp->mnp", features, self.result.kernels) + self.result.biases[:, None, :]

    def one_step(self, panel: Panel, days: dict[int, np.ndarray], num_samples: int,
                 samples_per_draw: int = 10, seed: int = 0, calibrated: bool = True) -> SampledForecast:
        """``samples_per_draw`` draws of y for each of ``num_samples`` posterior samples
        (evenly thinned from the chain)."""
        inputs = self.teacher.one_step_inputs(panel, days)
        features = mean_features(self.teacher.network, inputs.windows)
        chosen = np.linspace(0, len(self.result.kernels) - 1, num_samples).round().astype(int)
        params = tf.constant(self.params(features)[chosen], tf.float32)
        distribution = self.teacher.network.distribution(params, tf.constant(inputs.context)[None])
        y = distribution.sample(samples_per_draw, seed=tf.constant([seed, 5], tf.int32)).numpy()
        means, variances = distribution.mean().numpy(), distribution.variance().numpy()
        epistemic = means.var(axis=0)
        share = epistemic / np.maximum(epistemic + variances.mean(axis=0), 1e-12)
        return self.teacher.sampled_forecast(inputs, y.reshape(-1, y.shape[-1]), share,
                                             self.calibration if calibrated else None)


def spread_ratio(model: ForecastModel, hmc: OutputLayerHmc, windows: WindowSet, num_samples: int = 200,
                 seed: int = 0) -> float:
    """Mean over ``windows`` of the std of the predictive mean across posterior samples,
    HMC over variational, both for the output layer on the posterior-mean features:
    > 1 means the variational posterior is too narrow."""
    network = model.network
    features = mean_features(network, windows.inputs)
    context = tf.constant(windows.head_context())[None]
    draw = network.output_layer.draw(num_samples, len(windows), "tiled", tf.constant([seed, 3], tf.int32))
    vi_params = network.output_layer.forward(tf.tile(tf.constant(features)[None], [num_samples, 1, 1]), draw)
    vi_std = network.distribution(vi_params, context).mean().numpy().std(axis=0)
    hmc_params = tf.constant(hmc.params(features), tf.float32)
    hmc_std = network.distribution(hmc_params, context).mean().numpy().std(axis=0)
    return float(np.mean(hmc_std) / max(float(np.mean(vi_std)), 1e-12))
