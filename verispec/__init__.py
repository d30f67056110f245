"""verispec: certify properties of trained neural networks.

Library API::

    import verispec as vs
    net = vs.load_model("specs/models/digits_mlp.pt")[0]
    data = vs.load_data("sklearn:digits", vs.Split.TEST)
    report = vs.check(net, vs.LocalRobustness(0.3, vs.Norm.L2), data, engine="lipschitz")
    print(report.vra)
"""

from verispec.api import check
from verispec.data import Dataset, Split, load_data
from verispec.errors import (
    DataError,
    ModelFileError,
    SpecError,
    SpecFileError,
    UnsupportedError,
    UnsupportedLayerError,
    VerispecError,
)
from verispec.modelfile import load_model, save_model
from verispec.network import Network
from verispec.properties import Clause, Goal, Predicate, Property
from verispec.regions import Ball, Box, Norm, Polytope
from verispec.results import CheckResult, GuaranteeKind, Report, Verdict
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering

__all__ = [
    "Affinity",
    "Ball",
    "Box",
    "CheckResult",
    "Clause",
    "DataError",
    "Dataset",
    "Goal",
    "GuaranteeKind",
    "LocalRobustness",
    "ModelFileError",
    "Network",
    "Norm",
    "Polytope",
    "Predicate",
    "Property",
    "RelaxedTopK",
    "Report",
    "SafeOrdering",
    "SpecError",
    "SpecFileError",
    "Split",
    "UnsupportedError",
    "UnsupportedLayerError",
    "Verdict",
    "VerispecError",
    "check",
    "load_data",
    "load_model",
    "save_model",
]
