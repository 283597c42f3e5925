#!/usr/bin/env python3
"""Writes the small seed corpus of fuzz_safetensors into corpus/safetensors/ beside this script.

Valid files give the fuzzer the structure to mutate; invalid ones start it next to each check.
Run it again after changing the list; the files are committed, so the fuzzer needs no Python.
"""
import json
import pathlib
import struct


def pack(header: str, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def valid(tensors, metadata=None):
    header = dict(tensors)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":"), sort_keys=True)
    text += " " * (-len(text) % 8)
    size = max([t["data_offsets"][1] for t in tensors.values()], default=0)
    return pack(text, bytes(range(size)))


SEEDS = {
    "valid_empty": valid({}),
    "valid_f32": valid({"x": entry("F32", [2], 0, 8)}),
    "valid_all_dtypes": valid({
        "a": entry("F64", [1], 0, 8), "b": entry("BF16", [2], 8, 12),
        "c": entry("F16", [], 12, 14), "d": entry("I64", [1], 14, 22),
        "e": entry("I32", [1, 1], 22, 26), "f": entry("U8", [3], 26, 29),
        "g": entry("F32", [0, 5], 29, 29)}),
    "valid_metadata": valid({"input": entry("F32", [1, 2], 0, 8)},
                            {"tokens_per_rank": "1", "top_k": "2"}),
    "bad_short": b"\x05\x00\x00",
    "bad_length": pack("{}", length=1 << 63),
    "bad_json": pack('{"x":{"dtype":"F32",'),
    "bad_nul": pack(b'{}\x00\x00'),
    "bad_utf8": pack(b'{"\xc0\xaf":1}'),
    "bad_nesting": pack('{"a":' + "[" * 12 + "]" * 12 + "}"),
    "bad_duplicate": pack('{"a":{},"a":{}}'),
    "bad_dtype": pack(json.dumps({"x": entry("BOOL", [1], 0, 1)}), b"\x01"),
    "bad_negative_dim": pack(json.dumps({"x": entry("U8", [-1], 0, 0)})),
    "bad_overflow": pack(json.dumps({"x": entry("F32", [1 << 62], 0, 0)})),
    "bad_size": pack(json.dumps({"x": entry("F32", [2], 0, 4)}), b"\x00" * 4),
    "bad_overlap": pack(json.dumps({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 1, 3)}),
                        b"abc"),
    "bad_hole": pack(json.dumps({"a": entry("U8", [1], 1, 2)}), b"ab"),
    "bad_metadata": pack('{"__metadata__":{"k":1}}'),
}

if __name__ == "__main__":
    out = pathlib.Path(__file__).resolve().parent / "corpus" / "safetensors"
    out.mkdir(parents=True, exist_ok=True)
    for name, content in SEEDS.items():
        (out / name).write_bytes(content)
