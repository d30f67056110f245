"""TOML spec files -> typed objects, with errors that name the file, the table and the key.

Format (paths are relative to the spec file)::

    model = "models/digits_mlp.pt"  # or an [ensemble] table instead (below)

    [data]                        # needed by point properties
    source = "sklearn:digits"     # sklearn:digits | npz:F | idx:IMAGES,LABELS | csv:F | mnist:DIR
    split = "test"                # train | test | all
    domain = [0.0, 1.0]           # optional input domain (default: the source's)
    limit = 500                   # optional: the first N points

    [engine]                      # optional
    name = "lipschitz"            # plus that engine's options, e.g. batch_size, device

    [report]                      # optional
    radii = [0.1, 0.3, 0.5]       # certified-accuracy curve (a property may set its own radii)

    [[property]]
    kind = "local_robustness"     # | relaxed_top_k | affinity | safe_ordering
    name = "robust-l2"            # optional
    model = "models/other.pt"     # optional: this property's own model
    # [property.engine] name = "smoothing", sigma = 0.25, ...   (optional: its own engine)
    eps = 0.3
    norm = "l2"                   # l2 | linf
    # relaxed_top_k: k = 2;  affinity: groups = [[1, 7], [3, 8]], allow_overlap = false
    # safe_ordering: postcondition = [["y0 > y8", "y0 > y9"], ["y6 > y8"]]  (DNF),
    #   predicted_in = [0] (optional), and a [property.precondition] table with either
    #   lo/hi (numbers or lists of the input size), or center = "data:INDEX" and radius
    #   (an l_inf box around a data point, clipped to the domain), optionally A/b for a polytope.

A self-correcting layer on the model (``verispec/selfcorrect``) enforces safe orderings at
run time; a property with ``corrected = true`` is checked on the corrected model (safe
orderings, by an exact engine)::

    [self_correct]
    top = "max"                   # the prediction is the max score (logits) | "min" (costs)

    [[self_correct.constraints]]  # one per constraint: the keys of a safe_ordering property
    name = "prop2"                # optional
    postcondition = [["y1 > y0"], ["y2 > y0"]]
    precondition = { lo = [...], hi = [...] }

An ensemble of certified classifiers replaces the top-level ``model`` (and the file's
``[engine]``: members carry their engines); its properties are local robustness::

    [ensemble]
    kind = "voting"               # cascade (unsound as published) | voting | selective
    weights = [2.0, 1.0]          # voting only: one positive weight per member (default: equal)
    alpha = 0.05                  # selective only: the binomial test's level (default 0.05)

    [[ensemble.members]]
    model = "models/a.pt"
    engine = "lipschitz"          # any registered engine, or a table with its options:
    name = "a"                    # optional (details name the member that answered)

    [[ensemble.members]]
    model = "models/b.pt"
    engine = { name = "lipschitz", batch_size = 256 }  # options as in [engine]
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from verispec.data import Dataset, Split, load_data
from verispec.engines.base import engine_class
from verispec.ensembles import Cascade, Ensemble, Member, SelectiveEnsemble, Voting
from verispec.errors import (
    DataError,
    ExtraNotInstalledError,
    ModelFileError,
    SpecError,
    SpecFileError,
    UnsupportedError,
    UnsupportedLayerError,
)
from verispec.modelfile import load_network
from verispec.network import Network
from verispec.properties import Clause, Predicate
from verispec.regions import Box, Norm, Polytope
from verispec.selfcorrect import SelfCorrecting
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering, Spec

_ATOM = re.compile(r"^\s*y(\d+)\s*>\s*y(\d+)\s*$")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@attrs.frozen(eq=False)
class NamedSpec:
    """A property of a spec file: its name, typed spec, (optional) own curve radii, and
    (optional) its own model and engine, overriding the file's."""

    name: str
    spec: Spec
    radii: tuple[float, ...] | None = None
    network: Network | None = None
    engine_name: str | None = None
    engine_config: Any = None
    corrected: bool = False
    """Checked on the file's self-corrected model (``[self_correct]``)."""


