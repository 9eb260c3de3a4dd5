"""The PostgreSQL state store on a real server: store.py's behaviour where it applies (round
trips, atomic batches, growing outbox ids, the revision floor, a newer schema refused), the
leader lease with its fencing generation, and commits refused once the lease is lost."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from rolloutd.adapters.lease import LeaseLost
from rolloutd.adapters.pgstore import PgStore
from rolloutd.adapters.state import StateStore
from rolloutd.adapters.store import REVISIONS_PER_EPOCH, Batch, Loaded, StoreError
from rolloutd.core.outbound import Sink
from test_store import assert_full_batch, full_batch, upserts_overwrite_drops_and_done_delete

LEASE = 2.0


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStore]:
    with PgStore.open(pg_url, lease=LEASE) as leading:
        assert leading.lease.try_acquire(0.0)
        yield leading


def expire(url: str) -> None:
    """The lease's expiry moved into the past, as if its holder had stopped renewing."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE leader SET expires_at = clock_timestamp() - interval '1 second'")


def test_both_stores_satisfy_the_protocol(store: PgStore) -> None:
    satisfied: StateStore = store
    assert satisfied.generation == 1


def test_a_new_store_is_empty_and_created_once(pg_url: str) -> None:
    with PgStore.open(pg_url) as first, PgStore.open(pg_url) as second:
        assert first.created
        assert not second.created
        assert first.epoch == second.epoch > 0
        assert first.revision_floor == first.epoch * REVISIONS_PER_EPOCH
        assert first.load() == Loaded(None, {}, {}, {}, [], {})


def test_round_trip_of_every_field(store: PgStore, pg_url: str) -> None:
    ids = store.commit(full_batch())
    assert len(ids) == 2
    assert ids == sorted(ids)
    with PgStore.open(pg_url) as other:  # another daemon reads what this one wrote
        loaded = other.load()
    assert_full_batch(loaded, ids)
    assert other.offsets == loaded.offsets
    assert store.stats() == {"rollouts": 2, "outbox": 2}


def test_upserts_overwrite_drops_and_done_delete(store: PgStore) -> None:
    upserts_overwrite_drops_and_done_delete(store)


def test_confirm_deletes_and_ids_keep_increasing(store: PgStore) -> None:
    ids = store.commit(full_batch())
    store.confirm(iter(ids))
    store.confirm([])
    assert store.load().outbox == []
    (later,) = store.commit(Batch(outbox=[(Sink.parse("kafka:t"), None, b"x", False)]))
    assert later > max(ids)


def test_a_commit_that_fails_midway_changes_nothing(store: PgStore) -> None:
    store.commit(full_batch())
    before = store.load()
    bad = Batch(rollouts={"checkout-v2": b"changed"}, revisions={"x": 2**70})  # bigint overflow
    with pytest.raises(StoreError):
        store.commit(bad)
    assert store.load() == before
    store.commit(Batch(meta={"after": "ok"}))  # still usable
    assert store.load().meta["after"] == "ok"


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    PgStore.open(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        PgStore.open(pg_url)


def test_errors_name_host_and_database_never_the_password(pg_url: str) -> None:
    bad = pg_url.replace("rolloutd@", "rolloutd:hunter2@").rsplit("/", 1)[0] + "/missing_db"
    with pytest.raises(StoreError) as caught:
        PgStore.open(bad)
    assert "missing_db" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_only_one_of_two_stores_leads(pg_url: str) -> None:
    with PgStore.open(pg_url, lease=LEASE) as a, PgStore.open(pg_url, lease=LEASE) as b:
        assert a.lease.try_acquire(0.0)
        assert not b.lease.try_acquire(0.0)
        assert b.generation is None
        holder, generation, unexpired = b.lease.holder()
        assert (holder, generation, unexpired) == (a.lease.me, 1, True)
        assert a.lease.renew(1.0)
        assert not b.lease.try_acquire(1.0)
        with pytest.raises(LeaseLost):  # a standby writes nothing
            b.commit(Batch(meta={"k": "v"}))


def test_a_lapsed_lease_fails_the_old_holders_commit(pg_url: str) -> None:
    with PgStore.open(pg_url, lease=LEASE) as old, PgStore.open(pg_url, lease=LEASE) as new:
        assert old.lease.try_acquire(0.0)
        old.commit(Batch(meta={"by": "old"}))
        expire(pg_url)
        with pytest.raises(LeaseLost):  # expired, even before anyone took over
            old.commit(Batch(meta={"by": "old, late"}))
        assert new.lease.try_acquire(0.0)
        assert new.generation == 2
        with pytest.raises(LeaseLost):
            old.commit(Batch(meta={"by": "old, later"}))
        with pytest.raises(LeaseLost):
            old.confirm([1])
        assert not old.lease.renew(5.0)  # the row names the new holder now
        assert old.generation is None
        new.commit(Batch(meta={"by": "new"}))
        assert new.load().meta == {"by": "new"}


def test_a_released_lease_is_taken_at_once(pg_url: str) -> None:
    with PgStore.open(pg_url, lease=60) as a, PgStore.open(pg_url, lease=60) as b:
        assert a.lease.try_acquire(0.0)
        a.lease.release()
        assert b.lease.try_acquire(0.0)


def test_the_local_view_lapses_by_the_monotonic_clock(store: PgStore) -> None:
    lease = store.lease
    assert lease.valid(0.0)
    assert lease.valid(LEASE - lease.margin - 0.01)
    # A process stopped past its lease resumes with its monotonic clock moved on: it may not
    # publish, before it has even asked the database.
    assert not lease.valid(LEASE - lease.margin)
    assert not lease.valid(100.0)
    assert lease.renew(100.0)
    assert lease.valid(100.5)
