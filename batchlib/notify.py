"""Notifications when a batch ends: an email over SMTP and a JSON webhook POST.

    batch_ended(batch_id)      # after the batch's final state is committed; returns at once

Every path that ends a batch calls ``batch_ended`` once (the runner's close step, the flow-run
hooks, the reaper). The work runs in a background thread:

1. ``claim_notification`` marks the ending in ``la_batch_run.notified_status`` (a guarded
   UPDATE): of several callers for one ending, one sends, the others return;
2. recipients: ``BATCH_NOTIFY_EMAIL`` / ``BATCH_NOTIFY_WEBHOOKS``, most specific key first
   (``"7:add_friend"``, ``"7"``, ``"add_friend"``, ``"*"``);
3. each channel is tried ``notify_attempts`` times with full-jitter backoff, each attempt
   bounded by ``notify_timeout_s`` and all of them by ``notify_deadline_s``; a channel that
   still fails is logged once, with no address, password, token or server reply in the line.

Nothing here raises into the batch: a notification never delays, fails or changes a batch.
At interpreter exit, threads still sending get at most ``notify_deadline_s`` to finish.
"""

from __future__ import annotations

import atexit
import json
import logging
import smtplib
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any
from urllib.error import HTTPError
from urllib.parse import parse_qs, unquote, urlsplit
from urllib.request import ProxyHandler, Request, build_opener

from batchcore.settings import Settings, get_settings
from batchlib.backoff import RetriesExhausted, RetryPolicy
from db import get_engine, run_transaction
from db.notifications import claim_notification

__all__ = ["batch_ended", "recipients", "outcome_of", "wait_idle"]

log = logging.getLogger(__name__)

_threads: set[threading.Thread] = set()
_lock = threading.Lock()


def batch_ended(batch_id: int, settings: Settings | None = None) -> None:
    """Notify the ending of ``batch_id`` in the background (at most once per ending); never raises."""
    try:
        settings = settings or get_settings()
        if not (settings.notify_email or settings.notify_webhooks):
            return
        thread = threading.Thread(target=_notify, args=(batch_id, settings), name=f"notify-batch-{batch_id}",
                                  daemon=True)
        with _lock:
            _threads.add(thread)
        thread.start()
    except Exception as exc:  # a notification must never fail the batch
        log.warning("batch %s: notification not started (%s)", batch_id, type(exc).__name__)


def wait_idle(timeout: float) -> bool:
    """Wait until no notification is being sent (at most ``timeout`` s); True when idle."""
    deadline = time.monotonic() + timeout
    while True:
        with _lock:
            alive = [t for t in _threads if t.is_alive()]
            _threads.intersection_update(alive)
        if not alive:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        alive[0].join(left)


@atexit.register
def _drain_at_exit() -> None:
    with _lock:
        busy = any(t.is_alive() for t in _threads)
    if busy:
        wait_idle(get_settings().notify_deadline_s)


def recipients(table: dict[str, list[Any]], tenant_id: int, task_type: str) -> list[Any]:
    """The most specific entry of ``table`` for (tenant, type): "tenant:type", "tenant", "type", "*"."""
    for key in (f"{tenant_id}:{task_type}", str(tenant_id), task_type, "*"):
        if key in table:
            return list(table[key])
    return []


def outcome_of(ending: dict[str, Any]) -> str:
    """completed, completed_with_failures, failed or cancelled."""
    if ending["status"] == "completed" and ending["failed"]:
        return "completed_with_failures"
    return str(ending["status"])


