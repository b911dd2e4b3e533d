"""Device, precision and kernel policy: which device, which autocast, which memory layout and optimizer kernels.

    from pieceboard.device import device_type, resolve_precision, make_accelerator
    accelerator = make_accelerator(resolve_precision("auto", device_type()))

Every rule here was chosen by measurement with `pieceboard throughput` (figures in the docstrings); change a rule
only with a new measurement.
"""

from __future__ import annotations

import os
import warnings

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import parse_flag_from_env
from torch import nn

from pieceboard._console import PieceboardError


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16), so bf16 autocast is faster than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def device_type() -> str:
    """The device accelerate will pick: cuda unless absent or ACCELERATE_USE_CPU is set."""
    return "cuda" if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU") else "cpu"


def resolve_precision(requested: str, device: str, depthwise: bool = False, one_pixel_conv: bool = False) -> str:
    """The precision a run uses.

    `auto`: `accelerate launch --mixed_precision X` when given; otherwise bf16 on a GPU that supports it, fp16 on
    an older GPU; on a CPU with AMX or AVX512-BF16, bf16 unless the model uses depthwise convolutions (measured with
    `pieceboard throughput` on such a CPU: bf16 made resnet18 and the MLP 1.5-1.9x faster, but MobileNetV3 2x slower
    at 64 px and no faster at 200 px) or a 3x3 stride-2 convolution sees a 1x1 map (resnet18 at 16 px): there,
    torch's CPU bf16 kernel (torch 2.14, oneDNN) returns a wrong weight gradient about half the time, which ends in
    NaN; fp32 ("no") on other CPUs.

    Args:
        requested: The run's `precision` setting: no, bf16, fp16 or auto.
        device: "cuda" or "cpu", as `device_type` returns.
        depthwise: Whether the model uses depthwise convolutions.
        one_pixel_conv: Whether a 3x3 stride-2 convolution of the model sees a 1x1 map at this image size.

    Raises:
        PieceboardError: fp16 on a CPU (autocast would silently train in fp32 there), or bf16 on a CPU where its
            gradients would be wrong.
    """
    if requested == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launched in ("bf16", "fp16"):
            requested = launched
        elif device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            return "bf16" if cpu_has_bf16() and not depthwise and not one_pixel_conv else "no"
    if requested == "fp16" and device != "cuda":
        raise PieceboardError(f'precision = "fp16" needs a GPU (this run is on {device}); use "bf16", "no" or "auto"')
    if requested == "bf16" and device == "cpu" and one_pixel_conv:
        raise PieceboardError(
            'precision = "bf16" on a CPU computes wrong gradients for this model at this image size (a 3x3 stride-2 '
            'convolution sees a 1x1 map); use "no", "auto" or a larger image_size'
        )
    return requested


def make_accelerator(precision: str) -> Accelerator:
    """An Accelerator for one run; each run may ask for its own precision."""
    # accelerate keeps one AcceleratorState per process and fixes mixed precision in it on first use; a benchmark
    # needs another precision per run, so the state is reset (keeping the process group). This is the only place
    # pieceboard touches accelerate's private API.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=precision, cpu=device_type() == "cpu")
    if accelerator.num_processes > 1:
        # DDP warns once per run when a 1x1 convolution's gradient comes out in another stride order than its
        # bucket; it costs a copy, not correctness.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return accelerator


def is_convnet(model: nn.Module) -> bool:
    """Whether the model has 2-D convolutions (channels_last can only help those)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def use_channels_last(model: nn.Module, setting: bool | str) -> bool:
    """channels_last for convnets unless the run says `false`.

    `auto` = every convnet: measured with the training step on a 2-core AMX CPU, it made resnet18 7% (64 px) to
    37% (200 px) and MobileNetV3 70-76% faster.
    """
    return is_convnet(model) and setting in ("auto", True)


def fused_kwargs(device: torch.device) -> dict[str, bool]:
    """Fused optimizer kernels where torch has them.

    On a 2-core CPU, fused Adam made the MLP's whole training step 2-4x faster than the default per-tensor loop
    (measured with `pieceboard throughput`).
    """
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring peak memory now: the GPU allocator's peak, or the process's peak resident set on a CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets the kernel's high-water mark of the resident set (VmHWM); Linux 4.0+
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the peak is that of the whole process so far


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since `reset_peak_memory`: tensors allocated on a GPU, the process's resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
