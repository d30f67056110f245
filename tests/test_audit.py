"""The audit: engine claims against an exact solver; broken engines must be caught."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import torch
from click.testing import CliRunner
from torch import nn
from verispec.solvers.base import SolverConfig
from verispec.solvers.milp import MilpSolver

from tests.soundness import FalseWitnessEngine, ScaledKEngine, soundness_problems
from verispec.audit import ViolationKind, audit
from verispec.cli import main
from verispec.engines.base import ENGINES
from verispec.engines.lipschitz import LipschitzEngine
from verispec.modelfile import save_model
from verispec.network import Dense, Network
from verispec.regions import Box, FloatArray, Norm
from verispec.results import CheckResult, Verdict
from verispec.specs import LocalRobustness, Spec


def _linear_net() -> Network:
    """Two classes, linear: the Lipschitz constant of y0 - y1 is exact, ||w0 - w1||."""
    lin = nn.Linear(2, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, 0.5]]))
        lin.bias.copy_(torch.tensor([0.0, 0.0]))
    return Network.from_torch(lin, (2,))


def _near_radius_case(factor: float = 1.02):
    """Points with eps = factor x their exact robust radius (inside the unit domain)."""
    net = _linear_net()
    xs = np.array([[0.5, 0.5], [0.45, 0.55], [0.6, 0.4]])
    layer = net.layers[0]
    assert isinstance(layer, Dense)
    w = layer.weight
    ys = net.forward64(xs)
    radii = np.abs(ys[:, 0] - ys[:, 1]) / np.linalg.norm(w[0] - w[1])
    eps = float(radii.min()) * factor
    return net, xs[radii * factor <= eps * 1.0000001][:1], LocalRobustness(eps, Norm.L2)


def test_sound_engine_has_no_violation_and_full_tightness_on_a_linear_model():
    net, xs, spec = _near_radius_case(0.98)
    solver = MilpSolver(SolverConfig(timeout=30))
    report = audit(LipschitzEngine(), solver, net, spec, xs, np.array([0]))
    assert report.sound and report.violations == ()
    assert report.engine_results[0].verdict is Verdict.CERTIFIED
    assert report.solver_results[0].verdict is Verdict.CERTIFIED
    assert report.tightness == 1.0
    assert report.summary()["solver_certified"] == 1


def test_k_underestimated_by_5_percent_is_caught_by_audit_and_suite():
    net, xs, spec = _near_radius_case(1.02)
    assert LipschitzEngine().check(net, spec, xs)[0].verdict is not Verdict.CERTIFIED
    broken = ScaledKEngine()
    assert broken.check(net, spec, xs)[0].verdict is Verdict.CERTIFIED
    report = audit(broken, MilpSolver(SolverConfig(timeout=30)), net, spec, xs)
    assert len(report.violations) == 1
    v = report.violations[0]
    assert v.kind is ViolationKind.UNSOUND_CERTIFICATE
    assert v.point_margin > 0 >= v.witness_margin
    assert np.linalg.norm(v.witness - xs[0]) <= spec.eps + 1e-9
    assert soundness_problems(broken, net, spec, xs, None) != []


def test_bad_witness_is_a_violation():
    net = _linear_net()
    xs = np.array([[0.5, 0.5]])
    report = audit(FalseWitnessEngine(), MilpSolver(), net, LocalRobustness(0.01, Norm.L2), xs)
    assert [v.kind for v in report.violations] == [ViolationKind.BAD_WITNESS]


def _spec_file(tmp_path, eps: float) -> str:
    net, xs, _ = _near_radius_case(1.0)
    save_model(net, tmp_path / "m.pt")
    np.savez(tmp_path / "d.npz", x=xs, y=np.zeros(len(xs), dtype=np.int64))
    path = tmp_path / "s.toml"
    path.write_text(
        'model = "m.pt"\n[data]\nsource = "npz:d.npz"\nsplit = "all"\n'
        f'[[property]]\nname = "p"\nkind = "local_robustness"\neps = {eps!r}\nnorm = "l2"\n'
    )
    return str(path)


def test_cli_audit_exit_status_gates_on_violations(tmp_path, monkeypatch):
    _, _, spec = _near_radius_case(1.02)
    path = _spec_file(tmp_path, spec.eps)
    ok = CliRunner().invoke(
        main, ["audit", path, "--engine", "lipschitz", "--json", str(tmp_path / "a.json")]
    )
    assert ok.exit_code == 0, ok.output
    assert "0 soundness violation(s)" in ok.output
    payload = json.loads((tmp_path / "a.json").read_text())
    assert payload["audits"][0]["summary"]["violations"] == 0
    monkeypatch.setitem(ENGINES, "scaled-k", ScaledKEngine)
    bad = CliRunner().invoke(main, ["audit", path, "--engine", "scaled-k", "--solver", "smt"])
    assert bad.exit_code == 1, bad.output
    assert "unsound_certificate" in bad.output and "1 soundness violation(s)" in bad.output


def test_audit_needs_points_for_point_specs():
    import pytest

    from verispec.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        audit(LipschitzEngine(), MilpSolver(), _linear_net(), LocalRobustness(0.1, Norm.L2))


class _CertifyAll:
    """Certifies every point: sound exactly where the property holds."""

    name: ClassVar[str] = "certify-all"

    def supports(self, network: Network, spec: Spec) -> None:
        """Everything."""

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> list[CheckResult]:
        return [CheckResult(Verdict.CERTIFIED, self.name) for _ in xs]


class _WitnessBelowZero:
    """Falsifies every point with x - 0.05 (every coordinate): a counterexample of the bare
    ball in ``_corner_case``, but outside the unit domain."""

    name: ClassVar[str] = "witness-below-zero"

    def supports(self, network: Network, spec: Spec) -> None:
        """Everything."""

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> list[CheckResult]:
        return [CheckResult(Verdict.FALSIFIED, self.name, counterexample=x - 0.05) for x in xs]


def _corner_case() -> tuple[Network, FloatArray, LocalRobustness, Box]:
    """f(x) = (x0 + x1, -0.01) at x = (0.02, 0.02), l_inf eps 0.05, domain [0, 1]^2.

    Over the bare ball min (x0 + x1) = -0.06 < -0.01: the property fails (at x - 0.05, outside
    the domain). Over ball & domain min (x0 + x1) = 0 > -0.01: it holds, margin 0.01.
    """
    lin = nn.Linear(2, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        lin.bias.copy_(torch.tensor([0.0, -0.01]))
    net = Network.from_torch(lin, (2,))
    xs = np.array([[0.02, 0.02]])
    return net, xs, LocalRobustness(0.05, Norm.LINF), Box.uniform(0.0, 1.0, (2,))


def test_domain_decides_the_audit_of_a_certificate():
    """The same certificate is sound inside the domain and unsound without it: the audit must
    hand the domain to the exact solver."""
    net, xs, spec, domain = _corner_case()
    inside = audit(_CertifyAll(), MilpSolver(SolverConfig(timeout=30)), net, spec, xs, None, domain)
    assert inside.solver_results[0].verdict is Verdict.CERTIFIED
    assert inside.violations == ()
    bare = audit(_CertifyAll(), MilpSolver(SolverConfig(timeout=30)), net, spec, xs)
    assert bare.solver_results[0].verdict is Verdict.FALSIFIED
    assert [v.kind for v in bare.violations] == [ViolationKind.UNSOUND_CERTIFICATE]
    witness = bare.violations[0].witness
    assert not domain.contains(witness)
    assert bare.violations[0].witness_margin <= 0


def test_witness_outside_the_domain_is_a_bad_witness():
    """x - 0.05 refutes the bare ball but lies outside the domain: only the bare audit
    accepts it."""
    net, xs, spec, domain = _corner_case()
    engine = _WitnessBelowZero()
    bare = audit(engine, MilpSolver(SolverConfig(timeout=30)), net, spec, xs)
    assert bare.violations == ()
    inside = audit(engine, MilpSolver(SolverConfig(timeout=30)), net, spec, xs, None, domain)
    assert [v.kind for v in inside.violations] == [ViolationKind.BAD_WITNESS]
    assert inside.violations[0].witness_margin < 0  # the logits do violate: only the domain
