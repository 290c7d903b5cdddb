"""Device and dtype rules: a device this machine has, or a DeviceError (a ValueError) that says why not."""

from __future__ import annotations

import pytest
import torch

from nanochat.device import DeviceError, cpu_has_amx, cpu_has_bf16_matmul, resolve_device, resolve_dtype


def test_cpu_and_its_default_dtype():
    device = resolve_device("cpu")
    assert device == torch.device("cpu")
    assert resolve_dtype(None, device) is torch.float32
    assert resolve_dtype("bfloat16", device) is torch.bfloat16
    assert resolve_dtype(None, torch.device("cuda")) is torch.bfloat16  # no GPU needed to know the rule


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("nonsense", "'nonsense' is not a torch device"),
        ("meta", "'meta' is not supported; use cpu, cuda[:N] or mps"),
        pytest.param(
            "cuda",
            "cuda was asked for but no CUDA GPU is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_a_device_this_machine_lacks_is_a_value_error_that_says_why(name, detail):
    with pytest.raises(DeviceError) as caught:
        resolve_device(name)
    assert isinstance(caught.value, ValueError)  # the service counts it as a bad setting, not a bug
    assert caught.value.detail.startswith(detail) and str(caught.value) == f"device {caught.value.detail}"


AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
NO_AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n"
NO_BF16_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"


def test_auto_dtype_is_bf16_on_cpus_with_bf16_matmuls_and_cuda_and_fp32_on_other_cpus():
    cpu = torch.device("cpu")
    assert cpu_has_amx(AMX_CPUINFO) and not cpu_has_amx(NO_AMX_CPUINFO) and not cpu_has_amx("")
    assert resolve_dtype("auto", cpu, AMX_CPUINFO) is torch.bfloat16
    assert resolve_dtype("auto", cpu, NO_AMX_CPUINFO) is torch.bfloat16  # AVX512-BF16 without AMX pays too
    assert cpu_has_bf16_matmul(NO_AMX_CPUINFO) and not cpu_has_bf16_matmul(NO_BF16_CPUINFO)
    assert resolve_dtype("auto", cpu, NO_BF16_CPUINFO) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda"), NO_AMX_CPUINFO) is torch.bfloat16
    assert resolve_dtype(None, cpu, AMX_CPUINFO) is torch.float32  # the default stays fp32: auto is asked
    # this machine: whatever its /proc/cpuinfo says (the project's 2-core EPYC has no AMX: fp32)
    assert resolve_dtype("auto", cpu) is (torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32)
