"""The bad-input corpus: every case ends in exit status 2 (the CLI) or a ``VerispecError`` (the
library) whose message names the file, key, option or layer, never in a traceback.

The text inputs (spec files, VNN-LIB files, CSV and text files) live in ``tests/corpus/``; the
binary ones (model files, npz archives, ONNX networks, binary VNN-LIB) are built by ``_build``
into a copy of that folder. Each case of ``CASES`` has an id, the CLI arguments and/or the
library call, and the fragments its message must contain (``{d}`` is the corpus folder).
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from verispec.solvers.base import SolverConfig

import verispec as vs
from verispec.cli import main
from verispec.data import Dataset, load_data
from verispec.engines.lipschitz import LipschitzConfig
from verispec.engines.projections import ProjectionsConfig
from verispec.engines.smoothing import SmoothingConfig
from verispec.errors import (
    ConfigError,
    DataError,
    DeviceError,
    ModelFileError,
    SpecError,
    SpecFileError,
    UnsupportedLayerError,
    VerispecError,
    VnnlibTimeout,
)
from verispec.ir import Dense
from verispec.modelfile import load_model, save_model
from verispec.network import Network
from verispec.options import resolve_device
from verispec.specfile import load_specfile
from verispec.vnnlib import MAX_NESTING, parse_vnnlib

CORPUS = Path(__file__).parent / "corpus"


def _good_network() -> Network:
    torch.manual_seed(0)
    return Network.from_torch(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8))


def _payload(d: Path) -> dict[str, Any]:
    return dict(torch.load(d / "good.pt", weights_only=True))


def _bad_config(d: Path, name: str, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
    payload = _payload(d)
    config = json.loads(payload["config"])
    payload["tensors"] = dict(payload["tensors"])
    text = payload["config"]
    edit(payload, config)
    if payload["config"] is text:
        payload["config"] = json.dumps(config)
    torch.save(payload, d / name)


def _onnx(d: Path, name: str, nodes: list[Any], inits: dict[str, np.ndarray]) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (d / name).write_bytes(model.SerializeToString())


def _build(d: Path) -> None:
    """The binary inputs of the corpus, written into ``d``."""
    save_model(_good_network(), d / "good.pt")
    raw = (d / "good.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "empty.pt").write_bytes(b"")
    (d / "a_directory.pt").mkdir()
    torch.save(nn.Linear(64, 10).state_dict(), d / "state_dict.pt")
    torch.save({"epoch": 3, "model_state_dict": nn.Linear(2, 2).state_dict()}, d / "checkpoint.pt")
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), d / "pickled_module.pt")

    def nan_tensor(p: dict[str, Any], c: dict[str, Any]) -> None:
        w = p["tensors"]["1.weight"].clone()
        w[0, 0] = math.nan
        p["tensors"]["1.weight"] = w

    def tensor_list(p: dict[str, Any], c: dict[str, Any]) -> None:
        p["tensors"]["1.weight"] = p["tensors"]["1.weight"].tolist()

    def int_tensor(p: dict[str, Any], c: dict[str, Any]) -> None:
        p["tensors"]["1.bias"] = p["tensors"]["1.bias"].to(torch.int64)

    _bad_config(d, "nan_tensor.pt", nan_tensor)
    _bad_config(d, "cfg_layers_strings.pt", lambda p, c: c.update(layers=["flatten", "dense"]))
    _bad_config(d, "cfg_metadata_number.pt", lambda p, c: c.update(metadata=5))
    _bad_config(d, "cfg_tensor_list.pt", tensor_list)
    _bad_config(d, "cfg_int_tensor.pt", int_tensor)
    _bad_config(d, "cfg_input_shape_string.pt", lambda p, c: c.update(input_shape="1x8x8"))
    _bad_config(d, "cfg_missing_tensor.pt", lambda p, c: p["tensors"].pop("1.bias"))
    _bad_config(d, "cfg_wrong_version.pt", lambda p, c: p.update(version=7))
    _bad_config(d, "cfg_unknown_kind.pt", lambda p, c: c["layers"][1].update(kind="lstm"))
    _bad_config(d, "cfg_key_missing.pt", lambda p, c: c["layers"][1].pop("out"))
    _bad_config(d, "cfg_size_string.pt", lambda p, c: c["layers"][1].update(out="10"))
    _bad_config(d, "cfg_config_not_json.pt", lambda p, c: p.update(config="{layers: ["))
    _bad_config(d, "cfg_config_dict.pt", lambda p, c: p.update(config={"layers": []}))
    _bad_config(d, "cfg_shapes_mismatch.pt", lambda p, c: c.update(input_shape=[1, 4, 4]))

    x = np.random.default_rng(0).uniform(0, 1, (3, 64))
    np.savez(d / "labels_range.npz", x=x, y=np.array([0, 11, 2]))
    np.savez(d / "labels_negative.npz", x=x, y=np.array([0, -1, 2]))
    np.savez(d / "labels_float.npz", x=x, y=np.array([0.0, 1.5, 2.0]))
    np.savez(d / "labels_onehot.npz", x=x, y=np.eye(10)[:3])
    np.savez(d / "empty.npz", x=np.zeros((0, 64)), y=np.zeros(0, dtype=np.int64))
    np.savez(d / "object.npz", x=np.array([[0.1], [0.2, 0.3]], dtype=object), y=np.zeros(2))
    np.save(d / "single.npy", x)
    np.savez(d / "five_features.npz", x=x[:, :5], y=np.array([0, 1, 2]))
    np.savez(d / "nan_inputs.npz", x=np.where(x > 0.9, np.nan, x), y=np.array([0, 1, 2]))
    np.savez(d / "strings.npz", x=np.array([["a"] * 64] * 3), y=np.array([0, 1, 2]))
    (d / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")

    decl = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    box = "".join(
        f"(assert ({op} X_{i} {v}))\n" for i in (0, 1) for op, v in ((">=", 0.0), ("<=", 1.0))
    )
    deep = MAX_NESTING + 20
    nested = "(or (>= Y_0 Y_1) (and (>= Y_1 Y_0) " * deep + "(>= Y_0 Y_1)" + "))" * deep
    (d / "prop_deep_alternating.vnnlib").write_text(decl + box + f"(assert {nested})\n")
    (d / "prop_binary.vnnlib").write_bytes(b"\x00\x01\x02\xff\xfe(assert\x80)")
    (d / "prop_gzip.vnnlib").write_bytes(gzip.compress((CORPUS / "prop_good.vnnlib").read_bytes()))

    from onnx import helper

    gemm = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)]
    _onnx(d, "good.onnx", gemm, {"W": np.array([[1.0, -1.0], [0.5, 2.0]]), "B": np.zeros(2)})
    nan_w = np.array([[math.nan, 1.0], [1.0, 2.0]])
    _onnx(d, "nan.onnx", gemm, {"W": nan_w, "B": np.zeros(2)})
    add = [
        helper.make_node("Gemm", ["x", "W", "B"], ["h"], transB=1),
        helper.make_node("Add", ["h", "C"], ["y"], name="shift"),
    ]
    _onnx(d, "inf_add.onnx", add, {"W": np.eye(2), "B": np.zeros(2), "C": np.array([math.inf, 0])})
    sig = [
        helper.make_node("Gemm", ["x", "W", "B"], ["h"], transB=1),
        helper.make_node("Sigmoid", ["h"], ["y"], name="squash"),
    ]
    _onnx(d, "sigmoid.onnx", sig, {"W": np.eye(2), "B": np.zeros(2)})
    (d / "text.onnx").write_text("not an ONNX model\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    d = tmp_path_factory.mktemp("corpus")
    shutil.copytree(CORPUS, d, dirs_exist_ok=True)
    _build(d)
    return d


ApiCall = Callable[[Path], Any]


@attrs.frozen
class Case:
    """One bad input: the CLI arguments and/or the library call, and the message fragments."""

    id: str
    fragments: tuple[str, ...]
    cli: tuple[str, ...] | None = None
    api: ApiCall | None = None
    error: type[VerispecError] = VerispecError


def _spec(name: str, *fragments: str, error: type[VerispecError] = SpecFileError) -> Case:
    """A spec file checked by ``verispec check`` and read by ``load_specfile``."""
    return Case(
        name,
        (name, *fragments),
        ("check", f"{{d}}/{name}"),
        lambda d: load_specfile(d / name),
        error,
    )


def _model(name: str, *fragments: str) -> Case:
    """A model file shown by ``verispec info`` and read by ``load_model``."""
    return Case(
        f"model:{name}",
        (name, *fragments),
        ("info", f"{{d}}/{name}"),
        lambda d: load_model(d / name),
        ModelFileError,
    )


def _vnnlib(name: str, *fragments: str) -> Case:
    """A VNN-LIB file decided by ``verispec vnnlib`` and read by ``parse_vnnlib``."""
    return Case(
        f"vnnlib:{name}",
        (name, *fragments),
        ("vnnlib", "{d}/good.onnx", f"{{d}}/{name}"),
        lambda d: parse_vnnlib(d / name, 2, 2),
        SpecFileError,
    )


def _onnx_case(name: str, *fragments: str) -> Case:
    """An ONNX network decided by ``verispec vnnlib`` and read by ``load_onnx``."""

    def call(d: Path) -> Any:
        from verispec.onnx import load_onnx

        return load_onnx(d / name)

    return Case(
        f"onnx:{name}",
        (name, *fragments),
        ("vnnlib", f"{{d}}/{name}", "{d}/prop_good.vnnlib"),
        call,
    )


def _api(id: str, call: ApiCall, *fragments: str, error: type[VerispecError]) -> Case:
    return Case(f"api:{id}", fragments, None, call, error)


def _cli(id: str, args: tuple[str, ...], *fragments: str) -> Case:
    return Case(f"cli:{id}", fragments, args)


CONVERSION = ("vs.Network.from_torch(module, input_shape)", "vs.save_model(network")


def _digits_point() -> tuple[np.ndarray, np.ndarray]:
    x = load_data("sklearn:digits").x[0]
    return x, _good_network().forward64(x[None])[0]


def _nan_linear() -> nn.Module:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight[1, 0] = math.inf
    return nn.Sequential(nn.Linear(2, 2), nn.ReLU(), layer)


CASES: tuple[Case, ...] = (
    # spec files: the model
    _spec("spec_model_text.toml", "key 'model'", "model_text.txt", "not a torch file"),
    _spec("spec_model_truncated.toml", "key 'model'", "truncated.pt", "truncated or corrupt"),
    _spec("spec_model_state_dict.toml", "state_dict.pt", "state_dict", *CONVERSION),
    _spec("spec_model_pickled.toml", "pickled_module.pt", "pickled", *CONVERSION),
    _spec("spec_model_missing.toml", "no_such_model.pt", "does not exist"),
    _spec("spec_model_nan.toml", "nan_tensor.pt", "layer 1 (dense)", "NaN"),
    _spec("spec_onnx_nan.toml", "nan.onnx", "'W'", "Gemm", "NaN"),
    _spec("spec_property_model_text.toml", "[property[0]] key 'model'", "model_text.txt"),
    _spec("spec_member_text.toml", "[ensemble.members[0]] key 'model'", "model_text.txt"),
    # spec files: the data
    _spec("spec_labels_range.toml", "[data] key 'source'", "label 11", "10 classes"),
    _spec("spec_labels_negative.toml", "labels_negative.npz", "label -1", "negative"),
    _spec("spec_labels_float.toml", "labels_float.npz", "1.5", "not an integer class"),
    _spec("spec_labels_onehot.toml", "labels_onehot.npz", "one-hot", "argmax"),
    _spec("spec_data_empty.toml", "empty.npz", "no points"),
    _spec("spec_data_object.toml", "object.npz", "'x'", "Python objects"),
    _spec("spec_data_npy.toml", "single.npy", "not an .npz archive"),
    _spec("spec_data_shape.toml", "five_features.npz", "the model expects 64", "key 'model'"),
    _spec("spec_data_nan.toml", "nan_inputs.npz", "NaN"),
    _spec("spec_data_strings.toml", "strings.npz", "numeric array"),
    _spec("spec_csv_binary.toml", "binary.csv", "not a text CSV"),
    _spec("spec_csv_empty.toml", "data_empty.csv", "no rows"),
    _spec("spec_csv_float_labels.toml", "data_float_labels.csv", "2.5", "not an integer class"),
    _spec("spec_domain_reversed.toml", "key 'domain'", "lo < hi"),
    # spec files: engine options
    _spec("spec_sigma_inf.toml", "[engine] key 'sigma'", "finite"),
    _spec("spec_sigma_zero.toml", "[engine] key 'sigma'", "> 0"),
    _spec("spec_alpha_half.toml", "[engine] key 'alpha'", "< 0.5"),
    _spec("spec_n_float.toml", "[engine] key 'n'", "expected int"),
    _spec("spec_batch_zero.toml", "[engine] key 'batch_size'", ">= 1"),
    _spec("spec_device_tpu.toml", "[engine] key 'device'", "'tpu'", "cpu, cuda"),
    _spec("spec_time_inf.toml", "[engine] key 'time_per_point'", "finite"),
    _spec("spec_milp_timeout_nan.toml", "[engine] key 'timeout'", "finite"),
    _spec("spec_seed_negative.toml", "[engine] key 'seed'", ">= 0"),
    _spec("spec_engine_unknown.toml", "[engine] key 'name'", "nope"),
    # spec files: the file and its properties
    _spec("spec_bad_toml.toml", "not valid TOML"),
    _spec("spec_unknown_key.toml", "[property[0]] key 'epsilon'", "unknown key"),
    _spec("spec_eps_inf.toml", "[property[0]] key 'eps'", "finite"),
    # model files
    _model("model_text.txt", "not a torch file"),
    _model("truncated.pt", "truncated or corrupt"),
    _model("empty.pt", "is empty"),
    _model("a_directory.pt", "is a directory"),
    _model("state_dict.pt", "state_dict", *CONVERSION),
    _model("checkpoint.pt", "state_dict", *CONVERSION),
    _model("pickled_module.pt", "never unpickles", *CONVERSION),
    _model("nan_tensor.pt", "layer 1 (dense)", "'1.weight'", "NaN"),
    _model("cfg_layers_strings.pt", "layer 0", "must be an object"),
    _model("cfg_metadata_number.pt", "'metadata'", "JSON object"),
    _model("cfg_tensor_list.pt", "layer 1 (dense)", "'1.weight'", "floating-point tensor"),
    _model("cfg_int_tensor.pt", "layer 1 (dense)", "'1.bias'", "floating-point tensor"),
    _model("cfg_input_shape_string.pt", "'input_shape'", "positive integers"),
    _model("cfg_missing_tensor.pt", "layer 1 (dense)", "'1.bias'", "missing"),
    _model("cfg_wrong_version.pt", "version 7"),
    _model("cfg_unknown_kind.pt", "layer 1", "'lstm'", "known: "),
    _model("cfg_key_missing.pt", "layer 1 (dense)", "'out'", "missing"),
    _model("cfg_size_string.pt", "layer 1 (dense)", "'1.weight'", "integers"),
    _model("cfg_config_not_json.pt", "'config'", "not valid JSON"),
    _model("cfg_config_dict.pt", "'config'", "JSON string"),
    _model("cfg_shapes_mismatch.pt", "layer 1 (dense)", "expects input (64,)"),
    # VNN-LIB files
    _vnnlib("prop_deep_alternating.vnnlib", "line 9", f"more than {MAX_NESTING} levels"),
    _vnnlib("prop_binary.vnnlib", "not a text file"),
    _vnnlib("prop_gzip.vnnlib", "gzip"),
    _vnnlib("prop_missing.vnnlib", "cannot read"),
    _vnnlib("prop_unbalanced.vnnlib", "line 9", "never closed"),
    _vnnlib("prop_undeclared.vnnlib", "line 9", "Y_7 out of range"),
    _vnnlib("prop_y_undeclared.vnnlib", "Y_1 is not declared"),
    _vnnlib("prop_unbounded.vnnlib", "X_1 needs both a lower and an upper bound"),
    _vnnlib("prop_nonlinear.vnnlib", "line 9", "not linear"),
    _vnnlib("prop_mixed.vnnlib", "line 9", "mixes inputs and outputs"),
    _vnnlib("prop_bad_number.vnnlib", "line 9", "1e999"),
    _vnnlib("prop_unknown_command.vnnlib", "line 9", "unsupported command"),
    # ONNX networks
    _onnx_case("nan.onnx", "'W'", "Gemm", "NaN"),
    _onnx_case("inf_add.onnx", "'C'", "'shift' (Add)", "NaN or infinite"),
    _onnx_case("sigmoid.onnx", "'squash' (Sigmoid)", "unsupported operator"),
    _onnx_case("text.onnx", "cannot read the ONNX model"),
    # command-line flags
    _cli("device-tpu", ("check", "{d}/spec_good.toml", "--device", "tpu"), "'tpu'", "cpu, cuda"),
    _cli("limit-zero", ("check", "{d}/spec_good.toml", "--limit", "0"), "'--limit'"),
    _cli("engine-unknown", ("check", "{d}/spec_good.toml", "--engine", "nope"), "'nope'"),
    _cli("spec-missing", ("check", "{d}/no_such_spec.toml"), "no_such_spec.toml", "not exist"),
    _cli(
        "timeout-negative",
        ("vnnlib", "{d}/good.onnx", "{d}/prop_good.vnnlib", "--timeout", "-1"),
        "'--timeout'",
    ),
    _cli("solver-unknown", ("audit", "{d}/spec_good.toml", "--solver", "nope"), "'nope'"),
    _cli("train-device", ("train", "--device", "tpu", "--out", "{d}/t.pt"), "'tpu'", "cpu, cuda"),
    # library calls
    _api("sigma-inf", lambda d: SmoothingConfig(sigma=math.inf), "'sigma'", error=ConfigError),
    _api(
        "batch-float",
        lambda d: LipschitzConfig(batch_size=2.5),  # type: ignore[arg-type]
        "'batch_size'",
        error=ConfigError,
    ),
    _api("timeout-nan", lambda d: SolverConfig(timeout=math.nan), "'timeout'", error=ConfigError),
    _api("device-config", lambda d: ProjectionsConfig(device="tpu"), "'device'", error=ConfigError),
    _api("resolve-tpu", lambda d: resolve_device("tpu"), "'tpu'", "cpu, cuda", error=DeviceError),
    _api(
        "torch-in-network",
        lambda d: Network([nn.Linear(2, 2)], (2,)),  # type: ignore[list-item]
        "layer 0 is a Linear",
        "from_torch",
        error=UnsupportedLayerError,
    ),
    _api(
        "inf-torch-weight",
        lambda d: Network.from_torch(_nan_linear(), (2,)),
        "layer 2 (Linear)",
        "NaN or infinity",
        error=UnsupportedLayerError,
    ),
    _api(
        "nan-dense",
        lambda d: Dense(np.full((2, 2), math.nan), np.zeros(2)),
        "Dense.weight",
        error=UnsupportedLayerError,
    ),
    _api(
        "input-shape",
        lambda d: Network((), "abc"),  # type: ignore[arg-type]
        "input shape",
        error=UnsupportedLayerError,
    ),
    _api(
        "onehot-dataset",
        lambda d: Dataset(np.zeros((2, 4)), np.eye(2), "mine"),
        "mine",
        "one-hot",
        error=DataError,
    ),
    _api(
        "empty-dataset",
        lambda d: Dataset(np.zeros((0, 4)), [], "mine"),
        "mine",
        "no points",
        error=DataError,
    ),
    _api(
        "domain-outside",
        lambda d: Dataset(np.full((2, 4), 2.0), [0, 1], "mine", (0.0, 1.0)),
        "mine",
        "outside the domain",
        error=DataError,
    ),
    _api(
        "npz-missing", lambda d: load_data("npz:nope.npz", base_dir=d), "nope.npz", error=DataError
    ),
    _api("scheme", lambda d: load_data("hdf5:x.h5"), "'hdf5'", error=DataError),
    _api(
        "eps-negative",
        lambda d: vs.LocalRobustness(-1.0, vs.Norm.L2),
        "LocalRobustness.eps",
        error=SpecError,
    ),
    _api(
        "at-domain",
        lambda d: vs.LocalRobustness(0.1, vs.Norm.L2).at(*_digits_point(), "0..1"),  # type: ignore[arg-type]
        "domain",
        error=SpecError,
    ),
    _api(
        "metadata-json",
        lambda d: save_model(_good_network(), d / "m.pt", {"when": object()}),
        "m.pt",
        "JSON",
        error=ModelFileError,
    ),
    _api(
        "check-labels",
        lambda d: vs.check(
            _good_network(),
            vs.LocalRobustness(0.1, vs.Norm.L2),
            load_data("npz:labels_range.npz", vs.Split.ALL, d),
        ),
        "label 11",
        error=SpecError,
    ),
    _api(
        "parse-deadline",
        lambda d: parse_vnnlib(d / "prop_good.vnnlib", 2, 2, deadline=time.perf_counter() - 1),
        "time limit",
        error=VnnlibTimeout,
    ),
)

CLI_CASES = [c for c in CASES if c.cli is not None]
API_CASES = [c for c in CASES if c.api is not None]


def test_the_corpus_is_large_and_covers_every_kind() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    kinds = {c.id.split(":")[0] if ":" in c.id else "spec" for c in CASES}
    assert kinds == {"spec", "model", "vnnlib", "onnx", "cli", "api"}
    committed = {p.name for p in CORPUS.iterdir()}
    for case in CASES:
        for arg in case.cli or ():
            name = arg.removeprefix("{d}/")
            if arg.startswith("{d}/") and name.endswith((".toml", ".vnnlib", ".txt", ".csv")):
                assert (
                    name in committed
                    or "missing" in name
                    or name.startswith(("prop_deep", "prop_binary", "prop_gzip", "no_such"))
                ), name


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_refuses_with_exit_2_and_a_named_message(corpus: Path, case: Case) -> None:
    assert case.cli is not None
    args = [a.replace("{d}", str(corpus)) for a in case.cli]
    result = CliRunner().invoke(main, args)
    output = result.output
    assert "Traceback" not in output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    for fragment in case.fragments:
        assert fragment in output, (fragment, output)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_raises_a_named_verispec_error(corpus: Path, case: Case) -> None:
    assert case.api is not None
    with pytest.raises(VerispecError) as info:
        case.api(corpus)
    assert isinstance(info.value, case.error), (type(info.value), info.value)
    message = str(info.value)
    for fragment in case.fragments:
        assert fragment in message, (fragment, message)
