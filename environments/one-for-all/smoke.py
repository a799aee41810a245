"""Smoke test of the One-for-all environment: each framework learns a tiny random
problem (PyTorch and Keras regressions, a Transformers model from a config,
scikit-learn, XGBoost and LightGBM classifiers), PyTorch on the GPU when one is
visible. Prints one JSON line; `ok` says whether every one of them learnt. Run as
`python smoke.py`, or inside a notebook by `make verify-envs`."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import lightgbm  # noqa: E402
import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import xgboost  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402


def torch_fits(device: str) -> bool:
    torch.manual_seed(0)
    x = torch.randn(256, 16, device=device)
    y = x @ torch.randn(16, 1, device=device)
    model = torch.nn.Linear(16, 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[-1] < losses[0] / 2


def keras_fits(x, y) -> bool:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(x.shape[1],)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(5e-2), loss="mse")
    losses = model.fit(x, y, epochs=10, batch_size=64, verbose=0).history["loss"]
    return losses[-1] < losses[0] / 2


def transformers_fits(device: str) -> bool:
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config).to(device)
    ids = torch.randint(0, 50, (16, 8), device=device)
    labels = (ids[:, 0] % 2).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses[-1] < losses[0] / 2


def main() -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y_reg = x @ rng.normal(size=8).astype("float32")
    y_cls = (y_reg > 0).astype(int)
    learnt = {
        "torch": torch_fits(device),
        "keras": keras_fits(x, y_reg),
        "transformers": transformers_fits(device),
        "sklearn": LogisticRegression().fit(x, y_cls).score(x, y_cls) > 0.9,
        "xgboost": xgboost.XGBClassifier(n_estimators=20).fit(x, y_cls).score(x, y_cls) > 0.9,
        "lightgbm": lightgbm.LGBMClassifier(n_estimators=20, verbose=-1)
        .fit(x, y_cls)
        .score(x, y_cls)
        > 0.9,
        "opencv": cv2.GaussianBlur(np.ones((8, 8), "float32"), (3, 3), 0).shape == (8, 8),
    }
    versions = {
        "torch": torch.__version__,
        "tensorflow": tf.__version__,
        "transformers": transformers.__version__,
        "sklearn": sklearn.__version__,
        "xgboost": xgboost.__version__,
        "lightgbm": lightgbm.__version__,
    }
    return {
        "framework": "one-for-all",
        "version": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "learnt": learnt,
        "summary": "learnt: " + ", ".join(k for k, v in learnt.items() if v),
        "ok": all(learnt.values()),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
