"""Fixtures of the CUDA kernel tests that run on the CPU (csrc/cuda built for the host)."""

from __future__ import annotations

import pytest
from cuda_emulator import Emulator, compiler


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Emulator:
    """matmul.cu built for the host (cuda_host_harness.cpp), once per session."""
    if compiler() is None:
        pytest.skip("no C++ compiler (g++/c++) on PATH to build csrc/cuda for the host")
    return Emulator(tmp_path_factory.mktemp("cuda_host"))
