"""Benchmark of the exact solvers (issue 4, deliverable 8): VNN-COMP 2021 instances side by side
with Marabou, and MILP vs z3 on small random ReLU networks.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/exact.py [--test] [--acasxu] [--mnistfc]
        [--random] [--no-marabou] [--solver milp|smt] [--out /tmp/exact_bench.json]

With no section flag every section runs. Sections:

a. ``--test``: the VNN-COMP ``test`` instances (``test_sat`` is sat, ``test_unsat`` is unsat).
b. ``--acasxu``: the fixed list ``ACASXU`` below (prop_1..prop_4 on ten networks, and the
   single-network properties 5..10), timeout 116 s as in ``acasxu_instances.csv``.
c. ``--mnistfc``: the 256x2 network at eps 0.03 (15 images), timeout from the csv.
d. ``--random``: MILP vs z3 with the solvers' input splitting and falsification disabled, on
   random d-w-w-3 ReLU networks (d in 2..4) and l_inf local robustness.

Per VNN-COMP instance: our answer (sat / unsat / timeout), the time, and for every sat the
witness re-checked in onnxruntime (the input in the file's box, the onnxruntime output in the
file's unsafe set); Marabou (``maraboupy``, bench-only, run in a subprocess with the same
timeout and one thread) with its answer and time, its sat witnesses checked the same way. A
VNN-LIB file with several input boxes is sat when one box is, unsat when all are; the boxes
share the instance's timeout. Everything is written to the JSON file given by ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH = Path(os.environ.get("VERISPEC_BENCHMARKS", ROOT.parent / "shared" / "benchmarks"))
VNNCOMP = BENCH / "vnncomp2021"

ACAS_NETS = ["1_1", "1_7", "1_9", "2_3", "2_9", "3_3", "3_7", "4_2", "4_6", "5_5"]
"""Networks of the fixed ACAS Xu list (every one is run on prop_1..prop_4)."""

ACASXU: list[tuple[str, str]] = [
    (f"ACASXU_run2a_{n}_batch_2000.onnx", f"prop_{p}.vnnlib")
    for p in (1, 2, 3, 4)
    for n in ACAS_NETS
] + [
    ("ACASXU_run2a_1_1_batch_2000.onnx", "prop_5.vnnlib"),
    ("ACASXU_run2a_1_1_batch_2000.onnx", "prop_6.vnnlib"),
    ("ACASXU_run2a_1_9_batch_2000.onnx", "prop_7.vnnlib"),
    ("ACASXU_run2a_2_9_batch_2000.onnx", "prop_8.vnnlib"),
    ("ACASXU_run2a_3_3_batch_2000.onnx", "prop_9.vnnlib"),
    ("ACASXU_run2a_4_5_batch_2000.onnx", "prop_10.vnnlib"),
]
"""The fixed ACAS Xu instances (network, property); all of them are in acasxu_instances.csv."""

ACAS_TIMEOUT = 116.0


# -- VNN-COMP instances ------------------------------------------------------------------------


def _ort_session(onnx_path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def ort_check(onnx_path: Path, spec: Any, x: np.ndarray) -> dict[str, Any]:
    """Re-check a witness in onnxruntime: the input (cast to the model's float type, rounded
    into the box) lies in one of the file's boxes and the onnxruntime output lies in the
    file's (non-strict) unsafe set."""
    sess = _ort_session(onnx_path)
    meta = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in meta.shape]
    dtype = np.float64 if "double" in meta.type else np.float32
    flat = np.asarray(x, dtype=np.float64).ravel()
    xin = flat.astype(dtype)
    in_box = False
    for box in spec.boxes:
        lo, hi = box.lo.ravel(), box.hi.ravel()
        if np.all(flat >= lo - 1e-12) and np.all(flat <= hi + 1e-12):
            # Round the cast value into the box (float32 rounding may step out by an ulp).
            xin = np.where(xin.astype(np.float64) < lo, np.nextafter(xin, np.inf), xin)
            xin = np.where(xin.astype(np.float64) > hi, np.nextafter(xin, -np.inf), xin)
            xin = xin.astype(dtype)
            in_box = bool(np.all(xin >= lo) and np.all(xin <= hi))
            break
    y = np.asarray(sess.run(None, {meta.name: xin.reshape(shape)})[0], dtype=np.float64).ravel()
    margins = [float(np.min(c.C @ y + c.d)) for c in spec.unsafe.clauses]
    unsafe = max(margins) >= 0
    return {"in_box": in_box, "unsafe": unsafe, "ok": in_box and unsafe, "margin": max(margins)}


