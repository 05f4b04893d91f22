"""Monte Carlo prediction and training speed, measured side by side in one run.

    python benchmarks/mc_speed.py [--json] [--quick]

Model: BayesianLSTM(64, sequences) -> BayesianLSTM(32) -> Normal head, 28-day windows of
8 features. Compares, in this process and on this machine:

- the source material's recipe, ``[model(x) for _ in range(100)]`` in eager mode, against
  one vectorised call of ``sample_one_step`` (S = 100), for 1 and 256 windows;
- the vectorised S = 100 call on 256 windows against a deterministic ``tf_keras`` LSTM of
  the same size forwarding the 25,600 tiled windows (compiled);
- one training epoch of the Bayesian model against the deterministic model trained by the
  same loop, and the Bayesian epoch with its LSTM layers in bfloat16 (``train.mixed_precision``)
  against float32;
- the tiled and Flipout strategies for a single window;
- peak extra resident memory of the S = 100, B = 256 call (in a fresh child process);
- the 8-bit posterior (``serving.quantized_posterior``): weights-file size and prediction
  time of the model loaded from it, against float32.

The last line of ``--json`` output is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

SAMPLES, STEPS, FEATURES = 100, 28, 8


def _timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _models():
    import tensorflow as tf
    import tf_keras

    from pipeline_lib.config import ModelConfig
    from pipeline_lib.model.network import BayesianForecaster

    tf.random.set_seed(0)
    bayesian = BayesianForecaster(FEATURES, ModelConfig(lstm_units=(64, 32), head="normal")).build_for(STEPS)
    deterministic = tf_keras.Sequential([
        tf_keras.layers.LSTM(64, return_sequences=True), tf_keras.layers.LSTM(32), tf_keras.layers.Dense(2),
    ])
    deterministic(tf.zeros([1, STEPS, FEATURES]))
    return bayesian, deterministic


def _windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, STEPS, FEATURES)).astype("float32")


def _peak_memory_child(queue) -> None:
    from _memory import hwm_mb

    from pipeline_lib.model.predict import sample_one_step

    bayesian, _ = _models()
    sample_one_step(bayesian, _windows(4), SAMPLES, samples_per_draw=1, strategy="tiled", batch_size=256)
    before = hwm_mb()
    sample_one_step(bayesian, _windows(256), SAMPLES, samples_per_draw=1, strategy="tiled", batch_size=256)
    queue.put(hwm_mb() - before)


def _quantized_model(bayesian, windows, repeats: int) -> tuple[int, int, float, float]:
    """Bytes of the 8-bit and the float32 weights file, and the S=100 prediction times of the
    model loaded from the 8-bit file (dequantized at load, so float32 arithmetic) and of the
    float32 model, timed one after the other."""
    import tempfile
    from pathlib import Path

    import tf_keras

    from pipeline_lib.model.network import BayesianForecaster
    from pipeline_lib.model.predict import sample_one_step
    from pipeline_lib.model.quantize import dequantize, quantize

    with tempfile.TemporaryDirectory() as tmp:
        float_file, quantized_file = Path(tmp) / "weights.npz", Path(tmp) / "weights.int8.npz"
        np.savez(float_file, *bayesian.get_weights())
        np.savez(quantized_file, **quantize([w.name for w in bayesian.weights], bayesian.get_weights()))
        with np.load(quantized_file) as stored:
            weights = dequantize(stored)
        sizes = quantized_file.stat().st_size, float_file.stat().st_size
    tf_keras.utils.set_random_seed(0)
    loaded = BayesianForecaster(FEATURES, bayesian.model_config).build_for(STEPS)
    loaded.set_weights(weights)
    def predict(model):
        return lambda: sample_one_step(model, windows, SAMPLES, samples_per_draw=1, batch_size=256)

    return *sizes, _timed(predict(loaded), repeats), _timed(predict(bayesian), repeats)


def _train_epoch_seconds(model, loss_fn, x, y, batch_size=256) -> float:
    import tensorflow as tf
    import tf_keras

    optimizer = tf_keras.optimizers.Adam(1e-3)

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(model, xb, yb)
        grads = tape.gradient(loss, model.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, 5.0)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def epoch():
        for start in range(0, len(x), batch_size):
            float(step(x[start:start + batch_size], y[start:start + batch_size]))

    return _timed(epoch, repeats=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5

    import tensorflow as tf

    from pipeline_lib.model.predict import sample_one_step

    bayesian, deterministic = _models()
    x1, x256 = _windows(1), _windows(256)

    def eager_recipe(x):
        return lambda: [bayesian(x) for _ in range(SAMPLES)]

    def vectorised(x, strategy="auto"):
        return lambda: sample_one_step(bayesian, x, SAMPLES, samples_per_draw=1, strategy=strategy, batch_size=256)

    results = {}
    print("timing the eager recipe (100 Python calls) ...", file=sys.stderr)
    loop_b1 = _timed(eager_recipe(x1), repeats=1)
    loop_b256 = _timed(eager_recipe(x256), repeats=1)
    print("timing the vectorised call ...", file=sys.stderr)
    vec_b1 = _timed(vectorised(x1), repeats * 4)
    vec_b1_tiled = _timed(vectorised(x1, "tiled"), repeats * 4)
    vec_b1_flipout = _timed(vectorised(x1, "flipout"), repeats * 4)
    vec_b256 = _timed(vectorised(x256), repeats)
    vec_b256_flipout = _timed(vectorised(x256, "flipout"), repeats)

    tiled_windows = tf.constant(np.tile(x256, (SAMPLES, 1, 1)))
    deterministic_forward = tf.function(lambda x: deterministic(x))
    det_25600 = _timed(lambda: deterministic_forward(tiled_windows).numpy(), repeats)

    print("timing one training epoch of each model ...", file=sys.stderr)
    x_train = _windows(12800, seed=1)
    y_train = np.random.default_rng(2).normal(size=12800).astype("float32")
    n_train = float(len(x_train))

    def bayesian_loss(model, xb, yb):
        nll = -tf.reduce_mean(model.distribution(model(xb, training=True)).log_prob(yb))
        return nll + model.kl_divergence() / n_train

    def deterministic_loss(model, xb, yb):
        params = model(xb, training=True)
        scale = 1e-3 + tf.nn.softplus(params[:, 1])
        return tf.reduce_mean(0.5 * ((yb - params[:, 0]) / scale) ** 2 + tf.math.log(scale))

    epoch_bayes = _train_epoch_seconds(bayesian, bayesian_loss, x_train, y_train)
    epoch_det = _train_epoch_seconds(deterministic, deterministic_loss, x_train, y_train)
    with bayesian.training_precision(tf.bfloat16):  # train.mixed_precision: bfloat16
        epoch_bayes_bf16 = _train_epoch_seconds(bayesian, bayesian_loss, x_train, y_train)

    print("timing the 8-bit posterior ...", file=sys.stderr)
    quantized_bytes, float_bytes, quantized_vec_b256, float_vec_b256 = _quantized_model(bayesian, x256, repeats)

    queue = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(target=_peak_memory_child, args=(queue,))
    child.start()
    peak = queue.get(timeout=600)
    child.join()

    results = {
        "loop_over_vectorized_b1": loop_b1 / vec_b1,
        "loop_over_vectorized_b256": loop_b256 / vec_b256,
        "vectorized_over_deterministic": vec_b256 / det_25600,
        "train_epoch_ratio": epoch_bayes / epoch_det,
        "bfloat16_over_float32_train_epoch": epoch_bayes_bf16 / epoch_bayes,
        "peak_mem_mb": peak,
        "quantized_over_float32_weights_bytes": quantized_bytes / float_bytes,
        "quantized_over_float32_prediction": quantized_vec_b256 / float_vec_b256,
        "flipout_over_tiled_b1": vec_b1_flipout / vec_b1_tiled,
        "flipout_over_tiled_b256": vec_b256_flipout / vec_b256,
        "seconds": {
            "eager_loop_b1": loop_b1, "eager_loop_b256": loop_b256, "vectorized_b1": vec_b1,
            "vectorized_b1_tiled": vec_b1_tiled, "vectorized_b1_flipout": vec_b1_flipout,
            "vectorized_b256": vec_b256, "vectorized_b256_flipout": vec_b256_flipout,
            "deterministic_25600": det_25600, "epoch_bayesian_12800": epoch_bayes,
            "epoch_deterministic_12800": epoch_det, "epoch_bayesian_bfloat16_12800": epoch_bayes_bf16,
            "vectorized_b256_quantized": quantized_vec_b256,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}",
    }
    print(f"S=100, 1 window:    eager loop {loop_b1:.2f} s, vectorised {vec_b1 * 1e3:.1f} ms "
          f"-> {results['loop_over_vectorized_b1']:.0f}x faster (target >= 50x)")
    print(f"S=100, 256 windows: eager loop {loop_b256:.2f} s, vectorised {vec_b256:.3f} s "
          f"-> {results['loop_over_vectorized_b256']:.1f}x faster (target >= 5x)")
    print(f"vectorised S=100 x 256 vs deterministic LSTM on 25,600 windows: "
          f"{results['vectorized_over_deterministic']:.2f}x the time (target <= 1.0)")
    print(f"training epoch, Bayesian / deterministic: {results['train_epoch_ratio']:.2f}x (target <= 1.5)")
    print(f"training epoch, Bayesian bfloat16 / float32 (train.mixed_precision): "
          f"{results['bfloat16_over_float32_train_epoch']:.2f}x")
    print(f"Flipout / tiled, 1 window: {results['flipout_over_tiled_b1']:.2f}; "
          f"256 windows: {results['flipout_over_tiled_b256']:.2f}")
    print(f"peak extra memory of S=100 x 256: {peak:.0f} MB")
    print(f"8-bit posterior: weights file {quantized_bytes / 1e3:.0f} kB vs {float_bytes / 1e3:.0f} kB float32 "
          f"({results['quantized_over_float32_weights_bytes']:.2f}x); S=100 x 256 prediction "
          f"{results['quantized_over_float32_prediction']:.2f}x the float32 model's time")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
