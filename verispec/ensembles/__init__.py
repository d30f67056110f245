"""Ensembles of certified classifiers (``members``): the published cascade (unsound, kept to be
attacked and audited), sound voting, and selective ensembles (``selective``): a significant
plurality or an abstention, with a certified variant."""

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
from verispec.ensembles.selective import SelectiveEnsemble, binomial_pvalue, pvalue_in

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
    "SelectiveEnsemble",
    "Voting",
    "audit_ensemble",
    "binomial_pvalue",
    "cascade_attack",
    "pvalue_in",
]
