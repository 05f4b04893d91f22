"""Variational (Bayes-by-backprop) layers for ``tf_keras`` with batched Monte Carlo sampling.

The three layers share one base class and one weight-draw type, as TFP keeps its
variational layers together; that is the reason for one module of about 370 lines.

Every weight ``w`` has a factorised Gaussian posterior ``q(w) = N(mu, softplus(rho)^2)``.
Weights are drawn once per sequence (not per time step). Two sampling strategies give
``S`` samples in ONE call:

- ``tiled``: draw ``S`` full weight sets and run the batch, tiled ``S`` times, through
  batched matmuls ``(S, B, .) @ (S, ., .)``. Exact independent samples; fastest for large B.
- ``flipout`` (Wen et al., 2018): one shared perturbation ``dW = sigma * eps`` decorrelated
  per example by random sign vectors, ``x @ mu + ((x * r) @ dW) * s``. Two ordinary matmuls,
  fastest for small B (a single window), samples pairwise uncorrelated.

A *draw* is a small dict of tensors, so the same sampled weights can be reused across the
steps of a recursive multi-day forecast (one weight draw per sample path).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tf_keras

# tf_keras's CPU LSTM kernel (a while-loop over a TensorArray). Private API, pinned with
# tf-keras==2.21.*; the equivalence test against tf_keras.layers.LSTM guards it.
from tf_keras.src.layers.rnn.lstm import standard_lstm as _keras_standard_lstm

from pipeline_lib.model.priors import kl_divergence, make_prior

TILED = "tiled"
FLIPOUT = "flipout"


class WeightDraw(NamedTuple):
    """Sampled weights of one variational layer for ``S`` samples (what ``forward`` runs with).

    ``weights``: name -> tensor. A tiled draw holds ``S`` full weight sets ``(S, *shape)``,
    one per sequence; a Flipout draw holds one perturbation ``(*shape)`` around the
    posterior mean that ``signs`` decorrelate per example.
    ``signs``: Flipout's random sign vectors and the per-example bias; empty when tiled.
    A NamedTuple, so ``tf.function`` takes it as an argument like any nested structure.
    """

    weights: dict
    signs: dict

    @property
    def flipout(self) -> bool:
        return bool(self.signs)


def _softplus_inverse(x: float) -> float:
    return float(np.log(np.expm1(x)))


@tf.function(jit_compile=True, reduce_retracing=True)
def _lstm_cell(projected: tf.Tensor, bias: tf.Tensor, c: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One LSTM step after the matmul: ``(h, c)`` from gate pre-activations ``projected +
    bias`` (``(..., 4U)``, Keras gate order i, f, g, o) and the previous cell state ``c``.

    XLA fuses the bias add, the four gate non-linearities and the state update into one
    pass over memory; unfused, these ten element-wise ops took about 40% of the Monte Carlo
    pass (S = 100 x 256 windows), more than the matmuls (see benchmarks/RESULTS.md). The
    matmul itself stays outside the cluster, where oneDNN runs it (XLA's CPU matmul is slower).
    """
    i, f, g, o = tf.split(projected + bias, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def _random_signs(shape, seed: tf.Tensor) -> tf.Tensor:
    return tf.cast(2 * tf.random.stateless_uniform(shape, seed=seed, maxval=2, dtype=tf.int32) - 1, tf.float32)


class VariationalLayer(tf_keras.layers.Layer):
    """Base class: stores the posterior variables and computes the KL term.

    Subclasses call :meth:`add_posterior` in ``build`` and implement ``forward(inputs, draw)``.
    """

    def __init__(self, prior: str = "normal", prior_scale: float = 1.0, prior_df: float = 5.0,
                 posterior_init_std: float = 1e-3, mixture_weight: float = 0.5,
                 mixture_scales: tuple[float, float] = (1.0, 0.0025), **kwargs):
        super().__init__(**kwargs)
        self.prior_name = prior
        self.prior_scale = prior_scale
        self.prior_df = prior_df
        self.mixture_weight = mixture_weight
        self.mixture_scales = tuple(mixture_scales)
        self.posterior_init_std = posterior_init_std
        self.prior = make_prior(prior, scale=prior_scale, df=prior_df, mixture_weight=mixture_weight,
                                mixture_scales=self.mixture_scales)
        self._posterior_names: list[str] = []
        # Weight noise of ``call`` (the training pass): False = one draw shared by the batch;
        # True = Flipout, a perturbation decorrelated per example (see BayesianForecaster.weight_noise).
        self.flipout_training = False

    def add_posterior(self, name: str, shape, initializer) -> None:
        loc = self.add_weight(name=f"{name}_loc", shape=shape, initializer=initializer, trainable=True)
        rho = self.add_weight(
            name=f"{name}_rho", shape=shape, trainable=True,
            initializer=tf_keras.initializers.Constant(_softplus_inverse(self.posterior_init_std)),
        )
        setattr(self, f"{name}_loc", loc)
        setattr(self, f"{name}_rho", rho)
        self._posterior_names.append(name)

    def posterior(self, name: str) -> tuple[tf.Variable, tf.Tensor]:
        """``(mu, sigma)`` of one weight tensor."""
        return getattr(self, f"{name}_loc"), tf.nn.softplus(getattr(self, f"{name}_rho"))

    def kl_divergence(self, seed: tf.Tensor | None = None) -> tf.Tensor:
        """KL(q || prior) of all this layer's weights (a scalar, not scaled by N)."""
        total = tf.constant(0.0)
        for i, name in enumerate(self._posterior_names):
            loc, scale = self.posterior(name)
            sub_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, i)
            total += kl_divergence(loc, scale, self.prior, sub_seed)
        return total

    def draw(self, num_samples: int, batch_size: int, strategy: str, seed: tf.Tensor) -> WeightDraw:
        """Sample what :meth:`forward` needs for ``num_samples`` samples of a ``batch_size`` batch."""
        weights = {}
        for i, name in enumerate(self._posterior_names):
            loc, scale = self.posterior(name)
            sub_seed = tf.random.experimental.stateless_fold_in(seed, i)
            if strategy == TILED:
                eps = tf.random.stateless_normal(tf.concat([[num_samples], tf.shape(loc)], 0), seed=sub_seed)
                weights[name] = loc[None] + scale[None] * eps
            else:
                weights[name] = scale * tf.random.stateless_normal(tf.shape(loc), seed=sub_seed)
        if strategy != FLIPOUT:
            return WeightDraw(weights, {})
        signs = self._draw_signs(num_samples * batch_size, tf.random.experimental.stateless_fold_in(seed, 1000))
        return WeightDraw(weights, signs)

    def mean_draw(self) -> WeightDraw:
        """The posterior means as one tiled draw (``S = 1``)."""
        return WeightDraw({name: self.posterior(name)[0][None] for name in self._posterior_names}, {})

    def _draw_signs(self, n: int, seed: tf.Tensor) -> dict:
        raise NotImplementedError  # pragma: no cover - every subclass implements it

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "prior": self.prior_name,
            "prior_scale": self.prior_scale,
            "prior_df": self.prior_df,
            "mixture_weight": self.mixture_weight,
            "mixture_scales": self.mixture_scales,
            "posterior_init_std": self.posterior_init_std,
        }


