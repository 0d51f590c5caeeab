"""Which of torchrun's processes this is, without importing torch (the CLI's error
handler asks before any command runs): rank 0 alone prints (``core.distributed``)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import NoReturn


def other_rank() -> bool:
    """One of torchrun's processes other than rank 0."""
    return os.environ.get("RANK", "0") != "0"


def quiet_exit(code: int, linger_s: float = 2.0) -> NoReturn:
    """Exit with ``code`` without a word, on a process other than rank 0, for a refusal
    every process meets (rank 0 says it). First wait up to ``linger_s``: torchrun stops
    the others as soon as one process fails, and a rank 0 stopped before it printed
    would say only 'interrupted' (a stop while waiting ends the wait)."""
    with contextlib.suppress(KeyboardInterrupt):
        time.sleep(linger_s)
    raise SystemExit(code)
