"""device.py: precision, layout and kernel rules."""

from __future__ import annotations

import pytest
import torch

from pieceboard import device
from pieceboard._console import PieceboardError
from pieceboard.device import cpu_has_bf16, device_type, fused_kwargs, resolve_precision, use_channels_last
from pieceboard.models import build_model


@pytest.mark.parametrize(
    "requested, device_name, depthwise, launched, expected",
    [
        ("no", "cpu", False, "bf16", "no"),
        ("bf16", "cpu", True, None, "bf16"),
        ("auto", "cpu", False, "bf16", "bf16"),
        ("auto", "cpu", True, "fp16", "error"),  # launched with fp16 on a CPU: refused like an explicit fp16
        ("fp16", "cpu", False, None, "error"),
        ("fp16", "cuda", False, None, "fp16"),
    ],
)
def test_resolve_precision(monkeypatch, requested, device_name, depthwise, launched, expected):
    if launched:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    else:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if expected == "error":
        with pytest.raises(PieceboardError, match="needs a GPU"):
            resolve_precision(requested, device_name, depthwise)
    else:
        assert resolve_precision(requested, device_name, depthwise) == expected


@pytest.mark.parametrize("bf16_cpu", [True, False])
@pytest.mark.parametrize("depthwise", [True, False])
def test_auto_on_a_cpu_takes_bf16_only_where_it_is_fast(monkeypatch, bf16_cpu, depthwise):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` sets by default
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: bf16_cpu)
    assert resolve_precision("auto", "cpu", depthwise) == ("bf16" if bf16_cpu and not depthwise else "no")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu sse avx512f amx_bf16 amx_tile", True),
        ("fpu sse avx512f avx512_bf16", True),
        ("fpu sse avx2 avx512f", False),
    ],
)
def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_bf16(str(cpuinfo)) is expected
    assert cpu_has_bf16(str(tmp_path / "missing")) is False


def test_use_cpu_flag_selects_the_cpu(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert device_type() == "cpu"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    assert device_type() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_channels_last_rule():
    mlp = build_model("pieceboard_mlp", "scratch", 3, 8, None)
    resnet = build_model("resnet18", "scratch", 3, 8, None)
    assert not use_channels_last(mlp, "auto") and not use_channels_last(mlp, True)
    assert use_channels_last(resnet, "auto") and use_channels_last(resnet, True)
    assert not use_channels_last(resnet, False)


def test_fused_kernels_where_torch_has_them():
    assert fused_kwargs(torch.device("cpu")) == {"fused": True}
    assert fused_kwargs(torch.device("meta")) == {}
    params = [torch.nn.Parameter(torch.ones(3))]
    torch.optim.Adam(params, **fused_kwargs(torch.device("cpu"))).step()  # torch accepts it on this device
