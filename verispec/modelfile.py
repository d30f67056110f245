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


CONVERSION = (
    "convert it once, in Python, from the torch module (nn.Sequential) it belongs to:\n"
    "    network = vs.Network.from_torch(module, input_shape)\n"
    '    vs.save_model(network, "model.pt")\n'
    "(import verispec as vs; input_shape without the batch dimension, e.g. (1, 28, 28))"
)
"""How a PyTorch ``state_dict`` or pickled module becomes a verispec model file."""

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def save_model(network: Network, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``network`` (and JSON-serialisable ``metadata``) to ``path``."""
    if not isinstance(network, Network):
        raise ModelFileError(
            f"save_model({str(path)!r}): expected a verispec Network, got "
            f"{type(network).__name__}; build one with vs.Network.from_torch(module, input_shape)"
        )
    if metadata is not None and not isinstance(metadata, dict):
        raise ModelFileError(
            f"save_model({str(path)!r}): metadata must be a dict, got {type(metadata).__name__}"
        )
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
    try:
        config_text = json.dumps(config_all, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ModelFileError(
            f"save_model({str(path)!r}): metadata is not JSON-serialisable ({err})"
        ) from None
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_text,
        "tensors": tensors,
    }
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, str(path))
    except OSError as err:
        raise ModelFileError(f"cannot write model file {path}: {err.strerror or err}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _read(path: Path) -> Any:
    """The payload of a torch file, read with ``weights_only=True`` (no code runs); every way
    it can fail is a ModelFileError naming the file."""
    if path.is_dir():
        raise ModelFileError(f"model file {path} is a directory, not a file")
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ModelFileError(f"cannot read model file {path}: {err.strerror or err}") from None
    if not head:
        raise ModelFileError(f"model file {path} is empty")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise ModelFileError(
            f"{path} is not a torch file, so not a verispec model (those are written by "
            "vs.save_model; an ONNX model needs the .onnx suffix)"
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "unsupported global" in str(err).lower():
            raise ModelFileError(
                f"{path} holds pickled Python objects (a whole torch module or a training "
                "checkpoint), which verispec never unpickles (they could run code); "
                f"{CONVERSION}"
            ) from None
        raise ModelFileError(
            f"{path} is not a readable torch file ({_first_line(err)}); it may be corrupt"
        ) from None
    except (zipfile.BadZipFile, EOFError) as err:
        raise ModelFileError(
            f"{path} is truncated or corrupt ({_first_line(err)}): save it again"
        ) from None
    except Exception as err:  # torch reports damage as RuntimeError, OSError, KeyError, ...
        raise ModelFileError(
            f"{path} is truncated or corrupt (torch.load with weights_only=True failed: "
            f"{type(err).__name__}: {_first_line(err)}): save it again with vs.save_model"
        ) from None


def _looks_like_state_dict(payload: Any) -> bool:
    if not isinstance(payload, dict) or not payload:
        return False
    if any(k in payload for k in ("state_dict", "model_state_dict", "model")):
        return True
    return all(isinstance(v, torch.Tensor) for v in payload.values())


def load_model(path: str | Path) -> tuple[Network, dict[str, Any]]:
    """Read a model file -> (network, metadata). Raises ModelFileError naming the file (and the
    layer or key that is wrong)."""
    path = Path(path)
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if _looks_like_state_dict(payload):
            raise ModelFileError(
                f"{path} holds a PyTorch state_dict (tensors by parameter name), not a "
                f"verispec model: load it into its module (module.load_state_dict), then "
                f"{CONVERSION}"
            )
        raise ModelFileError(
            f"{path} is a torch file but not a verispec model (no format tag); {CONVERSION}"
        )
    if payload.get("version") != VERSION:
        raise ModelFileError(
            f"{path}: model format version {payload.get('version')!r} unsupported (this "
            f"verispec reads version {VERSION})"
        )
    config, tensors = _config(path, payload)
    layers = [_layer(path, spec, i, tensors) for i, spec in enumerate(config["layers"])]
    try:
        network = Network(tuple(layers), tuple(config["input_shape"]))
    except UnsupportedLayerError as err:
        raise ModelFileError(f"{path}: {err}") from None
    return network, dict(config["metadata"])


def _config(path: Path, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON config and the tensors of a payload, their types checked."""

    def bad(key: str, why: str) -> ModelFileError:
        return ModelFileError(f"{path}: corrupt model file: {key} {why}")

    text = payload.get("config")
    if not isinstance(text, str):
        raise bad("'config'", f"must be a JSON string, got {type(text).__name__}")
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise bad("'config'", f"is not valid JSON ({_first_line(err)})") from None
    if not isinstance(config, dict):
        raise bad("'config'", f"must be a JSON object, got {type(config).__name__}")
    shape = config.get("input_shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise bad("config 'input_shape'", f"must be a list of positive integers, got {shape!r}")
    layers = config.get("layers")
    if not isinstance(layers, list):
        raise bad("config 'layers'", f"must be a list of layer objects, got {layers!r:.80}")
    metadata = config.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise bad("config 'metadata'", f"must be a JSON object, got {metadata!r:.80}")
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict):
        raise bad("'tensors'", f"must be a dict of named tensors, got {type(tensors).__name__}")
    return config, tensors


def load_network(path: str | Path) -> Network:
    """The network in ``path``: an ONNX file (``.onnx``, the ``onnx`` extra) or a verispec
    model file (anything else)."""
    if Path(path).suffix.lower() == ".onnx":
        from verispec.onnx import load_onnx

        return load_onnx(path)
    return load_model(path)[0]


def _tensor(tensors: dict[str, Any], key: str, shape: Any) -> np.ndarray:
    if not isinstance(shape, tuple | list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"the sizes of tensor {key!r} must be integers, got {shape!r}")
    shape = tuple(shape)
    if key not in tensors:
        raise ValueError(f"tensor {key!r} is missing")
    value = tensors[key]
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"tensor {key!r} must be a floating-point tensor, got {got}")
    arr = np.asarray(value.detach().to(torch.float64).numpy())
    if arr.shape != shape:
        raise ValueError(f"tensor {key!r} has shape {arr.shape}, config says {shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"tensor {key!r} contains NaN or infinity")
    return arr


def _layer(path: Path, spec: Any, i: int, tensors: dict[str, Any]) -> Layer:
    """Layer ``i`` of a model file; a bad config or tensor raises ModelFileError naming it."""
    if not isinstance(spec, dict):
        raise ModelFileError(
            f"{path}: corrupt model file: layer {i} must be an object with a 'kind', got "
            f"{spec!r:.80}"
        )
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in LAYER_TYPES:
        raise ModelFileError(
            f"{path}: layer {i} has unknown kind {kind!r}; known: {', '.join(sorted(LAYER_TYPES))}"
        )
    codec = CODECS.for_type(LAYER_TYPES[kind], str(i))
    try:
        return codec.load(spec, lambda name, shape: _tensor(tensors, f"{i}.{name}", shape))
    except KeyError as err:
        raise ModelFileError(f"{path}: layer {i} ({kind}): config key {err} is missing") from None
    except (TypeError, ValueError, UnsupportedLayerError) as err:
        raise ModelFileError(f"{path}: layer {i} ({kind}): {err}") from None
