"""``train.precision`` and ``device`` in the shipped recipes: defaults, validation, resolution."""

from __future__ import annotations

import pytest
import torch

from vlmtune.config import compose_recipe, validate
from vlmtune.config.schema import resolve_device
from vlmtune.errors import ConfigError
from vlmtune.training.precision import resolve_precision

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def recipe(*overrides: str):
    return validate(compose_recipe(["experiment=demo", *overrides]))


def test_defaults_are_auto_device_and_precision_by_device():
    r = recipe()
    assert (r.device, r.train.precision) == ("auto", None)
    assert resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision(None, "cuda") == resolve_precision(None, "cuda:1") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert recipe("train.precision=fp32", "device=cpu").train.precision == "fp32"


@pytest.mark.parametrize("value", ["fp8", "float16", "half"])
def test_unknown_precision_names_the_key(value):
    with pytest.raises(ConfigError, match=r"^train\.precision='.*' is not allowed; choose one "
                                          r"of: bf16, fp16, fp32$"):
        recipe(f"train.precision={value}")


@pytest.mark.parametrize("value", ["tpu", "gpu", "cuda:x", "CUDA", "cuda:"])
def test_unknown_device_names_the_key(value):
    with pytest.raises(ConfigError, match=r"^device='.*' is not allowed"):
        recipe(f"device={value}")


def test_fp16_on_the_cpu_is_refused_saying_it_needs_cuda():
    with pytest.raises(ConfigError, match=r"^train\.precision='fp16' needs CUDA"):
        recipe("train.precision=fp16", "device=cpu")


@no_cuda
@pytest.mark.parametrize("value", ["cuda", "cuda:0"])
def test_cuda_without_cuda_names_device(value):
    with pytest.raises(ConfigError, match=rf"^device='{value}' needs CUDA"):
        recipe(f"device={value}")


@no_cuda
def test_fp16_with_auto_device_on_a_cpu_machine_is_refused():
    with pytest.raises(ConfigError, match=r"^train\.precision='fp16' needs CUDA"):
        recipe("train.precision=fp16")
