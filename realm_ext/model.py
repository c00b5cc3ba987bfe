"""The model store: a GGUF file of a supported family (realm_ext.arch), parsed once and
memory-mapped.

`load_gguf(path)` returns a `Model`: its `LlamaConfig`, its `TokenizerData` and a
table of `Tensor`s whose `raw` bytes are views of the file's memory map (never
copied). Every problem with the file raises `GGUFError`, whose message names the
file, the key or tensor, and what was expected against what was found.

Shapes are numpy order (rows first): a weight `W` used as `y = W @ x` has shape
(n_out, n_in); GGUF stores the same tensor with dims reversed (ne0 = n_in).
"""

from __future__ import annotations

import contextlib
import enum
import os
import struct
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from realm_ext import arch as families
from realm_ext import quant
from realm_ext.arch import Architecture
from realm_ext.errors import RealmExtError

ROPE_FREQS = "rope_freqs.weight"


class _NamedIntEnum(enum.IntEnum):
    """An IntEnum that prints as its name: from Python 3.11 on, str() and format() of an
    IntEnum give its number. An integer format ("d", "x", "03d") still gives the number."""

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        if spec[-1:] in {"b", "d", "n", "o", "x", "X"}:
            return int.__format__(self, spec)
        return format(self.name, spec)


# A tensor's type: gguf.GGMLQuantizationType's members, printed by name ("Q4_K", not
# "12"). Each is still an int (int(t) is the id the kernels take) and equals gguf's
# member of the same id, in comparisons, sets and dict keys alike.
if TYPE_CHECKING:  # the type checker sees gguf's enum: the same members and values
    GGMLType = gguf.GGMLQuantizationType
else:
    GGMLType = _NamedIntEnum(
        "GGMLType",
        [(t.name, t.value) for t in gguf.GGMLQuantizationType],
        module=__name__,
        qualname="GGMLType",
    )


class GGUFError(RealmExtError, ValueError):
    """A GGUF file that cannot be used: the message says which file and why."""


class _Truncated(Exception):
    def __init__(self, offset: int, end: int, size: int):
        super().__init__(f"needs bytes {offset}..{end} but the file has {size}")
        self.offset, self.end, self.size = offset, end, size


# GGML_MAX_DIMS: a tensor has 1 to 4 dimensions
MAX_DIMS = 4
# Sizes, counts and offsets beyond this are rejected before any arithmetic on them (the
# reader's numpy uint64 sums would wrap silently); no real file comes near.
_MAX_U63 = 2**63 - 1
# The fewest bytes one key/value (key length, type, one byte of value) and one tensor
# info (name length, n_dims, type, offset) can take: a count needing more than the
# rest of the file is rejected before the reader loops over it.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
_V = gguf.GGUFValueType


class _StringArray(gguf.gguf_reader.ReaderField):
    """An array of strings as one part (the array's bytes, lengths included), decoded by
    contents(): the stock reader's two numpy arrays per string take 70 ms under
    tracemalloc and many times the file's bytes for an array of short strings."""

    __slots__ = ()

    @staticmethod
    def order(alen: np.ndarray) -> str:
        bo = alen.dtype.byteorder
        return ">" if bo == ">" or (bo == "=" and sys.byteorder == "big") else "<"

    @staticmethod
    def walk(buf: Any, offs: int, n: int, order: str, out: list[str] | None = None) -> int:
        """The end of n strings from offs in buf (checked against its size); appends them
        decoded to `out` when given. buf: bytes or a uint8 ndarray view of the map (Any:
        numpy's stubs make an ndarray a Buffer from Python 3.12 on only)."""
        unpack, size = struct.Struct(order + "Q").unpack_from, len(buf)
        for _ in range(n):
            if offs + 8 > size:
                raise _Truncated(offs, offs + 8, size)
            slen = unpack(buf, offs)[0]
            if offs + 8 + slen > size:
                raise _Truncated(offs + 8, offs + 8 + slen, size)
            if out is not None:
                out.append(str(buf[offs + 8 : offs + 8 + slen], encoding="utf-8"))
            offs += 8 + slen
        return offs

    def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
        alen, blob = self.parts[4], self.parts[self.data[0]].tobytes()
        out: list[str] = []
        self.walk(blob, 0, int(alen[0]), self.order(alen), out)
        return out[index_or_slice]


