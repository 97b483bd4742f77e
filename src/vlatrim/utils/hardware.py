"""What the machine's processor can do, where it changes which settings are fast."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls/convolutions natively here (AVX512-BF16 or AMX).

    Where it does, bf16 autocast on the CPU is markedly faster than fp32; where it does not, bf16 is
    emulated and slower.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False
