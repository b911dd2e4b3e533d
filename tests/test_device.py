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


def test_fused_kernels_where_torch_has_them_give_the_same_step():
    def stepped(**kwargs) -> tuple[torch.Tensor, torch.optim.Optimizer]:
        weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 64))
        optimizer = torch.optim.Adam([weight], lr=0.1, weight_decay=0.01, **kwargs)
        for step in range(3):
            weight.grad = torch.sin(weight.detach() * (step + 1))
            optimizer.step()
        return weight.detach(), optimizer

    fused, optimizer = stepped(**fused_kwargs(torch.device("cpu")))
    reference, _ = stepped(foreach=False)  # torch's plain per-tensor loop
    assert optimizer.param_groups[0]["fused"] is True  # torch took the fused kernel on this device...
    assert torch.allclose(fused, reference, atol=1e-6) and not torch.equal(fused, torch.linspace(-1.0, 1.0, 64))
    with torch.device("meta"):  # ...and where it has none, nothing is asked for that torch would refuse
        torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], **fused_kwargs(torch.device("meta")))


def test_bf16_is_refused_where_a_strided_convolution_sees_one_pixel(monkeypatch):
    # torch's CPU bf16 kernel returns a wrong weight gradient for a 3x3 stride-2 convolution on a 1x1 map
    # (resnet18 at 16 px): auto falls back to fp32 there, and an explicit bf16 is refused before training.
    from pieceboard.models import probe

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    at_16, at_64 = probe("resnet18", 16), probe("resnet18", 64)
    assert at_16.strided_conv_on_one_pixel and not at_64.strided_conv_on_one_pixel
    assert not probe("pieceboard_mlp", 16).strided_conv_on_one_pixel  # no convolution at all
    assert at_16.feature_map == 1 and at_64.feature_map == 2
    assert resolve_precision("auto", "cpu", at_16.depthwise, at_16.strided_conv_on_one_pixel) == "no"
    assert resolve_precision("auto", "cpu", at_64.depthwise, at_64.strided_conv_on_one_pixel) == "bf16"
    with pytest.raises(PieceboardError, match="computes wrong gradients for this model at this image size"):
        resolve_precision("bf16", "cpu", at_16.depthwise, at_16.strided_conv_on_one_pixel)
    assert resolve_precision("bf16", "cuda", False, True) == "bf16"  # the CPU kernel's fault, not a GPU's


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is for torch's CPU kernel; a GPU trains in bf16")
def test_a_benchmark_asking_for_bf16_where_it_is_wrong_stops_before_training(tmp_path, image_folder, cli):
    from conftest import write_benchmark

    body = '[defaults]\nepochs = 1\nbatch_size = 8\nimage_size = 16\nprecision = "bf16"\n\n'
    body += '[[runs]]\nname = "r18"\nmodel = "resnet18"\nmode = "scratch"\n'
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    proc = cli("bench", bench, "--output", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "[[runs]] 'r18': precision = \"bf16\" on a CPU computes wrong gradients" in proc.stderr
    assert not (tmp_path / "out").exists()
