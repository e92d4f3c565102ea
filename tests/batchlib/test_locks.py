from __future__ import annotations

import time

import pytest
import redis

from batchcore.errors import BatchAlreadyActive
from batchlib.locks import RedisLease, lease_key


@pytest.fixture
def client(redis_url: str):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def make(client, prefix: str, ttl: float = 1.5, tenant: int = 7) -> RedisLease:
    return RedisLease(client, lease_key(prefix, tenant, "account_check"), ttl_s=ttl, tenant_id=tenant,
                      task_type="account_check")


def test_second_holder_is_refused_and_key_is_gone_after_release(client, redis_prefix) -> None:
    first = make(client, redis_prefix)
    first.acquire()
    with pytest.raises(BatchAlreadyActive, match="already pending or running"):
        make(client, redis_prefix).acquire()
    make(client, redis_prefix, tenant=8).acquire()  # another tenant runs side by side
    first.release()
    assert client.exists(first.key) == 0


def test_lease_is_renewed_past_its_ttl(client, redis_prefix) -> None:
    with make(client, redis_prefix, ttl=0.6) as lease:
        time.sleep(1.5)
        assert not lease.lost
        assert client.pttl(lease.key) > 0


def test_lease_taken_by_another_owner_is_reported_lost(client, redis_prefix) -> None:
    lease = make(client, redis_prefix, ttl=0.6)
    lease.acquire()
    client.set(lease.key, b"someone-else")  # as after a Redis restart and a new owner
    deadline = time.monotonic() + 3
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost
    lease.release()
    assert client.get(lease.key) == b"someone-else"  # release never deletes another owner's key


def test_vanished_key_is_taken_again_not_lost(client, redis_prefix) -> None:
    """A Redis restart without persistence drops the key: the renewer takes it again."""
    with make(client, redis_prefix, ttl=0.6) as lease:
        client.delete(lease.key)  # as after `redis-cli shutdown nosave` and a restart
        time.sleep(0.6)
        assert not lease.lost
        assert client.pttl(lease.key) > 0
    assert client.exists(lease.key) == 0
