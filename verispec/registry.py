"""Typed registries: name -> class, filled by a decorator, with the names the CLI offers.

    ENGINES: Registry[EngineBase] = Registry("engine", loader=_load_builtin_engines)

    @ENGINES.register("lipschitz")
    class LipschitzEngine(EngineBase): ...

    ENGINES.lookup("lipschitz")  # the class; an unknown name raises UnsupportedError
    ENGINES.names()              # ("lipschitz", ...): sorted, for --help and error messages

A registry is also a mapping (``dict(reg)``, ``name in reg``, ``reg[name]`` raising KeyError,
``del reg[name]`` for tests); adding a name already taken raises ValueError, however it is
added. The optional ``loader`` imports the modules that register
the built-in classes: it runs on the first lookup or listing, never at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

from verispec.errors import UnsupportedError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(MutableMapping[str, type[T]], Generic[T]):
    """Classes of one kind (engines, solvers) by name; ``kind`` names them in messages."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._loader = loader
        self._loaded = loader is None
        self._classes: dict[str, type[T]] = {}

    def _load(self) -> None:
        if not self._loaded and self._loader is not None:
            self._loaded = True  # set first: the loaded modules register into this registry
            try:
                self._loader()
            except BaseException:
                self._loaded = False
                raise

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator adding the class under ``name`` (a name already taken raises)."""

        def add(cls: C) -> C:
            self[name] = cls
            return cls

        return add

    def lookup(self, name: str) -> type[T]:
        """The class registered as ``name``; unknown names raise UnsupportedError naming the
        known ones."""
        self._load()
        if name not in self._classes:
            raise UnsupportedError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            )
        return self._classes[name]

    def names(self) -> tuple[str, ...]:
        """Every registered name (built-ins loaded first), sorted."""
        self._load()
        return tuple(sorted(self._classes))

    # -- the mapping ------------------------------------------------------------------------
    def __getitem__(self, name: str) -> type[T]:
        self._load()
        return self._classes[name]

    def __setitem__(self, name: str, cls: type[T]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name is a non-empty string, got {name!r}")
        if name in self._classes:
            raise ValueError(
                f"{self.kind} {name!r} registered twice ({self._classes[name].__qualname__} "
                f"and {cls.__qualname__})"
            )
        self._classes[name] = cls

    def __delitem__(self, name: str) -> None:
        del self._classes[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._classes))

    def __len__(self) -> int:
        self._load()
        return len(self._classes)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._classes

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._classes)})"
