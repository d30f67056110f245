"""Selective ensembles (issue 16, item 4): consistency under retraining, and the certified
variant.

    python bench/selective.py [--threads 1] [--alphas 0.05,0.1] [--sizes 5,10,20]
                              [--skip-mnist] [--mnist-dir DIR] [--mnist-epochs 5]

Members are trained with ``verispec train --seeds N`` (the command users run) into
``build/selective/<family>/`` and reused when there (delete the folder to retrain). For each
family two *sets* of ``max(--sizes)`` members are trained from disjoint seeds (set A: seeds
100, 101, ...; set B: seeds 200, 201, ...); the ensemble of size n of a set is its first n
members. Families:

- ``digits-ce``: MLP 64-64-10 (MinMax), cross-entropy, 30 epochs, the digits train split;
- ``digits-gloro``: the members of ``specs/selective.toml`` (MinMax MLP 64-32-10, GloRo loss at
  l2 0.4, certified at 0.3; 60 epochs);
- ``mnist-ce``: MLP 784-128-10 (MinMax), cross-entropy, ``--mnist-epochs`` epochs on verispec's
  MNIST protocol (``mnist:DIR``: 13,000 training images, the last 2,000 test images).

Figures per family, alpha and n, on the test split (at alpha 0.05 five members can never
answer: a unanimous two-sided test has p = 2 / 32 = 0.0625):

- **disagreement**: the share of test points where the two ensembles (set A's and set B's)
  both answer and answer differently (the paper: 0);
- **abstention**: the share of points where an ensemble abstains (the mean over the two);
- **accuracy when answering**: over the points an ensemble answers (the mean over the two);
- **single-model baseline**: the share of points where member i of set A and member i of set
  B predict differently (their float64 argmax), the mean over the pairs; and their accuracy;
- for ``digits-gloro``, the **certified variant** at l2 eps 0.3: the share of points
  certified (the ensemble gives the same answer, without abstaining, on the whole ball), and
  the members' mean VRA for comparison.

Figures go to ``bench/results/selective.json``; the training time of each family is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

import verispec as vs
from verispec.api import points_of
from verispec.data import Split, load_data
from verispec.engines.lipschitz import LipschitzEngine
from verispec.ensembles import Answer, Member, MemberDecisions, SelectiveEnsemble
from verispec.modelfile import load_model

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
OUT = ROOT / "build" / "selective"
SEEDS = {"a": 100, "b": 200}

FAMILIES = {
    "digits-ce": (
        "sklearn:digits",
        ["--arch", "minmax-mlp", "--width", "64", "--depth", "1", "--loss", "ce"],
        ["--epochs", "30", "--lr", "0.005"],
    ),
    "digits-gloro": (
        "sklearn:digits",
        ["--arch", "minmax-mlp", "--width", "32", "--depth", "1", "--eps", "0.3"],
        ["--train-eps", "0.4", "--epochs", "60", "--lr", "0.005"],
    ),
    "mnist-ce": (
        "mnist:{mnist}",
        ["--arch", "minmax-mlp", "--width", "128", "--depth", "1", "--loss", "ce"],
        ["--epochs", "{epochs}", "--lr", "0.002", "--batch-size", "128"],
    ),
}


def train_set(family: str, which: str, count: int, source: str, args: list[str]) -> list[Path]:
    """The ``count`` members of one set, trained with ``verispec train --seeds`` unless
    there."""
    folder = OUT / family
    folder.mkdir(parents=True, exist_ok=True)
    first = SEEDS[which]
    paths = [folder / f"{which}_seed{first + k}.pt" for k in range(count)]
    if all(p.exists() for p in paths):
        return paths
    command = [sys.executable, "-m", "verispec.cli", "train", "--data", source, *args]
    command += ["--seeds", str(count), "--seed", str(first), "--out", str(folder / f"{which}.pt")]
    command += ["--eval-limit", "200", "--no-progress"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return paths


def votes_and_certs(
    paths: list[Path], data: vs.Dataset, spec: vs.LocalRobustness
) -> tuple[np.ndarray, np.ndarray, list[Member]]:
    """(k, n) each member's vote (the ensemble's rule) and certification at every point."""
    members = [Member(load_model(p)[0], LipschitzEngine(), p.stem) for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a single member can never be significant
        whole = SelectiveEnsemble(members, 0.05)
    xs, _, domain = points_of(whole, data, None)
    d = whole.decisions(spec, xs, domain)
    return d.predicted, d.certified, members


def selective(members: list[Member], alpha: float, votes: np.ndarray, certs: np.ndarray) -> Answer:
    """The selective ensemble of ``members`` from their precomputed votes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the figures say when alpha is out of reach
        ensemble = SelectiveEnsemble(members, alpha)
    k = len(members)
    return ensemble.combine(MemberDecisions(votes[:k], certs[:k], np.zeros(k)))


