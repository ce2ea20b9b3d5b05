"""Fork server of Keras workers on TensorFlow: Keras 3 with its TensorFlow backend, and the Keras worker."""
import os

os.environ["KERAS_BACKEND"] = "tensorflow"  # before keras is imported: the backend is fixed then
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the server's own TensorFlow start-up lines

import keras  # noqa: E402,F401
import tensorflow  # noqa: E402,F401

import vitbench.models.keras  # noqa: E402,F401
import vitbench.runner.keras_worker  # noqa: E402,F401
import vitbench.runner.worker  # noqa: E402,F401
