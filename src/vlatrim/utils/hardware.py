"""What the machine's processor can do, where it changes which settings are fast."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX), which oneDNN uses.

    Where it has them, bf16 autocast on the CPU is markedly faster than fp32; plain AVX-512 (e.g.
    Skylake/Cascade Lake) only converts, so bf16 there is emulated and slower.
    """
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [c for c in checks if c is not None]
    try:
        return any(bool(c()) for c in checks)
    except RuntimeError:  # a torch built without the CPU capability probes
        return False
