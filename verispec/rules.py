"""Per-layer rule tables: the layer is the unit of extension.

Every algorithm that must understand every IR layer (torch forward, Lipschitz bound,
rounding-error constants, exact lowering, model-file serialisation, torch and ONNX import)
keeps one ``RuleTable`` keyed by IR layer type, next to the algorithm. A layer type without
a rule raises ``UnsupportedLayerError`` naming the algorithm and the layer: nothing defaults
to "exact", "1-Lipschitz" or "identity". ``tests/test_rules.py`` asserts that every table
covers every type in ``verispec.ir.LAYER_TYPES``.

Adding a layer means one class in ``verispec/ir.py`` and one ``@TABLE.register(NewLayer)``
rule per table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from verispec.errors import UnsupportedLayerError

R = TypeVar("R")


class RuleTable(Generic[R]):
    """Rules (any value, usually a function) of one algorithm, keyed by IR layer type."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._rules: dict[type, R] = {}

    def register(self, *layer_types: type) -> Callable[[R], R]:
        """Decorator: the decorated rule handles each of ``layer_types`` (each exactly once)."""

        def add(rule: R) -> R:
            for t in layer_types:
                if t in self._rules:
                    raise ValueError(f"{self.algorithm}: {t.__name__} has two rules")
                self._rules[t] = rule
            return rule

        return add

    def rule(self, layer: object, where: str = "") -> R:
        """The rule for ``layer``'s exact type; raises when there is none (never a default)."""
        return self.for_type(type(layer), where)

    def for_type(self, layer_type: type, where: str = "") -> R:
        """The rule for ``layer_type`` (exact, no subclass lookup); raises when there is none."""
        found = self._rules.get(layer_type)
        if found is None:
            kind = getattr(layer_type, "kind", layer_type.__name__)
            at = f"layer {where} " if where else "layer "
            raise UnsupportedLayerError(
                f"{at}({kind}): {self.algorithm} has no rule for {layer_type.__name__}; "
                f"it knows {', '.join(sorted(t.__name__ for t in self._rules))}"
            )
        return found

    def covers(self) -> frozenset[type]:
        """The layer types this table has rules for."""
        return frozenset(self._rules)

    def missing(self, layer_types: Iterable[type]) -> list[str]:
        """Names of the types in ``layer_types`` without a rule (sorted)."""
        return sorted(t.__name__ for t in layer_types if t not in self._rules)
