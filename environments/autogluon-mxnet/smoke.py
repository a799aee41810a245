"""Smoke test of the AutoGluon environment: a TabularPredictor fitted for a few
seconds on a random classification (LightGBM and AutoGluon's PyTorch network, on the
GPU when PyTorch sees one), scored on held-out rows. Prints one JSON line; `ok` says
whether it beat guessing by far. Run as `python smoke.py`, or inside a notebook by
`make verify-envs`."""

import json
import tempfile

import autogluon.tabular
import numpy as np
import pandas as pd
import torch
from autogluon.tabular import TabularPredictor


def main() -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6))
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    df["label"] = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    train, test = df.iloc[:500], df.iloc[500:]
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as path:
        predictor = TabularPredictor(label="label", path=path, verbosity=0).fit(
            train,
            hyperparameters={"GBM": {}, "NN_TORCH": {"num_epochs": 5}},
            num_gpus=1 if gpu else 0,
            time_limit=120,
        )
        accuracy = float(predictor.evaluate(test, silent=True)["accuracy"])
        models = list(predictor.model_names())
    return {
        "framework": "autogluon",
        "version": autogluon.tabular.__version__,
        "torch": torch.__version__,
        "device": "cuda" if gpu else "cpu",
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "summary": f"accuracy {accuracy:.3f} on held-out rows, models {', '.join(models)}",
        "ok": accuracy > 0.8,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
