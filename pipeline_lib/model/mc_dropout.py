"""Peer model: an MC-dropout LSTM with an inherent-noise term (Zhu & Laptev, Uber, 2017).

The network is a deterministic ``tf_keras`` LSTM(64) -> LSTM(32) -> Dense(1) trained with
squared error and dropout on inputs and recurrent state. At prediction time dropout stays
on: ``S`` stochastic passes give the model uncertainty, and the inherent noise is the
residual variance of the (dropout-averaged) forecast on the validation windows. A sample is
``f_s(x) + eps``, ``eps ~ N(0, sigma_noise^2)``, in the same model space (transformed,
standardised target) as the Bayesian LSTM, so both are scored on identical windows.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from pipeline_lib.data.features import WindowSet


class McDropoutLSTM:
    def __init__(self, num_features: int, units: tuple[int, ...] = (64, 32), dropout: float = 0.1, seed: int = 0):
        tf_keras.utils.set_random_seed(seed)
        layers = [tf_keras.Input((None, num_features))]
        for i, n in enumerate(units):
            layers.append(tf_keras.layers.LSTM(n, dropout=dropout, recurrent_dropout=dropout,
                                               return_sequences=i < len(units) - 1))
        layers.append(tf_keras.layers.Dense(1))
        self.network = tf_keras.Sequential(layers)
        self.noise_std = 1.0

    def fit(self, train: WindowSet, validation: WindowSet, epochs: int = 15, batch_size: int = 256,
            learning_rate: float = 3e-3) -> McDropoutLSTM:
        self.network.compile(optimizer=tf_keras.optimizers.Adam(learning_rate, clipnorm=5.0), loss="mse")
        stop = tf_keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)
        self.network.fit(train.inputs, train.targets, validation_data=(validation.inputs, validation.targets),
                         epochs=epochs, batch_size=batch_size, callbacks=[stop], verbose=0)
        point = self.sample_means(validation.inputs, num_samples=20).mean(axis=0)
        self.noise_std = float(np.sqrt(np.mean((validation.targets - point) ** 2)))
        return self

    def sample_means(self, inputs: np.ndarray, num_samples: int = 100, batch_size: int = 256) -> np.ndarray:
        """Dropout-on forward passes ``(S, N)``: the batch is tiled S times, so every copy
        gets its own dropout masks and the S passes run as one call per chunk."""
        forward = tf.function(lambda x: self.network(x, training=True)[:, 0], reduce_retracing=True)
        parts = []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            tiled = np.tile(chunk, (num_samples, 1, 1))
            parts.append(forward(tiled).numpy().reshape(num_samples, len(chunk)))
        return np.concatenate(parts, axis=1)

    def sample(self, inputs: np.ndarray, num_samples: int = 100, samples_per_draw: int = 10,
               seed: int = 0) -> np.ndarray:
        """Predictive samples ``(S * k, N)`` in model space."""
        means = self.sample_means(inputs, num_samples)
        noise = np.random.default_rng(seed).normal(scale=self.noise_std, size=(samples_per_draw, *means.shape))
        return (means[None] + noise).reshape(-1, means.shape[1])
