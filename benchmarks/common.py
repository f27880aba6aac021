"""What the benchmark scripts share: the repo on sys.path, where the zoo is, and best-of-N timing."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def zoo_dir() -> Path:
    """../shared/zoo beside the checkout, or $LIPVERIFY_SHARED/zoo."""
    return Path(os.environ.get("LIPVERIFY_SHARED", ROOT.parent / "shared")) / "zoo"


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed runs, in seconds, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
