"""Smoke test of the MXNet environment: a few steps of training a Gluon network on a
random regression, and a forward pass of a GluonCV CIFAR ResNet (no weights are
downloaded). MXNet here is the CPU build. Prints one JSON line; `ok` says whether the
loss fell. Run as `python smoke.py`, or inside a notebook by `make verify-envs`."""

import json

import gluoncv
import mxnet as mx
from mxnet import autograd, gluon, nd


def main() -> dict:
    mx.random.seed(0)
    x = nd.random.normal(shape=(256, 16))
    y = nd.dot(x, nd.random.normal(shape=(16, 1)))
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(32, activation="relu"), gluon.nn.Dense(1))
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-2})
    l2 = gluon.loss.L2Loss()
    losses = []
    for _ in range(50):
        with autograd.record():
            loss = l2(net(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        losses.append(float(loss.mean().asscalar()))
    resnet = gluoncv.model_zoo.get_model("cifar_resnet20_v1", classes=10, pretrained=False)
    resnet.initialize()
    logits = resnet(nd.random.normal(shape=(2, 3, 32, 32)))
    return {
        "framework": "mxnet",
        "version": mx.__version__,
        "gluoncv": gluoncv.__version__,
        "device": "cpu",
        "steps": len(losses),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "ok": losses[-1] < losses[0] / 2 and logits.shape == (2, 10),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
