"""Training under a ``tf.distribute`` strategy (``train.distribute`` in the config).

- ``none`` (default): TensorFlow's default strategy, i.e. plain single-device training.
- ``mirrored``: :class:`tf.distribute.MirroredStrategy`, synchronous data parallelism over
  the devices of one host (all its GPUs unless ``train.devices`` names them). Each replica
  takes an equal slice of every mini-batch; gradients are summed over replicas before the
  global-norm clipping, so one step equals the single-device step on the whole batch.

- ``multi_worker``: :class:`tf.distribute.MultiWorkerMirroredStrategy`, the same across
  hosts: every worker runs the same training (same config, data and seed, so the same
  batches in the same order), reads ``TF_CONFIG`` (the cluster's workers and its own
  index), takes its replicas' slices of each batch and all-reduces the gradients with the
  others. Without ``TF_CONFIG`` it is one local worker. Create it before any other
  TensorFlow work in the process (TensorFlow's rule); it is created once per process and
  reused by the refit. Only the chief (:func:`is_chief`) evaluates, gates and registers.

The variables of the network and of the optimizer must be created inside
``strategy.scope()``; :func:`pipeline_lib.stages.train` does that.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import tensorflow as tf


def make_strategy(kind: str, devices: tuple[str, ...] | None = None) -> tf.distribute.Strategy:
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if kind == "multi_worker":
        return _multi_worker_strategy()
    raise ValueError(f"unknown distribution strategy {kind!r}")


@functools.cache
def _multi_worker_strategy() -> tf.distribute.Strategy:
    # One per process: TensorFlow configures its collectives once, so the refit reuses the
    # evaluation fit's strategy.
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(kind: str) -> bool:
    """Whether this process is the one that evaluates, gates and registers after training:
    always, except a ``multi_worker`` process whose ``TF_CONFIG`` names it as another task
    than the chief (a task of type ``chief``, else worker 0)."""
    raw = os.environ.get("TF_CONFIG")
    if kind != "multi_worker" or not raw:
        return True
    spec = json.loads(raw)
    task, cluster = spec.get("task", {}), spec.get("cluster", {})
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


def split_batch(strategy: tf.distribute.Strategy, *arrays: np.ndarray):
    """Per-replica values: replica ``r`` gets the ``r``-th of ``num_replicas_in_sync``
    near-equal consecutive slices of each array (one may be empty on a short last batch)."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return tuple(tf.constant(a) for a in arrays)
    parts = [np.array_split(a, replicas) for a in arrays]
    return tuple(
        strategy.experimental_distribute_values_from_function(
            lambda ctx, p=p: tf.constant(p[ctx.replica_id_in_sync_group]))
        for p in parts
    )
