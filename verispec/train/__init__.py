"""Certifiably robust training (docs/training.md): layers, losses, schedules, architectures
and the training loop. Models trained here are verified with the sound engine, never trusted."""

from verispec.train.architectures import Arch, ArchConfig, build
from verispec.train.loop import EpochLog, LossKind, TrainConfig, evaluate, train
from verispec.train.schedules import EpsSchedule, LambdaSchedule, LrSchedule, Ramp

__all__ = [
    "Arch",
    "ArchConfig",
    "EpochLog",
    "EpsSchedule",
    "LambdaSchedule",
    "LossKind",
    "LrSchedule",
    "Ramp",
    "TrainConfig",
    "build",
    "evaluate",
    "train",
]
