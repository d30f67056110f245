"""Self-correcting ACAS Xu networks: proofs, how often the layer acts, and its run-time cost.

    python bench/selfcorrect.py [--threads 1] [--timeout 120] [--samples 100000]
                                [--repeats 7] [--device cpu] [--skip-proofs]

Reads the VNN-COMP 2021 ACAS Xu benchmark (``--bench``, default: the shared benchmarks
folder next to this repository). ACAS Xu scores are costs: the advisory is the *minimal*
score, so the layer is built with ``top="min"``.

1. Properties 1-10 as safe-ordering constraints, from their VNN-LIB files (the unsafe set
   negated). Property 1 bounds a score (COC <= 1500) and orders none; property 6's region
   is a union of two boxes: both are skipped.
2. On instances where the plain network violates a property (the exact solver's witness,
   re-checked in float64), the corrected network (constraints: every ordering property the
   benchmark pairs with that network) is proved by ``verify_corrected``. Times per instance.
3. On uniform samples of the input domain and of each constraint's region: how often the
   layer changes the output, abstains, and (must be 0) changes an output that already
   satisfied every active constraint.
4. The overhead: the corrected forward pass over the plain one (float32 torch modules, the
   median of interleaved repeats) at batch 1, 500 and 10,000, on domain samples (constraints
   rarely active) and on samples of property 2's region (always active).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from verispec.solvers.base import SolverConfig, solver_class

from verispec.errors import SpecError
from verispec.onnx import load_onnx
from verispec.regions import Box
from verispec.results import Verdict
from verispec.selfcorrect import SelfCorrecting, verify_corrected, vnnlib_constraints
from verispec.specs import SafeOrdering

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp2021" / "acasxu"

DOMAIN = Box(
    np.array([-0.328422877, -0.5, -0.5, -0.5, -0.5]),
    np.array([0.679857769, 0.5, 0.5, 0.5, 0.5]),
)
"""The ACAS Xu input domain, normalised as the VNN-LIB files state inputs."""

VIOLATED = [
    ("2_3", 2),
    ("2_9", 2),
    ("3_7", 2),
    ("4_6", 2),
    ("5_5", 2),
    ("1_7", 3),
    ("1_9", 3),
    ("1_7", 4),
    ("1_9", 4),
]
"""Instances the plain networks violate (docs/benchmarks.md: the exact solver's sat ones)."""


def onnx_path(bench: Path, net: str) -> Path:
    return bench / f"ACASXU_run2a_{net}_batch_2000.onnx"


def ordering_property(bench: Path, prop: int) -> SafeOrdering | str:
    """Property ``prop`` as a safe ordering over its box, or why it is not one."""
    try:
        rules = vnnlib_constraints(bench / f"prop_{prop}.vnnlib", (5,), 5)
    except SpecError:
        return "it bounds a score, it orders none (skipped)"
    if len(rules) != 1:
        return f"its region is a union of {len(rules)} boxes (skipped)"
    return rules[0]


def properties_of(bench: Path) -> dict[str, list[int]]:
    """The properties the benchmark's CSV pairs with each network ("2_3" -> [1, 2, 3, 4])."""
    out: dict[str, list[int]] = {}
    with (bench / "acasxu_instances.csv").open() as f:
        for onnx, vnnlib, _ in csv.reader(f):
            net = onnx.split("run2a_")[1].split("_batch")[0]
            out.setdefault(net, []).append(int(vnnlib.split("_")[1].split(".")[0]))
    return out


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def proofs(
    bench: Path, props: dict[int, SafeOrdering], pairs: dict[str, list[int]], timeout: float
) -> None:
    print(
        f"\n2. plain network: exact solver (milp); corrected network: verify_corrected (milp), "
        f"timeout {timeout:g} s each"
    )
    print(
        f"  {'net':<5} {'prop':<5} {'plain':<10} {'s':>7}   {'corrected':<10} {'s':>7}  constraints"
    )
    milp = solver_class("milp")(SolverConfig(timeout=timeout))
    for net, k in VIOLATED:
        network = load_onnx(onnx_path(bench, net))
        plain = milp.solve(network, props[k].as_property(), timeout)
        constraints = [p for p in pairs[net] if p in props]
        row = f"  {net:<5} {k:<5} {plain.verdict.value:<10} {plain.time_s:>7.2f}"
        if plain.verdict is not Verdict.FALSIFIED:
            print(row + "   (not violated: skipped)")
            continue
        layer = SelfCorrecting(network, [props[p] for p in constraints], top="min")
        fixed = verify_corrected(layer, props[k], "milp", timeout=timeout)
        print(f"{row}   {fixed.verdict.value:<10} {fixed.time_s:>7.2f}  {constraints}")


def sampling(
    bench: Path, props: dict[int, SafeOrdering], pairs: dict[str, list[int]], samples: int
) -> None:
    print(
        f"\n3. the layer on {samples} uniform samples per region "
        "(changed / abstained / changed although already safe)"
    )
    rng = np.random.default_rng(0)
    for net in sorted({n for n, _ in VIOLATED}):
        network = load_onnx(onnx_path(bench, net))
        constraints = [p for p in pairs[net] if p in props]
        layer = SelfCorrecting(network, [props[p] for p in constraints], top="min")
        regions = [("domain", DOMAIN)] + [(f"prop {p}", props[p].precondition) for p in constraints]
        parts = []
        for name, box in regions:
            xs = torch.from_numpy(rng.uniform(box.lo, box.hi, (samples, 5)))
            y = torch.from_numpy(network.forward64(xs.numpy()))
            got = layer.revise(xs, y)
            active = layer.active(xs, y)
            safe = _already_safe(layer, active, y)
            wrongly = int((safe & got.changed).sum())
            parts.append(f"{name}: {int(got.changed.sum())}/{int(got.abstained.sum())}/{wrongly}")
        print(f"  {net} {constraints}: " + ", ".join(parts))


def _already_safe(layer: SelfCorrecting, active: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(b,) whether y satisfies every active constraint (some disjunct strictly)."""
    ok = torch.ones(y.shape[0], dtype=torch.bool)
    for c, constraint in enumerate(layer.constraints):
        holds = torch.from_numpy(constraint.postcondition.holds(y.numpy()))
        ok &= ~active[:, c] | holds
    return ok


def overhead(
    bench: Path,
    props: dict[int, SafeOrdering],
    pairs: dict[str, list[int]],
    device: str,
    repeats: int,
) -> None:
    net = "2_3"
    network = load_onnx(onnx_path(bench, net))
    constraints = [props[p] for p in pairs[net] if p in props]
    plain = network.module(torch.float32, device)
    layer = SelfCorrecting(plain, constraints, input_shape=(5,), top="min").to(device)
    print(
        f"\n4. overhead on {net} (float32, {device}): corrected / plain forward, median of "
        f"{repeats} interleaved repeats"
    )
    rng = np.random.default_rng(1)
    for batch in (1, 500, 10_000):
        for name, box in (("domain", DOMAIN), ("prop 2 region", props[2].precondition)):
            x = torch.from_numpy(rng.uniform(box.lo, box.hi, (batch, 5))).float().to(device)
            calls = max(2, 500 // batch)

            def run(
                f: Callable[[torch.Tensor], object], x: torch.Tensor = x, calls: int = calls
            ) -> None:
                with torch.no_grad():
                    for _ in range(calls):
                        f(x)
                if device != "cpu":
                    torch.cuda.synchronize()

            run(plain), run(layer)  # warm-up
            a, b = [], []
            for _ in range(repeats):
                a.append(_timed(lambda: run(plain)) / calls)
                b.append(_timed(lambda: run(layer)) / calls)
            ratio = float(np.median(np.array(b) / np.array(a)))
            per = 1e6 / batch
            print(
                f"  batch {batch:>6} {name:<14} plain {np.median(a) * per:8.2f} us/instance, "
                f"corrected {np.median(b) * per:8.2f} us/instance, ratio {ratio:.2f}, "
                f"overhead {(np.median(b) - np.median(a)) * 1e3:.3f} ms/batch"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", type=Path, default=BENCH)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-proofs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    props: dict[int, SafeOrdering] = {}
    print("\n1. properties as safe-ordering constraints")
    for k in range(1, 11):
        p = ordering_property(args.bench, k)
        if isinstance(p, str):
            print(f"  prop {k}: {p}")
        else:
            props[k] = p
            print(f"  prop {k}: {len(p.postcondition.clauses)} disjunct(s)")
    pairs = properties_of(args.bench)
    if not args.skip_proofs:
        proofs(args.bench, props, pairs, args.timeout)
    sampling(args.bench, props, pairs, args.samples)
    overhead(args.bench, props, pairs, args.device, args.repeats)


if __name__ == "__main__":
    main()