class BayesianLSTM(VariationalLayer):
    """LSTM whose input kernel, recurrent kernel and bias are random variables.

    Generative process, one draw per sequence::

        W ~ q(W), U ~ q(U), b ~ q(b)
        i, f, g, o = split(x_t W + h_{t-1} U + b)        # Keras gate order
        c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)
        h_t = sigmoid(o) tanh(c_t)

    With every posterior std at zero it computes exactly ``tf_keras.layers.LSTM`` with
    ``kernel = W_mu, recurrent_kernel = U_mu, bias = b_mu`` (unit forget bias at init).

    Shapes: ``call``: ``(B, T, F) -> (B, T, U)`` or ``(B, U)``; ``forward``:
    ``(S, B, T, F) -> (S, B, T, U)`` or ``(S, B, U)``. ``T`` must be static (the time loop is
    unrolled, which is faster than a while-loop on CPU for windows of a few weeks).

    #### Examples

    ```python
    layer = BayesianLSTM(64, return_sequences=True)
    y = layer(x)                                         # one weight draw, as in training
    draw = layer.draw(100, x.shape[0], "tiled", seed=tf.constant([1, 2]))
    samples = layer.forward(tf.tile(x[None], [100, 1, 1, 1]), draw)   # (100, B, T, 64)
    ```

    #### References

    Blundell et al. (2015), Weight Uncertainty in Neural Networks.
    Fortunato et al. (2017), Bayesian Recurrent Neural Networks.
    Wen et al. (2018), Flipout.
    """

    def __init__(self, units: int, return_sequences: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.return_sequences = return_sequences
        # Compute dtype of ``call`` (the training pass); see BayesianForecaster.training_precision.
        self.training_dtype = tf.float32

    def build(self, input_shape):
        features = int(input_shape[-1])
        u = self.units

        def bias_init(shape, dtype=None):
            # Unit forget bias, as tf_keras.layers.LSTM does by default.
            return tf.concat([tf.zeros([u]), tf.ones([u]), tf.zeros([2 * u])], 0)

        self.add_posterior("kernel", (features, 4 * u), tf_keras.initializers.GlorotUniform())
        self.add_posterior("recurrent", (u, 4 * u), tf_keras.initializers.Orthogonal())
        self.add_posterior("bias", (4 * u,), bias_init)
        super().build(input_shape)

    def call(self, inputs, training=None):
        if self.flipout_training:  # per-example perturbations, through the unrolled Flipout pass
            seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
            return self.forward(inputs[None], self.draw(1, tf.shape(inputs)[0], FLIPOUT, seed))[0]
        # One weight draw for the whole batch: the training path. It reuses tf_keras's own
        # CPU LSTM kernel with the sampled weights, so an epoch costs about what a
        # deterministic LSTM's does (an unrolled loop with per-step slices is 2x slower,
        # because each slice's gradient materialises the whole sequence).
        # Mixed precision: the weights are drawn in float32 (a posterior std of 1e-3 would
        # vanish in a bfloat16 mean) and only the drawn weights and the inputs are cast; the
        # casts pass gradients through unchanged, so the float32 parameters are updated.
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        compute = self.training_dtype
        weights = {name: tf.cast(w[0], compute)
                   for name, w in self.draw(1, tf.shape(inputs)[0], TILED, seed).weights.items()}
        inputs = tf.cast(inputs, compute)
        initial = tf.zeros([tf.shape(inputs)[0], self.units], dtype=compute)
        last, sequence, *_ = _keras_standard_lstm(
            inputs, initial, initial, weights["kernel"], weights["recurrent"], weights["bias"],
            None, False, False, None, False, self.return_sequences,
        )
        return tf.cast(sequence if self.return_sequences else last, tf.float32)

    def _draw_signs(self, n, seed) -> dict:
        u = self.units
        features = self.kernel_loc.shape[0]
        seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(5)]
        loc, scale = self.posterior("bias")
        return {
            "sign_in_x": _random_signs(tf.stack([n, features]), seeds[0]),
            "sign_out_x": _random_signs(tf.stack([n, 4 * u]), seeds[1]),
            "sign_in_h": _random_signs(tf.stack([n, u]), seeds[2]),
            "sign_out_h": _random_signs(tf.stack([n, 4 * u]), seeds[3]),
            # The bias is cheap enough to sample exactly per example.
            "bias_per_example": loc + scale * tf.random.stateless_normal(tf.stack([n, 4 * u]), seed=seeds[4]),
        }

    def forward(self, inputs: tf.Tensor, draw: WeightDraw) -> tf.Tensor:
        """Run ``inputs`` of shape ``(S, B, T, F)`` with sampled weights ``draw``."""
        if draw.flipout:
            return self._forward_flipout(inputs, draw)
        out = self.forward_steps(tf.unstack(inputs, num=inputs.shape[2], axis=2), draw)
        return tf.stack(out, axis=2) if self.return_sequences else out

    def forward_steps(self, inputs: list[tf.Tensor], draw: WeightDraw, state=None, return_state: bool = False):
        """Tiled draws on a list of ``T`` tensors ``(S, B, F)``; returns a list of ``T``
        tensors ``(S, B, U)`` if ``return_sequences`` else the last one. Stacked layers pass
        these lists to each other, which saves a stack/unstack copy per layer.

        ``state``: ``(h, c)`` to continue from (zeros if None); with ``return_state`` the
        final ``(h, c)`` is returned too, so a sequence can be extended step by step.
        """
        shape = tf.shape(inputs[0])
        # One batched matmul per step on [x_t, h] @ [W; U]: projecting all steps up front
        # would hold an (S, B, T, 4U) tensor, gigabytes for S=100 x 256 windows.
        stacked = tf.concat([draw.weights["kernel"], draw.weights["recurrent"]], axis=1)  # (S, F + U, 4U)
        bias = draw.weights["bias"][:, None, :]
        h0, c0 = state if state is not None else (tf.zeros([shape[0], shape[1], self.units]), None)
        return self._unroll(lambda t, h: (tf.matmul(tf.concat([inputs[t], h], axis=-1), stacked), bias),
                            h0, len(inputs), as_list=True, c0=c0, return_state=return_state)

    def _forward_flipout(self, inputs: tf.Tensor, draw: WeightDraw) -> tf.Tensor:
        shape = tf.shape(inputs)
        samples, batch = shape[0], shape[1]
        steps, features = inputs.shape[2], inputs.shape[3]
        flat = tf.reshape(inputs, [-1, steps, features])  # (N = S*B, T, F)
        projected = (
            tf.einsum("ntf,fg->ntg", flat, self.kernel_loc)
            + tf.einsum("ntf,fg->ntg", flat * draw.signs["sign_in_x"][:, None, :], draw.weights["kernel"])
            * draw.signs["sign_out_x"][:, None, :]
            + draw.signs["bias_per_example"][:, None, :]
        )
        per_step = tf.unstack(projected, num=steps, axis=1)
        recurrent_loc, recurrent_delta = self.recurrent_loc, draw.weights["recurrent"]
        sign_in_h, sign_out_h = draw.signs["sign_in_h"], draw.signs["sign_out_h"]

        def gates(t, h):
            return (tf.matmul(h, recurrent_loc) + tf.matmul(h * sign_in_h, recurrent_delta) * sign_out_h,
                    per_step[t])

        out = self._unroll(gates, tf.zeros([tf.shape(flat)[0], self.units]), steps)
        if self.return_sequences:
            return tf.reshape(out, [samples, batch, steps, self.units])
        return tf.reshape(out, [samples, batch, self.units])

    def _unroll(self, gates_at, h0: tf.Tensor, steps: int, as_list: bool = False, c0: tf.Tensor | None = None,
                return_state: bool = False):
        """``gates_at(t, h) -> (projected, bias)``, the two addends of step ``t``'s gate
        pre-activations (the bias is added inside the fused cell)."""
        h, c = h0, (tf.zeros_like(h0) if c0 is None else c0)
        outputs = []
        for t in range(steps):
            h, c = _lstm_cell(*gates_at(t, h), c)
            if self.return_sequences:
                outputs.append(h)
        if not self.return_sequences:
            result = h
        else:
            result = outputs if as_list else tf.stack(outputs, axis=-2)
        return (result, (h, c)) if return_state else result

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "return_sequences": self.return_sequences}


