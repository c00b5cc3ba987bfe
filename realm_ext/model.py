"""The model store: a llama-architecture GGUF file, parsed once and memory-mapped.

`load_gguf(path)` returns a `Model`: its `LlamaConfig`, its `TokenizerData` and a
table of `Tensor`s whose `raw` bytes are views of the file's memory map (never
copied). Every problem with the file raises `GGUFError`, whose message names the
file, the key or tensor, and what was expected against what was found.

Shapes are numpy order (rows first): a weight `W` used as `y = W @ x` has shape
(n_out, n_in); GGUF stores the same tensor with dims reversed (ne0 = n_in).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from realm_ext import quant

GGMLType = gguf.GGMLQuantizationType
ARCH = "llama"


class GGUFError(ValueError):
    """A GGUF file that cannot be used: the message says which file and why."""


class _Truncated(Exception):
    def __init__(self, offset: int, end: int, size: int):
        super().__init__(f"needs bytes {offset}..{end} but the file has {size}")
        self.offset, self.end, self.size = offset, end, size


class _BoundedReader(gguf.GGUFReader):
    """GGUFReader whose every read is checked against the file size.

    The stock reader silently returns short arrays past the end of the map and fails
    later with an unrelated error; this turns any such read into a clear truncation.
    """

    def _get(self, offset, dtype, count=1, override_order=None):  # noqa: ANN001, ANN202
        end = int(offset) + np.dtype(dtype).itemsize * int(count)
        if end > len(self.data):
            raise _Truncated(int(offset), end, len(self.data))
        return super()._get(offset, dtype, count, override_order)


@dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a llama model, from the `llama.*` keys.

    rms_eps and rope_freq_base are stored in the file as f32 (and used so by llama.cpp):
    a model made with eps 1e-5 loads with float(np.float32(1e-5)) = 9.99999974738e-06.
    """

    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    rope_freq_base: float
    rope_dim: int


@dataclass(frozen=True)
class TokenizerData:
    """The `tokenizer.ggml.*` data: enough for a guest to rebuild the tokenizer."""

    model: str  # "llama" (SentencePiece BPE) or "gpt2" (byte-level BPE)
    tokens: list[str]
    scores: np.ndarray  # float32 [n_vocab]
    token_types: np.ndarray  # int32 [n_vocab]: 1 normal, 2 unknown, 3 control, 4 user, 6 byte
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool


@dataclass(frozen=True)
class Tensor:
    """One tensor of the file. `raw` is a (rows, row_bytes) uint8 view of the map."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]  # numpy order, elements
    raw: np.ndarray = field(repr=False)
    offset: int  # absolute byte offset of the data in the file

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def dequantize(self) -> np.ndarray:
        """The whole tensor as float32 (for tests and tools; kernels never do this)."""
        return quant.dequantize(self.raw, self.type, self.shape)


# Per-layer tensor names of the llama architecture, with their expected shapes.
LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


def expected_shapes(cfg: LlamaConfig, tied: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor a llama GGUF must hold, name -> numpy shape."""
    q_dim = cfg.n_head * cfg.head_dim
    kv_dim = cfg.n_head_kv * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (cfg.n_vocab, cfg.n_embd),
        "output_norm.weight": (cfg.n_embd,),
    }
    if not tied:
        shapes["output.weight"] = (cfg.n_vocab, cfg.n_embd)
    per_layer = {
        "attn_norm": (cfg.n_embd,),
        "attn_q": (q_dim, cfg.n_embd),
        "attn_k": (kv_dim, cfg.n_embd),
        "attn_v": (kv_dim, cfg.n_embd),
        "attn_output": (cfg.n_embd, q_dim),
        "ffn_norm": (cfg.n_embd,),
        "ffn_gate": (cfg.n_ff, cfg.n_embd),
        "ffn_up": (cfg.n_ff, cfg.n_embd),
        "ffn_down": (cfg.n_embd, cfg.n_ff),
    }
    for i in range(cfg.n_layer):
        for name, shape in per_layer.items():
            shapes[f"blk.{i}.{name}.weight"] = shape
    return shapes


class Model:
    """A loaded llama GGUF. Holds the memory map open until `close()`."""

    def __init__(
        self,
        path: Path,
        reader: gguf.GGUFReader,
        metadata: dict[str, Any],
        config: LlamaConfig,
        tokenizer: TokenizerData,
        tensors: dict[str, Tensor],
    ):
        self.path = path
        self.reader = reader
        self.metadata = metadata
        self.config = config
        self.tokenizer = tokenizer
        self.tensors = tensors

    @property
    def tied_output(self) -> bool:
        """True when the file has no output.weight and token_embd serves as LM head."""
        return "output.weight" not in self.tensors

    @property
    def file_size(self) -> int:
        return int(self.reader.data.size)

    def tensor(self, name: str) -> Tensor:
        if name == "output.weight" and self.tied_output:
            return self.tensors["token_embd.weight"]
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor {name!r}") from None

    def layer(self, i: int, name: str) -> Tensor:
        """Tensor `name` (e.g. 'attn_q') of layer i."""
        return self.tensor(f"blk.{i}.{name}.weight")

    def close(self) -> None:
        mm = getattr(self.reader.data, "_mmap", None)
        self.tensors = {}
        if mm is not None:
            # views handed out may still be alive; the map then closes when they go
            with contextlib.suppress(BufferError):
                mm.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return f"Model({str(self.path)!r}, n_layer={c.n_layer}, n_embd={c.n_embd}, n_vocab={c.n_vocab})"


