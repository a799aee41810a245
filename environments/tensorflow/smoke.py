"""Smoke test of the TensorFlow environment: a few epochs of training a tiny Keras
model on random data, on the GPU when TensorFlow sees one. Prints one JSON line; `ok`
says whether the loss fell. Run as `python smoke.py`, or inside a notebook by
`make verify-envs`."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main() -> dict:
    gpus = tf.config.list_physical_devices("GPU")
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(256, 16)).astype("float32")
    y = x @ np.random.default_rng(1).normal(size=(16, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input(shape=(16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    history = model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    losses = history.history["loss"]
    return {
        "framework": "tensorflow",
        "version": tf.__version__,
        "keras": keras.__version__,
        "device": "gpu" if gpus else "cpu",
        "gpu": gpus[0].name if gpus else None,
        "steps": len(losses) * 4,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "ok": losses[-1] < losses[0] / 2,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