class _BoundedReader(gguf.GGUFReader):
    """GGUFReader whose every read is checked against the file size.

    The stock reader silently returns short arrays past the end of the map and fails
    later with an unrelated error; this turns any such read into a clear truncation.
    It also reads each array of numbers as one block (the stock reader makes one numpy
    array per element: about 100 ms and 3 MB for a 1024-token vocabulary), rejects
    counts that the rest of the file cannot hold before looping over them, nested
    arrays (which llama.cpp rejects too), and tensor infos with sizes or offsets that
    would overflow the stock reader's uint64 arithmetic.

    Fields keep the stock layout, except for arrays: an array of numbers is one part
    (contents() is the whole list; contents(i) is not supported) and an array of strings
    is one _StringArray part.
    """

    _plain: np.ndarray | None = None

    def _get(self, offset: Any, dtype: Any, count: Any = 1, override_order: str | None = None) -> np.ndarray:
        offset, count = int(offset), int(count)
        dt = np.dtype(dtype)
        end = offset + dt.itemsize * count
        if offset < 0 or count < 0 or end > len(self.data):
            raise _Truncated(offset, end, len(self.data))
        if self._plain is None:
            # slices of a plain ndarray view of the map: no memmap bookkeeping per read
            self._plain = self.data.view(np.ndarray)
        arr = self._plain[offset:end].view(dt)
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    def _remaining(self, offs: int) -> int:
        return len(self.data) - int(offs)

    def _get_field_parts(
        self, orig_offs: int, raw_type: Any
    ) -> tuple[int, list[np.ndarray], list[int], list[Any]]:
        if _V(int(raw_type)) != _V.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        offs = int(orig_offs)
        raw_itype = self._get(offs, np.uint32)
        alen = self._get(offs + 4, np.uint64)
        offs += 12
        itype, n = _V(int(raw_itype[0])), int(alen[0])
        if itype == _V.ARRAY:
            raise ValueError("nested arrays are not supported")
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is not None:
            block = self._get(offs, nptype, n)  # bounded: a huge n is a truncation
            return offs + int(block.nbytes) - orig_offs, [raw_itype, alen, block], [2], [_V.ARRAY, itype]
        # strings: each at least its 8-byte length; one part holds them all (see _StringArray)
        if n * 8 > self._remaining(offs):
            raise _Truncated(offs, offs + n * 8, len(self.data))
        if self._plain is None:
            self._plain = self.data.view(np.ndarray)
        end = _StringArray.walk(self._plain, offs, n, _StringArray.order(alen))
        return end - orig_offs, [raw_itype, alen, self._plain[offs:end]], [2], [_V.ARRAY, itype]

    def _build_fields(self, offs: int, count: Any) -> int:
        # the stock loop, with a count check first and _StringArray for arrays of strings
        count = int(count)
        if count * _MIN_KV_BYTES > self._remaining(offs):
            raise ValueError(f"{count} key/values cannot fit in the {self._remaining(offs)} bytes left")
        for _ in range(count):
            orig_offs = offs
            klen, kdata = self._get_str(offs)
            offs += int(klen.nbytes + kdata.nbytes)
            raw_kv_type = self._get(offs, np.uint32)
            offs += int(raw_kv_type.nbytes)
            size, parts, idxs, types = self._get_field_parts(offs, raw_kv_type[0])
            kind = _StringArray if types == [_V.ARRAY, _V.STRING] else gguf.gguf_reader.ReaderField
            field = kind(
                orig_offs,
                str(bytes(kdata), encoding="utf-8"),
                [klen, kdata, raw_kv_type, *parts],
                [i + 3 for i in idxs],
                types,
            )
            self._push_field(field, skip_sum=True)
            offs += size
        return offs

    def _build_tensor_info(self, offs: int, count: Any) -> tuple[int, list[Any]]:
        if int(count) * _MIN_TENSOR_INFO_BYTES > self._remaining(offs):
            raise ValueError(
                f"{int(count)} tensor infos cannot fit in the {self._remaining(offs)} bytes left"
            )
        return super()._build_tensor_info(offs, count)

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        for f in fields:
            name = bytes(f.parts[1]).decode("utf-8")
            dims = [int(d) for d in f.parts[3]]
            if not 1 <= len(dims) <= MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {len(dims)} dimensions (1 to {MAX_DIMS} allowed)")
            n = 1
            for d in dims:
                n *= d
            if n > _MAX_U63:
                raise ValueError(f"tensor {name!r}: dimensions {dims} are too large")
            if int(f.parts[5][0]) > _MAX_U63:
                raise ValueError(f"tensor {name!r}: offset {int(f.parts[5][0])} is too large")
        super()._build_tensors(start_offs, fields)


@dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a model of llama's shape, from the `<arch>.*` keys (`llama.*`,
    `qwen2.*`, `gemma3.*`); `family` says what its architecture adds (realm_ext.arch).

    rms_eps and rope_freq_base are stored in the file as f32 (and used so by llama.cpp):
    a model made with eps 1e-5 loads with float(np.float32(1e-5)) = 9.99999974738e-06.
    rope_freq_factors comes from the `rope_freqs.weight` tensor, not a key (f32 values).
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
    # linear RoPE scaling (`<arch>.rope.scaling.factor`, type "linear"): angles / factor; 1 = none
    rope_scale_linear: float = 1.0
    # the `rope_freqs.weight` tensor (Llama 3.1/3.2): rope_dim / 2 divisors of pair i's angle
    rope_freq_factors: tuple[float, ...] | None = None
    family: Architecture = families.LLAMA
    # sliding-window attention (`<arch>.attention.sliding_window`): the window of the
    # layers that slide (swa_layers[i]), 0 for none; their RoPE base
    sliding_window: int = 0
    swa_layers: tuple[bool, ...] = ()
    rope_freq_base_swa: float = families.ROPE_FREQ_BASE_SWA_DEFAULT

    @property
    def arch(self) -> str:
        return self.family.name

    @property
    def rope_freq_scale(self) -> float:
        """What multiplies every angle: 1 / the linear factor in f32, as llama.cpp takes it."""
        return float(np.float32(1.0) / np.float32(self.rope_scale_linear))

    def slides(self, layer: int) -> bool:
        """Whether `layer` attends over the sliding window only."""
        return bool(self.swa_layers) and self.swa_layers[layer]

    def layer_window(self, layer: int) -> int | None:
        """The positions attention at p sees in `layer` (p - w + 1 .. p), None for all."""
        return self.sliding_window if self.slides(layer) else None

    def layer_rope(self, layer: int) -> tuple[float, float]:
        """(base, freq scale) of `layer`'s RoPE: sliding layers take the SWA base and no scaling."""
        if self.slides(layer):
            return self.rope_freq_base_swa, 1.0
        return self.rope_freq_base, self.rope_freq_scale

    @property
    def attn_scale(self) -> float:
        """1/sqrt(head_dim) in f32: what scales the scores (or, for Gemma, Q)."""
        return float(np.float32(1.0) / np.sqrt(np.float32(self.head_dim)))


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
    # byte-level BPE (model "gpt2"): the pre-tokenizer, PRE_* (PRE_NONE for "llama"), and
    # the `tokenizer.ggml.pre` value it came from ("" when absent)
    pre: int = 0
    pre_name: str = ""
    clean_spaces: bool = False  # detokenizing cleans spaces (clean_up_tokenization_spaces)
    ignore_merges: bool = False  # a word that is a token is taken whole (Llama 3)
    # the end-of-generation ids llama.cpp derives (EOS, EOT, EOM, "<|im_end|>" ...), ascending
    eog_ids: tuple[int, ...] = ()
    # ATTR_* per token as llama.cpp derives them from the types and the texts (uint32)
    token_attrs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))


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


# Per-layer tensor names of the llama architecture (every family has them), with their
# expected shapes; a family's extra ones are in realm_ext.arch.
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


def layer_tensor_names(cfg: LlamaConfig) -> tuple[str, ...]:
    """The tensors every layer of cfg's family holds (without `blk.N.` and `.weight`)."""
    return LAYER_TENSORS + cfg.family.extra_layer_tensors


def bias_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The optional Q/K/V biases of a layer (`attn_q` for `blk.N.attn_q.bias`) -> shape."""
    kv_dim = cfg.n_head_kv * cfg.head_dim
    return {"attn_q": (cfg.n_head * cfg.head_dim,), "attn_k": (kv_dim,), "attn_v": (kv_dim,)}


def expected_shapes(cfg: LlamaConfig, tied: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor a GGUF of cfg's family must hold, name -> numpy shape."""
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
    if cfg.family.qk_norm:
        per_layer |= {"attn_q_norm": (cfg.head_dim,), "attn_k_norm": (cfg.head_dim,)}
    if cfg.family.post_norms:
        per_layer |= {"post_attention_norm": (cfg.n_embd,), "post_ffw_norm": (cfg.n_embd,)}
    for i in range(cfg.n_layer):
        for name, shape in per_layer.items():
            shapes[f"blk.{i}.{name}.weight"] = shape
    return shapes


class Model:
    """A loaded GGUF of a supported family. Holds the memory map open until `close()`."""

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

    def bias(self, i: int, name: str) -> Tensor | None:
        """The bias of layer i's `name` (e.g. 'attn_q'), None when the file has none."""
        return self.tensors.get(f"blk.{i}.{name}.bias")

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
        return (
            f"Model({str(self.path)!r}, arch={c.arch!r}, n_layer={c.n_layer}, n_embd={c.n_embd}, "
            f"n_vocab={c.n_vocab})"
        )


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


