"""Read an offline W&B run (``<run dir>/wandb/offline-run-*/run-<id>.wandb``) back without an account or network.

The file is W&B's record log: a 7-byte header (``:W&B``, magic, version), then LevelDB-log blocks of 32 KiB whose
chunks (4-byte CRC, 2-byte length, 1-byte type: full / first / middle / last) carry protobuf ``Record`` messages.
Used by the tests and handy for checking what a run would upload (``wandb sync``) before going online.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[bytes]:
    """The raw protobuf payloads stored in a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no ':W&B' header)")
    out, pending, pos = [], b"", 7
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
        else:  # zero padding at the end of a partly written file
            break
    return out


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """``{"run_id", "project", "group", "job_type", "tags", "config", "history", "summary"}`` of one run file
    (or of the single ``run-*.wandb`` inside an ``offline-run-*`` directory); ``config`` holds plain values."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        path = next(path.glob("run-*.wandb"))
    run: dict[str, Any] = {"run_id": None, "config": {}, "history": [], "summary": {}}
    for payload in records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(run_id=r.run_id, project=r.project, group=r.run_group, job_type=r.job_type,
                       tags=list(r.tags))
            run["config"].update(_config_values(_items(r.config.update)))
        elif kind == "config":
            run["config"].update(_config_values(_items(record.config.update)))
        elif kind == "history":
            run["history"].append(_items(record.history.item))
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
    return run


def _config_values(config: dict[str, Any]) -> dict[str, Any]:
    """Config entries as plain values: depending on when the config reached W&B (with the run record or in a later
    config record), an entry is stored as ``{"value": v, "desc": ...}`` or as ``v`` itself."""
    def plain(v: Any) -> Any:
        return v["value"] if isinstance(v, dict) and "value" in v and set(v) <= {"value", "desc"} else v
    return {k: plain(v) for k, v in config.items()}


def _items(items) -> dict[str, Any]:
    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json) if item.value_json else None
    return out
