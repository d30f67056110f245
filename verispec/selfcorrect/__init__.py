"""Self-correcting networks: the run-time layer (``layer``) and the proof that a corrected
network satisfies a safe ordering (``verify``)."""

from verispec.selfcorrect.layer import Correction, SelfCorrecting, ordering_disjuncts
from verispec.selfcorrect.verify import (
    sampled_corrections,
    verify_corrected,
    vnnlib_constraints,
    weak_orderings,
)

__all__ = [
    "Correction",
    "SelfCorrecting",
    "ordering_disjuncts",
    "sampled_corrections",
    "verify_corrected",
    "vnnlib_constraints",
    "weak_orderings",
]