@attrs.frozen(eq=False)
class MemberSpec:
    """An ``[[ensemble.members]]`` entry: the model (its path and network), the engine's name
    and typed config, and the member's name."""

    path: Path
    network: Network
    engine_name: str
    engine_config: Any
    name: str = ""

    def build(self, device: str | None = None) -> Member:
        """The member with a fresh engine (on ``device`` when given)."""
        config = self.engine_config
        if device is not None:
            if not hasattr(config, "device"):
                raise UnsupportedError(
                    f"ensemble member {self.name or self.path.name!r}: engine "
                    f"{self.engine_name!r} has no device option"
                )
            config = attrs.evolve(config, device=device)
        return Member(self.network, engine_class(self.engine_name)(config), self.name)


@attrs.frozen(eq=False)
class EnsembleSpec:
    """The ``[ensemble]`` table: its kind, members, the kind's options (voting: ``weights``)
    and the ensemble built from them."""

    kind: str
    members: tuple[MemberSpec, ...]
    options: dict[str, Any]
    """The kind's own keys, read (voting: ``weights``, None when not given; selective:
    ``alpha``, 0.05 when not given)."""
    ensemble: Ensemble

    def build(self, device: str | None = None) -> Ensemble:
        """The ensemble (rebuilt with every member's engine on ``device`` when given)."""
        if device is None:
            return self.ensemble
        members = [m.build(device) for m in self.members]
        return build_ensemble(self.kind, members, self.options)


@attrs.frozen(eq=False)
class SpecFile:
    """A parsed spec file: model (or ensemble), data, engine and properties, all typed.

    With an ``[ensemble]`` table ``model_path`` and ``network`` are None; properties without a
    model of their own are checked on the ensemble."""

    path: Path
    model_path: Path | None
    network: Network | None
    data: Dataset | None
    limit: int | None
    engine_name: str
    engine_config: Any
    radii: tuple[float, ...]
    properties: tuple[NamedSpec, ...]
    ensemble: EnsembleSpec | None = None
    corrected: SelfCorrecting | None = None
    """The model with the ``[self_correct]`` layer on top, when the file has one."""

    def make_engine(self) -> Any:
        """A fresh engine instance configured as the file says."""
        return engine_class(self.engine_name)(self.engine_config)

    def model_of(self, prop: NamedSpec) -> Network | Ensemble | SelfCorrecting:
        """What ``prop`` is checked on: its own model, the corrected model, else the file's
        ensemble or model."""
        if prop.corrected and self.corrected is not None:
            return self.corrected
        if prop.network is not None:
            return prop.network
        if self.ensemble is not None:
            return self.ensemble.ensemble
        assert self.network is not None  # load_specfile requires a model or an ensemble
        return self.network


