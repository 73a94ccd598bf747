"""Copy of a full-size checkpoint whose per-layer embedding table has `vocab_size` rows.

llama.cpp's converter pads `embed_tokens_per_layer` from `vocab_size_per_layer_input` (262,144)
to `vocab_size` (262,400) rows itself, but it first moves every embedding table to a CPU tensor,
and for the 4 GB E2B table that materialises several copies (OOM-killed at 19 GB here).  With
the table already at full height, and the converter's `.to(device="cpu")` made conditional on
padding (`prepare_bench.sh` does both), the conversion streams.

The shard holding the table is rewritten with zero rows appended; every other file is
hard-linked.  Pure Python, one tensor at a time in 64 MiB pieces: needs no torch and little RAM.

    python3 tests/reference/pad_per_layer_table.py /work/fullsize/E2B /work/fullsize/E2B-gguf-src
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

TABLE = "model.language_model.embed_tokens_per_layer.weight"
PIECE = 64 << 20


def copy_bytes(src, dst, count: int) -> None:
    while count:
        piece = src.read(min(count, PIECE))
        if not piece:
            raise SystemExit("shard ends before its header says it does")
        dst.write(piece)
        count -= len(piece)


def pad_shard(src_path: Path, dst_path: Path, rows: int) -> None:
    with open(src_path, "rb") as src:
        (header_len,) = struct.unpack("<Q", src.read(8))
        header = json.loads(src.read(header_len))
        data_start = 8 + header_len
        names = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])
        new_header = {"__metadata__": header["__metadata__"]} if "__metadata__" in header else {}
        offset = 0
        extra = {}
        for name in names:
            entry = dict(header[name])
            begin, end = entry["data_offsets"]
            size = end - begin
            if name == TABLE:
                old_rows, width = entry["shape"]
                if old_rows >= rows:
                    raise SystemExit(f"{TABLE} already has {old_rows} rows")
                extra[name] = size // old_rows * (rows - old_rows)
                entry["shape"] = [rows, width]
                size += extra[name]
            entry["data_offsets"] = [offset, offset + size]
            new_header[name] = entry
            offset += size
        encoded = json.dumps(new_header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        with open(dst_path, "wb") as dst:
            dst.write(struct.pack("<Q", len(encoded)))
            dst.write(encoded)
            for name in names:
                begin, end = header[name]["data_offsets"]
                src.seek(data_start + begin)
                copy_bytes(src, dst, end - begin)
                zeros = extra.get(name, 0)
                while zeros:
                    step = min(zeros, PIECE)
                    dst.write(bytes(step))
                    zeros -= step


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads((src / "config.json").read_text())
    rows = config["text_config"]["vocab_size"]
    index = json.loads((src / "model.safetensors.index.json").read_text())
    table_shard = index["weight_map"][TABLE]
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if item.name == table_shard or target.exists():
            continue
        os.link(item, target)
    pad_shard(src / table_shard, dst / table_shard, rows)
    print(f"{dst / table_shard}: {TABLE} padded to {rows} rows")


if __name__ == "__main__":
    main()