class BayesianDense(VariationalLayer):
    """Dense layer with a Gaussian posterior over kernel and bias.

    ``call``: ``(B, D) -> (B, units)``; ``forward``: ``(S, B, D) -> (S, B, units)``.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.add_posterior("kernel", (int(input_shape[-1]), self.units), tf_keras.initializers.GlorotUniform())
        self.add_posterior("bias", (self.units,), tf_keras.initializers.Zeros())
        super().build(input_shape)

    def call(self, inputs, training=None):
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        if self.flipout_training:
            return self.forward(inputs[None], self.draw(1, tf.shape(inputs)[0], FLIPOUT, seed))[0]
        weights = self.draw(1, tf.shape(inputs)[0], TILED, seed).weights
        return tf.matmul(inputs, weights["kernel"][0]) + weights["bias"][0]

    def _draw_signs(self, n, seed) -> dict:
        seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(3)]
        loc, scale = self.posterior("bias")
        return {
            "sign_in": _random_signs(tf.stack([n, self.kernel_loc.shape[0]]), seeds[0]),
            "sign_out": _random_signs(tf.stack([n, self.units]), seeds[1]),
            "bias_per_example": loc + scale * tf.random.stateless_normal(tf.stack([n, self.units]), seed=seeds[2]),
        }

    def forward(self, inputs: tf.Tensor, draw: WeightDraw) -> tf.Tensor:
        if draw.flipout:
            shape = tf.shape(inputs)
            flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
            out = (tf.matmul(flat, self.kernel_loc)
                   + tf.matmul(flat * draw.signs["sign_in"], draw.weights["kernel"]) * draw.signs["sign_out"]
                   + draw.signs["bias_per_example"])
            return tf.reshape(out, tf.concat([shape[:-1], [self.units]], 0))
        return tf.matmul(inputs, draw.weights["kernel"]) + draw.weights["bias"][:, None, :]

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


class BayesianAttention(VariationalLayer):
    """Single-head dot-product attention of the last step over a sequence, with variational
    query, key and value projections (one weight draw per sequence, like the LSTM).

    ``q = h_T W_q``, ``k_t = h_t W_k``, ``v_t = h_t W_v``, ``a = softmax(q k^T / sqrt(d))``,
    output ``[h_T, sum_t a_t v_t]``: the last state plus what the day attends to in the window
    (e.g. the same weekday a week earlier, a promotion two weeks back).

    Shapes: ``call``: ``(B, T, U) -> (B, U + d)``; ``forward``: ``(S, B, T, U) -> (S, B, U + d)``.
    Draws are always full weight sets ``(S, U, d)``, also when the LSTM layers use Flipout
    (the projections are small).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        features = int(input_shape[-1])
        for name in ("query", "key", "value"):
            self.add_posterior(name, (features, self.units), tf_keras.initializers.GlorotUniform())
        super().build(input_shape)

    def call(self, inputs, training=None):
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        draw = self.draw(1, tf.shape(inputs)[0], TILED, seed)
        return self.forward(inputs[None], draw)[0]

    def draw(self, num_samples: int, batch_size, strategy: str, seed: tf.Tensor) -> WeightDraw:
        return super().draw(num_samples, batch_size, TILED, seed)

    def forward(self, inputs: tf.Tensor, draw: WeightDraw) -> tf.Tensor:
        """``inputs`` ``(S, B, T, U)`` with ``draw`` of ``S`` weight sets -> ``(S, B, U + d)``."""
        last = inputs[:, :, -1, :]
        query = tf.einsum("sbu,sud->sbd", last, draw.weights["query"])
        keys = tf.einsum("sbtu,sud->sbtd", inputs, draw.weights["key"])
        values = tf.einsum("sbtu,sud->sbtd", inputs, draw.weights["value"])
        scores = tf.einsum("sbd,sbtd->sbt", query, keys) / float(np.sqrt(self.units))
        context = tf.einsum("sbt,sbtd->sbd", tf.nn.softmax(scores, axis=-1), values)
        return tf.concat([last, context], axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}
