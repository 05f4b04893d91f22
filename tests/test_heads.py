"""Heads and priors of the modelling toolbox, each against a known answer on synthetic data."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras
from scipy import integrate, optimize, stats
from scipy.special import logsumexp

from pipeline_lib.config import ModelConfig, TrainConfig
from pipeline_lib.data.features import WindowSet
from pipeline_lib.model.heads import HEADS, CountHead, CountMixtureHead, QuantileHead
from pipeline_lib.model.layers import BayesianDense
from pipeline_lib.model.network import BayesianForecaster
from pipeline_lib.model.predict import sample_one_step
from pipeline_lib.model.priors import kl_divergence, make_prior
from pipeline_lib.model.training import make_mixture_log_prob, mixture_nll, train_model

FAST = TrainConfig(epochs=12, batch_size=128, learning_rate=1e-2, patience=12, kl_ramp_epochs=2)


def _windows(x: np.ndarray, y: np.ndarray, units: np.ndarray | None = None,
             context: np.ndarray | None = None) -> WindowSet:
    n = len(x)
    return WindowSet(x, y.astype("float32"), np.zeros(n, int), np.arange(n), np.zeros(n, np.float32),
                     units=None if units is None else units.astype("float32"), context=context)


def _features(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 5, 2)).astype("float32")


def _fit(head: str, train: WindowSet, validation: WindowSet, units: tuple[int, int] = (8, 4),
         **model) -> BayesianForecaster:
    tf.random.set_seed(0)
    network = BayesianForecaster(2, ModelConfig(lstm_units=units, head=head, **model)).build_for(5)
    train_model(network, train, validation, FAST, progress=False)
    return network


def _held_out_nll(heads: tuple[str, ...], data, space: str) -> tuple[dict[str, float], tf.Tensor]:
    """Each head fitted on ``data(3000, 0)`` (validation ``data(500, 1)``): its mean NLL on
    ``data(2000, 2)``, and the last head's raw parameters on 200 of those windows (one draw)."""
    train, validation, test = data(3000, 0), data(500, 1), data(2000, 2)
    nll = {}
    for head in heads:
        network = _fit(head, train, validation)
        nll[head] = mixture_nll(make_mixture_log_prob(network, 16), test, space)
    params = network.forward(tf.constant(test.inputs[None, :200]), network.draw(1, 200, "tiled", tf.constant([1, 1])))
    return nll, params


@pytest.mark.model
def test_student_t_head_fits_heavy_tails_better_than_normal():
    """t(2.5)-noise around a learnable signal: the Student-t head has the lower held-out NLL
    and learns a small df."""
    def data(n, seed):
        x = _features(n, seed)
        noise = stats.t.rvs(df=2.5, size=n, random_state=seed) * 0.5
        return _windows(x, 0.8 * x[:, -1, 1] + noise)

    nll, params = _held_out_nll(("normal", "student_t"), data, "model")
    df = 2.0 + tf.nn.softplus(params[..., 2]).numpy()
    assert nll["student_t"] < nll["normal"] - 0.05, nll
    assert np.median(df) < 8, np.median(df)


@pytest.mark.model
def test_count_head_puts_mass_on_zero_and_gives_integer_quantiles():
    """Demand is 0 on 40% of days, else Poisson(8): the predicted P(0) is about 0.4."""
    def data(n, seed):
        rng = np.random.default_rng(seed)
        units = np.where(rng.uniform(size=n) < 0.4, 0, rng.poisson(8.0, size=n))
        context = np.tile(np.array([[np.log(5.0), 1.0]], np.float32), (n, 1))
        return _windows(_features(n, seed), np.zeros(n), units=units, context=context)

    train, validation = data(3000, 0), data(500, 1)
    network = _fit("count", train, validation)
    test = data(300, 2)
    draws = sample_one_step(network, test.inputs, num_samples=50, samples_per_draw=10, context=test.context)
    assert np.array_equal(draws.samples, np.round(draws.samples)) and draws.samples.min() >= 0
    p_zero = float((draws.samples == 0).mean())
    assert 0.33 < p_zero < 0.47, p_zero
    assert abs(draws.samples.mean() - 0.6 * 8.0) < 0.6

    from pipeline_lib.model.forecast import forecast_table

    table = forecast_table(draws.samples[:, :5], [f"s{i}" for i in range(5)], ["2024-01-01"] * 5, "1")
    quantiles = table.filter(regex=r"^q").to_numpy()
    assert np.array_equal(quantiles, np.round(quantiles))


