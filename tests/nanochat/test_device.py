"""Device and dtype rules: a device this machine has, or a DeviceError (a ValueError) that says why not."""

from __future__ import annotations

import pytest
import torch

from nanochat.device import DeviceError, resolve_device, resolve_dtype


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
