"""The GPUs of this machine, as ids for ``CUDA_VISIBLE_DEVICES``, found without initialising CUDA."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

def _parse_nvidia_smi(text: str) -> list[str]:
    """Device ids from ``nvidia-smi -L``: GPU indices, or MIG UUIDs when MIG slices exist."""
    mig = re.findall(r"^\s+MIG .*\(UUID:\s*(MIG-[^)\s]+)\)", text, re.MULTILINE)
    if mig:
        return mig
    return [str(i) for i, _ in enumerate(re.findall(r"^GPU \d+:", text, re.MULTILINE))]


def detect_gpus() -> list[str]:
    """Ids usable in ``CUDA_VISIBLE_DEVICES``, found without initialising CUDA here.

    An existing ``CUDA_VISIBLE_DEVICES`` is honoured (its entries are shared out); otherwise
    ``nvidia-smi -L``; otherwise ``torch.cuda.device_count()`` only if torch is already imported.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return [] if ids in ([], ["-1"]) else ids
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15)
            if out.returncode == 0:
                return _parse_nvidia_smi(out.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return [str(i) for i in range(torch.cuda.device_count())]
        except Exception:
            return []
    return []