def run_ours(onnx_path: Path, vnnlib_path: Path, timeout: float, solver: str) -> dict[str, Any]:
    from verispec.solvers.base import solver_class

    from verispec.onnx import load_onnx
    from verispec.results import Verdict
    from verispec.vnnlib import parse_vnnlib, safe_property

    start = time.perf_counter()
    net = load_onnx(onnx_path)
    spec = parse_vnnlib(vnnlib_path, net.input_size, net.num_classes)
    engine = solver_class(solver)()
    answer, details, witness = "unsat", [], None
    for box in spec.boxes:
        left = timeout - (time.perf_counter() - start)
        if left <= 0:
            answer = "timeout"
            break
        res = engine.solve(net, safe_property(spec, box), left)
        details.append(f"{res.verdict.value}: {res.detail}")
        if res.verdict is Verdict.FALSIFIED:
            answer, witness = "sat", res.counterexample
            break
        if res.verdict is not Verdict.CERTIFIED:
            answer = "timeout" if res.verdict is Verdict.TIMEOUT else "unknown"
    elapsed = time.perf_counter() - start
    if answer == "unsat" and elapsed > timeout:
        answer = "timeout"  # finished, but past the limit: not counted as solved
    out: dict[str, Any] = {"answer": answer, "time": elapsed, "detail": " | ".join(details)}
    if witness is not None:
        out["witness"] = np.asarray(witness, dtype=np.float64).ravel().tolist()
        out["ort"] = ort_check(onnx_path, spec, witness)
    return out


