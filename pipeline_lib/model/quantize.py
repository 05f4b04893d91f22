"""An 8-bit posterior for serving: every posterior mean and scale stored as int8 codes.

Each variational weight tensor has a mean ``mu`` and ``rho`` (``sigma = softplus(rho)``).
Stored per output channel (the last axis; one scale for the whole tensor if it has one axis):

- ``mu``: symmetric, ``code = round(mu / step)`` with ``step = max|mu| / 127``; the error is at
  most ``step / 2``, so 0.4% of the channel's largest magnitude.
- ``sigma``: affine on ``log sigma`` (posterior scales span orders of magnitude, and a
  relative error is what matters for a scale): ``code = round((log sigma - low) / step) - 128``
  with ``step = (max - min) / 255``; the relative error of sigma is at most
  ``exp(step / 2) - 1``.

Dequantized at load (:func:`dequantize`), so prediction runs in float32 at the usual speed;
what shrinks is the file, about 4x (benchmarks/RESULTS.md). ``tfd.QuantizedDistribution``,
which the source material names, discretises a distribution's *values*, not its stored
parameters, so it is not the tool for this.
"""

from __future__ import annotations

import json

import numpy as np

_MEAN, _SCALE, _PLAIN = "mean", "scale", "plain"


def _kind(name: str) -> str:
    base = name.split("/")[-1].split(":")[0]
    if base.endswith("_loc"):
        return _MEAN
    return _SCALE if base.endswith("_rho") else _PLAIN


def _channel_axes(array: np.ndarray) -> tuple[int, ...]:
    """Axes reduced to get one quantisation scale per output channel (the last axis)."""
    return tuple(range(array.ndim - 1)) if array.ndim >= 2 else tuple(range(array.ndim))


def quantize(names: list[str], weights: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``network.get_weights()`` (with the variables' ``names``) -> arrays for ``np.savez``,
    packed into a few flat arrays so small models do not pay a zip entry per tensor:
    ``codes`` (int8) of the posterior means and scales, ``steps`` and ``lows`` (float32, one
    per channel), ``plain`` (float32) for any other variable, ``layout`` (JSON: kind and shape
    of each tensor in order)."""
    codes, steps, lows, plain, layout = [], [], [], [], []
    for name, value in zip(names, weights, strict=True):
        value = np.asarray(value, dtype=np.float64)
        kind = _kind(name)
        layout.append({"kind": kind, "shape": list(value.shape)})
        if kind == _PLAIN:
            plain.append(value.ravel())
            continue
        axes = _channel_axes(value)
        if kind == _MEAN:
            step = np.abs(value).max(axis=axes, keepdims=True) / 127.0
            step = np.where(step > 0, step, 1.0)
            low = np.zeros_like(step)
            code = np.round(value / step)
        else:
            log_sigma = np.log(np.logaddexp(0.0, value))  # log softplus(rho), stable for any rho
            low = log_sigma.min(axis=axes, keepdims=True)
            step = (log_sigma.max(axis=axes, keepdims=True) - low) / 255.0
            step = np.where(step > 0, step, 1.0)
            code = np.round((log_sigma - low) / step) - 128
        codes.append(code.ravel())
        steps.append(step.ravel())
        lows.append(low.ravel())

    def flat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return {"codes": flat(codes, np.int8), "steps": flat(steps, np.float32), "lows": flat(lows, np.float32),
            "plain": flat(plain, np.float32),
            "layout": np.frombuffer(json.dumps(layout, separators=(",", ":")).encode(), dtype=np.uint8)}


def dequantize(stored) -> list[np.ndarray]:
    """The inverse of :func:`quantize`: float32 arrays in ``network.get_weights()`` order
    (``rho`` rebuilt as ``softplus^-1(sigma)``). Raises ``ValueError`` if the arrays do not
    add up to the layout (a truncated or foreign file)."""
    codes, steps, lows, plain = (np.asarray(stored[k]) for k in ("codes", "steps", "lows", "plain"))
    layout = json.loads(np.asarray(stored["layout"], dtype=np.uint8).tobytes().decode())
    expected = {"codes": 0, "channels": 0, "plain": 0}
    for entry in layout:
        size = int(np.prod(entry["shape"]))
        if entry["kind"] == _PLAIN:
            expected["plain"] += size
        else:
            expected["codes"] += size
            expected["channels"] += entry["shape"][-1] if len(entry["shape"]) >= 2 else 1
    if (expected["codes"], expected["channels"], expected["plain"]) != (len(codes), len(steps), len(plain)) \
            or len(lows) != len(steps) or not layout:
        raise ValueError("quantized weights do not match their layout")
    at = {"codes": 0, "channels": 0, "plain": 0}
    weights = []
    for entry in layout:
        shape = tuple(entry["shape"])
        size = int(np.prod(shape))
        if entry["kind"] == _PLAIN:
            weights.append(plain[at["plain"]:at["plain"] + size].reshape(shape).astype(np.float32))
            at["plain"] += size
            continue
        code = codes[at["codes"]:at["codes"] + size].astype(np.float64).reshape(shape)
        at["codes"] += size
        channels = shape[-1] if len(shape) >= 2 else 1
        channel_shape = (1,) * (len(shape) - 1) + (channels,) if len(shape) >= 2 else (1,) * len(shape)
        step = steps[at["channels"]:at["channels"] + channels].astype(np.float64).reshape(channel_shape)
        low = lows[at["channels"]:at["channels"] + channels].astype(np.float64).reshape(channel_shape)
        at["channels"] += channels
        if entry["kind"] == _MEAN:
            weights.append((code * step).astype(np.float32))
        else:
            sigma = np.exp(low + (code + 128) * step)
            weights.append(np.log(np.expm1(sigma)).astype(np.float32))  # softplus^-1
    return weights
