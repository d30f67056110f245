"""The crown engine (IBP, CROWN, alpha-CROWN) against the Lipschitz engine on networks trained
without a Lipschitz penalty, and on the embedded default (issue 17, item 5; a first part).

    python bench/linear_bounds.py [--threads 1] [--limit 100] [--bench DIR] [--mnist-dir DIR]

- **mnistfc**: the VNN-COMP 2021 ReLU MLPs ``mnist-net_256x2.onnx`` and ``256x4`` (normally
  trained), on the first ``--limit`` correctly classified points of the MNIST protocol's test
  split, at l_inf eps 0.01 and 0.02 and l2 eps 0.1 and 0.3 (domain [0, 1]);
- **trained MLPs** (``--mlps``): ReLU MLPs 784-100-100-10 and 784-256-256-10 trained here with
  plain cross-entropy (Adam, ``--mlp-epochs`` epochs, seed 0) on the MNIST protocol's
  training split, on the first ``--mlp-limit`` correct test points at the same four radii:
  every bound engine, projections (``--mlp-seconds`` a point) and the exact MILP
  (``--mlp-seconds`` a point), with the share of the MILP-proved points each one certifies;
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


def train_mlp(data: vs.Dataset, width: int, epochs: int) -> vs.Network:
    """A 784-width-width-10 ReLU MLP trained with plain cross-entropy (no certified training)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(784, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    )
    x = torch.as_tensor(data.x, dtype=torch.float32)
    y = torch.as_tensor(data.y, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return vs.Network.from_torch(model.eval(), (1, 28, 28))


def run_mlp(
    network: vs.Network, data: vs.Dataset, spec: vs.LocalRobustness, args: argparse.Namespace
) -> dict:
    """Every bound engine, projections and the MILP on the first correct points; each
    engine's certified count, time per point and share of the MILP-proved points."""
    from verispec.solvers.base import SolverConfig

    from verispec.engines.projections import ProjectionsConfig

    xs, ys, domain = points_of(network, data, None)
    right = np.flatnonzero(np.argmax(network.forward64(xs), axis=1) == ys)[: args.mlp_limit]
    all_engines = dict(engines())
    all_engines["projections"] = engine_class("projections")(
        ProjectionsConfig(time_per_point=args.mlp_seconds)
    )
    all_engines["milp"] = engine_class("milp")(SolverConfig(timeout=args.mlp_seconds))
    verdicts, out = {}, {}
    for name, engine in all_engines.items():
        start = time.perf_counter()
        batch = engine.check(network, spec, xs[right], ys[right], domain)  # type: ignore[attr-defined]
        seconds = (time.perf_counter() - start) / len(right)
        verdicts[name] = batch.verdicts == Verdict.CERTIFIED.code
        out[name] = {
            "certified": int(verdicts[name].sum()),
            "points": len(right),
            "s_per_point": seconds,
        }
    proved = verdicts["milp"]
    for name in out:
        both = int((verdicts[name] & proved).sum())
        out[name]["of_milp_proved"] = f"{both}/{int(proved.sum())}"
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
    parser.add_argument("--mlps", action="store_true", help="train and bench the two MLPs")
    parser.add_argument("--mlps-only", action="store_true", help="only the trained MLPs")
    parser.add_argument("--mlp-limit", type=int, default=10)
    parser.add_argument("--mlp-epochs", type=int, default=8)
    parser.add_argument("--mlp-seconds", type=float, default=20.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}; certified / points (time per point)")
    results: dict[str, object] = {}
    if (args.mlps or args.mlps_only) and args.mnist_dir.exists():
        train = vs.load_data(f"mnist:{args.mnist_dir}", vs.Split.TRAIN)
        test = vs.load_data(f"mnist:{args.mnist_dir}", vs.Split.TEST)
        for width in (100, 256):
            start = time.perf_counter()
            network = train_mlp(train, width, args.mlp_epochs)
            xs, ys, _ = points_of(network, test, None)
            acc = float(np.mean(np.argmax(network.forward64(xs), axis=1) == ys))
            print(
                f"  mlp 784-{width}-{width}-10: test accuracy {acc:.3f}, "
                f"trained in {time.perf_counter() - start:.0f} s"
            )
            results[f"mlp_{width}_accuracy"] = acc
            for spec in SPECS:
                fig = run_mlp(network, test, spec, args)
                show(f"mlp {width}x2", spec, fig)
                print(
                    "    of the MILP-proved: "
                    + ", ".join(f"{k} {v['of_milp_proved']}" for k, v in fig.items())
                )
                results[f"mlp_{width}x2_{spec.norm.value}_{spec.eps:g}"] = fig
        if args.mlps_only:
            out = ROOT / "bench" / "results" / "linear_bounds_mlps.json"
            out.write_text(json.dumps(results, indent=1))
            print(f"wrote {out}")
            return
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
