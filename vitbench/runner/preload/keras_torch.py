"""Fork server of Keras workers on the torch backend."""
import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported: the backend is fixed then

import keras  # noqa: E402,F401
import torch  # noqa: E402,F401

import vitbench.models.keras  # noqa: E402,F401
import vitbench.runner.keras_worker  # noqa: E402,F401
import vitbench.runner.worker  # noqa: E402,F401