def _family(path: Path, md: dict[str, Any]) -> Architecture:
    name = _get(path, md, "general.architecture", str)
    fam = families.lookup(name)
    if fam is None:
        supported = ", ".join(repr(n) for n in families.ARCHITECTURES)
        raise GGUFError(f"{path}: architecture {name!r} is not supported (supported: {supported})")
    return fam


def _sliding(path: Path, md: dict[str, Any], fam: Architecture, n_layer: int) -> tuple[int, tuple[bool, ...]]:
    """(window, per-layer slides) as llama.cpp sets them: a family with a sliding period
    and a window > 0 slides every layer but each period-th (`attention.sliding_window_pattern`
    overrides the period, or lists the layers); a window in another family is refused."""
    key = f"{fam.name}.attention.sliding_window"
    window = _get(path, md, key, int, 0)
    if window <= 0:
        return 0, ()
    if not fam.swa_period:
        raise GGUFError(
            f"{path}: key {key!r} is {window}: sliding-window attention is not supported for {fam.name}"
        )
    if window >= 2**31:
        raise GGUFError(f"{path}: key {key!r} is {window}: too large")
    pkey = f"{fam.name}.attention.sliding_window_pattern"
    pattern = md.get(pkey, fam.swa_period)
    if isinstance(pattern, list):
        if len(pattern) != n_layer or not all(isinstance(v, bool) for v in pattern):
            raise GGUFError(f"{path}: key {pkey!r} should be one bool per layer ({n_layer})")
        return window, tuple(pattern)
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 0:
        raise GGUFError(f"{path}: key {pkey!r} should be a count >= 0 or a list of bools, found {pattern!r}")
    return window, tuple(pattern == 0 or i % pattern < pattern - 1 for i in range(n_layer))


def _config(path: Path, md: dict[str, Any], n_tokens: int) -> LlamaConfig:
    fam = _family(path, md)
    a = fam.name
    n_embd, n_head, n_head_kv, n_layer, n_ff, n_ctx = _counts(path, md, a)
    head_dim, rope_dim = _head_dims(path, md, a, n_embd, n_head)
    n_vocab = _vocab_size(path, md, a, n_tokens)
    eps, base = _norm_eps_and_rope_base(path, md, a)
    softcap = _get(path, md, f"{a}.final_logit_softcapping", float, 0.0)
    if softcap != 0.0:
        raise GGUFError(
            f"{path}: key '{a}.final_logit_softcapping' is {softcap}: logit soft-capping is not supported"
        )
    window, swa_layers = _sliding(path, md, fam, n_layer)
    base_swa = _get(path, md, f"{a}.rope.freq_base_swa", float, families.ROPE_FREQ_BASE_SWA_DEFAULT)
    if not base_swa > 0:
        raise GGUFError(f"{path}: key '{a}.rope.freq_base_swa' is {base_swa}: must be > 0")
    return LlamaConfig(
        family=fam,
        sliding_window=window,
        swa_layers=swa_layers,
        rope_freq_base_swa=base_swa,
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
        rope_scale_linear=_rope_scaling(path, md, a),
    )


def _counts(path: Path, md: dict[str, Any], a: str) -> tuple[int, int, int, int, int, int]:
    """n_embd, n_head, n_head_kv, n_layer, n_ff, n_ctx: positive 32-bit counts, the
    heads dividing the embedding and the KV heads dividing the heads."""
    n_embd = _get(path, md, f"{a}.embedding_length", int)
    n_head = _get(path, md, f"{a}.attention.head_count", int)
    n_head_kv = _get(path, md, f"{a}.attention.head_count_kv", int, n_head)
    n_layer = _get(path, md, f"{a}.block_count", int)
    n_ff = _get(path, md, f"{a}.feed_forward_length", int)
    n_ctx = _get(path, md, f"{a}.context_length", int)
    for key, val in [
        (f"{a}.embedding_length", n_embd),
        (f"{a}.attention.head_count", n_head),
        (f"{a}.attention.head_count_kv", n_head_kv),
        (f"{a}.block_count", n_layer),
        (f"{a}.feed_forward_length", n_ff),
        (f"{a}.context_length", n_ctx),
    ]:
        if not 0 < val < 2**31:
            raise GGUFError(f"{path}: key {key!r} should be a positive count, found {val}")
    if n_embd % n_head != 0:
        raise GGUFError(f"{path}: inconsistent config: n_embd {n_embd} is not divisible by n_head {n_head}")
    if n_head % n_head_kv != 0:
        raise GGUFError(
            f"{path}: inconsistent config: n_head {n_head} is not a multiple of n_head_kv {n_head_kv}"
        )
    return n_embd, n_head, n_head_kv, n_layer, n_ff, n_ctx


