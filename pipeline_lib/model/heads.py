"""Distribution heads: map the last layer's raw outputs to a predictive distribution."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


class NormalHead:
    """Heteroscedastic Normal: ``loc = p[..., 0]``, ``scale = min_scale + softplus(p[..., 1])``.

    ``min_scale`` (model-space units) keeps the likelihood bounded when the network becomes
    over-confident on a run of identical values (e.g. closed Saturdays).
    """

    num_params = 2

    def __init__(self, min_scale: float = 1e-3):
        self.min_scale = min_scale

    def distribution(self, params: tf.Tensor) -> tfd.Distribution:
        return tfd.Normal(loc=params[..., 0], scale=self.min_scale + tf.nn.softplus(params[..., 1]))


def make_head(kind: str, min_scale: float):
    if kind == "normal":
        return NormalHead(min_scale)
    raise ValueError(f"unknown head {kind!r}")
