"""Fork server of tf-keras workers (Keras 2 on TensorFlow: TF Model Garden's sides). Keras 3 is never imported here:
``TF_USE_LEGACY_KERAS`` makes ``tf.keras`` tf-keras as well."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before tensorflow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the server's own TensorFlow start-up lines

import tensorflow  # noqa: E402,F401

try:  # Model Garden's vision modules (9-10 s of imports) when installed; a missing one fails its side's row
    import official.vision.modeling.backbones.vit  # noqa: F401
    import official.vision.modeling.classification_model  # noqa: F401
    import official.vision.modeling.layers.nn_layers  # noqa: F401
    import tf_keras  # noqa: F401
except ImportError:
    pass

import vitbench.runner.keras_worker  # noqa: E402,F401
import vitbench.runner.worker  # noqa: E402,F401
