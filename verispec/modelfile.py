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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from verispec.errors import ModelFileError, UnsupportedLayerError
from verispec.network import LAYER_TYPES, Conv2d, Layer, Network

FORMAT = "verispec-model"
VERSION = 1


def save_model(network: Network, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``network`` (and JSON-serialisable ``metadata``) to ``path``."""
    layers, tensors = [], {}
    for i, layer in enumerate(network.layers):
        layers.append({"kind": layer.kind, **layer.config()})
        for name, arr in layer.arrays().items():
            tensors[f"{i}.{name}"] = torch.from_numpy(np.array(arr, dtype=np.float64))
    config = {
        "input_shape": list(network.input_shape),
        "layers": layers,
        "metadata": metadata or {},
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config),
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
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ModelFileError(
            f"{path}: corrupt model config ({type(err).__name__}: {err})"
        ) from None
    except UnsupportedLayerError as err:
        raise ModelFileError(f"{path}: {err}") from None
    return network, dict(config.get("metadata", {}))


def _tensor(tensors: dict[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in tensors:
        raise KeyError(f"missing tensor {key!r}")
    arr = np.asarray(tensors[key].to(torch.float64).numpy())
    if arr.shape != shape:
        raise ValueError(f"tensor {key!r} has shape {arr.shape}, config says {shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"tensor {key!r} contains NaN or infinity")
    return arr


def _layer(spec: dict[str, Any], i: int, tensors: dict[str, Any]) -> Layer:
    kind = spec.get("kind")
    if kind not in LAYER_TYPES:
        raise UnsupportedLayerError(
            f"layer {i} has unknown kind {kind!r}; known: {', '.join(sorted(LAYER_TYPES))}"
        )
    t = lambda name, shape: _tensor(tensors, f"{i}.{name}", tuple(shape))  # noqa: E731
    if kind == "dense":
        return LAYER_TYPES[kind](t("weight", (spec["out"], spec["in"])), t("bias", (spec["out"],)))
    if kind == "conv2d":
        shape = (spec["out"], spec["in"], *spec["kernel"])
        return Conv2d(
            t("weight", shape),
            t("bias", (spec["out"],)),
            tuple(spec["stride"]),
            tuple(spec["padding"]),
        )
    if kind == "normalize":
        return LAYER_TYPES[kind](t("mean", (spec["channels"],)), t("std", (spec["channels"],)))
    params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "kind"}
    return LAYER_TYPES[kind](**params)
