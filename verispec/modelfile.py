"""Model files: a torch file holding a JSON architecture config and plain tensors.

Layout (saved with ``torch.save``, loaded with ``torch.load(weights_only=True)``, so loading a
model never executes code)::

    {"format": "verispec-model", "version": 1,
     "config": '{"input_shape": [...], "layers": [{"kind": "dense", "in": 64, "out": 10}, ...],
                 "metadata": {...}}',
     "tensors": {"0.weight": Tensor, "0.bias": Tensor, ...}}
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from verispec.errors import ModelFileError, UnsupportedLayerError
from verispec.ir import (
    LAYER_TYPES,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    GroupSort,
    Layer,
    Normalize,
    ReLU,
)
from verispec.network import Network
from verispec.regions import FloatArray
from verispec.rules import RuleTable

FORMAT = "verispec-model"
VERSION = 1


@attrs.frozen
class Codec:
    """How one IR layer type is written to and read from a model file: ``save`` gives its JSON
    config and named float64 arrays; ``load`` rebuilds it from a config and a tensor getter
    ``tensor(name, shape) -> array`` (the getter checks shapes and finiteness)."""

    save: Callable[[Any], tuple[dict[str, Any], dict[str, FloatArray]]]
    load: Callable[[dict[str, Any], TensorGetter], Layer]


TensorGetter = Callable[[str, tuple[int, ...]], FloatArray]
CODECS: RuleTable[Codec] = RuleTable("the model-file format")


def _no_arrays(config: Callable[[Any], dict[str, Any]]) -> Callable[[Any], Any]:
    return lambda layer: (config(layer), {})


CODECS.register(Dense)(
    Codec(
        save=lambda layer: (
            {"in": int(layer.weight.shape[1]), "out": int(layer.weight.shape[0])},
            {"weight": layer.weight, "bias": layer.bias},
        ),
        load=lambda c, t: Dense(t("weight", (c["out"], c["in"])), t("bias", (c["out"],))),
    )
)
CODECS.register(Conv2d)(
    Codec(
        save=lambda layer: (
            {
                "in": int(layer.weight.shape[1]),
                "out": int(layer.weight.shape[0]),
                "kernel": [int(k) for k in layer.weight.shape[2:]],
                "stride": list(layer.stride),
                "padding": list(layer.padding),
            },
            {"weight": layer.weight, "bias": layer.bias},
        ),
        load=lambda c, t: Conv2d(
            t("weight", (c["out"], c["in"], *c["kernel"])),
            t("bias", (c["out"],)),
            _int_pair(c["stride"], "stride"),
            _int_pair(c["padding"], "padding"),
        ),
    )
)
CODECS.register(Normalize)(
    Codec(
        save=lambda layer: (
            {"channels": int(layer.mean.size)},
            {"mean": layer.mean, "std": layer.std},
        ),
        load=lambda c, t: Normalize(t("mean", (c["channels"],)), t("std", (c["channels"],))),
    )
)
CODECS.register(BatchNorm)(
    Codec(
        save=lambda layer: (
            {"channels": int(layer.scale.size)},
            {"scale": layer.scale, "shift": layer.shift},
        ),
        load=lambda c, t: BatchNorm(t("scale", (c["channels"],)), t("shift", (c["channels"],))),
    )
)
CODECS.register(ReLU)(Codec(save=_no_arrays(lambda layer: {}), load=lambda c, t: ReLU()))
CODECS.register(Flatten)(Codec(save=_no_arrays(lambda layer: {}), load=lambda c, t: Flatten()))
CODECS.register(GroupSort)(
    Codec(
        save=_no_arrays(lambda layer: {"group_size": layer.group_size}),
        load=lambda c, t: GroupSort(_int(c["group_size"], "group_size")),
    )
)
CODECS.register(AvgPool2d)(
    Codec(
        save=_no_arrays(lambda layer: {"kernel": list(layer.kernel), "stride": list(layer.stride)}),
        load=lambda c, t: AvgPool2d(
            _int_pair(c["kernel"], "kernel"), _int_pair(c["stride"], "stride")
        ),
    )
)


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} must be an integer, got {value!r}")
    return value


def _int_pair(value: Any, key: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"{key!r} must be a list of two integers, got {value!r}")
    return (_int(value[0], key), _int(value[1], key))


def save_model(network: Network, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``network`` (and JSON-serialisable ``metadata``) to ``path``."""
    layers, tensors = [], {}
    for i, layer in enumerate(network.layers):
        config, arrays = CODECS.rule(layer, str(i)).save(layer)
        layers.append({"kind": layer.kind, **config})
        for name, arr in arrays.items():
            tensors[f"{i}.{name}"] = torch.from_numpy(np.array(arr, dtype=np.float64))
    config_all = {
        "input_shape": list(network.input_shape),
        "layers": layers,
        "metadata": metadata or {},
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config_all),
        "tensors": tensors,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, str(path))


def load_model(path: str | Path) -> tuple[Network, dict[str, Any]]:
    """Read a model file -> (network, metadata). Raises ModelFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(
            f"{path} is not a verispec model file (torch.load with weights_only=True refused it: "
            f"{first[:200]}). Save models with verispec.modelfile.save_model."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is a torch file but not a verispec model (no format tag)")
    if payload.get("version") != VERSION:
        raise ModelFileError(f"{path}: model format version {payload.get('version')} unsupported")
    try:
        config = json.loads(payload["config"])
        tensors = payload["tensors"]
        layers = [_layer(spec, i, tensors) for i, spec in enumerate(config["layers"])]
        network = Network(tuple(layers), tuple(config["input_shape"]))
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as err:
        raise ModelFileError(
            f"{path}: corrupt model config ({type(err).__name__}: {err})"
        ) from None
    except UnsupportedLayerError as err:
        raise ModelFileError(f"{path}: {err}") from None
    return network, dict(config.get("metadata", {}))


def load_network(path: str | Path) -> Network:
    """The network in ``path``: an ONNX file (``.onnx``, the ``onnx`` extra) or a verispec
    model file (anything else)."""
    if Path(path).suffix.lower() == ".onnx":
        from verispec.onnx import load_onnx

        return load_onnx(path)
    return load_model(path)[0]


def _tensor(tensors: dict[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in tensors:
        raise KeyError(f"missing tensor {key!r}")
    value = tensors[key]
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ValueError(
            f"tensor {key!r} must be a floating-point tensor, got {type(value).__name__}"
        )
    arr = np.asarray(value.to(torch.float64).numpy())
    if arr.shape != shape:
        raise ValueError(f"tensor {key!r} has shape {arr.shape}, config says {shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"tensor {key!r} contains NaN or infinity")
    return arr


def _layer(spec: dict[str, Any], i: int, tensors: dict[str, Any]) -> Layer:
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in LAYER_TYPES:
        raise UnsupportedLayerError(
            f"layer {i} has unknown kind {kind!r}; known: {', '.join(sorted(LAYER_TYPES))}"
        )
    codec = CODECS.for_type(LAYER_TYPES[kind], str(i))
    return codec.load(spec, lambda name, shape: _tensor(tensors, f"{i}.{name}", tuple(shape)))
