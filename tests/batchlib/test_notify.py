"""The Prefect-free parts of notifications and retries: recipients, outcomes, what a log line may show."""

from __future__ import annotations

import pytest

from batchlib.errors import InvalidInput
from batchlib.notify import _origin, outcome_of, recipients
from db.failures import retry_source

pytestmark = pytest.mark.unit

TABLE = {"7:add_friend": ["a"], "7": ["b"], "add_friend": ["c"], "*": ["d"]}


@pytest.mark.parametrize(("tenant", "task_type", "expected"), [
    (7, "add_friend", ["a"]), (7, "account_check", ["b"]), (8, "add_friend", ["c"]), (8, "pin_sync", ["d"]),
])
def test_the_most_specific_key_wins(tenant: int, task_type: str, expected: list[str]) -> None:
    assert recipients(TABLE, tenant, task_type) == expected
    assert recipients({}, tenant, task_type) == []


def test_outcomes() -> None:
    assert outcome_of({"status": "completed", "failed": 0}) == "completed"
    assert outcome_of({"status": "completed", "failed": 2}) == "completed_with_failures"
    assert outcome_of({"status": "cancelled", "failed": 2}) == "cancelled"


def test_a_webhook_is_named_without_its_token() -> None:
    assert _origin("https://user:pw@hooks.example.com:8443/T0KEN/x?token=abc") == "https://hooks.example.com:8443"


@pytest.mark.parametrize("task_data", [{"retry_failed_of": "42"}, {"retry_failed_of": 0}, {"retry_failed_of": True},
                                       {"retry_failed_of": 42, "items": []}])
def test_a_malformed_retry_link_is_refused(task_data: dict) -> None:
    with pytest.raises(InvalidInput):
        retry_source(task_data)


def test_retry_links() -> None:
    assert retry_source({"retry_failed_of": 42}) == 42
    assert retry_source({"retry_failed_of": 42, "items_count": 3}) == 42
    assert retry_source({"account_ids": [1]}) is None and retry_source(None) is None
