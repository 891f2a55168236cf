"""Instruction-set caps that keep oneDNN off its bf16 kernels (imports nothing heavy).

oneDNN reads ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) once, at its first use, and
then runs no kernel above that instruction set. Capped below the bf16 dot-product kernels
(AVX512_CORE_BF16, AMX), bf16 autocast is emulated, many times slower than float32, even on a
CPU with bf16 units; :func:`bf16_capped` tells the precision choice so.
"""

from __future__ import annotations

import os

#: The variables oneDNN reads for its instruction-set cap, the first set one winning.
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
#: Caps without oneDNN's bf16 dot-product kernels (lower case). AVX2_VNNI_2 has bf16 conversions
#: only, and it caps out every AVX-512 kernel.
ISAS_WITHOUT_BF16 = frozenset({"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core",
                               "avx512_core_vnni"})


def onednn_isa_cap() -> str | None:
    """The oneDNN instruction-set cap set in this environment, e.g. ``"AVX2"``, or None."""
    for name in ONEDNN_ISA_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def bf16_capped() -> bool:
    """Whether oneDNN is capped below its bf16 kernels, so that bf16 runs emulated even on a CPU
    with bf16 units."""
    return (onednn_isa_cap() or "").lower() in ISAS_WITHOUT_BF16
