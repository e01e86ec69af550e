"""What the scheduling points of a yielding worker cost (``runtime_core/yieldpoints.py``).

A thread at ``SCHED_IDLE`` hashes the same buffer with the timer armed and without, in
alternation, and the thread's CPU time of each round is compared (medians). The signal's
handler runs inside the hashing, as it runs inside a model's C code.

    python benchmarks/bench_yieldpoints.py            # about 20 s
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import threading
import time

from runtime_core.yieldpoints import YieldPoints


def _round(data: bytes, passes: int, armed: bool, out: dict[bool, list[float]]) -> None:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    points = YieldPoints()
    started = time.thread_time()
    if armed and not points.arm():
        raise SystemExit("no scheduling points on this system")
    for _ in range(passes):
        hashlib.sha256(data).digest()
    if armed:
        points.disarm()
    out[armed].append(time.thread_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind (default 5)")
    parser.add_argument("--mb", type=int, default=300, help="buffer size in MB (default 300)")
    parser.add_argument("--passes", type=int, default=8, help="hashes of the buffer per round (default 8)")
    args = parser.parse_args()
    data = b"x" * (args.mb * 1_000_000)
    out: dict[bool, list[float]] = {False: [], True: []}
    for armed in (False, True) * args.rounds:
        thread = threading.Thread(target=_round, args=(data, args.passes, armed, out))
        thread.start()
        thread.join()
    off, on = statistics.median(out[False]), statistics.median(out[True])
    print(f"CPU s per round without the timer: {', '.join(f'{s:.3f}' for s in out[False])}")
    print(f"CPU s per round with the timer:    {', '.join(f'{s:.3f}' for s in out[True])}")
    print(f"median with / without: {on / off:.4f}")


if __name__ == "__main__":
    main()
