"""scripts/test_wasmer.sh finds a Python 3.10 wherever pyenv put it, not only under
$HOME/.pyenv, and under CI=true it fails when there is none instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "test_wasmer.sh"


def wasmer_sh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run([bash, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def version_of(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, check=True
    ).stdout
    major, minor = map(int, out.split())
    return major, minor


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Nowhere to find a Python 3.10: HOME elsewhere, no PYENV_ROOT, no extra pyenv roots,
    and a PATH of just the two commands the script needs to get going."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).unlink(missing_ok=True)
        (bin_dir / tool).symlink_to(found)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "PATH": str(bin_dir), "PYENV_ROOTS": "", **extra}


@pytest.fixture(scope="module")
def python310() -> Path:
    """The Python 3.10 the script finds in this machine's own environment."""
    r = wasmer_sh(dict(os.environ), "--find-python")
    if r.returncode != 0:
        pytest.skip(f"no Python 3.10 on this machine: {r.stderr.strip()}")
    path = Path(r.stdout.strip())
    assert version_of(str(path)) == (3, 10)
    return path


def pyenv_root_of(python: Path) -> Path:
    """ROOT of ROOT/versions/3.10.x/bin/python3.10 (skip for a Python 3.10 not from pyenv)."""
    if python.parents[2].name != "versions":
        pytest.skip(f"{python} is not a pyenv version")
    return python.parents[3]


def test_finds_python310_with_home_elsewhere(python310: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYENV_ROOT"}
    env["HOME"] = str(tmp_path / "elsewhere")  # no ~/.pyenv there
    r = wasmer_sh(env, "--find-python")
    assert r.returncode == 0, r.stderr
    assert version_of(r.stdout.strip()) == (3, 10)


@pytest.mark.parametrize("source", ["PYENV_ROOT", "PYENV_ROOTS", "pyenv on PATH", "python3.10 on PATH"])
def test_each_place_alone_finds_it(python310: Path, tmp_path: Path, source: str) -> None:
    env = bare_env(tmp_path)
    assert wasmer_sh(env, "--find-python").returncode == 1  # nothing anywhere, as a start
    if source == "python3.10 on PATH":
        (tmp_path / "bin" / "python3.10").symlink_to(python310)
    else:
        root = pyenv_root_of(python310)
        if source == "pyenv on PATH":
            if not (root / "bin" / "pyenv").exists():
                pytest.skip(f"no pyenv executable in {root / 'bin'}")
            env["PATH"] += os.pathsep + str(root / "bin")
        else:
            env[source] = str(root)
    r = wasmer_sh(env, "--find-python")
    assert r.returncode == 0, r.stderr
    assert version_of(r.stdout.strip()) == (3, 10)


def test_without_python310_ci_fails_and_elsewhere_skips(tmp_path: Path) -> None:
    r = wasmer_sh(bare_env(tmp_path), "--find-python")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("no Python 3.10 found") and "set PYTHON310=" in r.stderr
    r = wasmer_sh(bare_env(tmp_path, CI="true"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: wasmer engine tests cannot run under CI: no Python 3.10 found")
    r = wasmer_sh(bare_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("SKIP wasmer engine tests: no Python 3.10 found")


def test_a_python310_that_is_not_one_is_an_error(tmp_path: Path) -> None:
    if sys.version_info[:2] == (3, 10):
        pytest.skip("this Python is a 3.10")
    r = wasmer_sh(bare_env(tmp_path, PYTHON310=sys.executable), "--find-python")
    assert r.returncode == 1 and r.stderr.strip() == f"PYTHON310={sys.executable} is not a Python 3.10"
    r = wasmer_sh(bare_env(tmp_path, PYTHON310=sys.executable))  # never a silent skip
    assert r.returncode == 1 and "SKIP" not in r.stdout