def test_count_head_log_mean_follows_the_context():
    """``log(mean) = p0 * scale + offset`` of the NB part; P(0) adds the zero-inflation."""
    head = CountHead()
    params = tf.constant([[0.5, 3.0, -2.0]])
    context = tf.constant([[np.log(20.0), 0.4]], tf.float32)
    distribution = head.distribution(params, context)
    pi = 1 / (1 + np.exp(2.0))
    nb_mean = 20.0 * np.exp(0.5 * 0.4)
    assert np.isclose(float(distribution.mean()[0]), (1 - pi) * nb_mean, rtol=1e-4)
    r = 1e-2 + np.log1p(np.exp(3.0))
    p_zero = pi + (1 - pi) * (r / (r + nb_mean)) ** r
    assert np.isclose(float(distribution.prob(0.0)[0]), p_zero, rtol=1e-4)
    # The sampled count goes back to the network as its standardised, centred log1p lag,
    # net of the day's weekday offset (third context column) when there is one; the offset
    # never moves the mean (a closed day's log1p(0) = 0 would make it e^0 = 1 unit).
    lag = head.to_lag(tf.constant([[9.0]]), context)
    assert np.isclose(float(lag[0, 0]), (np.log1p(9.0) - np.log(20.0)) / 0.4, rtol=1e-5)
    shifted = tf.constant([[np.log(20.0), 0.4, -1.5]], tf.float32)
    lag = head.to_lag(tf.constant([[9.0]]), shifted)
    assert np.isclose(float(lag[0, 0]), (np.log1p(9.0) - np.log(20.0)) / 0.4 + 1.5, rtol=1e-5)
    assert np.isclose(float(head.distribution(params, shifted).mean()[0]), (1 - pi) * nb_mean, rtol=1e-4)


def test_every_registered_head_can_be_configured_and_every_configurable_head_is_registered():
    configurable = set(get_args(ModelConfig.model_fields["head"].annotation)) - {"auto"}
    assert configurable == set(HEADS)


def test_count_mixture_head_probabilities_and_mean_follow_its_parameters():
    """Zero inflation over everyday NB(mean m, r1) and bulk NB(mean m * exp(softplus(p4)), r2)
    with weight sigmoid(p3): P(0), P(k) and the mean against the formulas in numpy."""
    head = CountMixtureHead()
    params = tf.constant([[0.5, 3.0, -2.0, -1.0, 1.5, 0.2]])
    context = tf.constant([[np.log(20.0), 0.4]], tf.float32)
    distribution = head.distribution(params, context)
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    pi, bulk = 1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(1.0))
    m1 = 20.0 * np.exp(0.5 * 0.4)
    m2 = m1 * np.exp(softplus(1.5))
    r1, r2 = 1e-2 + softplus(3.0), 1e-2 + softplus(0.2)
    nb = lambda k, m, r: stats.nbinom.pmf(k, r, r / (r + m))  # noqa: E731
    for k in (0, 3, 25, 80):
        expected = pi * (k == 0) + (1 - pi) * ((1 - bulk) * nb(k, m1, r1) + bulk * nb(k, m2, r2))
        assert np.isclose(float(distribution.prob(float(k))[0]), expected, rtol=1e-4), k
    assert np.isclose(float(distribution.mean()[0]), (1 - pi) * ((1 - bulk) * m1 + bulk * m2), rtol=1e-4)
    samples = distribution.sample(4000, seed=tf.constant([3, 4])).numpy()
    assert np.array_equal(samples, np.round(samples)) and samples.min() >= 0


@pytest.mark.model
def test_count_mixture_head_fits_bulk_orders_better_than_the_count_head():
    """Demand: 0 on 20% of days, else Poisson(5) everyday sales, and on 15% of the open days
    a bulk order of about 40 units: the mixture head has the lower held-out NLL and puts
    its bulk weight near 15%."""
    def data(n, seed):
        rng = np.random.default_rng(seed)
        bulk = rng.uniform(size=n) < 0.15
        units = np.where(bulk, rng.negative_binomial(20, 20 / 60, size=n), rng.poisson(5.0, size=n))
        units = np.where(rng.uniform(size=n) < 0.2, 0, units)
        context = np.tile(np.array([[np.log(5.0), 1.0]], np.float32), (n, 1))
        return _windows(_features(n, seed), np.zeros(n), units=units, context=context)

    nll, params = _held_out_nll(("count", "count_mixture"), data, "units")
    bulk_share = tf.sigmoid(params[..., 3]).numpy()
    assert nll["count_mixture"] < nll["count"] - 0.1, nll
    assert 0.08 < np.median(bulk_share) < 0.25, np.median(bulk_share)


