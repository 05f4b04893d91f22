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
  TensorFlow work in the process (TensorFlow's rule).

The variables of the network and of the optimizer must be created inside
``strategy.scope()``; :func:`pipeline_lib.stages.train` does that.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def make_strategy(kind: str, devices: tuple[str, ...] | None = None) -> tf.distribute.Strategy:
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown distribution strategy {kind!r}")


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