def _answered_accuracy(answers: Iterable[Answer], labels: np.ndarray) -> float | None:
    """The mean over the ensembles of the accuracy on the points each answers (None when
    none answers anywhere)."""
    shares = [
        float(np.mean(a.predicted[a.predicted >= 0] == labels[a.predicted >= 0]))
        for a in answers
        if (a.predicted >= 0).any()
    ]
    return float(np.mean(shares)) if shares else None


def family_figures(
    family: str, sizes: list[int], alphas: list[float], source: str, args: list[str]
) -> dict[str, object]:
    start = time.perf_counter()
    sets = {w: train_set(family, w, max(sizes), source, args) for w in SEEDS}
    trained = time.perf_counter() - start
    data = load_data(source, Split.TEST)
    labels = data.y
    spec = vs.LocalRobustness(0.3, vs.Norm.L2)
    decided = {w: votes_and_certs(p, data, spec) for w, p in sets.items()}
    votes = {w: v for w, (v, _, _) in decided.items()}
    single_disagree = float(
        np.mean([np.mean(votes["a"][i] != votes["b"][i]) for i in range(max(sizes))])
    )
    single_acc = float(
        np.mean([np.mean(v[i] == labels) for v in votes.values() for i in range(max(sizes))])
    )
    single_vra = float(
        np.mean(
            [
                np.mean(c[i] & (v[i] == labels))
                for v, c, _ in decided.values()
                for i in range(max(sizes))
            ]
        )
    )
    rows = []
    for alpha, n in [(alpha, n) for alpha in alphas for n in sizes]:
        answers = {w: selective(m[:n], alpha, v, c) for w, (v, c, m) in decided.items()}
        a, b = answers["a"].predicted, answers["b"].predicted
        both = (a >= 0) & (b >= 0)
        row = {
            "alpha": alpha,
            "n": n,
            "disagreement": float(np.mean(both & (a != b))),
            "disagreeing_points": int(np.sum(both & (a != b))),
            "abstention": float(np.mean([np.mean(x.predicted < 0) for x in answers.values()])),
            "accuracy_when_answering": _answered_accuracy(answers.values(), labels),
        }
        if family == "digits-gloro":
            row["certified"] = float(np.mean([np.mean(x.certified) for x in answers.values()]))
            row["certified_and_correct"] = float(
                np.mean([np.mean(x.certified & (x.predicted == labels)) for x in answers.values()])
            )
        rows.append(row)
    return {
        "family": family,
        "points": len(labels),
        "members_per_set": max(sizes),
        "train_seconds": trained,
        "single_model_disagreement": single_disagree,
        "single_model_accuracy": single_acc,
        "single_model_vra_l2_0.3": single_vra,
        "ensembles": rows,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def show(fig: dict[str, object]) -> None:
    print(
        f"\n{fig['family']}: {fig['points']} test points, 2 x {fig['members_per_set']} members "
        f"(trained in {fig['train_seconds']:.0f} s; 0 when reused)"
    )
    print(
        f"  single models: disagreement {fig['single_model_disagreement']:.4f}, accuracy "
        f"{fig['single_model_accuracy']:.4f}"
        + (
            f", VRA@0.3 {fig['single_model_vra_l2_0.3']:.4f}"
            if fig["family"] == "digits-gloro"
            else ""
        )
    )
    for row in fig["ensembles"]:  # type: ignore[attr-defined]
        line = (
            f"  alpha {row['alpha']:<5g} n={row['n']:>2}: disagreement {row['disagreement']:.4f} "
            f"({row['disagreeing_points']} points), abstention {row['abstention']:.4f}, "
            f"accuracy when answering {_fmt(row['accuracy_when_answering'])}"
        )
        if "certified" in row:
            line += (
                f", certified {row['certified']:.4f} "
                f"(and correct {row['certified_and_correct']:.4f})"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--alphas", default="0.05,0.1", help="levels of the binomial test")
    parser.add_argument("--sizes", default="5,10,20")
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--mnist-dir", type=Path, default=MNIST)
    parser.add_argument("--mnist-epochs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training subprocesses
    sizes = [int(s) for s in args.sizes.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]
    print(f"torch {torch.__version__}, threads {args.threads}, alphas {alphas}, sizes {sizes}")
    figures = []
    for family, (source, arch, extra) in FAMILIES.items():
        if family.startswith("mnist"):
            if args.skip_mnist:
                continue
            if not args.mnist_dir.exists():
                print(f"\n{family}: skipped, no MNIST files at {args.mnist_dir}")
                continue
        source = source.format(mnist=args.mnist_dir)
        extra = [e.format(epochs=args.mnist_epochs) for e in extra]
        fig = family_figures(family, sizes, alphas, source, arch + extra)
        show(fig)
        figures.append(fig)
    out = ROOT / "bench" / "results" / "selective.json"
    out.write_text(json.dumps({"alphas": alphas, "families": figures}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
