"""The exceptions verispec raises for bad input. Each message says what is wrong and what to do."""

from __future__ import annotations


class VerispecError(Exception):
    """Base class: an error caused by the user's input, reported without a traceback by the CLI."""


class SpecError(VerispecError, ValueError):
    """An invalid specification, region or property."""


class SpecFileError(VerispecError):
    """A malformed TOML spec file; the message names the file, the table and the key."""


class UnsupportedLayerError(VerispecError):
    """A network layer verispec cannot represent or bound."""


class UnsupportedError(VerispecError):
    """An engine was asked for a specification, region or layer it does not support."""


class ModelFileError(VerispecError):
    """A model file that is missing, corrupt, or not a verispec model."""


class DataError(VerispecError):
    """A data source that cannot be read or does not fit the model."""


class ExtraNotInstalledError(VerispecError):
    """An optional dependency is missing; the message names the extra to install."""
