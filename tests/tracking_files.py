"""Reading what the trackers wrote: W&B's offline run files (no network, no W&B server)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): a LevelDB-style log of
    ``wandb_internal_pb2.Record`` protobufs in 32 KiB blocks after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records = path.read_bytes(), []
    assert data[:4] == b":W&B", data[:8]
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def wait_for_files(parts: list[Path], names: set[str], timeout: float = 30.0) -> list:
    """The records of all ``parts``, read again until a ``files`` record names each of
    ``names`` or ``timeout`` passes (W&B's service may write the log after its client returns)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for part in parts for r in wandb_records(part)]
        saved = {
            f.path for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files
        }
        if names <= saved or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def history_items(record) -> dict:
    """A W&B history record's values by name (a name with ``/`` may come as a nested key)."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
