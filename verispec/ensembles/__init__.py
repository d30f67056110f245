"""Ensembles of certified classifiers (``members``): the published cascade (unsound, kept to be
attacked and audited) and sound voting."""

from verispec.ensembles.casa import CasaConfig, CasaResult, cascade_attack
from verispec.ensembles.exact import (
    AuditStatus,
    EnsembleAudit,
    EnsemblePointAudit,
    audit_ensemble,
)
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
    "AuditStatus",
    "CasaConfig",
    "CasaResult",
    "Cascade",
    "Ensemble",
    "EnsembleAudit",
    "EnsemblePointAudit",
    "Member",
    "MemberDecisions",
    "Voting",
    "audit_ensemble",
    "cascade_attack",
]
