"""Round-trip times in a fixed-size histogram: percentiles in bounded memory.

Sans-I/O. Values are recorded in whole microseconds into log-linear buckets (the
scheme of HdrHistogram): exact below 256 µs, then 128 buckets per power of two, so a
reported percentile is within 0.4 % of the true value (the bucket's midpoint), from
1 µs to 76 hours, in 4,096 counters whatever the number of samples. The
minimum, maximum and mean are exact. Two histograms can be merged (load mode's
connections) or subtracted (the last second of the live display).
"""

from __future__ import annotations

import math

SUB_BITS = 7
SUB_COUNT = 1 << SUB_BITS  # buckets per power of two
EXACT = 2 * SUB_COUNT  # below this, one bucket per microsecond
TOP_SHIFT = 30  # the last power of two: values up to 2**38 µs (76 hours), then clamped
BUCKETS = EXACT + TOP_SHIFT * SUB_COUNT
MAX_VALUE_US = (1 << (TOP_SHIFT + SUB_BITS + 1)) - 1


def bucket_of(us: int) -> int:
    """The bucket holding ``us`` microseconds (clamped to the histogram's range)."""
    if us < EXACT:
        return max(us, 0)
    us = min(us, MAX_VALUE_US)
    shift = us.bit_length() - SUB_BITS - 1
    return EXACT + (shift - 1) * SUB_COUNT + (us >> shift) - SUB_COUNT


def bucket_range(index: int) -> tuple[int, int]:
    """The lowest and highest microsecond values of bucket ``index``."""
    if index < EXACT:
        return index, index
    shift = (index - EXACT) // SUB_COUNT + 1
    sub = (index - EXACT) % SUB_COUNT + SUB_COUNT
    return sub << shift, ((sub + 1) << shift) - 1


class Histogram:
    """Counts of round-trip times, in seconds in and out, microseconds inside."""

    __slots__ = ("count", "counts", "max_us", "min_us", "total_us")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total_us = 0
        self.min_us = 0
        self.max_us = 0

    def add(self, seconds: float) -> None:
        us = max(0, round(seconds * 1_000_000))
        self.counts[bucket_of(us)] += 1
        if self.count == 0 or us < self.min_us:
            self.min_us = us
        self.max_us = max(self.max_us, us)
        self.count += 1
        self.total_us += us

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile in seconds (bucket midpoint, within the exact min and
        max); NaN when empty. ``percentile(100)`` is the exact maximum."""
        if self.count == 0:
            return math.nan
        if p >= 100:
            return self.max_us / 1_000_000
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low, high = bucket_range(index)
                middle = (low + high) / 2
                return min(max(middle, self.min_us), self.max_us) / 1_000_000
        return self.max_us / 1_000_000  # not reached: the counts add up to count

    @property
    def mean(self) -> float:
        return self.total_us / self.count / 1_000_000 if self.count else math.nan

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s samples to this one."""
        if other.count == 0:
            return
        for index, n in enumerate(other.counts):
            if n:
                self.counts[index] += n
        self.min_us = other.min_us if self.count == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.count += other.count
        self.total_us += other.total_us

    def copy(self) -> Histogram:
        clone = Histogram()
        clone.counts = list(self.counts)
        clone.count, clone.total_us = self.count, self.total_us
        clone.min_us, clone.max_us = self.min_us, self.max_us
        return clone

    def since(self, earlier: Histogram) -> Histogram:
        """The samples added after ``earlier`` (a copy of this histogram taken before).

        The minimum and maximum of the difference are the bounds of its lowest and
        highest non-empty buckets, since the exact ones are not known for a window.
        """
        window = Histogram()
        window.counts = [
            now - before for now, before in zip(self.counts, earlier.counts, strict=True)
        ]
        window.count = self.count - earlier.count
        window.total_us = self.total_us - earlier.total_us
        filled = [index for index, n in enumerate(window.counts) if n]
        if filled:
            window.min_us = bucket_range(filled[0])[0]
            window.max_us = bucket_range(filled[-1])[1]
        return window
