"""Training losses beyond Keras' built-ins (keras.ops only, serialisable)."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["HingeMAE"]


@keras.saving.register_keras_serializable(package="bfcnn")
class HingeMAE(keras.losses.Loss):
    """Mean absolute error with a dead zone: errors below ``margin`` cost nothing.

    Why: the original bfcnn models trained with this, so tiny residual errors
    (below the 8-bit quantisation step, say) do not pull the weights around.
    """

    def __init__(self, margin: float = 0.0, name: str = "hinge_mae", **kwargs):
        super().__init__(name=name, **kwargs)
        if margin < 0:
            raise ValueError(f"HingeMAE expected margin >= 0. Received: margin={margin}")
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        err = ops.abs(y_pred - y_true) - self.margin
        return ops.mean(ops.maximum(err, 0.0), axis=-1)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}