MARABOU_WORKER = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from maraboupy import Marabou
net_path, prop_path, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
net = Marabou.read_onnx(net_path)
opts = Marabou.createOptions(verbosity=0, timeoutInSeconds=timeout, numWorkers=1)
t = time.perf_counter()
code, vals, stats = net.solve(options=opts, propertyFilename=prop_path, verbose=False)
t = time.perf_counter() - t
x = [vals[int(v)] for v in net.inputVars[0].ravel()] if code == "sat" else None
print("RESULT " + json.dumps({"code": code, "time": t, "x": x}))
"""


def have_marabou() -> bool:
    return importlib.util.find_spec("maraboupy") is not None


def run_marabou(onnx_path: Path, vnnlib_path: Path, timeout: float) -> dict[str, Any]:
    """Marabou on the ONNX network and the VNN-LIB file, in a subprocess (one thread)."""
    from verispec.onnx import load_onnx
    from verispec.vnnlib import parse_vnnlib

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, "-c", MARABOU_WORKER, str(onnx_path), str(vnnlib_path)]
    cmd.append(str(max(1, round(timeout))))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, env=env)
    except subprocess.TimeoutExpired:
        return {"answer": "timeout", "time": time.perf_counter() - start, "detail": "killed"}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return {"answer": "error", "time": wall, "detail": f"rc {proc.returncode}: {tail[0]}"}
    res = json.loads(lines[-1][len("RESULT ") :])
    code = res["code"]
    answer = {"sat": "sat", "unsat": "unsat", "TIMEOUT": "timeout"}.get(code, code.lower())
    if answer == "unsat" and res["time"] > timeout:
        answer = "timeout"
    out: dict[str, Any] = {"answer": answer, "time": res["time"], "wall": wall}
    if res["x"] is not None:
        net = load_onnx(onnx_path)
        spec = parse_vnnlib(vnnlib_path, net.input_size, net.num_classes)
        out["ort"] = ort_check(onnx_path, spec, np.asarray(res["x"]))
    return out


def run_instances(
    name: str,
    folder: Path,
    instances: list[tuple[str, str, float]],
    args: argparse.Namespace,
    expected: dict[tuple[str, str], str] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    print(f"\n== {name} ({len(instances)} instances, solver {args.solver}) ==", flush=True)
    print(_row_header(), flush=True)
    for net_file, prop_file, timeout in instances:
        row: dict[str, Any] = {"network": net_file, "property": prop_file, "timeout": timeout}
        if expected is not None:
            row["expected"] = expected.get((net_file, prop_file))
        row["ours"] = run_ours(folder / net_file, folder / prop_file, timeout, args.solver)
        reused = args.reuse.get((net_file, prop_file, timeout))
        if reused is not None:
            row["marabou"] = dict(reused, reused=True)
        elif args.marabou:
            row["marabou"] = run_marabou(folder / net_file, folder / prop_file, timeout)
        rows.append(row)
        print(_row_text(row), flush=True)
    _summary(rows, args)
    return rows


def _short(net_file: str) -> str:
    return (
        net_file.replace("ACASXU_run2a_", "").replace("_batch_2000.onnx", "").replace(".onnx", "")
    )


def _row_header() -> str:
    return (
        f"{'network':<16} {'property':<20} {'ours':>8} {'time':>8} {'witness':>9}  "
        f"{'marabou':>8} {'time':>8} {'agree':>6}"
    )


def _agree(row: dict[str, Any]) -> str:
    a = row["ours"]["answer"]
    b = row.get("marabou", {}).get("answer")
    if b is None or a not in ("sat", "unsat") or b not in ("sat", "unsat"):
        return "-"
    return "yes" if a == b else "NO"


def _witness(res: dict[str, Any]) -> str:
    if "ort" not in res:
        return "-"
    return "ort ok" if res["ort"]["ok"] else "ORT FAIL"


def _row_text(row: dict[str, Any]) -> str:
    o = row["ours"]
    m = row.get("marabou", {"answer": "-", "time": float("nan")})
    return (
        f"{_short(row['network']):<16} {row['property']:<20} {o['answer']:>8} {o['time']:8.2f} "
        f"{_witness(o):>9}  {m['answer']:>8} {m['time']:8.2f} {_agree(row):>6}"
    )


def _summary(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    n = len(rows)
    for who in ("ours", "marabou"):
        res = [r[who] for r in rows if who in r]
        if not res:
            continue
        solved = [r for r in res if r["answer"] in ("sat", "unsat")]
        sat = sum(r["answer"] == "sat" for r in res)
        total = sum(r["time"] for r in solved)
        bad = sum(1 for r in res if "ort" in r and not r["ort"]["ok"])
        print(
            f"{who}: solved {len(solved)}/{n} ({100 * len(solved) / max(n, 1):.0f}%): "
            f"{sat} sat, {len(solved) - sat} unsat; time on solved {total:.1f} s; "
            f"witnesses failing onnxruntime: {bad}"
        )
    both = [r for r in rows if _agree(r) != "-"]
    disagree = [r for r in both if _agree(r) == "NO"]
    print(f"both answered: {len(both)}, disagreements: {len(disagree)}")
    exp = [r for r in rows if r.get("expected")]
    if exp:
        wrong = [r for r in exp if r["ours"]["answer"] != r["expected"]]
        print(f"expected answers matched: {len(exp) - len(wrong)}/{len(exp)}")


def _csv(folder: Path, name: str) -> list[tuple[str, str, float]]:
    with open(folder / name) as f:
        return [(r[0].strip(), r[1].strip(), float(r[2])) for r in csv.reader(f) if r]


def section_test(args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = VNNCOMP / "test"
    inst = [
        ("test_sat.onnx", "test_prop.vnnlib", 60.0),
        ("test_unsat.onnx", "test_prop.vnnlib", 60.0),
    ]
    expected = {(a, b): ans for (a, b, _), ans in zip(inst, ["sat", "unsat"], strict=True)}
    return run_instances("VNN-COMP test", folder, inst, args, expected)


def section_acasxu(args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = VNNCOMP / "acasxu"
    listed = {(a, b): t for a, b, t in _csv(folder, "acasxu_instances.csv")}
    inst = []
    for net_file, prop_file in ACASXU:
        if (net_file, prop_file) not in listed:
            raise SystemExit(f"{net_file} {prop_file} is not in acasxu_instances.csv")
        inst.append((net_file, prop_file, min(listed[net_file, prop_file], args.timeout or 1e9)))
    if args.limit:
        inst = inst[: args.limit]
    return run_instances("ACAS Xu", folder, inst, args)


def section_acasxu_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every instance of acasxu_instances.csv (186), at the csv's timeout (116 s)."""
    folder = VNNCOMP / "acasxu"
    inst = [(a, b, min(t, args.timeout or 1e9)) for a, b, t in _csv(folder, "acasxu_instances.csv")]
    if args.limit:
        inst = inst[: args.limit]
    return run_instances("ACAS Xu, all 186 instances", folder, inst, args)


