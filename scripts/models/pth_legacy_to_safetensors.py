#!/usr/bin/env python3
"""Convert a LEGACY (pre-1.6, non-zip) PyTorch ``.pth`` state dict to safetensors.

What it is: a standard-library-only reader for the old ``torch.save`` stream
format (magic pickle, protocol pickle, sys-info pickle, the object pickle whose
tensors point at storages through ``persistent_load``, the pickled list of
storage keys, then each storage as an 8-byte little-endian element count
followed by its raw little-endian bytes) and a hand-written safetensors writer
(st_io.py: 8-byte header length + JSON header + data).

What it is not: a general PyTorch loader. It needs no torch and no numpy, handles
only float32/float64/int64 (etc.) CPU tensors held in a (nested) dict, and refuses
the newer zip-based format. Float64 tensors are written as float32; integer
tensors (e.g. ``num_batches_tracked``) are skipped unless ``--keep-int``.

Usage: pth_legacy_to_safetensors.py INPUT.pth OUTPUT.safetensors
"""

import argparse
import array
import collections
import os
import pickle
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402  (sibling module)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# storage class name -> (array typecode, element size, safetensors dtype)
STORAGE_TYPES = {
    "FloatStorage": ("f", 4, "F32"),
    "DoubleStorage": ("d", 8, "F64"),
    "LongStorage": ("q", 8, "I64"),
    "IntStorage": ("i", 4, "I32"),
    "ShortStorage": ("h", 2, "I16"),
    "CharStorage": ("b", 1, "I8"),
    "ByteStorage": ("B", 1, "U8"),
    "BoolStorage": ("B", 1, "BOOL"),
}


class StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends (only its name matters)."""

    def __init__(self, name):
        self.name = name


class Storage:
    """A storage announced by the object pickle; its bytes come later in the file."""

    def __init__(self, kind, key, numel):
        self.kind = kind
        self.key = key
        self.numel = numel
        self.data = None  # array.array, filled once the raw storages are read


class LazyTensor:
    """What ``torch._utils._rebuild_tensor_v2`` returns here: a view on a storage."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def values(self):
        """The tensor's elements in row-major (C) order."""
        data = self.storage.data
        numel = 1
        for s in self.size:
            numel *= s
        contiguous = []
        acc = 1
        for s in reversed(self.size):
            contiguous.append(acc)
            acc *= s
        contiguous = tuple(reversed(contiguous))
        if numel == 0:
            return array.array(data.typecode)
        if self.stride == contiguous or numel == 1:
            return data[self.offset : self.offset + numel]
        out = array.array(data.typecode)
        index = [0] * len(self.size)
        for _ in range(numel):
            out.append(data[self.offset + sum(i * s for i, s in zip(index, self.stride))])
            for d in reversed(range(len(self.size))):
                index[d] += 1
                if index[d] < self.size[d]:
                    break
                index[d] = 0
        return out


def _rebuild_tensor(storage, storage_offset, size, stride, *_rest):
    return LazyTensor(storage, storage_offset, size, stride)


class LegacyUnpickler(pickle.Unpickler):
    """Unpickler that knows just enough torch names to rebuild a state dict."""

    def __init__(self, fileobj, storages):
        super().__init__(fileobj)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_TYPES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, root_key, location, numel, view_metadata)
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, numel, view_metadata = pid
        if not isinstance(kind, StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {kind!r}")
        storage = self.storages.get(key)
        if storage is None:
            storage = Storage(kind.name, key, numel)
            self.storages[key] = storage
        if view_metadata is not None:
            view_key, view_offset, view_size = view_metadata
            view = Storage(kind.name, view_key, view_size)
            view.root, view.root_offset = storage, view_offset
            return view
        return storage


def read_legacy(path):
    """Return an ordered {name: LazyTensor} from a legacy torch.save file."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise SystemExit(f"{path}: zip-based torch file; this reader handles only the legacy format")
        f.seek(0)
        if pickle.load(f) != MAGIC_NUMBER:
            raise SystemExit(f"{path}: not a legacy torch file (bad magic number)")
        if pickle.load(f) != PROTOCOL_VERSION:
            raise SystemExit(f"{path}: unsupported legacy protocol version")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", False):
            raise SystemExit(f"{path}: big-endian torch files are not supported")
        storages = {}
        obj = LegacyUnpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[key]
            typecode, elem_size, _ = STORAGE_TYPES[storage.kind]
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * elem_size)
            if len(raw) != numel * elem_size:
                raise SystemExit(f"{path}: truncated storage {key}")
            data = array.array(typecode)
            data.frombytes(raw)
            if sys.byteorder != "little":
                data.byteswap()
            storage.data = data
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SystemExit(f"{path}: top-level object is {type(obj).__name__}, expected a state dict")
    out = collections.OrderedDict()
    for name, value in obj.items():
        if isinstance(value, LazyTensor):
            storage = value.storage
            if hasattr(storage, "root"):
                value = LazyTensor(storage.root, storage.root_offset + value.offset, value.size, value.stride)
            out[name] = value
    return out


def convert(src, dst, keep_int=False):
    state = read_legacy(src)
    tensors = {}
    params = 0
    for name, t in state.items():
        values = t.values()
        dtype = STORAGE_TYPES[t.storage.kind][2]
        if dtype == "F64":
            values = array.array("f", values)
            dtype = "F32"
        elif dtype != "F32" and not keep_int:
            continue
        if sys.byteorder != "little":
            values.byteswap()
        tensors[name] = (dtype, t.size, values.tobytes())
        if dtype == "F32":
            n = 1
            for s in t.size:
                n *= s
            params += n
    st_io.write(dst, tensors, {"source": os.path.basename(src), "format": "pt"})
    return len(tensors), params


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input")
    parser.add_argument("output", nargs="?")
    parser.add_argument("--keep-int", action="store_true", help="also keep integer tensors")
    parser.add_argument("--list", action="store_true", help="print tensor names and shapes")
    args = parser.parse_args()
    if args.list:
        for name, t in read_legacy(args.input).items():
            print(name, t.storage.kind, list(t.size))
        return
    if args.output is None:
        parser.error("OUTPUT is required unless --list")
    count, params = convert(args.input, args.output, args.keep_int)
    print(f"wrote {args.output}: {count} tensors, {params} float parameters")


if __name__ == "__main__":
    main()
