"""Bucketing: Unleash-compatible murmur3 buckets, checked against an independent murmur3."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolloutd.bucketing import bucket, in_rollout

MASK = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & MASK


def _mix(k: int) -> int:
    k = (k * 0xCC9E2D51) & MASK
    k = _rotl(k, 15)
    return (k * 0x1B873593) & MASK


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """Reference MurmurHash3_x86_32, written from Austin Appleby's description."""
    h = seed & MASK
    body = len(data) // 4 * 4
    for i in range(0, body, 4):
        h ^= _mix(int.from_bytes(data[i : i + 4], "little"))
        h = _rotl(h, 13)
        h = (h * 5 + 0xE6546B64) & MASK
    tail = data[body:]
    if tail:
        h ^= _mix(int.from_bytes(tail, "little"))
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK
    return h ^ (h >> 16)


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"", 0, 0),
        (b"", 1, 0x514E28B7),
        (b"", 0xFFFFFFFF, 0x81F16F39),
        (b"\0\0\0\0", 0, 0x2362F9DE),
        (b"hello", 0, 613153351),
        (b"aaaa", 0x9747B28C, 0x5A97808A),
        (b"Hello, world!", 0x9747B28C, 0x24884CBA),
        (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
    ],
)
def test_reference_murmur3_matches_published_vectors(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_x86_32(data, seed) == expected


@pytest.mark.parametrize(
    ("flag", "key", "expected"),
    [
        # The cross-SDK vectors Unleash's Node, Java, Go and Ruby clients all test.
        ("gr1", "123", 73),
        ("groupX", "999", 25),
    ],
)
def test_bucket_agrees_with_unleash_sdks(flag: str, key: str, expected: int) -> None:
    assert bucket(flag, key) == expected


@pytest.mark.parametrize(
    ("flag", "key"),
    [("new_checkout", "user-1"), ("new_checkout", "user-2"), ("dark-mode", "42"), ("f", "")],
)
def test_bucket_known_answers_from_reference(flag: str, key: str) -> None:
    expected = murmur3_x86_32(f"{flag}:{key}".encode()) % 100 + 1
    assert bucket(flag, key) == expected


@given(st.text(), st.text())
def test_bucket_equals_reference_for_any_text(flag: str, key: str) -> None:
    expected = murmur3_x86_32(f"{flag}:{key}".encode()) % 100 + 1
    assert bucket(flag, key) == expected
    assert 1 <= bucket(flag, key) <= 100


@given(st.text(), st.text())
def test_zero_percent_is_nobody_and_hundred_is_everybody(flag: str, key: str) -> None:
    assert not in_rollout(flag, key, 0)
    assert in_rollout(flag, key, 100)


@given(
    st.text(),
    st.text(),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=100),
)
def test_raising_percent_never_drops_a_user(flag: str, key: str, low: float, high: float) -> None:
    low, high = sorted((low, high))
    if in_rollout(flag, key, low):
        assert in_rollout(flag, key, high)


def test_in_rollout_at_5_implies_in_at_25() -> None:
    in_at_5 = [k for k in map(str, range(10_000)) if in_rollout("new_checkout", k, 5)]
    assert in_at_5
    assert all(in_rollout("new_checkout", k, 25) for k in in_at_5)


@pytest.mark.parametrize("percent", [1, 5, 25, 50, 99])
def test_share_of_users_is_close_to_percent(percent: int) -> None:
    keys = [f"user-{i}" for i in range(100_000)]
    share = sum(in_rollout("new_checkout", k, percent) for k in keys) / len(keys)
    # Binomial standard deviation is at most 0.16 points here; 1 point is > 6 sigma.
    assert share == pytest.approx(percent / 100, abs=0.01)


def test_flags_bucket_users_independently() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    a = {k for k in keys if in_rollout("flag-a", k, 50)}
    b = {k for k in keys if in_rollout("flag-b", k, 50)}
    assert len(a & b) / len(keys) == pytest.approx(0.25, abs=0.02)