def section_mnistfc(args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = VNNCOMP / "mnistfc"
    inst = [
        (a, b, min(t, args.timeout or 1e9))
        for a, b, t in _csv(folder, "mnistfc_instances.csv")
        if a == "mnist-net_256x2.onnx" and b.endswith("_0.03.vnnlib")
    ]
    if args.limit:
        inst = inst[: args.limit]
    return run_instances("mnistfc 256x2, eps 0.03", folder, inst, args)


# -- MILP vs z3 on random networks ---------------------------------------------------------------


def section_random(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    from torch import nn
    from verispec.solvers.base import SolverConfig
    from verispec.solvers.milp import MilpSolver
    from verispec.solvers.smt import SmtSolver

    from verispec.network import Network
    from verispec.regions import Norm
    from verispec.specs import LocalRobustness

    cfg = SolverConfig(split=False, falsify=False)
    milp, smt = MilpSolver(cfg), SmtSolver(cfg)
    rows = []
    print(f"\n== MILP vs z3: random d-w-w-3 ReLU nets, l_inf, timeout {args.random_timeout} s ==")
    print(
        f"{'w':>3} {'seed':>4} {'d':>2} {'eps':>6} {'milp':>10} {'time':>7} {'z3':>10} {'time':>7}"
    )
    for width in args.widths:
        for seed in range(args.seeds):
            torch.manual_seed(1000 * width + seed)
            rng = np.random.default_rng(1000 * width + seed)
            d = 2 + seed % 3
            module = nn.Sequential(
                nn.Linear(d, width),
                nn.ReLU(),
                nn.Linear(width, width),
                nn.ReLU(),
                nn.Linear(width, 3),
            )
            net = Network.from_torch(module, (d,))
            x = rng.uniform(-1, 1, d)
            eps = float(rng.uniform(*args.eps_range))
            goal = LocalRobustness(eps, Norm.LINF).at(x, net.forward64(x[None])[0])
            r1 = milp.solve_goal(net, goal, args.random_timeout)
            r2 = smt.solve_goal(net, goal, args.random_timeout)
            row = {
                "width": width,
                "hidden": 2 * width,
                "seed": seed,
                "d": d,
                "eps": eps,
                "milp": {"answer": r1.verdict.value, "time": r1.time_s, "detail": r1.detail},
                "by_bounds": "proved by the bounds" in r1.detail,
                "z3": {"answer": r2.verdict.value, "time": r2.time_s, "detail": r2.detail},
            }
            rows.append(row)
            print(
                f"{width:>3} {seed:>4} {d:>2} {eps:6.3f} {r1.verdict.value:>10} {r1.time_s:7.3f} "
                f"{r2.verdict.value:>10} {r2.time_s:7.3f}",
                flush=True,
            )
    print(
        f"\n{'w':>3} {'hidden':>6} {'n':>3} {'agree':>5} {'milp s':>8} {'z3 s':>8} {'ratio':>7} "
        f"{'median':>7} {'z3 t/o':>6}"
    )
    for width in args.widths:
        rs = [r for r in rows if r["width"] == width]
        decided = {"certified", "falsified"}
        both = [r for r in rs if r["milp"]["answer"] in decided and r["z3"]["answer"] in decided]
        agree = sum(r["milp"]["answer"] == r["z3"]["answer"] for r in both)
        tm = sum(r["milp"]["time"] for r in rs)
        tz = sum(r["z3"]["time"] for r in rs)  # z3 timeouts count at the timeout: a lower bound
        ratios = [r["z3"]["time"] / max(r["milp"]["time"], 1e-6) for r in rs]
        touts = sum(r["z3"]["answer"] == "timeout" for r in rs)
        print(
            f"{width:>3} {2 * width:>6} {len(rs):>3} {agree:>2}/{len(both):<2} {tm:8.2f} {tz:8.2f} "
            f"{tz / max(tm, 1e-9):7.1f} {float(np.median(ratios)):7.1f} {touts:>6}"
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--test", action="store_true", help="VNN-COMP test instances")
    p.add_argument("--acasxu", action="store_true", help="the fixed ACAS Xu list")
    p.add_argument(
        "--acasxu-all", action="store_true", help="all 186 instances of acasxu_instances.csv"
    )
    p.add_argument("--mnistfc", action="store_true", help="mnistfc 256x2 at eps 0.03")
    p.add_argument("--random", action="store_true", help="MILP vs z3 on random ReLU nets")
    p.add_argument("--solver", default="milp", choices=["milp", "smt"])
    p.add_argument("--no-marabou", dest="marabou", action="store_false", help="skip Marabou")
    p.add_argument("--timeout", type=float, default=None, help="cap the csv timeouts (s)")
    p.add_argument("--limit", type=int, default=0, help="only the first N instances per section")
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8, 12, 16])
    p.add_argument("--seeds", type=int, default=8, help="random nets per width")
    p.add_argument("--random-timeout", type=float, default=30.0)
    p.add_argument(
        "--eps-range",
        type=float,
        nargs=2,
        default=[0.3, 1.0],
        help="l_inf radii of the random instances (large enough that the back-ends must search)",
    )
    p.add_argument("--out", default="/tmp/exact_bench.json")
    p.add_argument(
        "--marabou-from",
        nargs="*",
        default=[],
        help="reuse the Marabou results (same instance and timeout) of earlier --out files",
    )
    args = p.parse_args()
    args.reuse = {}
    for path in args.marabou_from:
        for rows in json.loads(Path(path).read_text()).values():
            for r in rows if isinstance(rows, list) else []:
                if "marabou" in r and "property" in r:
                    args.reuse[r["network"], r["property"], r["timeout"]] = r["marabou"]
    if args.marabou and not have_marabou():
        print("maraboupy is not installed: Marabou columns skipped (pip install maraboupy)")
        args.marabou = False
    sections = {"test": section_test, "acasxu": section_acasxu, "mnistfc": section_mnistfc}
    sections["acasxu_all"] = section_acasxu_all
    sections["random"] = section_random
    chosen = [s for s in sections if getattr(args, s)] or list(sections)
    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "reuse"}}
    for s in chosen:
        results[s] = sections[s](args)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults written to {args.out}")


if __name__ == "__main__":
    main()
