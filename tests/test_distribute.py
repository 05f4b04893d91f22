"""Training under tf.distribute.MirroredStrategy: one step on two replicas equals the
single-device step on the whole batch (run on two logical CPUs in a child process,
because logical devices must be set before TensorFlow initialises)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json, os
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tf_keras
    from pipeline_lib.config import ModelConfig, TrainConfig
    from pipeline_lib.data.features import WindowSet
    from pipeline_lib.model.distribute import make_strategy
    from pipeline_lib.model.network import BayesianForecaster
    from pipeline_lib.model.training import make_train_step, train_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 6, 3)).astype("float32")  # 10 windows: replicas get 5 + 5
    y = rng.normal(size=10).astype("float32")

    def one_step(strategy):
        tf.random.set_seed(0)
        with strategy.scope():
            model = BayesianForecaster(3, ModelConfig(head="normal", lstm_units=(5, 4))).build_for(6)
            # Near-zero posterior std: the sampled weights are the means, so both runs see
            # the same network and must compute the same gradient.
            for v in model.trainable_variables:
                v.assign(tf.fill(v.shape, -40.0) if "rho" in v.name else
                         tf.constant(np.random.default_rng(1).normal(scale=0.3, size=v.shape), tf.float32))
            optimizer = tf_keras.optimizers.SGD(learning_rate=0.1)  # Adam's first step hides gradient scale
            beta = tf.Variable(1.0, trainable=False)
        step = make_train_step(model, optimizer, n_train=40, beta=beta, clip_norm=1e6, strategy=strategy)
        loss, nll, kl = step(x, y)
        return [w.tolist() for w in model.get_weights()], float(loss), float(nll)

    mirrored = make_strategy("mirrored", ("/cpu:0", "/cpu:1"))
    single_w, single_loss, single_nll = one_step(make_strategy("none"))
    mirrored_w, mirrored_loss, mirrored_nll = one_step(mirrored)
    diff = max(float(np.abs(np.array(a) - np.array(b)).max()) for a, b in zip(single_w, mirrored_w))

    # A short real training run under the strategy (uneven last batch: 50 = 16 + 16 + 16 + 2).
    train = WindowSet(rng.normal(size=(50, 6, 3)).astype("float32"), rng.normal(size=50).astype("float32"),
                      np.zeros(50, int), np.arange(50), np.zeros(50, np.float32))
    with mirrored.scope():
        model = BayesianForecaster(3, ModelConfig(head="normal", lstm_units=(5, 4))).build_for(6)
    result = train_model(model, train, train, TrainConfig(epochs=2, batch_size=16, kl_ramp_epochs=1),
                         progress=False, strategy=mirrored)
    print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "weight_diff": diff,
                      "loss": [single_loss, mirrored_loss], "nll": [single_nll, mirrored_nll],
                      "history": result.history}))
""")


@pytest.mark.model
def test_mirrored_step_equals_the_single_device_step():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["weight_diff"] < 1e-5, out
    assert abs(out["loss"][0] - out["loss"][1]) < 1e-4 * abs(out["loss"][0]), out
    assert abs(out["nll"][0] - out["nll"][1]) < 1e-4 * abs(out["nll"][0]), out
    assert [r["epoch"] for r in out["history"]] == [1, 2]
    assert all(math.isfinite(r[k]) for r in out["history"] for k in ("loss", "nll", "kl", "val_nll"))
