"""The exceptions verispec raises for bad input. Each message says what is wrong and what to do.

Every error a user can cause (a file, a key, an option, an argument) is one of these classes;
the command line prints its message and exits with status 2, without a traceback.
"""

from __future__ import annotations


class VerispecError(Exception):
    """Base class: an error caused by the user's input, reported without a traceback by the CLI."""


class SpecError(VerispecError, ValueError):
    """An invalid specification, region or property."""


class SpecFileError(VerispecError):
    """A malformed TOML spec file or VNN-LIB file; the message names the file (a spec file: the
    table and the key; a VNN-LIB file: the line)."""


class VnnlibTimeout(VerispecError):
    """Reading a VNN-LIB file passed its deadline (``parse_vnnlib(..., deadline=...)``); an
    instance whose property cannot be read in its time limit answers ``timeout``."""


class UnsupportedLayerError(VerispecError):
    """A network layer verispec cannot represent or bound (also: weights that are NaN or
    infinite); the message names the layer."""


class UnsupportedError(VerispecError):
    """An engine was asked for a specification, region or layer it does not support."""


class DeviceError(UnsupportedError):
    """A torch device that is not a valid choice (``cpu``, ``cuda``, ``cuda:N``, ``mps``) or is
    not available on this machine."""


class ConfigError(VerispecError, ValueError):
    """An engine or solver option with a wrong type or value (NaN, infinite, out of range);
    ``option`` names it."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class ModelFileError(VerispecError):
    """A model file that is missing, corrupt, or not a verispec model (a PyTorch ``state_dict``
    or pickled module: the message gives the two lines that convert it)."""


class DataError(VerispecError):
    """A data source that cannot be read, holds no points, has labels that are not class
    indices, or does not fit the model."""


class ExtraNotInstalledError(VerispecError):
    """An optional dependency is missing; the message names the extra to install."""
