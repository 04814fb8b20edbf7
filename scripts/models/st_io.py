"""Minimal safetensors reader/writer in pure Python (standard library only).

What it is: enough of the safetensors format (8-byte little-endian header
length, JSON header, raw little-endian data) for the scripts in scripts/models/
to read weights written by the Rust generator and to write fixtures and
converted weights. What it is not: a validating or memory-mapping
implementation; it reads whole files into memory.
"""

import json
import os
import struct

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read(path):
    """Return (tensors, metadata): tensors maps name -> (dtype, shape, raw bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    metadata = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        tensors[name] = (info["dtype"], list(info["shape"]), data[base + start : base + end])
    return tensors, metadata


def write(path, tensors, metadata=None):
    """Write name -> (dtype, shape, raw bytes) as a safetensors file (keys sorted)."""
    header = {}
    offset = 0
    names = sorted(tensors)
    for name in names:
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((8 - len(blob) % 8) % 8)
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            f.write(tensors[name][2])
    os.replace(tmp, path)


def fnv1a64(data):
    """64-bit FNV-1a (same as the Rust `weights::fnv1a64`)."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def layout_fingerprint(shapes):
    """FNV-1a over sorted `name:d0,d1,...\\n` lines (same as the Rust `layout_fingerprint`)."""
    lines = sorted(f"{name}:{','.join(str(d) for d in shape)}\n" for name, shape in shapes.items())
    return fnv1a64("".join(lines).encode("utf-8"))
