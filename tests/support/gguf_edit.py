"""Test helper: rewrite a GGUF with the gguf package's own writer, changing keys or
tensors, to produce the malformed files the loader must reject."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

DROP = object()


def rewrite(
    src: Path,
    dst: Path,
    arch: str = "llama",
    kv: dict[str, Any] | None = None,
    tensors: dict[str, Any] | None = None,
    alignment: int | None = None,
) -> Path:
    """Copy src to dst. kv: key -> DROP or (value, GGUFValueType[, sub_type]).
    tensors: name -> DROP or (raw uint8 array (rows, row_bytes), GGMLQuantizationType).
    alignment: write a general.alignment key and align the tensor data to it."""
    kv = kv or {}
    tensors = tensors or {}
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch=arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in kv:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub_type=sub)
    for key, val in kv.items():
        if val is not DROP:
            w.add_key_value(key, *val)
    for t in r.tensors:
        if t.name in tensors:
            if tensors[t.name] is DROP:
                continue
            raw, qtype = tensors[t.name]
        else:
            raw, qtype = np.asarray(t.data).view(np.uint8), t.tensor_type
            raw = raw.reshape(*t.data.shape[:-1], -1) if t.data.ndim > 1 else raw.reshape(-1)
        w.add_tensor(t.name, np.ascontiguousarray(raw), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
