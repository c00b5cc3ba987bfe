"""Convert an F32/F16 GGUF to a quantized type or llama.cpp mixed recipe.

A *recipe* is either a single type ("Q4_0", "Q6_K", ...: every 2-D tensor becomes
that type, like llama-quantize --pure) or one of llama.cpp's mixes:

- Q4_K_M / Q5_K_M: base Q4_K / Q5_K; output.weight (or a tied token_embd) Q6_K;
  attn_v and ffn_down Q6_K on the layers where llama.cpp's `use_more_bits` holds:
  i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2.

In every recipe 1-D tensors (norms, biases) stay F32, and a tensor whose rows are not a
multiple of the chosen type's block falls back to a type that fits (as llama.cpp:
Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, a 32-block type -> F16),
and the fallback is reported through `log`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import gguf
import numpy as np
from tqdm import tqdm

from realm_ext import quant

GGMLType = gguf.GGMLQuantizationType
FileType = gguf.LlamaFileType

MIXED_RECIPES = {"Q4_K_M": GGMLType.Q4_K, "Q5_K_M": GGMLType.Q5_K}
RECIPES: tuple[str, ...] = (*(t.name for t in quant.SUPPORTED_TYPES), *MIXED_RECIPES)

_FILE_TYPES = {
    "F32": FileType.ALL_F32,
    "F16": FileType.MOSTLY_F16,
    "BF16": FileType.MOSTLY_BF16,
    "Q4_0": FileType.MOSTLY_Q4_0,
    "Q4_1": FileType.MOSTLY_Q4_1,
    "Q5_0": FileType.MOSTLY_Q5_0,
    "Q5_1": FileType.MOSTLY_Q5_1,
    "Q8_0": FileType.MOSTLY_Q8_0,
    "Q2_K": FileType.MOSTLY_Q2_K,
    "Q3_K": FileType.MOSTLY_Q3_K_S,
    "Q4_K": FileType.MOSTLY_Q4_K_S,
    "Q5_K": FileType.MOSTLY_Q5_K_S,
    "Q6_K": FileType.MOSTLY_Q6_K,
    "Q4_K_M": FileType.MOSTLY_Q4_K_M,
    "Q5_K_M": FileType.MOSTLY_Q5_K_M,
}

_FALLBACK = {
    GGMLType.Q2_K: GGMLType.Q4_0,
    GGMLType.Q3_K: GGMLType.Q4_0,
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}

_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


def parse_recipe(recipe: str) -> str:
    r = recipe.upper()
    if r not in RECIPES:
        raise ValueError(f"unknown type or recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    return r


def recipe_file_type(recipe: str) -> FileType:
    """The general.file_type value llama.cpp writes for this recipe."""
    return _FILE_TYPES[parse_recipe(recipe)]


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of layers that get more bits in the _M mixes."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _fits(t: GGMLType, n_cols: int) -> bool:
    return n_cols % quant.block_size(t)[0] == 0


def tensor_type_for(
    name: str,
    shape: tuple[int, ...],
    recipe: str,
    n_layer: int,
    tied: bool = False,
    log: Callable[[str], None] | None = None,
) -> GGMLType:
    """The type tensor `name` (numpy `shape`) gets under `recipe`."""
    r = parse_recipe(recipe)
    if len(shape) == 1:
        return GGMLType.F32
    if r in MIXED_RECIPES:
        t = MIXED_RECIPES[r]
        m = _LAYER_RE.match(name)
        is_output = name == "output.weight" or (tied and name == "token_embd.weight")
        more_bits = (
            m is not None and m.group(2) in ("attn_v", "ffn_down") and use_more_bits(int(m.group(1)), n_layer)
        )
        if is_output or more_bits:
            t = GGMLType.Q6_K
    else:
        t = GGMLType.__members__[r]
    n_cols = shape[-1]
    if not _fits(t, n_cols):
        fallback = _FALLBACK.get(t, GGMLType.F16)
        if not _fits(fallback, n_cols):
            fallback = GGMLType.F16
        if log is not None:
            log(f"{name}: rows of {n_cols} are not a multiple of the {t.name} block; using {fallback.name}")
        t = fallback
    return t


def write_gguf(
    out: str | os.PathLike[str],
    add_metadata: Callable[[gguf.GGUFWriter], None],
    plan: Mapping[str, tuple[tuple[int, ...], GGMLType]],
    make: Callable[[str], np.ndarray],
    progress: bool = False,
    arch: str = "llama",
) -> Path:
    """Stream a GGUF of architecture `arch` to `out`: metadata, then each tensor of `plan`
    (name -> (numpy shape, type)) made by `make(name)` as raw bytes, one at a time.

    Written to a temporary file beside `out` and renamed at the end, so a failure
    never leaves a partial file (and `out` may be the input being converted)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(tmp, arch=arch)
    try:
        add_metadata(w)
        for name, (shape, t) in plan.items():
            rb = quant.row_bytes(t, shape[-1])
            byte_shape = (*shape[:-1], rb)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=t)
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        total = sum(int(np.prod((*s[:-1], quant.row_bytes(t, s[-1])))) for s, t in plan.values())
        with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc=out.name) as bar:
            for name, (shape, t) in plan.items():
                bar.set_postfix_str(f"{name} {t.name}", refresh=False)
                raw = make(name)
                want = (*shape[:-1], quant.row_bytes(t, shape[-1]))
                if raw.dtype != np.uint8 or raw.shape != want:
                    raise AssertionError(f"{name}: made {raw.dtype} {raw.shape}, planned uint8 {want}")
                w.write_tensor_data(raw)
                bar.update(raw.nbytes)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


# Keys the converter sets itself rather than copying.
_OWN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")


def copy_metadata(reader: gguf.GGUFReader, w: gguf.GGUFWriter, skip: tuple[str, ...] = _OWN_KEYS) -> None:
    """Copy every key/value of `reader` (but `skip` and the GGUF.* header) to `w`."""
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1] if len(f.types) > 1 else gguf.GGUFValueType.UINT8
            if sub == gguf.GGUFValueType.ARRAY:
                raise ValueError(f"key {key!r}: nested arrays are not supported")
            w.add_key_value(key, f.contents(), vtype, sub_type=sub)
        else:
            w.add_key_value(key, f.contents(), vtype)


def quantize_model(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    recipe: str,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Convert the F32/F16/BF16 GGUF `src` to `recipe`, keeping its architecture and all metadata."""
    from realm_ext.model import GGUFError, load_gguf

    recipe = parse_recipe(recipe)
    model = load_gguf(src)
    float_types = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
    for t in model.tensors.values():
        if t.type not in float_types:
            raise GGUFError(
                f"{model.path}: tensor {t.name!r} is already {t.type.name}; quantize needs F32/F16/BF16 input"
            )
    plan = {
        name: (t.shape, tensor_type_for(name, t.shape, recipe, model.config.n_layer, model.tied_output, log))
        for name, t in model.tensors.items()
    }

    def add_metadata(w: gguf.GGUFWriter) -> None:
        copy_metadata(model.reader, w)
        w.add_file_type(int(recipe_file_type(recipe)))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def make(name: str) -> np.ndarray:
        t = model.tensors[name]
        return quant.quantize(t.dequantize(), plan[name][1])

    try:
        return write_gguf(out, add_metadata, plan, make, progress, arch=model.config.arch)
    finally:
        model.close()
