"""The crown engine (IBP, CROWN, alpha-CROWN) against the Lipschitz engine on networks trained
without a Lipschitz penalty, and on the embedded default (issue 17, item 5; a first part).

    python bench/linear_bounds.py [--threads 1] [--limit 100] [--bench DIR] [--mnist-dir DIR]

- **mnistfc**: the VNN-COMP 2021 ReLU MLPs ``mnist-net_256x2.onnx`` and ``256x4`` (normally
  trained), on the first ``--limit`` correctly classified points of the MNIST protocol's test
  split, at l_inf eps 0.01 and 0.02 and l2 eps 0.1 and 0.3 (domain [0, 1]);
- **digits default**: ``specs/models/digits_mlp.pt`` (GloRo, MinMax) at l2 0.3; and the
  projections engine there, with CROWN's bounds (its default) on ``--projections-limit``
  points and without them on 10 (default budgets: 20,000 regions, 30 s a point).

Figures: the certified share of the points (the count) and the seconds per point, per
engine. Printed, and written to ``bench/results/linear_bounds.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import verispec as vs
from verispec.api import points_of
from verispec.engines.base import engine_class
from verispec.engines.linear_bounds import LinearBoundsConfig
from verispec.onnx import load_onnx
from verispec.results import Verdict

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp2021" / "mnistfc"
MNIST = ROOT.parent / "shared" / "data" / "mnist"
SPECS = [
    vs.LocalRobustness(0.01, vs.Norm.LINF),
    vs.LocalRobustness(0.02, vs.Norm.LINF),
    vs.LocalRobustness(0.1, vs.Norm.L2),
    vs.LocalRobustness(0.3, vs.Norm.L2),
]


def engines() -> dict[str, object]:
    crown = engine_class("crown")
    return {
        "ibp": crown(LinearBoundsConfig(method="ibp")),
        "crown": crown(LinearBoundsConfig(method="crown")),
        "alpha-crown": crown(LinearBoundsConfig(method="alpha-crown")),
        "lipschitz": engine_class("lipschitz")(),
    }


def run(network: vs.Network, data: vs.Dataset, spec: vs.LocalRobustness, limit: int) -> dict:
    xs, ys, domain = points_of(network, data, None)
    right = np.flatnonzero(np.argmax(network.forward64(xs), axis=1) == ys)[:limit]
    out = {}
    for name, engine in engines().items():
        start = time.perf_counter()
        batch = engine.check(network, spec, xs[right], ys[right], domain)  # type: ignore[attr-defined]
        seconds = (time.perf_counter() - start) / len(right)
        certified = int((batch.verdicts == Verdict.CERTIFIED.code).sum())
        out[name] = {"certified": certified, "points": len(right), "s_per_point": seconds}
    return out


def show(title: str, spec: vs.LocalRobustness, figures: dict) -> None:
    cells = ", ".join(
        f"{k} {v['certified']}/{v['points']} ({v['s_per_point'] * 1e3:.1f} ms)"
        for k, v in figures.items()
    )
    print(f"  {title} {spec.norm.value} {spec.eps:g}: {cells}")


def projections_default(network: vs.Network, data: vs.Dataset, args: argparse.Namespace) -> dict:
    """The projections engine on the embedded default at l2 0.3: with CROWN's bounds (the
    default) on ``--projections-limit`` points, and without them on the first 10 (where it
    ran out of budget before the bounds)."""
    from verispec.engines.projections import ProjectionsConfig, ProjectionsEngine

    spec = vs.LocalRobustness(0.3, vs.Norm.L2)
    xs, ys, domain = points_of(network, data, None)
    out = {}
    for bounds, limit in (("crown", args.projections_limit), ("none", 10)):
        engine = ProjectionsEngine(ProjectionsConfig(bounds=bounds))
        times, decided, counts = [], 0, {}
        for i in range(min(limit, len(xs))):
            r = engine.check(network, spec, xs[i : i + 1], ys[i : i + 1], domain)[0]
            times.append(r.time_s)
            counts[r.verdict.value] = counts.get(r.verdict.value, 0) + 1
            decided += r.verdict in (Verdict.CERTIFIED, Verdict.FALSIFIED)
        out[bounds] = {
            "points": len(times),
            "decided": decided,
            "counts": counts,
            "median_s": float(np.median(times)),
            "total_s": float(np.sum(times)),
        }
        print(
            f"  projections on the default, l2 0.3, bounds={bounds}: {decided}/{len(times)} "
            f"decided {counts}, median {np.median(times):.2f} s, total {np.sum(times):.0f} s"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--bench", type=Path, default=BENCH)
    parser.add_argument("--mnist-dir", type=Path, default=MNIST)
    parser.add_argument("--projections-limit", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}; certified / points (time per point)")
    results: dict[str, object] = {}
    if args.bench.exists() and args.mnist_dir.exists():
        data = vs.load_data(f"mnist:{args.mnist_dir}", vs.Split.TEST)
        for net_name in ("256x2", "256x4"):
            network = load_onnx(args.bench / f"mnist-net_{net_name}.onnx")
            for spec in SPECS:
                fig = run(network, data, spec, args.limit)
                show(f"mnistfc {net_name}", spec, fig)
                results[f"mnistfc_{net_name}_{spec.norm.value}_{spec.eps:g}"] = fig
    else:
        print(f"  mnistfc: skipped (no {args.bench} or {args.mnist_dir})")
    network, _ = vs.load_model(ROOT / "specs" / "models" / "digits_mlp.pt")
    digits = vs.load_data("sklearn:digits", vs.Split.TEST)
    spec = vs.LocalRobustness(0.3, vs.Norm.L2)
    fig = run(network, digits, spec, args.limit)
    show("digits default", spec, fig)
    results["digits_default_l2_0.3"] = fig
    results["projections_default_l2_0.3"] = projections_default(network, digits, args)
    out = ROOT / "bench" / "results" / "linear_bounds.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