# ---- loading -------------------------------------------------------------------------


def _open_reader(path: Path) -> gguf.GGUFReader:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror}") from None
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 4 or head[:4] != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (expected magic b'GGUF', found {head[:4]!r})")
    if len(head) < 8:
        raise GGUFError(f"{path}: truncated: the header needs 24 bytes, the file has {size}")
    version = int.from_bytes(head[4:8], "little")
    if version not in gguf.gguf_reader.READER_SUPPORTED_VERSIONS:
        supported = ", ".join(map(str, gguf.gguf_reader.READER_SUPPORTED_VERSIONS))
        raise GGUFError(f"{path}: unsupported GGUF version {version} (supported: {supported})")
    try:
        return _BoundedReader(path)
    except _Truncated as e:
        raise GGUFError(f"{path}: truncated: {e}") from None
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError, MemoryError) as e:
        raise GGUFError(f"{path}: corrupt GGUF: {type(e).__name__}: {e}") from None


def _metadata(path: Path, reader: gguf.GGUFReader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = f.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as e:
            raise GGUFError(f"{path}: metadata key {key!r} is unreadable: {e}") from None
    return out


def _get(path: Path, md: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    if key not in md:
        if default is ...:
            raise GGUFError(f"{path}: missing metadata key {key!r}")
        return default
    val = md[key]
    if kind is int:
        ok = isinstance(val, int) and not isinstance(val, bool)
    elif kind is float:
        ok = isinstance(val, (int, float)) and not isinstance(val, bool)
    else:
        ok = isinstance(val, kind)
    if not ok:
        raise GGUFError(f"{path}: key {key!r} should be {kind.__name__}, found {type(val).__name__} {val!r}")
    return kind(val)


def _config(path: Path, md: dict[str, Any], n_tokens: int) -> LlamaConfig:
    arch = _get(path, md, "general.architecture", str)
    if arch != ARCH:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported (expected 'llama')")
    n_embd = _get(path, md, "llama.embedding_length", int)
    n_head = _get(path, md, "llama.attention.head_count", int)
    n_head_kv = _get(path, md, "llama.attention.head_count_kv", int, n_head)
    n_layer = _get(path, md, "llama.block_count", int)
    n_ff = _get(path, md, "llama.feed_forward_length", int)
    n_ctx = _get(path, md, "llama.context_length", int)
    for key, val in [
        ("llama.embedding_length", n_embd),
        ("llama.attention.head_count", n_head),
        ("llama.attention.head_count_kv", n_head_kv),
        ("llama.block_count", n_layer),
        ("llama.feed_forward_length", n_ff),
        ("llama.context_length", n_ctx),
    ]:
        if not 0 < val < 2**31:
            raise GGUFError(f"{path}: key {key!r} should be a positive count, found {val}")
    if n_embd % n_head != 0:
        raise GGUFError(f"{path}: inconsistent config: n_embd {n_embd} is not divisible by n_head {n_head}")
    if n_head % n_head_kv != 0:
        raise GGUFError(
            f"{path}: inconsistent config: n_head {n_head} is not a multiple of n_head_kv {n_head_kv}"
        )
    head_dim = _get(path, md, "llama.attention.key_length", int, n_embd // n_head)
    v_dim = _get(path, md, "llama.attention.value_length", int, head_dim)
    if v_dim != head_dim or head_dim <= 0 or head_dim % 2:
        raise GGUFError(
            f"{path}: inconsistent config: head_dim {head_dim} must be even "
            f"and equal the value length {v_dim}"
        )
    rope_dim = _get(path, md, "llama.rope.dimension_count", int, head_dim)
    if rope_dim <= 0 or rope_dim > head_dim or rope_dim % 2:
        raise GGUFError(
            f"{path}: inconsistent config: rope dimension {rope_dim} must be even and <= head_dim {head_dim}"
        )
    n_vocab = _get(path, md, "llama.vocab_size", int, n_tokens)
    if n_vocab != n_tokens:
        raise GGUFError(
            f"{path}: inconsistent config: llama.vocab_size is {n_vocab} "
            f"but the tokenizer has {n_tokens} tokens"
        )
    eps = _get(path, md, "llama.attention.layer_norm_rms_epsilon", float)
    base = _get(path, md, "llama.rope.freq_base", float, 10000.0)
    if not (eps > 0 and base > 0):
        raise GGUFError(f"{path}: inconsistent config: rms epsilon {eps} and rope base {base} must be > 0")
    return LlamaConfig(
        n_vocab=n_vocab,
        n_ctx_train=n_ctx,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=n_ff,
        rms_eps=eps,
        rope_freq_base=base,
        rope_dim=rope_dim,
    )


def _tokenizer(path: Path, md: dict[str, Any]) -> TokenizerData:
    kind = _get(path, md, "tokenizer.ggml.model", str)
    if kind not in ("llama", "gpt2"):
        raise GGUFError(f"{path}: tokenizer model {kind!r} is not supported (expected 'llama' or 'gpt2')")
    tokens = _get(path, md, "tokenizer.ggml.tokens", list)
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise GGUFError(f"{path}: key 'tokenizer.ggml.tokens' should be a non-empty list of strings")
    n = len(tokens)
    scores = np.asarray(_get(path, md, "tokenizer.ggml.scores", list, [0.0] * n), dtype=np.float32)
    types = np.asarray(_get(path, md, "tokenizer.ggml.token_type", list, [1] * n), dtype=np.int32)
    for key, arr in (("tokenizer.ggml.scores", scores), ("tokenizer.ggml.token_type", types)):
        if arr.shape != (n,):
            raise GGUFError(f"{path}: key {key!r} has {arr.size} entries, expected {n} (one per token)")
    merges = _get(path, md, "tokenizer.ggml.merges", list, [])

    def token_id(key: str) -> int | None:
        tid = _get(path, md, key, int, None)
        if tid is not None and not 0 <= tid < n:
            raise GGUFError(f"{path}: key {key!r} is {tid}, outside the vocabulary of {n} tokens")
        return tid

    return TokenizerData(
        model=kind,
        tokens=tokens,
        scores=scores,
        token_types=types,
        merges=[str(m) for m in merges],
        bos_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_id=token_id("tokenizer.ggml.eos_token_id"),
        unk_id=token_id("tokenizer.ggml.unknown_token_id"),
        pad_id=token_id("tokenizer.ggml.padding_token_id"),
        add_bos=_get(path, md, "tokenizer.ggml.add_bos_token", bool, True),
        add_eos=_get(path, md, "tokenizer.ggml.add_eos_token", bool, False),
        add_space_prefix=_get(path, md, "tokenizer.ggml.add_space_prefix", bool, kind == "llama"),
    )


def _tensors(path: Path, reader: gguf.GGUFReader, cfg: LlamaConfig) -> dict[str, Tensor]:
    size = int(reader.data.size)
    tensors: dict[str, Tensor] = {}
    for rt in reader.tensors:
        shape = tuple(int(d) for d in reversed(rt.shape.tolist()))
        if rt.tensor_type not in quant.SUPPORTED_TYPES:
            names = ", ".join(t.name for t in quant.SUPPORTED_TYPES)
            raise GGUFError(
                f"{path}: tensor {rt.name!r} has unsupported type {rt.tensor_type.name} (supported: {names})"
            )
        try:
            rb = quant.row_bytes(rt.tensor_type, shape[-1])
        except ValueError as e:
            raise GGUFError(f"{path}: tensor {rt.name!r} of shape {shape}: {e}") from None
        n_rows = int(np.prod(shape[:-1], dtype=np.int64))
        start, nbytes = int(rt.data_offset), n_rows * rb
        if start + nbytes > size:
            raise GGUFError(
                f"{path}: truncated: tensor {rt.name!r} needs bytes {start}..{start + nbytes}, "
                f"the file has {size}"
            )
        raw = reader.data[start : start + nbytes].reshape(n_rows, rb)
        tensors[rt.name] = Tensor(name=rt.name, type=rt.tensor_type, shape=shape, raw=raw, offset=start)

    tied = "output.weight" not in tensors
    for name, want in expected_shapes(cfg, tied).items():
        if name not in tensors:
            raise GGUFError(f"{path}: missing tensor {name!r} (expected shape {want})")
        got = tensors[name].shape
        if got != want:
            raise GGUFError(f"{path}: tensor {name!r} has shape {got}, expected {want}")
    return tensors


def load_gguf(path: str | os.PathLike[str]) -> Model:
    """Parse and validate a llama GGUF; the tensor data stays memory-mapped."""
    path = Path(path)
    reader = _open_reader(path)
    md = _metadata(path, reader)
    tokenizer = _tokenizer(path, md)
    config = _config(path, md, len(tokenizer.tokens))
    tensors = _tensors(path, reader, config)
    return Model(path, reader, md, config, tokenizer, tensors)