def _notify(batch_id: int, settings: Settings) -> None:
    try:
        engine = get_engine(settings=settings)
        ending = run_transaction(engine, lambda s: claim_notification(s, batch_id))
        if ending is None:
            return  # not ended, or this ending was notified already
        ending["outcome"] = outcome_of(ending)
        deadline = time.monotonic() + settings.notify_deadline_s
        emails = recipients(settings.notify_email, ending["tenant_id"], ending["task_type"])
        if emails and settings.smtp_url is not None:
            _attempts(settings, deadline, f"batch {batch_id}: email to {len(emails)} recipient(s)",
                      lambda: _send_email(settings, ending, emails))
        elif emails:
            log.warning("batch %s: email recipients configured but BATCH_SMTP_URL is not set", batch_id)
        for number, hook in enumerate(recipients(settings.notify_webhooks, ending["tenant_id"], ending["task_type"]), 1):
            url = hook.get_secret_value() if hasattr(hook, "get_secret_value") else str(hook)
            _attempts(settings, deadline, f"batch {batch_id}: webhook #{number} ({_origin(url)})",
                      lambda url=url: _post_webhook(settings, ending, url))
    except Exception as exc:
        log.warning("batch %s: notification not sent (%s)", batch_id, type(exc).__name__)


def _attempts(settings: Settings, deadline: float, what: str, send: Callable[[], None]) -> bool:
    """``send()`` until it succeeds, ``notify_attempts`` times at most, within ``deadline``."""
    try:
        RetryPolicy.notify(settings).retrying_sync(send, deadline=deadline)
        return True
    except RetriesExhausted as spent:
        failure = "no attempt" if spent.last is None else _describe(spent.last)
        log.warning("%s failed after %s attempt(s): %s", what, spent.attempts, failure)
        return False


def _describe(exc: BaseException) -> str:
    """An error in words that carry no secret: the class, an HTTP or SMTP status code, never the reply text."""
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code}"
    code = getattr(exc, "smtp_code", None)
    return f"{type(exc).__name__} {code}" if code else type(exc).__name__


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL; its path, query and user info may hold a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _subject(ending: dict[str, Any]) -> str:
    words = ending["outcome"].replace("_", " ")
    return (f"batch {ending['batch_id']} ({ending['task_type']}, tenant {ending['tenant_id']}) {words}: "
            f"{ending['success']} succeeded, {ending['failed']} failed of {ending['total']}")


def _body(ending: dict[str, Any]) -> str:
    lines = [
        _subject(ending),
        "",
        f"name: {ending['task_name']}",
        f"processed: {ending['processed']}/{ending['total']}",
    ]
    if ending.get("retry_failed_of"):
        lines.append(f"retry of the failed items of batch {ending['retry_failed_of']}")
    if ending.get("error_message"):
        lines.append(f"error: {ending['error_message']}")
    if ending["failed"]:
        lines.append(f"retry the failed items: python -m flows.{ending['task_type']} --retry-failed {ending['batch_id']}")
    return "\n".join(lines) + "\n"


def _send_email(settings: Settings, ending: dict[str, Any], to: list[str]) -> None:
    url = urlsplit(settings.smtp_url.get_secret_value())  # type: ignore[union-attr]  # checked by the caller
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = _subject(ending), settings.notify_from, ", ".join(to)
    message.set_content(_body(ending))
    tls = url.scheme == "smtps"
    connect = smtplib.SMTP_SSL if tls else smtplib.SMTP
    with connect(url.hostname or "localhost", url.port or (465 if tls else 25), timeout=settings.notify_timeout_s) as smtp:
        if parse_qs(url.query).get("starttls", ["false"])[0].lower() in ("1", "true", "yes"):
            smtp.starttls()
        if url.username:
            smtp.login(unquote(url.username), unquote(url.password or ""))
        smtp.send_message(message)


def _post_webhook(settings: Settings, ending: dict[str, Any], url: str) -> None:
    """POST the ending as JSON; any status >= 400 raises. urllib, not httpx: httpx logs every
    request's URL at INFO, and a webhook URL often carries its token."""
    body = json.dumps({"event": "batch.ended", **ending}).encode()
    request = Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with build_opener(ProxyHandler({})).open(request, timeout=settings.notify_timeout_s) as response:
        response.read()
