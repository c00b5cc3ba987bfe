"""Every csrc/cuda/*.cu compiles with NVRTC for sm_80 and sm_90, with no GPU needed.

CI installs cupy and nvidia-cuda-nvrtc (the test extra), so there a missing NVRTC is
a failure, not a skip: a kernel that does not compile must fail CI.
"""

from __future__ import annotations

import os

import pytest

from realm_ext.backends.cuda import source as cuda_source


def _nvrtc_or_skip() -> None:
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as e:  # ImportError, or the library not found
        if os.environ.get("CI"):
            raise
        pytest.skip(f"NVRTC is not available here ({type(e).__name__}: {e}); pip install '.[test]'")


def test_kernel_sources_exist() -> None:
    names = cuda_source.sources()
    assert names, "no csrc/cuda/*.cu found"
    assert cuda_source.csrc_dir().joinpath("ggml_blocks.h").is_file()


@pytest.mark.parametrize("arch", cuda_source.ARCHS_CHECKED)
@pytest.mark.parametrize("name", cuda_source.sources())
def test_compiles_with_nvrtc(name: str, arch: str) -> None:
    _nvrtc_or_skip()
    cubin = cuda_source.nvrtc_compile(name, arch)
    assert cubin[:4] == b"\x7fELF", "NVRTC did not return a cubin"


def test_compile_error_carries_the_log(tmp_path, monkeypatch) -> None:
    _nvrtc_or_skip()
    (tmp_path / "cuda").mkdir()
    (tmp_path / "ggml_blocks.h").write_text("")
    (tmp_path / "cuda" / "broken.cu").write_text('extern "C" __global__ void k() { undefined_name(); }\n')
    monkeypatch.setattr(cuda_source, "csrc_dir", lambda: tmp_path)
    with pytest.raises(cuda_source.NvrtcError, match="undefined_name"):
        cuda_source.nvrtc_compile("broken", "80")