class _Table:
    """A TOML table with its location, handing out keys and rejecting unknown ones."""

    def __init__(self, file: Path, where: str, raw: Any) -> None:
        self.file, self.where = file, where
        if not isinstance(raw, dict):
            raise self.error(None, f"must be a table, got {type(raw).__name__}")
        self.raw: dict[str, Any] = raw
        self.used: set[str] = set()

    def error(self, key: str | None, message: str) -> SpecFileError:
        place = f"[{self.where}]" if self.where else "top level"
        keypart = f" key '{key}'" if key else ""
        return SpecFileError(f"{self.file}: {place}{keypart}: {message}")

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, required: bool = False
    ) -> Any:
        self.used.add(key)
        if key not in self.raw:
            if required or default is ...:
                raise self.error(key, "is required")
            return default
        value = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {_names(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {_names(kinds)}, got {type(value).__name__} {value!r}")
        return value

    def table(self, key: str, required: bool = False) -> _Table | None:
        self.used.add(key)
        if key not in self.raw:
            if required:
                raise self.error(key, "is required")
            return None
        return _Table(self.file, f"{self.where}.{key}" if self.where else key, self.raw[key])

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise self.error(
                unknown[0], f"unknown key (known here: {', '.join(sorted(self.used))})"
            )


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(
        {
            int: "an integer",
            float: "a number",
            str: "a string",
            bool: "a boolean",
            list: "a list",
            dict: "a table",
        }.get(k, k.__name__)
        for k in kinds
    )


def load_specfile(path: str | Path, limit: int | None = None) -> SpecFile:
    """Read and validate a spec file, loading its model and data."""
    file = Path(path)
    if not file.is_file():
        raise SpecFileError(f"spec file {file} does not exist")
    try:
        raw = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SpecFileError(f"{file}: not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{file}: not a text file") from None
    top = _Table(file, "", raw)
    base = file.parent
    ensemble: EnsembleSpec | None = None
    model_path: Path | None = None
    network: Network | None = None
    if top.has("ensemble"):
        if top.has("model"):
            raise top.error(
                "model",
                "and key 'ensemble' are both given: a spec file checks either a model "
                "or an [ensemble] (its members name their models); remove one",
            )
        if top.has("engine"):
            raise top.error(
                "engine",
                "is given with an [ensemble]: members carry their engines (set "
                "engine in each [[ensemble.members]]); remove the [engine] table",
            )
        ensemble = _ensemble(top, base)
        shape_of = ensemble.members[0].network  # members share the input shape and classes
    else:
        if not top.has("model"):
            raise top.error("model", "is required (or an [ensemble] table instead)")
        model_path = base / top.get("model", str, required=True)
        network = _model(top, base)
        shape_of = network

    data, domain, file_limit = _data(top, base)
    _fits(file, data, shape_of, "key 'model'" if network is not None else "[ensemble]")
    corrected = None
    if top.has("self_correct"):
        if network is None:
            raise top.error(
                "self_correct", "is given with an [ensemble]: correct a single model (key 'model')"
            )
        corrected = _self_correct(top, network, data, domain)
    engine_name, engine_config = _engine(top)
    radii: tuple[float, ...] = ()
    report = top.table("report")
    if report is not None:
        radii = tuple(_numbers(report, "radii", report.get("radii", list)))
        report.finish()
    raw_props = top.get("property", list, required=True)
    if not raw_props:
        raise top.error("property", "lists no property")
    props = []
    for i, rp in enumerate(raw_props):
        t = _Table(file, f"property[{i}]", rp)
        own = None
        if t.has("model"):
            own = _model(t, base)
            _fits(file, data, own, f"[property[{i}]] key 'model'")
        elif ensemble is not None and t.has("engine"):
            raise t.error(
                "engine",
                "a property checked on the [ensemble] runs its members' engines; give "
                "the property its own model to check it with its own engine",
            )
        named = _property(t, own or shape_of, data, domain)
        if own is None and ensemble is not None:
            try:
                ensemble.ensemble.supports(named.spec)
            except UnsupportedError as err:
                key = None if isinstance(named.spec, LocalRobustness) else "kind"
                raise t.error(key, f"on the [ensemble]: {err}") from None
        own_engine = _engine(t) if t.has("engine") else (None, None)
        on_corrected = t.has("corrected") and t.get("corrected", bool, False)
        if on_corrected and corrected is None:
            raise t.error("corrected", "needs a [self_correct] table (the layer to check)")
        if on_corrected and own is not None:
            raise t.error(
                "corrected",
                "is given with the property's own model: the "
                "[self_correct] layer sits on the file's model; remove one",
            )
        if on_corrected and not isinstance(named.spec, SafeOrdering):
            raise t.error(
                "corrected",
                "works with safe_ordering properties only (check point "
                "properties on the plain model)",
            )
        props.append(
            attrs.evolve(
                named,
                network=own,
                engine_name=own_engine[0],
                engine_config=own_engine[1],
                corrected=on_corrected,
            )
        )
        t.finish()
    top.finish()
    names = [p.name for p in props]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise top.error("property", f"duplicate property name {sorted(dup)[0]!r}")
    if data is None and any(not isinstance(p.spec, SafeOrdering) for p in props):
        raise top.error("data", "point properties need a [data] table")
    return SpecFile(
        file,
        model_path,
        network,
        data,
        limit if limit is not None else file_limit,
        engine_name,
        engine_config,
        radii,
        tuple(props),
        ensemble,
        corrected,
    )


def _self_correct(
    top: _Table, network: Network, data: Dataset | None, domain: tuple[float, float] | None
) -> SelfCorrecting:
    """The ``[self_correct]`` table: the layer on ``network``."""
    t = top.table("self_correct", required=True)
    if t is None:  # required=True raised already
        raise top.error("self_correct", "is required")
    mode = t.get("top", str, "max")
    if mode not in ("max", "min"):
        raise t.error("top", f"must be 'max' or 'min', got {mode!r}")
    raw = t.get("constraints", list, required=True)
    if not raw:
        raise t.error("constraints", "lists no constraint")
    constraints = []
    for i, rc in enumerate(raw):
        c = _Table(t.file, f"{t.where}.constraints[{i}]", rc)
        c.get("name", str, "")
        constraints.append(_safe_ordering(c, network, data, domain))
        c.finish()
    t.finish()
    try:
        return SelfCorrecting(network, constraints, top=mode)
    except (SpecError, UnsupportedError) as err:
        raise t.error("constraints", str(err)) from None


def _fits(file: Path, data: Dataset | None, network: Network, model: str) -> None:
    """Refuse data whose inputs or labels do not fit ``network``, naming the [data] source and
    the model's key."""
    if data is None:
        return
    try:
        data.shaped(network.input_shape)
        data.check_classes(network.num_classes)
    except DataError as err:
        raise SpecFileError(f"{file}: [data] key 'source': {err} (the model of {model})") from None


def _model(t: _Table, base: Path) -> Network:
    try:
        return load_network(base / t.get("model", str, required=True))
    except (ModelFileError, UnsupportedLayerError, ExtraNotInstalledError) as err:
        raise t.error("model", str(err)) from None


@attrs.frozen
class _Kind:
    """An ensemble kind in spec files: the keys of its own in ``[ensemble]``, how to read them
    (``read(table, number of members) -> options``) and how to build the ensemble
    (``make(members, options)``)."""

    keys: frozenset[str]
    read: Callable[[_Table, int], dict[str, Any]]
    make: Callable[[list[Member], dict[str, Any]], Ensemble]


def _voting_options(t: _Table, k: int) -> dict[str, Any]:
    if not t.has("weights"):
        return {"weights": None}
    weights = _numbers(t, "weights", t.get("weights", list))
    if len(weights) != k:
        raise t.error("weights", f"has {len(weights)} weights for {k} members: give one each")
    bad = [w for w in weights if not w > 0]
    if bad:
        raise t.error("weights", f"must be positive, found {bad[0]!r}")
    return {"weights": tuple(weights)}


def _selective_options(t: _Table, k: int) -> dict[str, Any]:
    if not t.has("alpha"):
        return {"alpha": 0.05}
    alpha = t.get("alpha", float)
    if not 0 < alpha < 1:
        raise t.error("alpha", f"must be in (0, 1), got {alpha!r}")
    return {"alpha": float(alpha)}


_ENSEMBLE_KINDS: dict[str, _Kind] = {
    "cascade": _Kind(frozenset(), lambda t, k: {}, lambda ms, o: Cascade(ms)),
    "voting": _Kind(frozenset({"weights"}), _voting_options, lambda ms, o: Voting(ms, **o)),
    "selective": _Kind(
        frozenset({"alpha"}), _selective_options, lambda ms, o: SelectiveEnsemble(ms, **o)
    ),
}
"""The ensemble kinds a spec file may name, with their own keys."""


def ensemble_spec_text(
    kind: str, models: Sequence[str], source: str, eps: float, comment: str = ""
) -> str:
    """A spec file (TOML) for an ensemble of ``kind`` over the model files ``models`` (paths
    relative to the spec file), each certified by the Lipschitz engine, on the test split of
    ``source``, with one l2 local-robustness property at ``eps``."""
    if kind not in _ENSEMBLE_KINDS:
        known = ", ".join(_ENSEMBLE_KINDS)
        raise SpecError(f"unknown ensemble kind {kind!r}; known kinds: {known}")
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += ["[ensemble]", f"kind = {json.dumps(kind)}", ""]
    for path in models:
        name = Path(path).stem
        lines += [
            "[[ensemble.members]]",
            f"model = {json.dumps(str(path))}",
            'engine = "lipschitz"',
            f"name = {json.dumps(name)}",
            "",
        ]
    lines += ["[data]", f"source = {json.dumps(source)}", 'split = "test"', ""]
    lines += [
        "[[property]]",
        f"name = {json.dumps(f'robust-l2-{eps:g}')}",
        'kind = "local_robustness"',
        f"eps = {float(eps)!r}",
        'norm = "l2"',
    ]
    return "\n".join(lines) + "\n"


def build_ensemble(kind: str, members: list[Member], options: dict[str, Any]) -> Ensemble:
    """The ensemble of ``kind`` (a key of an ``[ensemble]`` table) over ``members``, with the
    kind's options as ``EnsembleSpec.options`` holds them."""
    return _ENSEMBLE_KINDS[kind].make(members, options)


def _ensemble(top: _Table, base: Path) -> EnsembleSpec:
    t = top.table("ensemble")
    assert t is not None  # the caller saw the key
    known = ", ".join(_ENSEMBLE_KINDS)
    kind = t.get("kind", str, required=True)
    if kind not in _ENSEMBLE_KINDS:
        raise t.error("kind", f"unknown ensemble kind {kind!r}; known kinds: {known}")
    spec = _ENSEMBLE_KINDS[kind]
    for other, ks in _ENSEMBLE_KINDS.items():
        for key in sorted((ks.keys - spec.keys) & set(t.raw)):
            raise t.error(key, f"is an option of kind {other!r} only, not of {kind!r}")
    if isinstance(t.raw.get("members"), dict):
        raise t.error("members", "must be an array of tables: write [[ensemble.members]]")
    raw_members = t.get("members", list, [])
    if not raw_members:
        raise t.error(
            "members", "lists no member: add [[ensemble.members]] tables with model and engine"
        )
    members, built = [], []
    for i, raw_member in enumerate(raw_members):
        mt = _Table(t.file, f"{t.where}.members[{i}]", raw_member)
        member = _member(mt, base)
        mt.finish()
        try:
            built.append(member.build())
        except UnsupportedError as err:
            raise mt.error("engine", str(err)) from None
        members.append(member)
    names = [m.name for m in members if m.name]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise t.error("members", f"duplicate member name {dup[0]!r}")
    options = spec.read(t, len(members))
    t.finish()
    try:
        ensemble = spec.make(built, options)
    except SpecError as err:
        raise t.error("members", str(err)) from None
    return EnsembleSpec(kind, tuple(members), options, ensemble)


def _member(t: _Table, base: Path) -> MemberSpec:
    network = _model(t, base)
    path = base / t.get("model", str)
    if not t.has("engine"):
        raise t.error("engine", "is required: the engine that certifies this member")
    if isinstance(t.raw["engine"], str):
        name = t.get("engine", str)
        try:
            config = engine_class(name).Config()
        except UnsupportedError as err:
            raise t.error("engine", str(err)) from None
    elif isinstance(t.raw["engine"], dict):
        et = t.table("engine")
        assert et is not None
        if not et.has("name"):
            raise et.error("name", "is required: the engine that certifies this member")
        name, config = _engine(t)
    else:
        raise t.error(
            "engine",
            f"expected an engine name or a table of name and options, got "
            f"{type(t.raw['engine']).__name__} {t.raw['engine']!r}",
        )
    return MemberSpec(path, network, name, config, t.get("name", str, ""))


def _data(top: _Table, base: Path) -> tuple[Dataset | None, tuple[float, float] | None, int | None]:
    t = top.table("data")
    if t is None:
        return None, None, None
    source = t.get("source", str, required=True)
    split_name = t.get("split", str, "test")
    try:
        split = Split(split_name)
    except ValueError:
        raise t.error(
            "split", f"must be one of {[s.value for s in Split]}, got {split_name!r}"
        ) from None
    limit = t.get("limit", int, None)
    if limit is not None and limit < 1:
        raise t.error("limit", f"must be >= 1, got {limit}")
    try:
        data = load_data(source, split, base)
    except DataError as err:
        raise t.error("source", str(err)) from None
    domain = data.domain
    if t.has("domain"):
        values = _numbers(t, "domain", t.get("domain", list))
        if len(values) != 2 or not values[0] < values[1]:
            raise t.error("domain", "must be [lo, hi] with lo < hi")
        domain = (values[0], values[1])
        if data.x.min() < domain[0] or data.x.max() > domain[1]:
            raise t.error("domain", f"the data has values outside {list(domain)}")
        data = attrs.evolve(data, domain=domain)
    t.finish()
    return data, domain, limit


def _engine(top: _Table) -> tuple[str, Any]:
    t = top.table("engine")
    if t is None:
        return "lipschitz", engine_class("lipschitz").Config()
    name = t.get("name", str, "lipschitz")
    try:
        cls = engine_class(name)
    except UnsupportedError as err:
        raise t.error("name", str(err)) from None
    config = engine_config_from(
        cls.Config, t.raw, lambda key, msg: t.error(key, msg), skip=frozenset({"name"})
    )
    return name, config


def engine_config_from(
    config_cls: type, raw: dict[str, Any], error: Any, skip: frozenset[str] = frozenset()
) -> Any:
    """Build an engine's attrs Config from plain values (spec file or CLI), type-checked."""
    fields = {f.name: f for f in attrs.fields(config_cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in skip:
            continue
        if key not in fields:
            raise error(key, f"unknown option (known: {', '.join(sorted(fields))})")
        default = fields[key].default
        if isinstance(default, torch.dtype):
            if value not in _DTYPES:
                raise error(key, f"must be one of {sorted(_DTYPES)}, got {value!r}")
            value = _DTYPES[value]
        elif isinstance(default, bool) or isinstance(value, bool):
            if not (isinstance(default, bool) and isinstance(value, bool)):
                raise error(key, f"expected {type(default).__name__}, got {value!r}")
        elif isinstance(default, float) and isinstance(value, int):
            value = float(value)
        elif not isinstance(value, type(default)):
            raise error(
                key, f"expected {type(default).__name__}, got {type(value).__name__} {value!r}"
            )
        kwargs[key] = value
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise error(getattr(err, "option", None), f"invalid engine options: {err}") from None


def _numbers(t: _Table, key: str, values: list[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise t.error(key, f"must hold numbers, found {v!r}")
        if not np.isfinite(v):
            raise t.error(key, f"must hold finite numbers, found {v!r}")
        out.append(float(v))
    return out


def _class_list(t: _Table, key: str, values: list[Any], m: int) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise t.error(key, f"must hold class indices (integers), found {v!r}")
        if not 0 <= v < m:
            raise t.error(key, f"class {v} is out of range: the model has {m} classes (0..{m - 1})")
        out.append(v)
    return out


def _property(
    t: _Table, network: Network, data: Dataset | None, domain: tuple[float, float] | None
) -> NamedSpec:
    kinds = ("local_robustness", "relaxed_top_k", "affinity", "safe_ordering")
    kind = t.get("kind", str, required=True)
    if kind not in kinds:
        raise t.error("kind", f"unknown kind {kind!r}; use one of {', '.join(kinds)}")
    name = t.get("name", str, "")
    m = network.num_classes
    try:
        if kind == "safe_ordering":
            spec: Spec = _safe_ordering(t, network, data, domain)
        else:
            eps = t.get("eps", float, required=True)
            if not (np.isfinite(eps) and eps > 0):
                raise t.error("eps", f"must be > 0 and finite, got {eps}")
            norm_text = t.get("norm", str, "l2")
            try:
                norm = Norm.parse(norm_text)
            except SpecError as err:
                raise t.error("norm", str(err)) from None
            if kind == "local_robustness":
                spec = LocalRobustness(eps, norm)
            elif kind == "relaxed_top_k":
                k = t.get("k", int, required=True)
                if not 1 <= k <= m:
                    raise t.error("k", f"must be in 1..{m} (the model's classes), got {k}")
                spec = RelaxedTopK(k, eps, norm)
            else:
                raw_groups = t.get("groups", list, required=True)
                groups = []
                for g in raw_groups:
                    if not isinstance(g, list) or not g:
                        raise t.error(
                            "groups", f"must be a list of non-empty lists of classes, found {g!r}"
                        )
                    groups.append(_class_list(t, "groups", g, m))
                spec = Affinity(groups, eps, norm, t.get("allow_overlap", bool, False))
        spec.validate_for(m)
    except SpecError as err:
        raise t.error(None, str(err)) from None
    radii = tuple(_numbers(t, "radii", t.get("radii", list))) if t.has("radii") else None
    return NamedSpec(name or f"{kind}#{t.where.split('[')[-1].rstrip(']')}", spec, radii)


def _safe_ordering(
    t: _Table, network: Network, data: Dataset | None, domain: tuple[float, float] | None
) -> SafeOrdering:
    m = network.num_classes
    post = t.get("postcondition", list, required=True)
    if not post:
        raise t.error("postcondition", "needs at least one clause")
    clauses = []
    for clause in post:
        if isinstance(clause, str):
            clause = [clause]
        if not isinstance(clause, list) or not clause:
            raise t.error(
                "postcondition", f"each clause is a non-empty list of 'yA > yB', found {clause!r}"
            )
        pairs = []
        for atom in clause:
            match = _ATOM.match(atom) if isinstance(atom, str) else None
            if match is None:
                raise t.error("postcondition", f"atoms look like 'y3 > y5', found {atom!r}")
            a, b = int(match.group(1)), int(match.group(2))
            _class_list(t, "postcondition", [a, b], m)
            if a == b:
                raise t.error("postcondition", f"{atom!r} compares a class with itself")
            pairs.append((a, b))
        clauses.append(Clause.orderings(pairs, m))
    predicted_in = None
    if t.has("predicted_in"):
        predicted_in = _class_list(t, "predicted_in", t.get("predicted_in", list), m)
        if not predicted_in:
            raise t.error("predicted_in", "must not be empty")
    pre = t.table("precondition", required=True)
    if pre is None:  # required=True raised already
        raise t.error("precondition", "is required")
    region = _precondition(pre, network, data, domain)
    pre.finish()
    return SafeOrdering(region, Predicate(tuple(clauses)), predicted_in)


def _precondition(
    t: _Table, network: Network, data: Dataset | None, domain: tuple[float, float] | None
) -> Box | Polytope:
    shape = network.input_shape
    size = network.input_size

    def array(key: str) -> np.ndarray:
        value = t.get(key, (int, float, list))
        if isinstance(value, list):
            values = _numbers(t, key, value)
            if len(values) != size:
                raise t.error(key, f"has {len(values)} values; the model's input has {size}")
            return np.array(values).reshape(shape)
        if not np.isfinite(value):
            raise t.error(key, "must be finite")
        return np.full(shape, float(value))

    if t.has("center"):
        if t.has("lo") or t.has("hi"):
            raise t.error("center", "give either center/radius or lo/hi, not both")
        ref = t.get("center", str)
        match = re.fullmatch(r"data:(\d+)", ref)
        if match is None:
            raise t.error("center", f"must be 'data:INDEX', got {ref!r}")
        if data is None:
            raise t.error("center", "refers to a data point but the file has no [data] table")
        index = int(match.group(1))
        if index >= len(data):
            raise t.error("center", f"index {index} is past the data ({len(data)} points)")
        radius = t.get("radius", float, required=True)
        if not (np.isfinite(radius) and radius > 0):
            raise t.error("radius", f"must be > 0 and finite, got {radius}")
        centre = data.x[index].reshape(shape)
        lo, hi = centre - radius, centre + radius
        if domain is not None:
            lo, hi = np.maximum(lo, domain[0]), np.minimum(hi, domain[1])
    else:
        lo, hi = array("lo"), array("hi")
        if np.any(lo > hi):
            raise t.error("lo", "is above hi in some coordinate (empty box)")
    box = Box(lo, hi)
    if not (t.has("A") or t.has("b")):
        return box
    rows = t.get("A", list, required=True)
    b = _numbers(t, "b", t.get("b", list, required=True))
    matrix = []
    for row in rows:
        if not isinstance(row, list):
            raise t.error("A", "must be a list of rows (lists of numbers)")
        values = _numbers(t, "A", row)
        if len(values) != size:
            raise t.error(
                "A", f"rows must have {size} entries (the input size), found {len(values)}"
            )
        matrix.append(values)
    if len(matrix) != len(b):
        raise t.error("b", f"has {len(b)} entries but A has {len(matrix)} rows")
    return Polytope(np.array(matrix), np.array(b), box)
