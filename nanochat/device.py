"""Which torch device and dtype to run a model on: the rules the CLI, the service and the engines share.

A device is checked against what this machine really has, so a typo or a missing GPU fails at once with a
reason, not later inside a forward. The default dtype is bf16 on CUDA (as nanochat trains) and fp32
elsewhere; `auto` also picks bf16 on a CPU with bf16 matrix instructions: AMX (Intel's matrix units, whose
bf16 GEMMs run ~3x fp32's on the issue's Xeon) or AVX512-BF16 (measured on this repo's AMD EPYC, 6x384
model: decode 1.24x fp32 at batch 1 and 1.26x at batch 64, prefill 1.75x; greedy agreement with fp32 99.5%
on the demo's held-out prompts), and fp32 on other CPUs, where bf16 is emulated and gains nothing. This
module knows nothing about command lines or settings: callers say which flag or variable the name came
from.
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
AUTO = "auto"
DTYPE_CHOICES = (*DTYPES, AUTO)
CPUINFO = Path("/proc/cpuinfo")


class DeviceError(ValueError):
    """A device this machine cannot run on. `detail` completes a sentence about the device's name:
    str(e) is "device " + detail; the CLI says "--device " + detail."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"device {detail}")
        self.detail = detail


def resolve_device(name: str) -> torch.device:
    """A device this machine really has (cpu, cuda[:N], mps), or a DeviceError saying why not."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{name} was asked for but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"{name} was asked for but Apple MPS is not available")
    elif device.type != "cpu":
        raise DeviceError(f"{name!r} is not supported; use cpu, cuda[:N] or mps")
    return device


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags, from /proc/cpuinfo's text (read when not given; empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """The CPU has AMX bf16 tiles (Linux flags `amx_bf16` and `amx_tile`), which oneDNN uses for bf16."""
    return {"amx_bf16", "amx_tile"} <= cpu_flags(cpuinfo)


def cpu_has_bf16_matmul(cpuinfo: str | None = None) -> bool:
    """The CPU multiplies bf16 natively: AMX, or AVX512-BF16 (Linux flag `avx512_bf16`)."""
    return cpu_has_amx(cpuinfo) or "avx512_bf16" in cpu_flags(cpuinfo)


def resolve_dtype(name: str | None, device: torch.device, cpuinfo: str | None = None) -> torch.dtype:
    """The dtype named (a key of DTYPES), else the default: bf16 on CUDA, fp32 elsewhere. `auto`: bf16 on
    CUDA and on a CPU with bf16 matrix instructions (`cpuinfo`: /proc/cpuinfo's text, read when not given),
    else fp32."""
    if name == AUTO:
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_matmul(cpuinfo)):
            return torch.bfloat16
        return torch.float32
    if name:
        return DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" else torch.float32
