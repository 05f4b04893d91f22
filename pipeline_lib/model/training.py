"""Training by the per-example ELBO with KL annealing, clipping, early stopping and a NaN guard.

    loss = mean_i[-log p(y_i | x_i, w)] + beta(epoch) * KL(q(w) || p(w)) / N_train,   w ~ q(w)

One weight draw is shared by a mini-batch (Bayes by backprop); the validation score is
the NLL of the predictive mixture over ``validation_samples`` draws, which is what the
forecasts are judged by.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras
from tqdm.auto import tqdm

from pipeline_lib.config import TrainConfig
from pipeline_lib.data.features import LazyWindows, WindowSet, neutral_context
from pipeline_lib.errors import TrainingDivergedError
from pipeline_lib.model.distribute import split_batch
from pipeline_lib.model.layers import TILED
from pipeline_lib.model.network import BayesianForecaster

# Anything with len() and batch(index) -> WindowSet: all windows in memory, or assembled per batch.
Windows = WindowSet | LazyWindows


def kl_beta(epoch: int, config: TrainConfig) -> float:
    """KL weight for a 0-based ``epoch``: ``linear`` ramps to ``kl_weight`` over
    ``kl_ramp_epochs``; ``step`` is ``min(1, 0.1 * (epoch // 10))``; ``none`` is constant."""
    if config.kl_annealing == "linear":
        factor = min(1.0, (epoch + 1) / config.kl_ramp_epochs)
    elif config.kl_annealing == "step":
        factor = min(1.0, 0.1 * (epoch // 10))
    else:
        factor = 1.0
    return config.kl_weight * factor


def epoch_learning_rate(epoch: int, config: TrainConfig) -> float:
    """Learning rate of a 0-based ``epoch``. ``cosine`` follows half a cosine from
    ``learning_rate`` (epoch 0) to ``learning_rate * final_learning_rate_factor`` (epoch
    ``epochs - 1``); it is a function of the epoch alone, so a refit that runs the first
    ``k`` epochs sees the rates the evaluation fit saw in its first ``k``."""
    if config.learning_rate_schedule == "constant" or config.epochs == 1:
        return config.learning_rate
    progress = min(1.0, epoch / (config.epochs - 1))
    floor = config.final_learning_rate_factor
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainingResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_validation_nll: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def make_mixture_log_prob(model: BayesianForecaster, num_samples: int):
    """Compiled ``(x (B, T, F), y (B,), context (B, 2), seed (2,)) -> (B,)`` log-density of
    ``y`` under the predictive mixture of ``num_samples`` weight draws:
    ``log mean_s p(y | x, w_s)``."""

    @tf.function(reduce_retracing=True)
    def log_prob(x, y, context, seed):
        draws = model.draw(num_samples, tf.shape(x)[0], TILED, seed)
        params = model.forward(tf.tile(x[None], [num_samples, 1, 1, 1]), draws)
        log_p = model.distribution(params, context[None]).log_prob(y[None])  # (S, B)
        return tf.reduce_logsumexp(log_p, axis=0) - tf.math.log(float(num_samples))

    return log_prob


def mixture_nll(log_prob, windows: Windows, space: str, seed: int = 0, batch_size: int = 1024,
                index: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of the windows' targets (in the head's ``space``) under
    the predictive mixture; ``index``: only these windows (default: all)."""
    index = np.arange(len(windows)) if index is None else index
    values = []
    for start in range(0, len(index), batch_size):
        batch = windows.batch(index[start:start + batch_size])
        values.append(log_prob(batch.inputs, batch.head_targets(space), batch.head_context(),
                               tf.constant([seed, start], tf.int32)).numpy())
    return float(-np.mean(np.concatenate(values)))


def epoch_sample(rng: np.random.Generator, n_windows: int, per_epoch: int | None) -> np.ndarray:
    """Which windows an epoch visits, in order: every one in a new order when ``per_epoch``
    is None or not smaller than ``n_windows``, else ``per_epoch`` distinct ones drawn afresh
    (Floyd's algorithm inside NumPy for a small share: memory ``O(per_epoch)``, not
    ``O(n_windows)``)."""
    if per_epoch is None or per_epoch >= n_windows:
        return rng.permutation(n_windows)
    return rng.choice(n_windows, per_epoch, replace=False)


def _cpu_has_bfloat16() -> bool:
    """True if the CPU multiplies bfloat16 natively (AVX512_BF16 or AMX), read from Linux's
    /proc/cpuinfo; False where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_dtype(mixed_precision: str) -> tf.DType:
    """The LSTM layers' training compute dtype for ``train.mixed_precision``.

    ``auto``: float16 on a GPU (loss-scaled), bfloat16 on a CPU that multiplies it natively,
    else float32.
    """
    if mixed_precision == "auto":
        if tf.config.list_physical_devices("GPU"):
            return tf.float16
        return tf.bfloat16 if _cpu_has_bfloat16() else tf.float32
    return {"off": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}[mixed_precision]


def make_train_step(model: BayesianForecaster, optimizer, n_train: int, beta: tf.Variable, clip_norm: float,
                    strategy: tf.distribute.Strategy | None = None, kl_fn=None):
    """ELBO step ``(x, y, context) -> (loss, nll, kl)`` on one mini-batch.

    ``x``/``y``/``context`` become per-replica values from :func:`split_batch` (plain tensors without a
    strategy). Each replica's loss is its share of the batch loss,
    ``sum_i -log p(y_i) / B + beta * KL / (N * replicas)``, so the replicas' gradients sum
    to the gradient of the whole batch; the sum is clipped to ``clip_norm`` and applied once.
    ``kl_fn`` replaces ``model.kl_divergence`` (the online updater's KL to the old posterior).
    A ``tf_keras.mixed_precision.LossScaleOptimizer`` (float16 training) gets the loss
    scaled before the gradient and the gradients unscaled before clipping.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = float(strategy.num_replicas_in_sync)
    kl_fn = kl_fn or model.kl_divergence
    loss_scaled = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

    def replica_step(x, y, context, batch_size):
        with tf.GradientTape() as tape:
            nll_sum = -tf.reduce_sum(model.distribution(model(x, training=True), context).log_prob(y))
            kl = kl_fn()
            loss = nll_sum / batch_size + beta * kl / (float(n_train) * replicas)
            scaled = optimizer.get_scaled_loss(loss) if loss_scaled else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if loss_scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True), skip_gradients_aggregation=True)
        return loss, nll_sum, kl

    @tf.function(reduce_retracing=True)
    def step(x, y, context, batch_size):
        loss, nll_sum, kl = strategy.run(replica_step, args=(x, y, context, batch_size))
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        nll = strategy.reduce(tf.distribute.ReduceOp.SUM, nll_sum, axis=None) / batch_size
        return total, nll, strategy.reduce(tf.distribute.ReduceOp.MEAN, kl, axis=None)

    def run(x: np.ndarray, y: np.ndarray, context: np.ndarray | None = None):
        context = neutral_context(len(y)) if context is None else context
        return step(*split_batch(strategy, x, y, context), tf.constant(float(len(y))))

    return run


def train_model(
    model: BayesianForecaster,
    train: Windows,
    validation: Windows | None,
    config: TrainConfig,
    progress: bool = True,
    strategy: tf.distribute.Strategy | None = None,
    epochs: int | None = None,
) -> TrainingResult:
    """Fit ``model`` in place; restores the weights of the best validation epoch.

    ``validation=None`` (the refit of the served model on every day): no early stopping,
    exactly ``epochs`` epochs (the count the evaluation fit's early stopping chose), the
    last weights are kept. ``strategy``: the ``tf.distribute`` strategy whose scope created
    ``model``'s variables (default: none); the optimizer is created in the same scope.

    An epoch visits ``config.windows_per_epoch`` windows of ``train`` (all, if it has fewer),
    drawn afresh each epoch; the KL term is still divided by ``len(train)``, the size of the
    data the posterior is fitted to. Early stopping scores a fixed sample of
    ``config.validation_windows`` windows. ``train`` and ``validation`` may be
    :class:`LazyWindows`: memory then grows with the batch, not with the catalogue.

    ``config.mixed_precision``: the LSTM layers' training pass runs in the dtype
    :func:`training_dtype` picks; validation and the returned model predict in float32.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite (nothing is kept).
    """
    dtype = training_dtype(config.mixed_precision)
    with model.training_precision(dtype), model.weight_noise(config.weight_noise):
        return _train_model(model, train, validation, config, progress, strategy, epochs, dtype)


def _train_model(model, train, validation, config, progress, strategy, epochs, dtype) -> TrainingResult:
    tf.random.set_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n_train = len(train)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = tf_keras.optimizers.Adam(learning_rate=config.learning_rate)
        if dtype == tf.float16:  # float16 gradients underflow unscaled; bfloat16 has float32's range
            optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
        beta = tf.Variable(0.0, trainable=False, dtype=tf.float32)
    train_step = make_train_step(model, optimizer, n_train, beta, config.clip_norm, strategy)

    if validation is None and epochs is None:
        raise ValueError("training without validation days needs a fixed number of epochs")
    validation_log_prob = make_mixture_log_prob(model, config.validation_samples) if validation is not None else None
    validation_index = None if validation is None else np.sort(
        epoch_sample(np.random.default_rng(config.seed + 1), len(validation), config.validation_windows))
    result = TrainingResult()
    best_weights = model.get_weights()
    started = time.perf_counter()
    epochs = tqdm(range(epochs or config.epochs), desc="training" if validation is not None else "refit on all days",
                  unit="epoch", file=sys.stderr, disable=not progress, leave=True)
    for epoch in epochs:
        epoch_started = time.perf_counter()
        beta.assign(kl_beta(epoch, config))
        optimizer.learning_rate.assign(epoch_learning_rate(epoch, config))
        order = epoch_sample(rng, n_train, config.windows_per_epoch)
        totals = np.zeros(3)
        batches = 0
        for start in range(0, len(order), config.batch_size):
            batch = train.batch(order[start:start + config.batch_size])
            loss, nll, kl = train_step(batch.inputs, batch.head_targets(model.head.space), batch.head_context())
            loss = float(loss)
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"training diverged: loss is {loss} at epoch {epoch + 1}, batch {batches + 1}; "
                    "nothing was registered (try a lower learning_rate or clip_norm)"
                )
            totals += (loss, float(nll), float(kl))
            batches += 1
        record = {"epoch": epoch + 1, "loss": totals[0] / batches, "nll": totals[1] / batches,
                  "kl": totals[2] / batches, "beta": float(beta.numpy()),
                  "learning_rate": float(optimizer.learning_rate.numpy()), "windows": len(order)}
        if validation is None:
            record["seconds"] = time.perf_counter() - epoch_started
            result.history.append(record)
            result.best_epoch, best_weights = epoch + 1, None
            epochs.set_postfix(loss=f"{record['loss']:.3f}")
            continue
        val_nll = mixture_nll(validation_log_prob, validation, model.head.space, seed=config.seed,
                              index=validation_index)
        record.update(val_nll=val_nll, seconds=time.perf_counter() - epoch_started)
        result.history.append(record)
        epochs.set_postfix(loss=f"{record['loss']:.3f}", val_nll=f"{val_nll:.3f}")
        if not math.isfinite(val_nll):
            raise TrainingDivergedError(f"training diverged: validation NLL is {val_nll} at epoch {epoch + 1}")
        # Early stopping only once the KL term has reached its final weight, otherwise the
        # ramp's under-regularised first epochs would always look best.
        ramp_done = record["beta"] >= config.kl_weight * (1 - 1e-6)
        # An improvement smaller than min_delta is within the epoch-to-epoch noise of the
        # validation NLL; counting it would keep training on noise.
        if val_nll < result.best_validation_nll - config.min_delta or epoch == 0:
            result.best_validation_nll, result.best_epoch = val_nll, epoch + 1
            best_weights = model.get_weights()
        elif ramp_done and epoch + 1 - result.best_epoch >= config.patience:
            result.stopped_early = True
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    result.seconds = time.perf_counter() - started
    return result
