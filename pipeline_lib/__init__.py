"""Probabilistic demand forecasting with a Bayesian LSTM.

TensorFlow Probability's Keras layers only work with Keras 2 (``tf_keras``), so the
legacy-Keras switch must be set before TensorFlow is first imported anywhere in the
process. Setting an environment variable is the one side effect allowed at import time.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO/WARNING lines drown the progress output on CPU-only machines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
