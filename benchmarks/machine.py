"""Facts about the machine and the software a benchmark result came from.

Every field is best effort: a fact that cannot be read is left out, never guessed.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "realm-ext",
    "numpy",
    "gguf",
    "llama-cpp-python",
    "wasmtime",
    "wasmer",
    "cupy-cuda12x",
    "cupy-cuda13x",
)


def cpu_facts() -> dict:
    """CPU model, flags and clock: py-cpuinfo when installed (the bench extra), else
    /proc/cpuinfo; and the widest kernel ISA realm-ext picks on it."""
    info: dict = {"arch": platform.machine(), "cores": os.cpu_count()}
    try:
        import cpuinfo

        ci = cpuinfo.get_cpu_info()
        info.update(model=ci.get("brand_raw"), flags=sorted(ci.get("flags", [])))
        if ci.get("hz_advertised_friendly"):
            info["clock"] = ci["hz_advertised_friendly"]
    except ImportError:
        info.update(_proc_cpuinfo())
    try:
        from realm_ext import _kernels

        info["realm_isa"] = _kernels.cpu_isa()
    except ImportError:  # the C extension is not built here
        pass
    return {k: v for k, v in info.items() if v}


def _proc_cpuinfo() -> dict:
    out: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and "model" not in out:
                    out["model"] = value.strip()
                elif key in ("flags", "Features") and "flags" not in out:
                    out["flags"] = sorted(value.split())
    except OSError:
        pass
    return out


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gpu_name() -> str | None:
    """The first CUDA device's name, when cupy imports and sees one."""
    try:
        import cupy

        if not cupy.cuda.is_available():
            return None
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - any failure of the CUDA stack means: no GPU to name
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def git_commit() -> dict | None:
    """The checkout's commit and whether its tracked files differ from it (None outside git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def machine_facts() -> dict:
    facts: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "os": platform.platform(),
        "cpu": cpu_facts(),
        "memory_bytes": memory_bytes(),
        "gpu": gpu_name(),
        "versions": versions(),
        "git": git_commit(),
    }
    with contextlib.suppress(OSError):
        facts["load_average"] = list(os.getloadavg())  # how busy the machine was when it started
    return facts