def _head_dims(path: Path, md: dict[str, Any], a: str, n_embd: int, n_head: int) -> tuple[int, int]:
    """head_dim (even, the keys' and the values' alike) and rope_dim (even, <= head_dim)."""
    head_dim = _get(path, md, f"{a}.attention.key_length", int, n_embd // n_head)
    v_dim = _get(path, md, f"{a}.attention.value_length", int, head_dim)
    if v_dim != head_dim or head_dim <= 0 or head_dim % 2:
        raise GGUFError(
            f"{path}: inconsistent config: head_dim {head_dim} must be even "
            f"and equal the value length {v_dim}"
        )
    rope_dim = _get(path, md, f"{a}.rope.dimension_count", int, head_dim)
    if rope_dim <= 0 or rope_dim > head_dim or rope_dim % 2:
        raise GGUFError(
            f"{path}: inconsistent config: rope dimension {rope_dim} must be even and <= head_dim {head_dim}"
        )
    return head_dim, rope_dim


def _vocab_size(path: Path, md: dict[str, Any], a: str, n_tokens: int) -> int:
    """<arch>.vocab_size, which must be the tokenizer's token count (the default)."""
    n_vocab = _get(path, md, f"{a}.vocab_size", int, n_tokens)
    if n_vocab != n_tokens:
        raise GGUFError(
            f"{path}: inconsistent config: {a}.vocab_size is {n_vocab} "
            f"but the tokenizer has {n_tokens} tokens"
        )
    return n_vocab


def _norm_eps_and_rope_base(path: Path, md: dict[str, Any], a: str) -> tuple[float, float]:
    """The RMSNorm epsilon and the RoPE base, both > 0."""
    eps = _get(path, md, f"{a}.attention.layer_norm_rms_epsilon", float)
    base = _get(path, md, f"{a}.rope.freq_base", float, 10000.0)
    if not (eps > 0 and base > 0):
        raise GGUFError(f"{path}: inconsistent config: rms epsilon {eps} and rope base {base} must be > 0")
    return eps, base


ROPE_SCALING_TYPES = ("none", "linear")


def _rope_scaling(path: Path, md: dict[str, Any], a: str) -> float:
    """The linear RoPE factor llama.cpp applies (1.0 for none), from `<arch>.rope.scaling.type`
    (absent means "linear"), `<arch>.rope.scaling.factor` or else the older
    `<arch>.rope.scale_linear` (absent means 1); type "none" ignores the factor. A factor
    that is not > 0 is refused (llama.cpp would take 0 as none and a negative as is)."""
    kind = _get(path, md, f"{a}.rope.scaling.type", str, "linear")
    if kind not in ROPE_SCALING_TYPES:
        raise GGUFError(
            f"{path}: key '{a}.rope.scaling.type' is {kind!r}: not supported (supported: 'none', 'linear')"
        )
    attn = _get(path, md, f"{a}.rope.scaling.attn_factor", float, 1.0)
    if attn != 1.0:
        raise GGUFError(f"{path}: key '{a}.rope.scaling.attn_factor' is {attn}: only 1.0 is supported")
    key = f"{a}.rope.scaling.factor"
    if key not in md:
        key = f"{a}.rope.scale_linear"
    factor = _get(path, md, key, float, None)
    if factor is None or kind == "none":
        return 1.0
    if not (factor > 0.0 and np.isfinite(factor)):
        raise GGUFError(f"{path}: key {key!r} is {factor}: the RoPE scaling factor must be > 0")
    return factor


def _rope_freqs(path: Path, tensors: dict[str, Tensor], cfg: LlamaConfig) -> tuple[float, ...] | None:
    """The `rope_freqs.weight` divisors: f32, exactly rope_dim / 2 positive finite values."""
    t = tensors.get(ROPE_FREQS)
    if t is None:
        return None
    want = (cfg.rope_dim // 2,)
    if t.type != GGMLType.F32 or t.shape != want:
        raise GGUFError(
            f"{path}: tensor {ROPE_FREQS!r} is {t.type.name} of shape {t.shape}, expected F32 of shape {want}"
        )
    vals = t.dequantize().reshape(-1)
    bad = ~(np.isfinite(vals) & (vals > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise GGUFError(f"{path}: tensor {ROPE_FREQS!r} has value {vals[i]} at {i}: factors must be > 0")
    return tuple(float(v) for v in vals)


# The pre-tokenizers of byte-level BPE (realm.h's REALM_PRE_*), and the
# `tokenizer.ggml.pre` values llama.cpp (llama-vocab.cpp) maps to each of them.
PRE_NONE, PRE_GPT2, PRE_LLAMA3, PRE_QWEN2, PRE_SMOLLM = 0, 1, 2, 3, 4
PRE_NAMES: dict[str, int] = {
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
         "jina-v5-nano"],
        PRE_LLAMA3,
    ),
    **dict.fromkeys(
        ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "a.x-4.0", "mellum", "exaone4"], PRE_GPT2
    ),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], PRE_QWEN2),
    "smollm": PRE_SMOLLM,
}  # fmt: skip
# llama.cpp turns clean_spaces off for these values (on for every other BPE value)
_NO_CLEAN_SPACES = {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "smollm"}

