"""Benchmark: the poll predictor on synthetic job times, without Marketo (pure: ``dropzone.polling``).

For each scenario (steady jobs of 2, 60 and 300 s with jitter; a slow spell that ends: jobs of
120 s then of 2 s, and of 600 s then of 30 s) one batch at a time holds the import slot; the
predictor plans its polls and learns from each. Prints, per scenario, the seconds each batch's
finish was seen late (the slot idle) and the status polls per batch:

    python tests/bench/bench_predictor.py [--poll-interval 5] [--seed 1]

Reads: polls per batch plus the submit are the calls of a one-batch file; after a slow
spell, late per batch a small fraction of the slow job time.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence

from dropzone.polling import Predictor

ROWS = 100


def play(durations: Sequence[float], poll_interval: float) -> tuple[float, float]:
    """(seconds late per batch, polls per batch) for batches run back to back."""
    pred = Predictor()
    now = late = 0.0
    polls_total = 0
    for duration in durations:
        head, finish = now, now + duration
        at = pred.first_poll(now, ROWS, (), head_at=head, poll_interval=poll_interval)
        polls, last_open, started = 1, None, None
        while at < finish:
            last_open = at
            started = started or at
            at = pred.next_poll(
                at, submitted_at=head, rows=ROWS, polls_so_far=polls, last_status="Importing", ahead=(),
                started_at=started, head_at=head, poll_interval=poll_interval,
            )
            polls += 1
        pred.observe(ROWS, head, started, at, head_at=head, last_open_at=last_open)
        late += at - finish
        polls_total += polls
        now = at
    return late / len(durations), polls_total / len(durations)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    scenarios = {
        "steady 2 s": [2.0 * rnd.uniform(0.9, 1.1) for _ in range(200)],
        "steady 60 s": [60.0 * rnd.uniform(0.8, 1.2) for _ in range(200)],
        "steady 300 s": [300.0 * rnd.uniform(0.8, 1.2) for _ in range(100)],
        "slow spell 120 s -> 2 s": [120.0] * 20 + [2.0] * 40,
        "slow spell 600 s -> 30 s": [600.0] * 20 + [30.0 * rnd.uniform(0.9, 1.1) for _ in range(40)],
    }
    print(f"poll_interval {args.poll_interval:g} s")
    for name, durations in scenarios.items():
        late, polls = play(durations, args.poll_interval)
        print(f"{name:26} late per batch {late:7.1f} s   polls per batch {polls:4.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
