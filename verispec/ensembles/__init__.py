"""Ensembles of certified classifiers (``members``): the published cascade (unsound, kept to be
attacked and audited) and sound voting."""

from verispec.ensembles.casa import CasaConfig, CasaResult, cascade_attack
from verispec.ensembles.members import (
    Answer,
    Cascade,
    Ensemble,
    Member,
    MemberDecisions,
    Voting,
)

__all__ = [
    "Answer",
    "CasaConfig",
    "CasaResult",
    "Cascade",
    "Ensemble",
    "Member",
    "MemberDecisions",
    "Voting",
    "cascade_attack",
]
