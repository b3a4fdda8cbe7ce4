"""What the machine's CPU computes natively, read without importing a numeric library (config validation
must stay cheap and must not load torch)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# /proc/cpuinfo flags meaning bfloat16 dot products in hardware: x86 AVX-512 BF16 (Zen 4+, Cooper Lake) and
# AMX (Sapphire Rapids+); on Arm, the BF16 extension ("bf16" among the Features).
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of the first processor listed in a /proc/cpuinfo text ("flags" on x86, "Features" on Arm)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=1)
def native_bfloat16() -> bool:
    """True when this CPU does bfloat16 arithmetic in hardware (Linux; False where it cannot be read)."""
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return bool(cpu_flags(text) & BFLOAT16_FLAGS)