# llama.cpp's token attributes (llama_token_attr; realm.h's REALM_ATTR_*)
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_BYTE = 1, 2, 4, 8, 16, 32
ATTR_LSTRIP, ATTR_RSTRIP = 128, 256
_TYPE_ATTR = {
    1: ATTR_NORMAL,
    2: ATTR_UNKNOWN,
    3: ATTR_CONTROL,
    4: ATTR_USER_DEFINED,
    5: ATTR_UNUSED,
    6: ATTR_BYTE,
}

# The token texts llama.cpp (llama_vocab::impl::load) looks for when the file names no
# such token: the first match becomes EOT / EOM / FIM pad, repo, file separator.
_EOT_TEXTS = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
}  # fmt: skip
_EOM_TEXTS = {"<|eom_id|>"}
_FIM_TEXTS = {
    "pre": {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>", "<|prefix|>"},
    "suf": {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>", "<|suffix|>"},
    "mid": {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>", "<|middle|>"},
    "pad": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
    "rep": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
    "sep": {"<|file_sep|>"},
}  # fmt: skip
# ... and the texts that always end generation
_EOG_TEXTS = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
}  # fmt: skip


def _pre_tokenizer(path: Path, md: dict[str, Any], kind: str) -> tuple[int, str, bool, bool, bool]:
    """(PRE_*, the value, clean_spaces, ignore_merges, add_bos default) as llama.cpp sets
    them for `tokenizer.ggml.pre`; a value this guest cannot split refused."""
    name = _get(path, md, "tokenizer.ggml.pre", str, "")
    if kind == "llama":
        return PRE_NONE, name, False, False, True
    pre = PRE_NAMES.get(name)
    if pre is None:
        supported = ", ".join(repr(n) for n in PRE_NAMES)
        found = repr(name) if name else "absent"
        raise GGUFError(
            f"{path}: key 'tokenizer.ggml.pre' is {found}: that pre-tokenizer is not supported "
            f"(supported: {supported})"
        )
    llama3 = pre == PRE_LLAMA3
    return pre, name, name not in _NO_CLEAN_SPACES, llama3, llama3


def _special_ids(md_id: dict[str, int | None], tokens: list[str], attrs: np.ndarray) -> tuple[int, ...]:
    """The end-of-generation ids, as llama.cpp derives them; marks the tokens it treats as
    control in `attrs` on the way (llama_vocab::impl::load, in its order)."""
    text_ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        text_ids[t] = i  # llama.cpp's token_to_id: the last of equal texts
    found = dict(md_id)

    def mark(i: int) -> None:
        attrs[i] |= ATTR_CONTROL

    # the first token with one of these texts (in id order) where the file names none
    for key, texts in [("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS)] + [
        (f"fim_{k}", v) for k, v in _FIM_TEXTS.items()
    ]:
        if found.get(key) is None:
            hit = next((i for t, i in sorted(text_ids.items(), key=lambda kv: kv[1]) if t in texts), None)
            if hit is not None:
                found[key] = hit
                mark(hit)
    for t, i in text_ids.items():  # control tokens named "unused"
        if attrs[i] & ATTR_CONTROL and "unused" in t:
            attrs[i] |= ATTR_UNUSED
    eog = {tid for k in ("fim_pad", "fim_rep", "fim_sep") if (tid := found.get(k)) is not None}
    for t, i in text_ids.items():
        if t in _EOG_TEXTS:
            eog.add(i)
            mark(i)
    for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if t in text_ids:
            attrs[text_ids[t]] = ATTR_USER_DEFINED
    eog |= {tid for k in ("eos", "eot", "eom") if (tid := found.get(k)) is not None}
    eog_texts = {tokens[i]: i for i in eog}
    if "<|end|>" in eog_texts and (
        ("<|return|>" in eog_texts and ("<|call|>" in eog_texts or "<|calls|>" in eog_texts))
        or ("<|flush|>" in eog_texts and ("<|call|>" in eog_texts or "<|calls|>" in eog_texts))
    ):
        eog.discard(eog_texts["<|end|>"])
        attrs[eog_texts["<|end|>"]] = ATTR_USER_DEFINED
    if "</s>" in eog_texts and ("<|tool_response>" in eog_texts or "<|plamo:eos|>" in eog_texts):
        eog.discard(eog_texts["</s>"])
        attrs[eog_texts["</s>"]] = ATTR_NORMAL
    return tuple(sorted(eog))


def _strip_attrs(md: dict[str, Any], pre_name: str, tokens: list[str], attrs: np.ndarray) -> None:
    """The LSTRIP / RSTRIP attributes llama.cpp sets by model name or pre-tokenizer."""
    name = str(md.get("general.name", "")).lower()
    ids = {t: i for i, t in enumerate(tokens)}
    if any(k in pre_name for k in ("jina-v2-de", "jina-v2-es", "jina-v2-code")):
        if "<mask>" in ids:
            attrs[ids["<mask>"]] |= ATTR_LSTRIP
    elif "phi-3" in name or "phi3" in name:
        special = attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0
        attrs[special] |= ATTR_RSTRIP
        if "</s>" in ids:
            attrs[ids["</s>"]] |= ATTR_RSTRIP
        for t in ("<unk>", "<s>", "<|endoftext|>"):
            if t in ids:
                attrs[ids[t]] &= ~np.uint32(ATTR_RSTRIP)
    elif "modern-bert" in name and "[MASK]" in ids:
        attrs[ids["[MASK]"]] |= ATTR_LSTRIP


def _tokenizer(path: Path, md: dict[str, Any]) -> TokenizerData:
    kind = _get(path, md, "tokenizer.ggml.model", str)
    if kind not in ("llama", "gpt2"):
        raise GGUFError(f"{path}: tokenizer model {kind!r} is not supported (expected 'llama' or 'gpt2')")
    tokens = _get(path, md, "tokenizer.ggml.tokens", list)
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise GGUFError(f"{path}: key 'tokenizer.ggml.tokens' should be a non-empty list of strings")
    n = len(tokens)
    arrays = {}
    for key, default, dtype, kinds in (
        ("tokenizer.ggml.scores", [0.0] * n, np.float32, (int, float)),
        ("tokenizer.ggml.token_type", [1] * n, np.int32, (int,)),
    ):
        vals = _get(path, md, key, list, default)
        if len(vals) != n:
            raise GGUFError(f"{path}: key {key!r} has {len(vals)} entries, expected {n} (one per token)")
        if not all(isinstance(v, kinds) and not isinstance(v, bool) for v in vals):
            raise GGUFError(f"{path}: key {key!r} should be a list of numbers")
        if dtype is np.int32 and not all(-(2**31) <= v < 2**31 for v in vals):
            raise GGUFError(f"{path}: key {key!r} has a value outside int32")
        arrays[key] = np.asarray(vals, dtype=dtype)
    scores, types = arrays["tokenizer.ggml.scores"], arrays["tokenizer.ggml.token_type"]
    merges = [str(m) for m in _get(path, md, "tokenizer.ggml.merges", list, [])]
    pre, pre_name, clean_spaces, ignore_merges, add_bos_default = _pre_tokenizer(path, md, kind)
    if kind == "gpt2":
        if not merges:
            raise GGUFError(f"{path}: a 'gpt2' tokenizer needs 'tokenizer.ggml.merges'")
        for i, m in enumerate(merges):
            if m.find(" ", 1) < 1 or m.find(" ", 1) == len(m) - 1:
                raise GGUFError(f"{path}: merge {i} ({m!r}) is not two texts separated by a space")

    def token_id(key: str) -> int | None:
        tid = _get(path, md, key, int, None)
        if tid is not None and not 0 <= tid < n:
            raise GGUFError(f"{path}: key {key!r} is {tid}, outside the vocabulary of {n} tokens")
        return tid

    ids = {
        k: token_id(f"tokenizer.ggml.{k}_token_id")
        for k in (
            "bos",
            "eos",
            "eot",
            "eom",
            "fim_pre",
            "fim_suf",
            "fim_mid",
            "fim_pad",
            "fim_rep",
            "fim_sep",
        )
    }
    attrs = np.asarray([_TYPE_ATTR.get(int(t), 0) for t in types], np.uint32)
    eog_ids = _special_ids(ids, tokens, attrs)
    _strip_attrs(md, pre_name, tokens, attrs)
    return TokenizerData(
        model=kind,
        tokens=tokens,
        scores=scores,
        token_types=types,
        merges=merges,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        unk_id=token_id("tokenizer.ggml.unknown_token_id"),
        pad_id=token_id("tokenizer.ggml.padding_token_id"),
        add_bos=_get(path, md, "tokenizer.ggml.add_bos_token", bool, add_bos_default),
        add_eos=_get(path, md, "tokenizer.ggml.add_eos_token", bool, False),
        add_space_prefix=_get(path, md, "tokenizer.ggml.add_space_prefix", bool, kind == "llama"),
        pre=pre,
        pre_name=pre_name,
        clean_spaces=clean_spaces,
        ignore_merges=ignore_merges,
        eog_ids=eog_ids,
        token_attrs=attrs,
    )


def _tensors(path: Path, reader: gguf.GGUFReader, cfg: LlamaConfig) -> dict[str, Tensor]:
    size = int(reader.data.size)
    align = int(reader.alignment)
    tensors: dict[str, Tensor] = {}
    for rt in reader.tensors:
        # sizes and offsets from the file's own fields, in Python ints (no uint64 wrap)
        _, _, _, dims, _, rel_part = rt.field.parts
        shape = tuple(int(d) for d in reversed(dims.tolist()))
        if rt.tensor_type not in quant.SUPPORTED_TYPES:
            names = ", ".join(t.name for t in quant.SUPPORTED_TYPES)
            raise GGUFError(
                f"{path}: tensor {rt.name!r} has unsupported type {rt.tensor_type.name} (supported: {names})"
            )
        try:
            rb = quant.row_bytes(rt.tensor_type, shape[-1])
        except ValueError as e:
            raise GGUFError(f"{path}: tensor {rt.name!r} of shape {shape}: {e}") from None
        n_rows = 1
        for d in shape[:-1]:
            n_rows *= d
        rel = int(rel_part[0])
        start, nbytes = int(reader.data_offset) + rel, n_rows * rb
        if rel % align:
            raise GGUFError(
                f"{path}: tensor {rt.name!r} has offset {rel}, not a multiple of the alignment {align}"
            )
        if start + nbytes > size:
            raise GGUFError(
                f"{path}: truncated: tensor {rt.name!r} needs bytes {start}..{start + nbytes}, "
                f"the file has {size}"
            )
        raw = reader.data[start : start + nbytes].reshape(n_rows, rb)
        tensors[rt.name] = Tensor(
            name=rt.name, type=GGMLType(int(rt.tensor_type)), shape=shape, raw=raw, offset=start
        )

    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise GGUFError(f"{path}: the data of tensors {a!r} and {b!r} overlap")

    tied = "output.weight" not in tensors
    # expected_shapes lists n_layer * 9 (or more) names: with a huge block_count, list only
    # enough layers to find the first missing tensor (as many as the file could hold, + 1)
    n_layer = min(cfg.n_layer, len(tensors) // len(layer_tensor_names(cfg)) + 1)
    for name, want in expected_shapes(replace(cfg, n_layer=n_layer), tied).items():
        if name not in tensors:
            raise GGUFError(f"{path}: missing tensor {name!r} (expected shape {want})")
    for name, want in expected_shapes(cfg, tied).items():
        if name not in tensors:
            raise GGUFError(f"{path}: missing tensor {name!r} (expected shape {want})")
        got = tensors[name].shape
        if got != want:
            raise GGUFError(f"{path}: tensor {name!r} has shape {got}, expected {want}")
    for i in range(cfg.n_layer):
        for base, want in bias_shapes(cfg).items():
            t = tensors.get(f"blk.{i}.{base}.bias")
            if t is not None and t.shape != want:
                raise GGUFError(f"{path}: tensor {t.name!r} has shape {t.shape}, expected {want}")
    return tensors


def load_gguf(path: str | os.PathLike[str]) -> Model:
    """Parse and validate a GGUF of a supported family; the tensor data stays memory-mapped."""
    path = Path(path)
    reader = _open_reader(path)
    md = _metadata(path, reader)
    tokenizer = _tokenizer(path, md)
    config = _config(path, md, len(tokenizer.tokens))
    tensors = _tensors(path, reader, config)
    config = replace(config, rope_freq_factors=_rope_freqs(path, tensors, config))
    return Model(path, reader, md, config, tokenizer, tensors)
