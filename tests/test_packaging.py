"""The wheel: builds from this tree, installs into a new venv, imports, ships its data."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (REPO / "pyproject.toml").exists(), reason="needs the source tree")
def test_wheel_installs_into_a_new_venv(tmp_path: Path) -> None:
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    # no isolation: the build uses this environment's setuptools and Cython (no network)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )
    wheels = list(dist.glob("realm_ext-*.whl"))
    assert len(wheels) == 1
    # a new venv; it may see this interpreter's site-packages for numpy/gguf/click/tqdm
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheels[0])],
        check=True,
        capture_output=True,
    )
    probe = (
        "import pathlib, realm_ext, realm_ext._kernels as k, realm_ext.quant as q; "
        "root = pathlib.Path(realm_ext.__file__).parent; "
        "print(root); print(k.block_bytes(12)); "
        "print((root / 'csrc' / 'ggml_blocks.h').is_file())"
    )
    out = subprocess.run(
        [py, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.split()
    assert out[0].startswith(str(env_dir)), f"imported {out[0]}, not the venv's copy"
    assert out[1:] == ["144", "True"]
    # the console script works from the installed wheel
    model = tmp_path / "m.gguf"
    exe = env_dir / "bin" / "realm-ext"
    subprocess.run([exe, "make-model", str(model), "-q"], check=True, cwd=tmp_path)
    shown = subprocess.run([exe, "inspect", str(model)], check=True, capture_output=True, text=True).stdout
    assert "n_layer          2" in shown
    # the shipped guest, the engines and the backend came along: the main job runs
    gen = [exe, "generate", "--model", str(model), "-p", "Once upon a time", "-n", "4", "--temperature", "0"]
    done = subprocess.run(gen, check=True, capture_output=True, text=True, cwd=tmp_path)
    assert "4 tokens in" in done.stderr and done.stdout.strip()
