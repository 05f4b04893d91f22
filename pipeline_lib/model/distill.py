"""Knowledge distillation: a deterministic ``tf_keras`` LSTM student of the Bayesian teacher.

The teacher's one-day-ahead predictive distribution on each training window is summarised
by its median ``m_t`` and half its central 68% range ``s_t`` (``S`` weight draws, in the
teacher's centred model space; for a Normal teacher these are its mean and std). The
student, ``LSTM(64, sequences) -> LSTM(32) -> Dense(2)`` with the teacher's layer sizes, is
trained to output a Normal ``N(m, s^2)`` minimising

    KL( N(m_t, s_t^2) || N(m, s^2) )

per window. One forward pass then replaces ``S`` weight draws, and ``tf_keras.layers.LSTM``
uses cuDNN on a GPU. The student forgets the split between epistemic and aleatoric
uncertainty and the teacher's tails; it keeps its median and central spread.
Only teachers whose head works in model space (normal, student_t, quantile) can be distilled.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras

from pipeline_lib.data.features import WindowSet
from pipeline_lib.data.validate import Panel
from pipeline_lib.evaluation.calibration import PitRecalibration
from pipeline_lib.model.forecast import ForecastModel, SampledForecast
from pipeline_lib.model.heads import MODEL_SPACE
from pipeline_lib.model.predict import sample_one_step

_MIN_STD = 1e-3


def _student_network(lstm_units: tuple[int, ...], steps: int, features: int) -> tf_keras.Model:
    layers = [tf_keras.layers.LSTM(units, return_sequences=i < len(lstm_units) - 1)
              for i, units in enumerate(lstm_units)]
    model = tf_keras.Sequential([tf_keras.Input((steps, features)), *layers, tf_keras.layers.Dense(2)])
    return model


def _gaussian_kl(teacher: tf.Tensor, output: tf.Tensor) -> tf.Tensor:
    """Mean KL(N(teacher[:, 0], teacher[:, 1]^2) || N(output mean, softplus std^2))."""
    mean, std = output[:, 0], _MIN_STD + tf.nn.softplus(output[:, 1])
    t_mean, t_std = teacher[:, 0], teacher[:, 1]
    return tf.reduce_mean(tf.math.log(std / t_std) + (t_std**2 + (t_mean - mean) ** 2) / (2 * std**2) - 0.5)


@dataclass
class DistilledStudent:
    """The student plus its teacher's inputs and units; forecasts like a :class:`ForecastModel`
    (``one_step``), so the evaluation code scores it unchanged."""

    network: tf_keras.Model
    teacher: ForecastModel
    calibration: PitRecalibration | None = None
    pool: None = None  # no pool with ETS: the student is compared with its teacher's network
    seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)  # Keras: loss / val_loss per epoch

    def predict_normal(self, windows: np.ndarray, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std ``(N,)`` of the student's Normal for centred windows ``(N, T, F)``."""
        out = self.network.predict(windows, batch_size=batch_size, verbose=0)
        return out[:, 0], _MIN_STD + np.logaddexp(0.0, out[:, 1])

    def one_step(self, panel: Panel, days: dict[int, np.ndarray], num_samples: int,
                 samples_per_draw: int = 10, seed: int = 0, calibrated: bool = True) -> SampledForecast:
        """``num_samples * samples_per_draw`` draws of the student's Normal per window."""
        inputs = self.teacher.one_step_inputs(panel, days)
        mean, std = self.predict_normal(inputs.windows)
        noise = np.random.default_rng(seed).standard_normal((num_samples * samples_per_draw, len(mean)))
        samples = mean[None, :] + std[None, :] * noise
        return self.teacher.sampled_forecast(inputs, samples, np.zeros(len(mean)),
                                             self.calibration if calibrated else None)


def distill(teacher: ForecastModel, train: WindowSet, validation: WindowSet, epochs: int = 60,
            batch_size: int | None = None, learning_rate: float = 1e-2, teacher_samples: int = 32, seed: int = 0,
            progress: bool = True) -> DistilledStudent:
    """Train a student on the teacher's predictive mean and std over ``train``'s windows
    (early stopping on the same KL over ``validation``'s windows).

    ``batch_size``: None = ``len(train) // 100`` within [64, 1024], about 100 steps an epoch:
    small data needs small batches to fit at all, large data would spend minutes per epoch.

    Raises:
        ValueError: the teacher's head predicts counts (units), which a Normal student in
            model space cannot mimic.
    """
    if teacher.network.head.space != MODEL_SPACE:
        raise ValueError(f"distillation needs a teacher head in model space, not {teacher.model_config.head!r}")
    started = time.perf_counter()

    def targets(windows: WindowSet) -> np.ndarray:
        # Robust moments: the median (the product's point forecast) and half the central 68%
        # range, which equal mean and std for a Normal teacher and keep the student's median
        # and central intervals where a skewed teacher has them.
        draws = sample_one_step(teacher.network, windows.inputs, teacher_samples, 4, seed)
        low, median, high = np.quantile(draws.samples, [0.1587, 0.5, 0.8413], axis=0)
        return np.stack([median, np.maximum((high - low) / 2, _MIN_STD)], axis=1)

    batch_size = batch_size or int(np.clip(len(train) // 100, 64, 1024))
    tf_keras.utils.set_random_seed(seed)
    _, steps, features = train.inputs.shape
    network = _student_network(teacher.model_config.lstm_units, steps, features)
    network.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=_gaussian_kl)
    history = network.fit(train.inputs, targets(train), validation_data=(validation.inputs, targets(validation)),
                epochs=epochs, batch_size=batch_size, verbose=2 if progress else 0, shuffle=True,
                callbacks=[tf_keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    if progress:
        sys.stderr.flush()
    return DistilledStudent(network, teacher, seconds=time.perf_counter() - started,
                            history={k: [float(v) for v in vs] for k, vs in history.history.items()})
