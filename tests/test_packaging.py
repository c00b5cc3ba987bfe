"""The wheel: builds from this tree, installs into a new venv, imports, ships its data."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a step; on failure fail the test with the tail of its stdout and stderr."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        log = f"{done.stdout}\n--- stderr ---\n{done.stderr}"[-6000:]
        pytest.fail(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{log}", pytrace=False)
    return done


@pytest.mark.skipif(not (REPO / "pyproject.toml").exists(), reason="needs the source tree")
def test_wheel_installs_into_a_new_venv(tmp_path: Path) -> None:
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    # no isolation: the build uses this environment's setuptools and Cython (no network)
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, REPO])
    wheels = list(dist.glob("realm_ext-*.whl"))
    assert len(wheels) == 1
    # a new venv that sees this environment's packages (numpy, gguf, click, ...) through a
    # .pth: system_site_packages would give the base interpreter's, not this venv's
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    ours = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    (Path(site) / "parent_env.pth").write_text("".join(f"{d}\n" for d in ours))
    run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheels[0]])
    probe = (
        "import pathlib, realm_ext, realm_ext._kernels as k, realm_ext._host_native, realm_ext.quant as q; "
        "from realm_ext.backends.cuda import source; "
        "root = pathlib.Path(realm_ext.__file__).parent; "
        "print(root); print(k.block_bytes(12)); "
        "print(source.csrc_dir() == root / 'csrc'); "
        "print(all((root / 'csrc' / f).is_file() for f in "
        "('ggml_blocks.h', 'realm_errors.h', 'cpu/llama.h', 'cpu/vec_dot_x86.inc', 'cuda/matmul.cu'))); "
        # typed: the marker and the extensions' stubs (PEP 561)
        "print(all((root / f).is_file() for f in ('py.typed', '_kernels.pyi', '_host_native.pyi'))); "
        # the server came along (its dependencies are the serve extra's)
        "import realm_ext.serve.app, realm_ext.serve.ray_serve; "
        "print(pathlib.Path(realm_ext.serve.app.__file__).parent == root / 'serve')"
    )
    out = run([py, "-c", probe], cwd=tmp_path).stdout.split()
    assert out[0].startswith(str(env_dir)), f"imported {out[0]}, not the venv's copy"
    assert out[1:] == ["144", "True", "True", "True", "True"]
    # the console script works from the installed wheel
    model = tmp_path / "m.gguf"
    exe = env_dir / "bin" / "realm-ext"
    run([exe, "make-model", model, "-q"], cwd=tmp_path)
    shown = run([exe, "inspect", model]).stdout
    assert "n_layer          2" in shown
    # the shipped guest, the engines and the backend came along: the main job runs
    gen = [exe, "generate", "--model", str(model), "-p", "Once upon a time", "-n", "4", "--temperature", "0"]
    done = run(gen, cwd=tmp_path)
    assert "4 tokens in" in done.stderr and done.stdout.strip()
