"""Jobs for tests/test_workers.py: importable by a spawned worker process."""

from __future__ import annotations

import os
import sys


def report(message: str) -> dict:
    import torch

    print(message)
    print("to stderr", file=sys.stderr)
    return {"pid": os.getpid(), "threads": torch.get_num_threads()}


def fail(message: str) -> None:
    raise ValueError(message)