def test_quantile_head_never_crosses_and_samples_its_quantile_function():
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    head = QuantileHead(levels)
    params = tf.constant(np.random.default_rng(0).normal(scale=5.0, size=(64, 6)), tf.float32)  # adversarial
    distribution = head.distribution(params)
    q = distribution.quantiles.numpy()
    assert (np.diff(q, axis=-1) >= 0).all()  # gaps of 1e-6 can vanish in float32 next to large values
    at_levels = distribution.quantile(tf.broadcast_to(tf.constant(levels, tf.float32)[:, None], [5, 64])).numpy()
    np.testing.assert_allclose(at_levels, q.T, rtol=1e-5, atol=1e-5)
    samples = distribution.sample(20000, seed=tf.constant([1, 2])).numpy()
    empirical = np.quantile(samples, levels, axis=0)
    np.testing.assert_allclose(empirical, q.T, atol=0.05 * (q[:, -1] - q[:, 0]).max())
    # log_prob is the negative pinball loss.
    y = tf.constant(np.linspace(-3, 3, 64), tf.float32)
    error = y.numpy()[:, None] - q
    pinball = np.maximum(np.array(levels) * error, (np.array(levels) - 1) * error).sum(axis=1)
    np.testing.assert_allclose(distribution.log_prob(y).numpy(), -pinball, rtol=1e-5)


@pytest.mark.model
def test_quantile_head_learns_calibrated_quantiles():
    """Heteroscedastic Normal noise: the learned 5% / 95% quantiles bracket about 90%."""
    def data(n, seed):
        x = _features(n, seed)
        rng = np.random.default_rng(seed + 100)
        std = np.where(x[:, -1, 0] > 0, 1.0, 0.3)
        return _windows(x, 0.8 * x[:, -1, 1] + std * rng.normal(size=n)), std

    (train, _), (validation, _), (test, std) = data(4000, 0), data(500, 1), data(2000, 2)
    # (16, 8) units: with (8, 4) the LSTM picked up the noise feature in some seeds only
    # (width ratio 1.3-2.4 over six seeds; 2.3-2.7 over four seeds with these units).
    network = _fit("quantile", train, validation, units=(16, 8), quantile_levels=(0.05, 0.25, 0.5, 0.75, 0.95))
    samples = sample_one_step(network, test.inputs, num_samples=30, samples_per_draw=20).samples
    q = np.quantile(samples, [0.05, 0.95], axis=0).T  # the served predictive quantiles
    inside = (test.targets >= q[:, 0]) & (test.targets <= q[:, -1])
    assert 0.85 < inside.mean() < 0.95, inside.mean()
    width = q[:, -1] - q[:, 0]
    wide, narrow = width[std == 1.0].mean(), width[std == 0.3].mean()
    assert wide > 1.8 * narrow, (wide, narrow)


@pytest.mark.parametrize("kind", ["student_t", "scale_mixture"])
def test_monte_carlo_kl_matches_quadrature(kind):
    """The KL estimate of a non-Normal prior against numerical integration of
    ``q log(q / p)`` for each weight (scipy, independent of TFP)."""
    rng = np.random.default_rng(3)
    loc = rng.normal(scale=0.3, size=20)
    scale = rng.uniform(0.05, 0.5, size=20)
    if kind == "student_t":
        prior = make_prior(kind, scale=0.7, df=3.0)
        log_p = stats.t(df=3.0, scale=0.7).logpdf
    else:
        prior = make_prior(kind, mixture_weight=0.3, mixture_scales=(1.0, 0.05))
        def log_p(w):
            return np.log(0.3 * stats.norm(0, 1.0).pdf(w) + 0.7 * stats.norm(0, 0.05).pdf(w))
    exact = sum(
        integrate.quad(lambda w, m=m, s=s: stats.norm(m, s).pdf(w) * (stats.norm(m, s).logpdf(w) - log_p(w)),
                       m - 10 * s, m + 10 * s, limit=200)[0]
        for m, s in zip(loc, scale, strict=True)
    )
    estimates = [float(kl_divergence(tf.constant(loc, tf.float32), tf.constant(scale, tf.float32), prior,
                                     seed=tf.constant([i, 1]))) for i in range(200)]
    standard_error = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - exact) < 4 * standard_error, (np.mean(estimates), exact)


