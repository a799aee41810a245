"""Smoke test of the PyTorch environment: a few steps of training a tiny network on
random data, on the GPU when one is visible. Prints one JSON line; `ok` says whether
the loss fell. Run as `python smoke.py`, or inside a notebook by `make verify-envs`."""

import importlib.util
import json

import torch


def main() -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    x = torch.randn(256, 16, device=device)
    y = x @ torch.randn(16, 1, device=device)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    result = {
        "framework": "torch",
        "version": torch.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "steps": len(losses),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }
    ok = losses[-1] < losses[0] / 2
    if importlib.util.find_spec("torchvision"):
        import torchvision

        # nms is the operator a torchvision built for another torch fails to register.
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], device=device)
        kept = torchvision.ops.nms(boxes.float(), torch.tensor([0.9, 0.8, 0.7], device=device), 0.5)
        net = torchvision.models.resnet18(num_classes=2).to(device)
        images = torch.randn(4, 3, 32, 32, device=device)
        labels = torch.tensor([0, 1, 0, 1], device=device)
        vision_opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for _ in range(3):
            vision_opt.zero_grad()
            torch.nn.functional.cross_entropy(net(images), labels).backward()
            vision_opt.step()
        result["torchvision"] = torchvision.__version__
        ok = ok and kept.tolist() == [0, 2]
    result["ok"] = ok
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
