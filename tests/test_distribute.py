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


WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    from pipeline_lib.model.distribute import make_strategy
    strategy = make_strategy(sys.argv[1])  # before any other TensorFlow work
    import tensorflow as tf
    import tf_keras
    from pipeline_lib.config import ModelConfig
    from pipeline_lib.model.network import BayesianForecaster
    from pipeline_lib.model.training import make_train_step

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 6, 3)).astype("float32")  # every worker reads the same batch
    y = rng.normal(size=10).astype("float32")
    with strategy.scope():
        model = BayesianForecaster(3, ModelConfig(head="normal", lstm_units=(5, 4))).build_for(6)
        for v in model.trainable_variables:  # near-zero posterior std: every replica samples the means
            v.assign(tf.fill(v.shape, -40.0) if "rho" in v.name else
                     tf.constant(np.random.default_rng(1).normal(scale=0.3, size=v.shape), tf.float32))
        optimizer = tf_keras.optimizers.SGD(learning_rate=0.1)
        beta = tf.Variable(1.0, trainable=False)
    step = make_train_step(model, optimizer, n_train=40, beta=beta, clip_norm=1e6, strategy=strategy)
    loss, _, _ = step(x, y)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": float(loss),
                      "weights": [w.ravel().tolist() for w in model.get_weights()]}))
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.model
def test_two_workers_of_a_multi_worker_strategy_take_the_single_device_step():
    """MultiWorkerMirroredStrategy with two worker processes on this host (TF_CONFIG): each
    takes half of the batch, the gradients are all-reduced between the processes, and both
    end with the weights of one single-device step on the whole batch."""
    import numpy as np

    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, "multi_worker"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**base, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                      "task": {"type": "worker", "index": k}})})
               for k in range(2)]
    single = subprocess.run([sys.executable, "-c", WORKER, "none"], capture_output=True, text=True, env=base,
                            check=False, timeout=300)
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert single.returncode == 0, single.stderr[-3000:]
    reference = json.loads(single.stdout.strip().splitlines()[-1])
    assert [o["replicas"] for o in outputs] == [2, 2] and reference["replicas"] == 1
    for out in outputs:
        assert abs(out["loss"] - reference["loss"]) < 1e-4 * abs(reference["loss"]), (out["loss"], reference["loss"])
        diff = max(float(np.abs(np.array(a) - np.array(b)).max())
                   for a, b in zip(out["weights"], reference["weights"], strict=True))
        assert diff < 1e-5, diff


@pytest.mark.model
def test_a_multi_worker_training_run_registers_one_version_from_the_chief(tmp_path):
    """`bayes-pipeline train` started on two workers (TF_CONFIG, as an operator starts them):
    both train their share of the evaluation fit and the refit; only worker 0 evaluates and
    registers, so there is one model version, and the other worker's state holds no MLflow
    run at all."""
    import yaml
    from support import synthetic_demand

    synthetic_demand(n_series=3, n_days=80).to_csv(tmp_path / "demand.csv", index=False)
    config = {
        "window": {"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
        "model": {"lstm_units": [4]},
        "train": {"epochs": 2, "batch_size": 64, "patience": 1, "kl_ramp_epochs": 1, "distribute": "multi_worker"},
        "evaluation": {"num_samples": 20, "fan_chart_series": 1},
        "serving": {"num_samples": 20},
        "inventory": {"in_training_run": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    base.pop("PREFECT_API_URL", None)
    workers = []
    for k in range(2):
        env = {**base, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": k}}),
               "BAYES_PIPELINE_WORKDIR": str(tmp_path / f"worker{k}")}
        env.pop("PREFECT_HOME", None)
        workers.append(subprocess.Popen(
            [sys.executable, "-c", "from flows.cli import main; main()", "train", "--data",
             str(tmp_path / "demand.csv"), "--config", str(tmp_path / "config.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]
        outputs.append(stdout)
    assert "model: " in outputs[0] and "version 1" in outputs[0], outputs[0]
    assert "a worker of a multi-worker training" in outputs[1] and "run_id" not in outputs[1], outputs[1]
    assert not (tmp_path / "worker1" / "mlflow.db").exists()
    import mlflow

    chief = f"sqlite:///{tmp_path / 'worker0' / 'mlflow.db'}"
    # The registry URI too: without it the client reads whichever registry an earlier test
    # in this process configured.
    client = mlflow.MlflowClient(tracking_uri=chief, registry_uri=chief)
    versions = client.search_model_versions()
    assert len(versions) == 1, versions
