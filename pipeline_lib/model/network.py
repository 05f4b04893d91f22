"""The stacked Bayesian LSTM forecaster: BayesianLSTM(64, sequences) -> BayesianLSTM(32)
[-> BayesianAttention over the last layer's sequence] -> head."""

from __future__ import annotations

import contextlib

import tensorflow as tf
import tf_keras

from pipeline_lib.config import ModelConfig
from pipeline_lib.model.heads import make_head
from pipeline_lib.model.layers import FLIPOUT, TILED, BayesianAttention, BayesianDense, BayesianLSTM, WeightDraw

# Below this many windows Flipout's two plain matmuls beat S tiny batched matmuls
# (measured in benchmarks/mc_speed.py; see benchmarks/RESULTS.md).
FLIPOUT_MAX_BATCH = 4


def choose_strategy(batch_size: int) -> str:
    return FLIPOUT if batch_size <= FLIPOUT_MAX_BATCH else TILED


class BayesianForecaster(tf_keras.Model):
    """Windows ``(B, T, F)`` -> distribution parameters ``(B, P)``.

    ``call`` uses one weight draw for the whole batch (training); :meth:`forward` runs
    ``S`` draws at once on inputs ``(S, B, T, F)`` and returns ``(S, B, P)``.
    """

    def __init__(self, num_features: int, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.num_features = num_features
        self.model_config = config
        common = {"prior": config.prior, "prior_scale": config.prior_scale, "prior_df": config.prior_df,
                  "mixture_weight": config.mixture_weight, "mixture_scales": config.mixture_scales,
                  "posterior_init_std": config.posterior_init_std}
        self.head = make_head(config.head, config.min_scale, config.quantile_levels)
        last = len(config.lstm_units) - 1
        self.recurrent_layers = [
            BayesianLSTM(units, return_sequences=(i < last or config.attention_units > 0),
                         name=f"bayesian_lstm_{i}", **common)
            for i, units in enumerate(config.lstm_units)
        ]
        self.attention = (BayesianAttention(config.attention_units, name="bayesian_attention", **common)
                          if config.attention_units > 0 else None)
        self.output_layer = BayesianDense(self.head.num_params, name="head", **common)

    def build_for(self, steps: int) -> BayesianForecaster:
        self(tf.zeros([1, steps, self.num_features]))
        return self

    def call(self, inputs, training=None):
        h = inputs
        for layer in self.recurrent_layers:
            h = layer(h)
        if self.attention is not None:
            h = self.attention(h)
        return self.output_layer(h)

    @contextlib.contextmanager
    def training_precision(self, dtype: tf.DType):
        """Within the block, ``call`` (the training pass) runs the LSTM layers in ``dtype``;
        their output, the attention, the head and every ``forward`` stay float32. Trace the
        training step inside the block: the dtype is read when the step is traced."""
        previous = [layer.training_dtype for layer in self.recurrent_layers]
        for layer in self.recurrent_layers:
            layer.training_dtype = dtype
        try:
            yield self
        finally:
            for layer, dtype_before in zip(self.recurrent_layers, previous, strict=True):
                layer.training_dtype = dtype_before

    @contextlib.contextmanager
    def weight_noise(self, noise: str):
        """Within the block, ``call`` (the training pass) draws its weight noise as ``noise``
        says: ``shared``, one draw for the whole mini-batch (Bayes by backprop as in Blundell
        et al.); ``flipout``, one perturbation decorrelated per example by random signs (Wen et
        al., 2018), whose gradient has less variance for the same cost in draws. The attention
        block keeps one draw per sequence. Trace the training step inside the block."""
        layers = [layer for layer in self.variational_layers() if layer is not self.attention]
        previous = [layer.flipout_training for layer in layers]
        for layer in layers:
            layer.flipout_training = noise == "flipout"
        try:
            yield self
        finally:
            for layer, before in zip(layers, previous, strict=True):
                layer.flipout_training = before

    def variational_layers(self):
        return [*self.recurrent_layers, *([self.attention] if self.attention is not None else []),
                self.output_layer]

    def draw(self, num_samples: int, batch_size, strategy: str, seed: tf.Tensor) -> list[WeightDraw]:
        return [
            layer.draw(num_samples, batch_size, strategy, tf.random.experimental.stateless_fold_in(seed, i))
            for i, layer in enumerate(self.variational_layers())
        ]

    def forward(self, inputs: tf.Tensor, draws: list[WeightDraw]) -> tf.Tensor:
        """``(S, B, T, F)`` -> ``(S, B, P)`` with the sampled weights of ``draws``."""
        return self.output_layer.forward(self.features(inputs, draws), draws[-1])

    def mean_draws(self) -> list[WeightDraw]:
        """One "draw" that is every posterior mean (``S = 1``, tiled layout)."""
        return [layer.mean_draw() for layer in self.variational_layers()]

    def features(self, inputs: tf.Tensor, draws: list[WeightDraw]) -> tf.Tensor:
        """What the output layer reads: ``(S, B, T, F)`` -> ``(S, B, D)``."""
        # ``draws`` also holds the attention's and the output layer's draws after the
        # recurrent layers' (hence zip(strict=False) below).
        if draws[0].flipout:
            h = inputs
            for layer, draw in zip(self.recurrent_layers, draws, strict=False):
                h = layer.forward(h, draw)
        else:  # tiled: pass per-step lists between the recurrent layers
            h = tf.unstack(inputs, num=inputs.shape[2], axis=2)
            for layer, draw in zip(self.recurrent_layers, draws, strict=False):
                h = layer.forward_steps(h, draw)
            if self.attention is not None:
                h = tf.stack(h, axis=2)
        if self.attention is not None:
            h = self.attention.forward(h, draws[len(self.recurrent_layers)])
        return h

    def forward_with_state(self, steps: list[tf.Tensor], draws: list[WeightDraw], states=None):
        """Tiled draws on ``T`` steps ``(S, B, F)`` continuing from ``states`` (one ``(h, c)``
        per recurrent layer; zeros if None). Returns ``(S, B, P)`` after the last step and
        the new states: a window, then one day at a time, equals running the whole
        extended sequence (tests/test_bayesian_lstm.py checks it). With attention the
        states end with the last layer's outputs so far ``(S, B, T', U)``, which grow by
        one step per day, so the attention sees the whole extended sequence too."""
        h, new_states = steps, []
        for i, (layer, draw) in enumerate(zip(self.recurrent_layers, draws, strict=False)):
            h, state = layer.forward_steps(h, draw, None if states is None else states[i], return_state=True)
            new_states.append(state)
        if self.attention is not None:
            memory = tf.stack(h, axis=2)
            if states is not None:
                memory = tf.concat([states[-1], memory], axis=2)
            new_states.append(memory)
            h = self.attention.forward(memory, draws[len(self.recurrent_layers)])
        return self.output_layer.forward(h, draws[-1]), new_states

    def kl_divergence(self, seed: tf.Tensor | None = None) -> tf.Tensor:
        return tf.add_n([
            layer.kl_divergence(None if seed is None else tf.random.experimental.stateless_fold_in(seed, i))
            for i, layer in enumerate(self.variational_layers())
        ])

    def distribution(self, params: tf.Tensor, context: tf.Tensor | None = None):
        """The head's predictive distribution; ``context`` ``(..., 2)`` = per-window
        ``[offset, scale, shift]``, needed by heads in units (see :mod:`pipeline_lib.model.heads`)."""
        return self.head.distribution(params, context)