PRIORS = {"normal wide": {"prior": "normal", "prior_scale": 1.0},
          "normal narrow": {"prior": "normal", "prior_scale": 0.05},
          "student_t narrow": {"prior": "student_t", "prior_scale": 0.05, "prior_df": 2.0},
          "mixture wide": {"prior": "scale_mixture", "mixture_scales": (1.0, 0.05)},
          "mixture narrow": {"prior": "scale_mixture", "mixture_scales": (0.05, 0.0025)}}


def _log_prior(prior: dict):
    """The prior's log density in scipy, independent of TFP."""
    if prior["prior"] == "normal":
        return stats.norm(0, prior["prior_scale"]).logpdf
    if prior["prior"] == "student_t":
        return stats.t(df=prior["prior_df"], scale=prior["prior_scale"]).logpdf
    slab, spike = prior["mixture_scales"]
    return lambda w: logsumexp([stats.norm(0, slab).logpdf(w), stats.norm(0, spike).logpdf(w)], axis=0, b=0.5)


def _optimal_gaussian_posterior(x: np.ndarray, y: np.ndarray, log_prior) -> np.ndarray:
    """``[kernel mean, kernel std, bias mean, bias std]`` maximising the exact ELBO of
    ``y = kernel * x + bias + N(0, 1)`` under a factorised Gaussian posterior: the expected
    likelihood in closed form, the prior term by 64-point Gauss-Hermite quadrature, the
    optimum by Nelder-Mead from three starts."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(64)
    weights = weights / weights.sum()

    def negative_elbo(params):
        kernel, log_kernel_std, bias, log_bias_std = params
        kernel_std, bias_std = np.exp(log_kernel_std), np.exp(log_bias_std)
        expected_nll = 0.5 * (np.sum((y - kernel * x - bias) ** 2) + kernel_std**2 * np.sum(x**2)
                              + len(x) * bias_std**2)
        kl = sum(-np.log(std) - np.sum(weights * log_prior(mean + std * nodes))  # up to a constant
                 for mean, std in ((kernel, kernel_std), (bias, bias_std)))
        return expected_nll + kl

    best = min((optimize.minimize(negative_elbo, [start, -2.0, 0.0, -2.0], method="Nelder-Mead",
                                  options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 20_000})
                for start in (0.0, 1.0, 2.0)), key=lambda result: result.fun)
    kernel, log_kernel_std, bias, log_bias_std = best.x
    return np.array([kernel, np.exp(log_kernel_std), bias, np.exp(log_bias_std)])


def _fit_variational_dense(x: np.ndarray, y: np.ndarray, prior: dict, steps: int = 2500) -> np.ndarray:
    """Train one ``BayesianDense(1)`` on the ELBO of ``y = kernel * x + bias + N(0, 1)``
    (16 weight samples a step, the layer's own KL) and return the posterior
    ``[kernel mean, kernel std, bias mean, bias std]`` averaged over the last 20% of steps."""
    tf.random.set_seed(0)
    layer = BayesianDense(1, **prior)
    layer.build((None, 1))
    inputs = tf.broadcast_to(tf.constant(x[None, :, None], tf.float32), [16, len(x), 1])
    targets = tf.constant(y[None, :, None], tf.float32)
    optimizer = tf_keras.optimizers.Adam(tf_keras.optimizers.schedules.CosineDecay(0.05, steps, alpha=0.01))

    @tf.function
    def step(i):
        seed = tf.stack([i, 0])
        with tf.GradientTape() as tape:
            mean = layer.forward(inputs, layer.draw(16, len(x), "tiled", seed))
            nll = tf.reduce_mean(tf.reduce_sum(0.5 * (targets - mean) ** 2, axis=[1, 2]))
            loss = nll + layer.kl_divergence(tf.random.experimental.stateless_fold_in(seed, 1))
        gradients = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply_gradients(zip(gradients, layer.trainable_variables, strict=True))

    tail = []
    for i in range(steps):
        step(tf.constant(i))
        if i >= 0.8 * steps:
            (kernel, kernel_std), (bias, bias_std) = layer.posterior("kernel"), layer.posterior("bias")
            tail.append([kernel.numpy().item(), kernel_std.numpy().item(), bias.numpy().item(),
                         bias_std.numpy().item()])
    return np.mean(tail, axis=0)


@pytest.mark.model
def test_each_prior_trains_to_its_optimal_gaussian_posterior_and_shrinks_as_documented():
    """A variational dense layer fitted to 20 points of y = 2 x + 0.5 + N(0, 1) reaches the
    best factorised Gaussian posterior under each prior: in closed form for a Normal prior
    (the exact conjugate posterior, as x is centred), by quadrature otherwise. The documented
    behaviour follows: a narrow Normal prior and a narrow spike-and-slab pull the slope to
    about 0.1; a Student-t prior of the same narrow scale leaves it near 2."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    x = (x - x.mean()) / x.std()
    y = 2.0 * x + 0.5 + rng.normal(size=20)
    fitted = {}
    for name, prior in PRIORS.items():
        fitted[name] = _fit_variational_dense(x, y, prior)
        if prior["prior"] == "normal":
            precision = np.array([np.sum(x**2), len(x)]) + prior["prior_scale"] ** -2
            means = np.array([np.sum(x * y), np.sum(y)]) / precision
            expected = np.array([means[0], precision[0] ** -0.5, means[1], precision[1] ** -0.5])
            np.testing.assert_allclose(fitted[name], expected, rtol=0.03, atol=0.005, err_msg=name)
        else:
            expected = _optimal_gaussian_posterior(x, y, _log_prior(prior))
            np.testing.assert_allclose(fitted[name][[0, 2]], expected[[0, 2]], atol=0.05, err_msg=name)
            np.testing.assert_allclose(fitted[name][[1, 3]], expected[[1, 3]], rtol=0.3, err_msg=name)
    slope = {name: posterior[0] for name, posterior in fitted.items()}
    assert slope["normal narrow"] < 0.1 * slope["normal wide"], slope
    assert slope["mixture narrow"] < 0.1 * slope["mixture wide"], slope
    assert slope["student_t narrow"] > 0.9 * slope["normal wide"], slope


def test_the_configured_prior_reaches_every_variational_layer():
    """``model.prior`` and its parameters reach every variational layer (LSTM, attention,
    output), and a network under a Monte Carlo KL prior trains with a finite loss."""
    for name, prior in PRIORS.items():
        config = ModelConfig(head="normal", lstm_units=(4, 4), attention_units=4, **prior)
        network = BayesianForecaster(2, config).build_for(5)
        w = np.linspace(-0.3, 0.3, 7)
        for layer in network.variational_layers():
            assert layer.prior_name == prior["prior"], (name, layer.name)
            np.testing.assert_allclose(layer.prior.log_prob(w.astype("float32")).numpy(), _log_prior(prior)(w),
                                       rtol=1e-4, err_msg=f"{name}: {layer.name}")
    x = _features(64, 0)
    data = _windows(x, 2.0 * x[:, -1, 1])
    result = train_model(network, data, data, TrainConfig(epochs=2, batch_size=32, patience=2), progress=False)
    assert all(np.isfinite(r["loss"]) and r["kl"] > 0 for r in result.history), result.history


@pytest.mark.model
@pytest.mark.parametrize("model", [{"head": "count"}, {"attention_units": 8}], ids=["count", "attention"])
def test_each_variant_runs_the_whole_pipeline(model, small_config, synthetic_csv):
    """Train, Monte Carlo evaluation and multi-day paths through the real pipeline for the
    variants that change more than the head's formula (units space; the attention memory in
    the paths). With the count head every forecast quantile is a whole number and the closed
    Saturdays get mostly zero demand."""
    from pipeline_lib import stages
    from pipeline_lib.data.validate import load_panel

    head = model.get("head", "normal")
    config = small_config.updated(data={"path": synthetic_csv}, model=model,
                                  train={"epochs": 30, "patience": 30, "learning_rate": 2e-2, "batch_size": 32})
    panel = load_panel(config.data, config.window)
    trained = stages.train(config, panel, progress=False)
    evaluation = stages.evaluate(config, trained.model, panel)
    assert 0.5 < evaluation.metrics["picp_95"] <= 1.0 and np.isfinite(evaluation.metrics["crps"])
    sampled = trained.model.forecast(panel, horizon=7, num_samples=50, calibrated=False)
    paths = sampled.to_frame("1")
    quantiles = paths.filter(regex=r"^q").to_numpy()
    assert np.isfinite(quantiles).all() and (np.diff(quantiles, axis=1) >= 0).all()
    if head == "count":
        assert np.array_equal(quantiles, np.round(quantiles)) and quantiles.min() >= 0
        saturday = (pd.to_datetime(paths["date"]).dt.dayofweek == 5).to_numpy()
        zero_share = (sampled.samples == 0).mean(axis=0)
        assert zero_share[saturday].mean() > 0.5 > zero_share[~saturday].mean(), zero_share.reshape(-1, 7)
