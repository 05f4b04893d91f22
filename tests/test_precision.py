"""Cheaper numbers, same forecasts: bfloat16/float16 training (``train.mixed_precision``)
against float32, and the 8-bit posterior (``serving.quantized_posterior``) against its
stated error bounds and the output contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras
from support import synthetic_demand
from test_bayesian_lstm import _regression_data

from pipeline_lib import stages
from pipeline_lib.config import ModelConfig, TrainConfig
from pipeline_lib.contract import check_forecast_frame, quantile_column
from pipeline_lib.forecasting.batch import forecast_frame
from pipeline_lib.model.forecast import QUANTIZED_WEIGHTS_FILE, WEIGHTS_FILE, ForecastModel
from pipeline_lib.model.network import BayesianForecaster
from pipeline_lib.model.online import online_update, update_windows
from pipeline_lib.model.predict import predict_distribution
from pipeline_lib.model.quantize import dequantize, quantize
from pipeline_lib.model.training import train_model


def _network(seed: int = 0) -> BayesianForecaster:
    tf_keras.utils.set_random_seed(seed)
    return BayesianForecaster(2, ModelConfig(head="normal", lstm_units=(16, 8))).build_for(6)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_training_pass_runs_in_the_low_precision_dtype_within_its_rounding(dtype):
    """The same weight draw through ``call`` in float32 and in ``dtype``: outputs of order 1
    agree to 5e-2 (bfloat16 keeps 8 significant bits, float16 11), and they do differ, so the
    LSTM layers really computed in ``dtype``. Variables and outputs stay float32."""
    network = _network()
    x = tf.constant(np.random.default_rng(0).normal(size=(64, 6, 2)).astype("float32"))
    tf.random.set_seed(3)
    full = network(x, training=True)
    with network.training_precision(dtype):
        tf.random.set_seed(3)
        low = network(x, training=True)
    assert low.dtype == tf.float32 and all(v.dtype == tf.float32 for v in network.variables)
    difference = float(tf.reduce_max(tf.abs(full - low)))
    assert 0.0 < difference < 5e-2, difference
    tf.random.set_seed(3)
    assert np.array_equal(network(x, training=True).numpy(), full.numpy())  # float32 again after the block


@pytest.mark.model
@pytest.mark.parametrize("mixed_precision", ["bfloat16", "float16"])
def test_mixed_precision_training_matches_float32_within_tolerance(mixed_precision):
    """Three epochs from the same start in float32 and in mixed precision (float16 through
    the loss-scaling optimizer): validation NLL within 0.03 nats and predictive means within
    0.05 (the target's std is about 1); measured differences are 0.002 and 0.002."""
    train, _ = _regression_data(2000, 0)
    validation, _ = _regression_data(300, 1)
    results = {}
    for setting in ("off", mixed_precision):
        network = _network()
        fit = train_model(network, train, validation,
                          TrainConfig(epochs=3, batch_size=128, learning_rate=1e-2, kl_ramp_epochs=2,
                                      mixed_precision=setting), progress=False)
        means = predict_distribution(network, validation.inputs, num_samples=50, samples_per_draw=2).mean
        results[setting] = (fit.best_validation_nll, means)
    (nll, means), (nll_low, means_low) = results["off"], results[mixed_precision]
    assert abs(nll - nll_low) < 0.03, (nll, nll_low)
    assert np.abs(means - means_low).max() < 0.05


def test_quantize_round_trip_within_the_stated_error():
    """Means: error at most half a step, a step being 1/127 of the channel's largest |mu|;
    scales: relative error at most exp(step / 2) - 1 of the channel's log-sigma range / 255.
    One channel is 1000x smaller than the rest: a per-tensor scale would break its bound."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(24, 16)) * np.r_[np.full(15, 1.0), 1e-3]
    rho = rng.normal(-5.0, 1.5, size=(24, 16))
    bias = rng.normal(size=16)
    names = ["layer/kernel_loc:0", "layer/kernel_rho:0", "layer/bias_loc:0", "other/plain:0"]
    plain = rng.normal(size=(3, 3)).astype(np.float32)
    stored = quantize(names, [mu, rho, bias, plain])
    assert stored["codes"].dtype == np.int8 and stored["codes"].size == mu.size + rho.size + bias.size
    mu_back, rho_back, bias_back, plain_back = dequantize(stored)

    step = np.abs(mu).max(axis=0) / 127
    assert (np.abs(mu_back - mu) <= step / 2 * (1 + 1e-5) + 1e-9).all()
    assert np.abs(bias_back - bias).max() <= np.abs(bias).max() / 254 * (1 + 1e-5)
    sigma, sigma_back = np.log1p(np.exp(rho)), np.log1p(np.exp(rho_back.astype(np.float64)))
    log_range = np.log(sigma).max(axis=0) - np.log(sigma).min(axis=0)
    bound = np.expm1(log_range / 255 / 2) * (1 + 1e-3) + 1e-6
    assert (np.abs(sigma_back / sigma - 1) <= bound).all()
    assert np.array_equal(plain_back, plain)
    requantized = quantize(names, [mu_back, rho_back, bias_back, plain])  # stable: the codes stay put
    np.testing.assert_array_equal(requantized["codes"], stored["codes"])
    with pytest.raises(ValueError, match="layout"):
        dequantize({**stored, "codes": stored["codes"][:-1]})


def test_quantized_model_saves_in_8_bits_and_forecasts_within_the_contract(small_config, tmp_path):
    """``serving.quantized_posterior``: the training stage serves the 8-bit posterior; saved
    and reloaded it forecasts as the in-memory model (to float32 rounding), within the output contract,
    close to the float32 model, from a smaller weights file (a quarter or so for the default
    model: benchmarks/RESULTS.md; this one is tiny, so per-channel scales weigh more)."""
    raw = synthetic_demand(n_series=4, n_days=120)
    float_config = small_config
    quantized_config = small_config.model_copy(
        update={"serving": small_config.serving.model_copy(update={"quantized_posterior": True})})
    panel = stages.validate(float_config, raw)
    trained = stages.train(float_config, panel, progress=False)
    served = stages.train(quantized_config, panel, progress=False).model
    assert served.quantized and not trained.model.quantized

    reloaded = ForecastModel.load(served.save(tmp_path / "quantized"))
    trained.model.save(tmp_path / "float")
    assert reloaded.quantized and not (tmp_path / "quantized" / WEIGHTS_FILE).exists()
    size = (tmp_path / "quantized" / QUANTIZED_WEIGHTS_FILE).stat().st_size
    assert size < (tmp_path / "float" / WEIGHTS_FILE).stat().st_size / 2
    for name, a, b in zip([w.name for w in served.network.weights], served.network.get_weights(),
                          reloaded.network.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)  # saving re-quantizes

    frames = {name: forecast_frame(float_config, model, panel, 7, seed=1, model_version="1")
              for name, model in (("float", trained.model), ("served", served), ("reloaded", reloaded))}
    check_forecast_frame(frames["reloaded"])
    columns = [c for c in frames["served"].columns if c.startswith("q") or c in ("mean", "std")]
    np.testing.assert_allclose(frames["reloaded"][columns], frames["served"][columns], rtol=1e-4, atol=1e-4)
    # An online update of the 8-bit champion stays 8-bit.
    last_day = pd.Timestamp(panel.series[0].dates[-1]).date()
    assert online_update(served, update_windows(served, panel, stages.recent_days(panel, last_day, 5)),
                         steps=2).quantized
    median_gap = np.abs(frames["reloaded"][quantile_column(0.5)] - frames["float"][quantile_column(0.5)])
    assert (median_gap <= 0.05 * frames["float"]["std"] + 0.5).all()


def test_auto_precision_follows_the_hardware(monkeypatch):
    from pipeline_lib.model import training

    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind: [])
    monkeypatch.setattr(training, "_cpu_has_bfloat16", lambda: True)
    assert training.training_dtype("auto") == tf.bfloat16
    monkeypatch.setattr(training, "_cpu_has_bfloat16", lambda: False)
    assert training.training_dtype("auto") == tf.float32
    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind: ["GPU:0"] if kind == "GPU" else [])
    assert training.training_dtype("auto") == tf.float16
    assert training.training_dtype("off") == tf.float32 and training.training_dtype("bfloat16") == tf.bfloat16
