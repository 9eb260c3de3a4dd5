"""Which users a flag percentage includes: Unleash-compatible sticky bucketing.

Rules: a user is in when `murmur3_x86_32("<flag>:<key>", seed 0, unsigned) % 100 + 1 <=
percent`, the same rule as Unleash's flexibleRollout normalizedValue with groupId = flag name,
so SDKs that follow it agree with us. Strings are hashed as UTF-8. Buckets run 1..100, so
percent 0 includes nobody, 100 everybody, and a user included at p stays included at any
higher p. Pure: no I/O, no clock, no state.
"""

from __future__ import annotations

import mmh3

BUCKETS = 100


def bucket(flag: str, key: str) -> int:
    """The user's bucket for this flag, 1..100."""
    return mmh3.hash(f"{flag}:{key}", 0, signed=False) % BUCKETS + 1


def in_rollout(flag: str, key: str, percent: float) -> bool:
    """Whether the user with `key` gets the flag when it is rolled out to `percent`."""
    return bucket(flag, key) <= percent
