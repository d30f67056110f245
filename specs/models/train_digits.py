"""Train the embedded default model: a MinMax MLP on scikit-learn digits with a GloRo loss.

    python specs/models/train_digits.py [--out specs/models/digits_mlp.pt] [--epochs 300]

A minimal GloRo-style loop (Leino et al., 2021): the logits are extended with a "bottom"
logit y_bot = max_{j != c} (y_j + eps K_cj), with K_cj = ||w_c - w_j||_2 times the product of
the hidden layers' spectral norms (exact, differentiable: torch.linalg.matrix_norm(ord=2)), and
trained with cross entropy. The saved model is verified later with the engine's own sound
bounds; nothing here is trusted. Deterministic on the CPU for a fixed seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from verispec.data import Split, load_data
from verispec.layers import MinMax
from verispec.modelfile import save_model
from verispec.network import Network


def build(hidden: int = 128) -> nn.Sequential:
    """Flatten -> Linear(64, h) -> MinMax -> Linear(h, h) -> MinMax -> Linear(h, 10)."""
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, hidden),
        MinMax(),
        nn.Linear(hidden, hidden),
        MinMax(),
        nn.Linear(hidden, 10),
    )
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def gloro_logits(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """[logits, y_bot] (n, m + 1) for labels ``y``."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    body_k = torch.stack([torch.linalg.matrix_norm(m.weight, ord=2) for m in linears[:-1]]).prod()
    logits = net(x)
    w = linears[-1].weight
    diff = w[y][:, None, :] - w[None, :, :]  # (n, m, h)
    k_cj = diff.norm(dim=-1) * body_k
    shifted = logits + eps * k_cj
    shifted = shifted.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), -torch.inf)
    return torch.cat([logits, shifted.max(dim=1, keepdim=True).values], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("digits_mlp.pt")))
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--eps", type=float, default=0.45, help="training eps (l2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train = load_data("sklearn:digits", Split.TRAIN)
    test = load_data("sklearn:digits", Split.TEST)
    x = torch.tensor(train.x, dtype=torch.float32)
    y = torch.tensor(train.y)
    net = build()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        eps = args.eps * min(1.0, (epoch + 1) / (0.3 * args.epochs))  # linear warm-up
        perm = torch.randperm(len(x), generator=gen)
        for idx in perm.split(128):
            loss = nn.functional.cross_entropy(gloro_logits(net, x[idx], y[idx], eps), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if (epoch + 1) % 50 == 0:
            with torch.no_grad():
                acc = (
                    net(torch.tensor(test.x, dtype=torch.float32)).argmax(1).numpy() == test.y
                ).mean()
            print(f"epoch {epoch + 1}: loss {loss.item():.3f} test acc {acc:.3f}")
    network = Network.from_torch(net, (1, 8, 8))
    meta = {
        "trained_by": "specs/models/train_digits.py",
        "epochs": args.epochs,
        "train_eps": args.eps,
        "norm": "l2",
        "seed": args.seed,
        "data": "sklearn:digits[train]",
    }
    save_model(network, args.out, meta)
    acc = np.mean(network.forward64(test.x).argmax(1) == test.y)
    print(f"saved {args.out}: test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
