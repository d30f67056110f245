"""The cascade's flaw in two dimensions (after Mangal et al. 2023, Figure 1).

    python bench/ensembles_toy.py [--out docs/figures/ensembles_toy.png] [--eps 0.06]
                                  [--grid 241] [--threads 2]

Three small GloRo MinMax members are trained on two moons (scikit-learn's generator, scaled
into [0, 1]^2; seeds and training radii differ). On a grid over the square the script shows,
for each member, the cascade and the voting ensemble, the class (colour) and where each claims
robustness at l2 eps (strong colour; pale where not). The cascade's **unsound zone** is marked
in black: grid points where the cascade claims robustness although another grid point within
eps gets a different cascade answer (a claim refuted on the grid itself). The voting ensemble
has no such zone, by construction; the script counts both and prints the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from verispec.data import Dataset
from verispec.engines.lipschitz import LipschitzEngine
from verispec.ensembles import Cascade, Ensemble, Member, Voting
from verispec.network import Network
from verispec.regions import Box, Norm
from verispec.results import Verdict
from verispec.specs import LocalRobustness
from verispec.train.architectures import Arch, ArchConfig
from verispec.train.loop import TrainConfig, train
from verispec.train.schedules import EpsSchedule, LrSchedule

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ((1, 0.04), (2, 0.10), (3, 0.16))
"""(seed, training eps) of each member, in cascade order."""


def moons(n: int, seed: int) -> Dataset:
    """Two moons (noise 0.12) scaled into [0, 1]^2."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.12, random_state=seed)
    x = (x - np.array([-1.2, -0.7])) / np.array([3.4, 2.0])
    return Dataset(np.clip(x, 0.0, 1.0), y, "two moons", (0.0, 1.0))


def member(seed: int, train_eps: float, data: Dataset, epochs: int) -> Network:
    cfg = TrainConfig(
        ArchConfig(Arch.MINMAX_MLP, width=16, depth=2),
        eps=EpsSchedule(train_eps),
        lr=LrSchedule(0.01),
        epochs=epochs,
        batch_size=64,
        seed=seed,
    )
    model, _ = train(cfg, data, data)
    return Network.from_torch(model.cpu().double(), (2,))


def unsound_zone(answers: np.ndarray, claimed: np.ndarray, eps: float, step: float) -> np.ndarray:
    """Grid points claimed robust with another answer on a grid point within eps (l2)."""
    r = int(np.floor(eps / step))
    out = np.zeros_like(claimed)
    g = answers.shape[0]
    for di in range(-r, r + 1):
        for dj in range(-r, r + 1):
            if di * di + dj * dj > (eps / step) ** 2 or (di == 0 and dj == 0):
                continue
            shifted = np.full_like(answers, -1)
            src = answers[max(0, -di) : g - max(0, di), max(0, -dj) : g - max(0, dj)]
            shifted[max(0, di) : g - max(0, -di), max(0, dj) : g - max(0, -dj)] = src
            out |= claimed & (shifted >= 0) & (shifted != answers)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "ensembles_toy.png"))
    parser.add_argument("--eps", type=float, default=0.06)
    parser.add_argument("--grid", type=int, default=241)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = moons(600, 0)
    members = [
        Member(member(s, e, data, args.epochs), LipschitzEngine(), f"member {i} (train eps {e})")
        for i, (s, e) in enumerate(MEMBERS)
    ]
    spec = LocalRobustness(args.eps, Norm.L2)
    ticks = np.linspace(0.0, 1.0, args.grid)
    gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    domain = Box.uniform(0.0, 1.0, (2,))
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = []
    for m in members:
        batch = m.engine.check(m.network, spec, pts, None, domain)
        pred = np.argmax(m.network.forward64(pts), axis=1)
        panels.append((m.name, pred, batch.verdicts == Verdict.CERTIFIED.code, None))
    ensembles: list[Ensemble] = [Cascade(members), Voting(members)]
    step = float(ticks[1] - ticks[0])
    for ens in ensembles:
        ans = ens.answer(spec, pts, domain)
        a = ans.predicted.reshape(gx.shape)
        c = ans.certified.reshape(gx.shape)
        zone = unsound_zone(a, c, args.eps, step)
        claimed = float(c.mean())
        print(
            f"{ens.kind}: claims robustness on {claimed:.1%} of the grid; claims refuted on the "
            f"grid itself: {zone.sum()} points ({zone.sum() / max(c.sum(), 1):.1%} of the claims)"
        )
        panels.append((ens.kind, ans.predicted, ans.certified, zone.ravel()))
    _plot(panels, gx, gy, data, args.eps, Path(args.out))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s (torch threads {args.threads})")


def _plot(
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    gx: np.ndarray,
    gy: np.ndarray,
    data: Dataset,
    eps: float,
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    colours = np.array([[0.20, 0.45, 0.80], [0.90, 0.50, 0.15]])
    for ax, (title, pred, cert, zone) in zip(axes, panels, strict=True):
        rgb = colours[pred.reshape(gx.shape)]
        pale = ~cert.reshape(gx.shape)
        rgb[pale] = 0.25 * rgb[pale] + 0.75  # pale where not certified
        if zone is not None:
            rgb[zone.reshape(gx.shape)] = 0.0
        ax.imshow(np.transpose(rgb, (1, 0, 2)), origin="lower", extent=(0, 1, 0, 1))
        ax.scatter(
            data.x[:, 0], data.x[:, 1], c=colours[data.y], s=5, edgecolors="k", linewidths=0.25
        )
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"strong colour: robustness claimed at l2 eps {eps}; black: the cascade's claims "
        "refuted by a grid point within eps",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
