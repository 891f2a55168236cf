"""What machine a benchmark ran on."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from reproduce.benchmarks import DEFAULT_OUT


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Environment variables that cap the instruction sets of oneDNN, MKL and PyTorch's own kernels.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def isa_cap() -> dict[str, str]:
    """The instruction-set caps set in this environment (e.g. ``ONEDNN_MAX_CPU_ISA=AVX2``): a run
    under them uses those kernels on this CPU, a stand-in for a CPU of that kind, not one."""
    return {k: os.environ[k].strip() for k in ISA_CAP_VARIABLES if os.environ.get(k, "").strip()}


def cap_phrase(cap: dict[str, str] | None) -> str:
    """``"; **instruction sets capped** by ONEDNN_MAX_CPU_ISA=AVX2: ..."`` for reports; "" without caps."""
    if not cap:
        return ""
    return ("; **instruction sets capped** by " + ", ".join(f"{k}={v}" for k, v in cap.items())
            + ": this CPU running those kernels, a stand-in for a CPU of that kind, not a measurement of one")


def flags_phrase(meta: dict) -> str:
    """A record's CPU flags for reports, with its instruction-set caps (:func:`cap_phrase`) if any."""
    return f"{meta.get('cpu_flags', '')}{cap_phrase(meta.get('isa_cap'))}"


REPO = Path(__file__).resolve().parents[2]


def command_line(meta: dict, command: str, out: Path | str | None = None) -> str:
    """``command`` as a record's report gives it: preceded by the record's instruction-set caps
    (environment variables) and followed by ``--out`` where ``out`` is not the default folder."""
    env = "".join(f"{k}={v} " for k, v in (meta.get("isa_cap") or {}).items())
    where = ""
    if out is not None and Path(out).resolve() != DEFAULT_OUT:
        path = Path(out).resolve()
        where = f" --out {path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
    return f"{env}{command}{where}"


def cpu_flags() -> str:
    """The vector / matrix extensions that decide convolution and bf16 speed (Linux only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx_vnni")
                return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"
    except OSError:
        pass
    return "unknown"


def has_bf16_units(flags: str) -> bool:
    """Whether the :func:`cpu_flags` include bf16 matrix or dot-product units (AVX512-BF16, AMX)."""
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def bf16_usable(meta: dict) -> bool:
    """Whether a record's machine ran bf16 on its units: they exist (:func:`has_bf16_units`) and no
    instruction-set cap kept oneDNN off them (``meta["bf16_capped"]``)."""
    return has_bf16_units(meta.get("cpu_flags", "")) and not meta.get("bf16_capped")


def bf16_hardware(flags: str, capped: bool = False) -> str:
    """A phrase on bf16 support for the benchmark reports (``capped``: oneDNN kept below its bf16 kernels)."""
    if not has_bf16_units(flags):
        return "this CPU has no AVX512-BF16/AMX, bf16 is emulated"
    if capped:
        return "this CPU has bf16 units (AVX512-BF16/AMX), but the instruction-set cap keeps oneDNN off them: bf16 is emulated"
    return "this CPU has bf16 units (AVX512-BF16/AMX)"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"1.86 1.71 1.52"``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info(threads: int) -> dict:
    """CPU, flags, versions, thread count, NNPACK, date and load average, for a benchmark's record."""
    import torch

    from ctxstyle.cpu_isa import bf16_capped

    return {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(), "threads": threads,
        "nnpack": bool(torch._nnpack_available()) if hasattr(torch, "_nnpack_available") else False,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": load_average(), "isa_cap": isa_cap(), "bf16_capped": bf16_capped(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
    }


def source_version(repo: Path) -> str:
    """The repository's commit (short hash, "+modified" when lib/ or reproduce/ differ from it),
    or "unknown" outside a git checkout: which code a benchmark record measured."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "lib", "reproduce"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+modified" if dirty else "")
