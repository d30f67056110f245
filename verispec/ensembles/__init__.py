"""Ensembles of certified classifiers (``members``): the published cascade (unsound, kept to be
attacked and audited) and sound voting."""

from verispec.ensembles.members import (
    Answer,
    Cascade,
    Ensemble,
    Member,
    MemberDecisions,
    Voting,
)

__all__ = ["Answer", "Cascade", "Ensemble", "Member", "MemberDecisions", "Voting"]
