"""int8 serving: a loaded fp32 model's linear layers turned into dynamic int8 linears, on CPU.

`quantize_model(model)` replaces every `nn.Linear` of the transformer blocks and the `lm_head` with an
`Int8Linear`: the weight rounded to int8 per output channel (symmetric, scale = max |w| / 127) and packed
once for PyTorch's fbgemm int8 GEMM; each call quantizes its activations per tensor on the fly and
accumulates in int32 (`torch.ops.quantized.linear_dynamic`). The token embedding stays in float: it is a
lookup, not a matmul, so int8 would only save bytes, at a cost in accuracy.

Why dynamic and not weight-only, and why the head too: measured side by side on the project's 2-core CPU
(engine decode, the demo and a depth-6 model, batches 1/16/64, interleaved), dynamic int8 decoded at
1.2-2.1x fp32's tokens/s (docs/quantization.md: 1.85-2.15x on the depth-6 model; on the tiny demo model
0.87x at batch 1, where per-call overhead dominates, and 1.35-1.44x from batch 16); a weight-only int8
matmul (`torch._weight_int8pack_mm`, bf16 activations) at 0.95-1.5x (no better than fp32 from batch 16
on); dynamic int8 with the head left in fp32 at 0.8x at batch 1 (the head is the largest matrix of a small
model) for a greedy agreement barely higher (97.4% vs 96.9% on the demo's held-out prompts).
docs/quantization.md (`nanochat eval quantization`) has the figures; the drift bounds are in
tests/nanochat/test_quantize.py.

Int8 runs on CPU only, over an fp32 model (activations are fp32); the Hugging Face backend is not
quantized. `QuantizationError` says so in one line. The packed weights live outside the module's
parameters and buffers: each `Int8Linear` reports its bytes as `packed_bytes`, which
`nanochat.memory.module_bytes` counts.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

QUANTIZATIONS = ("none", "int8")
INT8_MAX = 127
# fbgemm's packed weight: the int8 matrix plus, per output channel, a float scale, an int32 zero point and
# an int32 column offset
PACKED_BYTES_PER_CHANNEL = 12


class QuantizationError(ValueError):
    """A quantization asked for that this model, device, dtype or backend cannot run."""


def check_quantization(
    quantization: str | None, device: torch.device, dtype: torch.dtype, backend: str = "nanochat"
) -> None:
    """QuantizationError unless `quantization` can run here (call it before loading anything)."""
    if quantization in (None, "none"):
        return
    if quantization not in QUANTIZATIONS:
        raise QuantizationError(
            f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}"
        )
    if backend != "nanochat":
        raise QuantizationError("int8 quantization is for the nanochat backend only, not the hf backend")
    if device.type != "cpu":
        raise QuantizationError(f"int8 quantization runs on CPU only, not on {device}; use bfloat16 there")
    if dtype != torch.float32:
        raise QuantizationError(f"int8 quantization works over a float32 model, not {dtype}; drop --dtype")
    if "fbgemm" not in torch.backends.quantized.supported_engines or not _has_dynamic_linear():
        raise QuantizationError("int8 quantization needs PyTorch's fbgemm int8 kernels (x86 CPUs)")


def _has_dynamic_linear() -> bool:
    return all(hasattr(torch.ops.quantized, op) for op in ("linear_prepack", "linear_dynamic"))


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 (a quantized tensor): weight ≈ int8 * (max |row| / 127)."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12).double() / INT8_MAX
    zero_point = torch.zeros_like(scale, dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated in PyTorch; check_quantization
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor")  # refuses once they are gone
        return torch.quantize_per_channel(weight, scale, zero_point, 0, torch.qint8)


class Int8Linear(nn.Module):
    """y = x Wᵀ with W in int8 per output channel and x quantized per call (no bias: nanochat has none)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._packed = torch.ops.quantized.linear_prepack(quantize_weight(weight), None)
        self.packed_bytes = weight.numel() + PACKED_BYTES_PER_CHANNEL * self.out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if linear.bias is not None:
            raise QuantizationError("Int8Linear has no bias; nanochat's linears have none")
        return cls(linear.weight)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the int8 one stands for (for tests and error figures)."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)  # reduce_range: no int16 overflow

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def int8_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, linear) of every `nn.Linear`: the blocks' and the head, all turned into int8."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found.append((parent, name, child))
    return found


def quantize_model(model: nn.Module, quantization: str = "int8") -> nn.Module:
    """`model` (fp32, CPU) with its linears replaced in place by `Int8Linear`s; "none" leaves it as is."""
    if quantization in (None, "none"):
        return model
    param = next(model.parameters())
    check_quantization(quantization, param.device, param.dtype)
    with torch.inference_mode():
        for parent, name, linear in int8_linears(model):
            setattr(parent, name, Int8Linear.from_linear(linear))
    return model.eval()


def quantization_of(model: nn.Module) -> str:
    """`int8` for a model `quantize_model` converted, else `none`."""
    return "int8" if any(isinstance(m, Int8Linear) for m in model.modules()) else "none"


def planned_weights_bytes(model: nn.Module, dtype: torch.dtype, quantization: str = "none") -> int:
    """The weights' bytes once loaded in `dtype` and quantized, from a model on the meta device."""
    total = sum(p.numel() * dtype.itemsize for p in model.parameters())
    total += sum(b.nbytes for b in model.buffers())
    if quantization in (None, "none"):
        return total
    for _, _, linear in int8_linears(model):
        out_features, in_features = linear.weight.shape
        total -= linear.weight.numel() * dtype.itemsize
        total += out_features * in_features + PACKED_BYTES_PER_CHANNEL * out_features
    return total
