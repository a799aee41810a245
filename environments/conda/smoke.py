"""Smoke test of the Conda environment: a few steps of gradient descent fitting a
linear model to random data with NumPy, and micromamba's version where the host gave
the environment one. Prints one JSON line; `ok` says whether the loss fell (and
micromamba, when present, answered). Run as `python smoke.py`, or inside a notebook by
`make verify-envs`."""

import json
import shutil
import subprocess

import numpy as np


def main() -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8))
    y = x @ rng.normal(size=8)
    w = np.zeros(8)
    losses = []
    for _ in range(50):
        error = x @ w - y
        losses.append(float(np.mean(error**2)))
        w -= 0.1 * 2 * x.T @ error / len(y)
    result = {
        "framework": "numpy",
        "version": np.__version__,
        "device": "cpu",
        "steps": len(losses),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "micromamba": None,
    }
    ok = losses[-1] < losses[0] / 2
    micromamba = shutil.which("micromamba")
    if micromamba:
        done = subprocess.run([micromamba, "--version"], capture_output=True, text=True)
        result["micromamba"] = done.stdout.strip() or f"exit {done.returncode}"
        ok = ok and done.returncode == 0
    result["ok"] = ok
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
