"""The item checks of the per-account batch types and pin_sync's item keys (no database)."""

from __future__ import annotations

import pytest

from batchlib.handlers.add_friend import DailyCap, cap_day
from batchlib.handlers.pin_sync import MAX_KEY, cid_key, keyed
from batchlib.settings import Settings
from batchlib.validation import check_avatar_url, check_friend_uid, check_nickname
from simulators.kubo import make_cid

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", ["Alice", "新名字", "a b", "x" * 32, "😀 emoji"])
def test_good_nicknames(value: str) -> None:
    assert check_nickname(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "is empty"), ("   ", "is empty"), ("x" * 33, "33 characters long"), (" a", "leading or trailing"),
        ("a\nb", "U+000A"), ("a\u200bb", "U+200B"), ("a\u3000b", "U+3000"), (None, "must be a string"),
    ],
)
def test_bad_nicknames(value, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("+", r"\+")):
        check_nickname(value)


@pytest.mark.parametrize("value", ["https://cdn.example.com/a.png", "http://10.0.0.1:8080/x?y=1#z"])
def test_good_avatar_urls(value: str) -> None:
    assert check_avatar_url(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("javascript:alert(1)", "http\\(s\\) URL"), ("https://", "with a host"), ("//cdn.example.com/a", "http\\(s\\) URL"),
        ("https://a:b@cdn.example.com/", "credentials"), ("https://cdn.example.com/\t", "spaces"),
        ("https://cdn.example.com:70000/", "not a valid URL"), ("https://x.com/" + "a" * 600, "at most 512"),
        (3, "must be a string"),
    ],
)
def test_bad_avatar_urls(value, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_avatar_url(value)


@pytest.mark.parametrize("value", ["u7-000001", "abc", "A.b_c:d@e-f"])
def test_good_friend_uids(value: str) -> None:
    assert check_friend_uid(value) == value


@pytest.mark.parametrize("value", ["", "-x", "a b", "x" * 65, "ü", 12])
def test_bad_friend_uids(value) -> None:
    with pytest.raises(ValueError):
        check_friend_uid(value)


def test_cid_keys_are_stable_positive_31_bit_numbers() -> None:
    cids = [make_cid(1, i) for i in range(2000)]
    keys = [cid_key(c) for c in cids]
    assert keys == [cid_key(c) for c in cids]
    assert all(1 <= k <= MAX_KEY for k in keys)
    assert [k for k, _ in keyed(cids)] == keys  # no collisions here: the key is the hash


def test_colliding_cids_are_probed_in_cid_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import batchlib.handlers.pin_sync as pin_sync

    monkeypatch.setattr(pin_sync, "cid_key", lambda cid: MAX_KEY if cid != "c" else 1)
    items = keyed(["bb", "aa", "c", "aa"])  # a duplicate line is listed once
    # aa takes MAX_KEY; bb wraps around to 1; c then finds 1 taken and takes 2.
    assert items == [(1, {"cid": "bb"}), (MAX_KEY, {"cid": "aa"}), (2, {"cid": "c"})]
    assert sorted(keyed(["c", "bb", "aa"]), key=lambda i: i[1]["cid"]) == sorted(items, key=lambda i: i[1]["cid"])


def test_daily_cap_day_and_rollover() -> None:
    settings = Settings(add_friend_day_timezone="Asia/Shanghai")
    assert cap_day(settings, 1_700_000_000) == 20231115  # 06:13 in Shanghai, 22:13 UTC the day before
    assert cap_day(Settings(), 1_700_000_000) == 20231114
    cap = DailyCap(limit=2, day=20231114, sent={1: 2})
    cap.roll(20231114)
    assert cap.sent == {1: 2}
    cap.roll(20231115)
    assert cap.sent == {} and cap.day == 20231115
