"""The Bayesian LSTM layer against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from pipeline_lib.config import ModelConfig, TrainConfig
from pipeline_lib.data.features import WindowSet
from pipeline_lib.model.layers import FLIPOUT, TILED, BayesianLSTM
from pipeline_lib.model.network import BayesianForecaster
from pipeline_lib.model.predict import predict_distribution, sample_one_step
from pipeline_lib.model.priors import kl_divergence, make_prior
from pipeline_lib.model.training import epoch_learning_rate, kl_beta, train_model

tfd = tfp.distributions
RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 10, 3)).astype("float32")


def _zero_variance(layer) -> None:
    for name in layer._posterior_names:
        rho = getattr(layer, f"{name}_rho")
        rho.assign(tf.fill(rho.shape, -1e4))  # softplus(-1e4) == 0 in float32


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("path", ["call", TILED, FLIPOUT])
def test_zero_posterior_variance_equals_keras_lstm(return_sequences, path):
    layer = BayesianLSTM(7, return_sequences=return_sequences)
    layer(X)
    _zero_variance(layer)
    reference = tf_keras.layers.LSTM(7, return_sequences=return_sequences)
    reference(X)
    reference.set_weights([layer.kernel_loc.numpy(), layer.recurrent_loc.numpy(), layer.bias_loc.numpy()])
    expected = reference(X).numpy()
    if path == "call":
        got = layer(X).numpy()
    else:
        draw = layer.draw(3, X.shape[0], path, tf.constant([1, 2]))
        got = layer.forward(tf.constant(np.stack([X] * 3)), draw).numpy()
        expected = np.stack([expected] * 3)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("path", [TILED, FLIPOUT])
def test_each_sample_runs_the_keras_lstm_with_its_own_sampled_weights(return_sequences, path):
    """One weight draw per sequence, with a wide posterior: sample ``s`` of example ``b`` must
    be ``tf_keras.layers.LSTM`` run on ``b`` with exactly the weights that draw gave it
    (tiled: the ``s``-th full weight set; Flipout: the mean plus the shared perturbation
    flipped by that example's own signs, and its own bias)."""
    layer = BayesianLSTM(5, return_sequences=return_sequences, posterior_init_std=0.3)
    layer(X)
    samples = 3
    draw = layer.draw(samples, X.shape[0], path, tf.constant([5, 6]))
    got = layer.forward(tf.constant(np.stack([X] * samples)), draw).numpy()
    reference = tf_keras.layers.LSTM(5, return_sequences=return_sequences)
    reference(X[:1])
    w = {name: value.numpy() for name, value in draw.weights.items()}
    signs = {name: value.numpy() for name, value in draw.signs.items()}
    for s in range(samples):
        for b in range(X.shape[0]):
            if path == TILED:
                kernel, recurrent, bias = w["kernel"][s], w["recurrent"][s], w["bias"][s]
            else:  # example n = s * B + b of the flattened (S * B) batch
                n = s * X.shape[0] + b
                flips_x = np.outer(signs["sign_in_x"][n], signs["sign_out_x"][n])
                kernel = layer.kernel_loc.numpy() + w["kernel"] * flips_x
                recurrent = (layer.recurrent_loc.numpy()
                             + w["recurrent"] * np.outer(signs["sign_in_h"][n], signs["sign_out_h"][n]))
                bias = signs["bias_per_example"][n]
            reference.set_weights([kernel, recurrent, bias])
            expected = reference(X[b:b + 1]).numpy()[0]
            assert np.abs(got[s, b] - expected).max() < 1e-4, (s, b)
    # The samples differ: the draw is not the posterior mean in disguise.
    assert np.abs(got[0] - got[1]).max() > 1e-2


@pytest.mark.parametrize("attention_units", [0, 6])
def test_stepping_from_a_carried_state_equals_the_extended_sequence(attention_units):
    """What multi-day sample paths rely on: a window, then one day at a time from the
    carried state, gives the same outputs as the whole longer sequence at once."""
    network = BayesianForecaster(3, ModelConfig(head="normal", lstm_units=(8, 4), posterior_init_std=0.05,
                                                attention_units=attention_units)).build_for(10)
    draws = network.draw(5, X.shape[0], TILED, tf.constant([3, 4]))
    x = tf.constant(np.stack([X] * 5))  # (S, B, T, F)
    expected = network.forward(x, draws).numpy()
    params, states = network.forward_with_state(tf.unstack(x[:, :, :7], axis=2), draws)
    for t in range(7, 10):
        params, states = network.forward_with_state([x[:, :, t]], draws, states)
    assert np.abs(params.numpy() - expected).max() < 1e-5


def test_analytic_kl_matches_monte_carlo():
    loc = tf.constant(RNG.normal(scale=0.3, size=500).astype("float32"))
    scale = tf.constant(RNG.uniform(0.05, 0.5, size=500).astype("float32"))
    prior = make_prior("normal", scale=1.0)
    analytic = float(kl_divergence(loc, scale, prior))
    q = tfd.Normal(loc, scale)
    w = q.sample(4000, seed=3)
    per_draw = tf.reduce_sum(q.log_prob(w) - prior.log_prob(w), axis=1).numpy()
    standard_error = per_draw.std() / np.sqrt(len(per_draw))
    assert abs(per_draw.mean() - analytic) < 4 * standard_error
    # Non-Normal priors fall back to the Monte Carlo estimate, which is unbiased too.
    t_prior = make_prior("student_t", scale=1.0, df=5.0)
    estimates = [float(kl_divergence(loc, scale, t_prior, seed=tf.constant([i, 0]))) for i in range(200)]
    reference = tf.reduce_mean(tf.reduce_sum(q.log_prob(w) - t_prior.log_prob(w), axis=1)).numpy()
    assert abs(np.mean(estimates) - reference) < 4 * np.std(estimates) / np.sqrt(200) + 4 * standard_error


@pytest.mark.parametrize("strategy", [TILED, FLIPOUT])
def test_tiled_samples_use_independent_weights(strategy):
    model = BayesianForecaster(3, ModelConfig(head="normal", lstm_units=(8, 4), posterior_init_std=0.1)).build_for(10)
    x = np.repeat(X[:1], 4, axis=0)  # the same window four times
    draws = sample_one_step(model, x, num_samples=200, samples_per_draw=1, seed=1, strategy=strategy)
    means = draws.draw_means  # (S, B): per-draw means
    # Different draws give different outputs for the same window ...
    assert means.std(axis=0).min() > 1e-3
    # ... and copies of the same window within one call are not tied to one shared draw:
    # the paths of copy 0 and copy 1 across the S draws are (nearly) uncorrelated for
    # Flipout and identical-in-distribution but distinct for tiled (same weights per s).
    if strategy == FLIPOUT:
        correlation = np.corrcoef(means[:, 0], means[:, 1])[0, 1]
        assert abs(correlation) < 0.5
    else:
        np.testing.assert_allclose(means[:, 0], means[:, 1], rtol=1e-5)
        other = sample_one_step(model, x, num_samples=200, samples_per_draw=1, seed=2, strategy=strategy)
        correlation = np.corrcoef(means[:, 0], other.draw_means[:, 0])[0, 1]
        assert abs(correlation) < 0.3


def test_predictive_variance_decomposes():
    model = BayesianForecaster(3, ModelConfig(head="normal", lstm_units=(8, 4), posterior_init_std=0.05)).build_for(10)
    out = predict_distribution(model, X, num_samples=200, samples_per_draw=20, seed=0)
    total = out.epistemic_variance + out.aleatoric_variance
    # Law of total variance: the sample variance of y estimates epistemic + aleatoric.
    np.testing.assert_allclose(out.std ** 2, total, rtol=0.15)
    assert (np.diff(out.quantiles, axis=0) >= 0).all()


def _regression_data(n, seed):
    """y = sum of the last inputs + noise whose std depends on the sign of the first feature."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 2)).astype("float32")
    true_std = np.where(x[:, -1, 0] > 0, 1.0, 0.2).astype("float32")
    y = (0.8 * x[:, -1, 1] + true_std * rng.normal(size=n)).astype("float32")
    return WindowSet(x, y, np.zeros(n, int), np.arange(n), np.zeros(n, np.float32)), true_std


@pytest.mark.model
def test_training_lowers_loss_and_learns_heteroscedastic_noise():
    train, _ = _regression_data(2000, 0)
    validation, _ = _regression_data(300, 1)
    model = BayesianForecaster(2, ModelConfig(head="normal", lstm_units=(16, 8))).build_for(6)
    result = train_model(model, train, validation,
                         TrainConfig(epochs=8, batch_size=64, learning_rate=1e-2, patience=8, kl_ramp_epochs=2),
                         progress=False)
    assert result.history[-1]["nll"] < result.history[0]["nll"]
    test, test_std = _regression_data(500, 2)
    out = predict_distribution(model, test.inputs, num_samples=50, samples_per_draw=4)
    aleatoric_std = np.sqrt(out.aleatoric_variance)
    noisy, quiet = aleatoric_std[test_std == 1.0].mean(), aleatoric_std[test_std == 0.2].mean()
    assert noisy > 2.5 * quiet, (noisy, quiet)
    assert 0.6 < noisy < 1.5 and quiet < 0.45


def test_kl_annealing_schedules():
    linear = TrainConfig(kl_annealing="linear", kl_ramp_epochs=4, kl_weight=0.5)
    assert [kl_beta(e, linear) for e in range(5)] == [0.125, 0.25, 0.375, 0.5, 0.5]
    step = TrainConfig(kl_annealing="step")
    assert [kl_beta(e, step) for e in (0, 9, 10, 25, 200)] == [0.0, 0.0, 0.1, 0.2, 1.0]


def test_cosine_learning_rate_is_what_the_optimizer_uses_in_the_fit_and_the_refit():
    config = TrainConfig(epochs=3, batch_size=64, learning_rate=1e-2, patience=8, kl_ramp_epochs=1,
                         learning_rate_schedule="cosine", final_learning_rate_factor=0.1)
    expected = [1e-2, 1e-2 * (0.1 + 0.9 * 0.5), 1e-3]  # half a cosine: start, middle, floor
    assert [epoch_learning_rate(e, config) for e in range(3)] == pytest.approx(expected)
    assert epoch_learning_rate(1, config.model_copy(update={"learning_rate_schedule": "constant"})) == 1e-2
    (train, _), (validation, _) = _regression_data(256, 0), _regression_data(64, 1)
    model = BayesianForecaster(2, ModelConfig(head="normal", lstm_units=(4, 4))).build_for(6)
    fit = train_model(model, train, validation, config, progress=False)
    refit = train_model(model, train, None, config, progress=False, epochs=2)
    assert [r["learning_rate"] for r in fit.history] == pytest.approx(expected)
    assert [r["learning_rate"] for r in refit.history] == pytest.approx(expected[:2])


def test_early_stopping_ignores_improvements_smaller_than_min_delta_and_restores_the_best_epochs_weights(
        monkeypatch):
    """A scripted validation curve: a real 0.05-nat gain at epoch 2, then noise of +-0.004 nats
    with a new low every other epoch. With ``min_delta=0.01`` the noise is not an improvement,
    so epoch 2 stays the best, training stops ``patience`` epochs later and epoch 2's weights
    are restored; with 0 each noisy low resets patience and training runs to the end."""
    import pipeline_lib.model.training as training

    curve = [1.0, 0.95, 0.945, 0.952, 0.944, 0.951, 0.943, 0.950, 0.942, 0.949]
    (train, _), (validation, _) = _regression_data(256, 0), _regression_data(64, 1)

    def fit(min_delta):
        scores = iter(curve)
        monkeypatch.setattr(training, "mixture_nll", lambda *args, **kwargs: next(scores))
        model = BayesianForecaster(2, ModelConfig(head="normal", lstm_units=(4, 4))).build_for(6)
        weights_after = []
        original_get = model.get_weights
        monkeypatch.setattr(model, "get_weights", lambda: weights_after.append(original_get()) or weights_after[-1])
        config = TrainConfig(epochs=len(curve), batch_size=64, learning_rate=1e-2, patience=3, kl_ramp_epochs=1,
                             min_delta=min_delta)
        return model, train_model(model, train, validation, config, progress=False), weights_after

    model, strict, kept = fit(0.01)
    assert (strict.best_epoch, len(strict.history), strict.stopped_early) == (2, 5, True)
    assert strict.best_validation_nll == 0.95
    # kept[0] is the initial weights, kept[1] epoch 1's, kept[2] epoch 2's (the last kept).
    assert len(kept) == 3
    epoch_2_weights, last_weights = kept[-1], [w.numpy() for w in model.weights]
    assert all(np.array_equal(a, b) for a, b in zip(last_weights, epoch_2_weights, strict=True))
    _, lenient, _ = fit(0.0)
    assert (lenient.best_epoch, len(lenient.history), lenient.stopped_early) == (9, len(curve), False)


def test_flipout_training_pass_draws_per_example_noise_with_the_posterior_marginals():
    """``train.weight_noise``: shared gives copies of one window the same output (one draw
    for the batch); Flipout gives each its own perturbation, distributed as the tiled
    forward's independent draws from the same posterior (mean and spread per output)."""
    model = BayesianForecaster(2, ModelConfig(head="normal", lstm_units=(4, 4), posterior_init_std=0.2)).build_for(6)
    x = np.repeat(np.random.default_rng(0).normal(size=(1, 6, 2)).astype("float32"), 4000, axis=0)
    with model.weight_noise("shared"):
        shared = model(x, training=True).numpy()
    with model.weight_noise("flipout"):
        flipout = model(x, training=True).numpy()
    # Shared: equal up to float32 rounding (oneDNN blocks a batch's rows differently, ~1e-5).
    assert shared.std(axis=0).max() < 1e-3 * flipout.std(axis=0).min()
    assert not model.output_layer.flipout_training  # restored after the block
    tiled = model.forward(tf.constant(x[:1])[None] * tf.ones([4000, 1, 1, 1]),
                          model.draw(4000, 1, TILED, tf.constant([3, 4])))[:, 0].numpy()
    np.testing.assert_allclose(flipout.mean(axis=0), tiled.mean(axis=0), atol=4 * tiled.std(axis=0).max() / 60)
    np.testing.assert_allclose(flipout.std(axis=0), tiled.std(axis=0), rtol=0.1)
    assert flipout.std(axis=0).min() > 0.01


@pytest.mark.model
def test_training_with_flipout_lowers_the_loss():
    train, _ = _regression_data(1000, 0)
    validation, _ = _regression_data(200, 1)
    model = BayesianForecaster(2, ModelConfig(head="normal", lstm_units=(8, 4))).build_for(6)
    result = train_model(model, train, validation, TrainConfig(epochs=3, batch_size=64, learning_rate=1e-2, patience=3,
                                                               kl_ramp_epochs=1, weight_noise="flipout"),
                         progress=False)
    assert result.history[-1]["nll"] < result.history[0]["nll"]
    assert not model.recurrent_layers[0].flipout_training


def test_nan_guard_stops_training():
    from pipeline_lib.errors import TrainingDivergedError

    train, _ = _regression_data(256, 0)
    train.targets[:] = np.nan
    model = BayesianForecaster(2, ModelConfig(head="normal", lstm_units=(4, 4))).build_for(6)
    with pytest.raises(TrainingDivergedError, match="diverged"):
        train_model(model, train, train, TrainConfig(epochs=1, batch_size=64), progress=False)


@pytest.mark.model
def test_epistemic_variance_falls_as_training_data_grows():
    """With the per-example ELBO, KL/N weighs less as N grows, so the posterior narrows.

    Both fits keep their last weights (no validation set): restoring the best validation
    epoch could hand back an early, still-narrow posterior and hide the effect (it did, on
    CI). Every random source is seeded: unseeded tf_keras initialisers draw from Python's
    ``random``. Across seeds 0-7 the ratio is 0.09-0.17."""
    test, _ = _regression_data(300, 5)
    epistemic = {}
    for n, epochs in ((128, 150), (4096, 5)):  # about the same number of gradient steps
        train, _ = _regression_data(n, 0)
        tf_keras.utils.set_random_seed(0)
        config = ModelConfig(head="normal", lstm_units=(8, 4), posterior_init_std=0.05)
        model = BayesianForecaster(2, config).build_for(6)
        train_model(model, train, None, TrainConfig(batch_size=64, learning_rate=1e-2, kl_annealing="none"),
                    progress=False, epochs=epochs)
        out = predict_distribution(model, test.inputs, num_samples=100, samples_per_draw=1)
        epistemic[n] = float(out.epistemic_variance.mean())
    assert epistemic[4096] < 0.5 * epistemic[128], epistemic


def test_bayesian_attention_at_zero_variance_is_plain_attention():
    """The attention block with zero posterior std against numpy: softmax(q k^T / sqrt(d)) v
    of the last step over the sequence, concatenated to the last step."""
    from pipeline_lib.model.layers import BayesianAttention

    h = RNG.normal(size=(6, 10, 5)).astype("float32")
    layer = BayesianAttention(4)
    layer(h)
    _zero_variance(layer)
    wq, wk, wv = (getattr(layer, f"{name}_loc").numpy() for name in ("query", "key", "value"))
    q, k, v = h[:, -1] @ wq, h @ wk, h @ wv
    scores = np.einsum("bd,btd->bt", q, k) / 2.0
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    expected = np.concatenate([h[:, -1], np.einsum("bt,btd->bd", weights, v)], axis=1)
    assert np.abs(layer(h).numpy() - expected).max() < 1e-5
    for strategy in (TILED, FLIPOUT):
        draw = layer.draw(3, 6, strategy, tf.constant([1, 2]))
        got = layer.forward(tf.constant(np.stack([h] * 3)), draw).numpy()
        assert np.abs(got - expected[None]).max() < 1e-5
    # A network with attention samples in both strategies (Flipout LSTMs + full attention draws).
    network = BayesianForecaster(3, ModelConfig(head="normal", lstm_units=(8, 4), attention_units=4)).build_for(10)
    for n in (2, 64):
        draws = sample_one_step(network, np.repeat(X, 11, axis=0)[:n], num_samples=5, samples_per_draw=1)
        assert draws.samples.shape == (5, n) and np.isfinite(draws.samples).all()


TRAIN_IN_A_FRESH_PROCESS = """
import hashlib, sys
import numpy as np
from pipeline_lib import stages
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import load_panel

config = PipelineConfig(
    workdir=sys.argv[2], data={"path": sys.argv[1]},
    window={"context_length": 14, "validation_days": 14, "test_days": 14, "min_train_days": 14},
    model={"lstm_units": (8, 4)}, train={"epochs": 2, "batch_size": 64},
    evaluation={"num_samples": 20, "recalibrate": False})
model = stages.train(config, load_panel(config.data, config.window), progress=False).model
print(hashlib.sha256(b"".join(w.tobytes() for w in model.network.get_weights())).hexdigest())
"""


@pytest.mark.model
def test_the_same_config_trains_the_same_model_in_every_process(tmp_path):
    """Two fresh processes at once, one config: bit-identical weights. (tf_keras seeds
    unseeded initializers from Python's ``random``, so seeding TensorFlow alone was not
    enough.)"""
    import os
    import subprocess
    import sys

    from support import synthetic_demand

    synthetic_demand(n_series=3, n_days=100).to_csv(tmp_path / "demand.csv", index=False)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    children = [subprocess.Popen([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS, str(tmp_path / "demand.csv"),
                                  str(tmp_path / f"work{run}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for run in range(2)]
    digests = []
    for child in children:
        out, err = child.communicate()
        assert child.returncode == 0, err[-3000:]
        digests.append(out.strip().splitlines()[-1])
    assert digests[0] == digests[1]
