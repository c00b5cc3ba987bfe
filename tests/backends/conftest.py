"""Fixtures of the backend tests: the CPU backend and llama.cpp for the parity tests, and
for the CUDA kernel tests that run on the CPU, csrc/cuda built for the host."""

from __future__ import annotations

import pytest
from cuda_emulator import Emulator, compiler

from realm_ext.backends.cpu import CpuBackend


@pytest.fixture(scope="module")
def backend() -> CpuBackend:
    return CpuBackend(n_threads=2)


@pytest.fixture(scope="module")
def llama_cpp():
    """llama-cpp-python, or a skip where it is not installed."""
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Emulator:
    """matmul.cu built for the host (cuda_host_harness.cpp), once per session."""
    if compiler() is None:
        pytest.skip("no C++ compiler (g++/c++) on PATH to build csrc/cuda for the host")
    return Emulator(tmp_path_factory.mktemp("cuda_host"))
