"""Read an offline W&B run's ``run-*.wandb`` transaction log (no Python reader ships with wandb 0.31).

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a
7-byte header (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last); a block tail
shorter than a chunk header is padding. Each reassembled record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def history_keys(path: Path) -> set[str]:
    return {item.key or "/".join(item.nested_key) for r in records(path) if r.WhichOneof("record_type") == "history"
            for item in r.history.item}


def config_keys(path: Path) -> set[str]:
    return {item.key or "/".join(item.nested_key) for r in records(path) if r.WhichOneof("record_type") == "config"
            for item in r.config.update}


def artifacts(path: Path) -> list[tuple[str, str, list[str]]]:
    """(type, name, file paths of the manifest) of every artifact the run logged."""
    return [(r.artifact.type, r.artifact.name, [entry.path for entry in r.artifact.manifest.contents])
            for r in records(path) if r.WhichOneof("record_type") == "artifact"]
