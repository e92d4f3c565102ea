"""Notifications when a batch ends: a real SMTP server (aiosmtpd) and a webhook receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from batchlib import notify
from flows.account_check import account_check
from tests.support.batch_env import BatchEnv

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Inbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802  (aiosmtpd's hook name)
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[str, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield f"smtp://127.0.0.1:{controller.port}", inbox
    finally:
        controller.stop()


class Receiver:
    """A loopback webhook endpoint answering ``status`` to every POST; keeps the bodies."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def failing_receiver() -> Iterator[Receiver]:
    r = Receiver(status=503)
    yield r
    r.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_with_failures(env: BatchEnv, failing: int) -> int:
    env.seed({7: 10})
    env.sim.configure(fail_uids=[a["uid"] for a in env.sim.accounts(7)][:failing])
    state = asyncio.run(account_check(tenant_id=7, return_state=True))
    assert state.is_completed(), state.message
    return env.sql("SELECT MAX(id) FROM la_batch_task")[0][0]


def test_one_email_and_one_webhook_per_ending(batch_env: BatchEnv, configure, smtp_server, receiver) -> None:
    smtp_url, inbox = smtp_server
    configure(
        smtp_url=smtp_url, notify_from="batches@example.com",
        notify_email=json.dumps({"7": ["ops7@example.com"], "*": ["everyone@example.com"]}),
        notify_webhooks=json.dumps({"7:account_check": [f"{receiver.url}/hook"], "8": [f"{receiver.url}/other"]}),
    )
    batch_id = run_with_failures(batch_env, failing=2)
    assert notify.wait_idle(30)

    [(to, message)] = inbox.messages
    assert to == ["ops7@example.com"]  # the most specific key wins
    assert message["Subject"] == (
        f"batch {batch_id} (account_check, tenant 7) completed with failures: 8 succeeded, 2 failed of 10"
    )
    assert message["From"] == "batches@example.com"
    assert f"--retry-failed {batch_id}" in message.get_content()
    [body] = receiver.bodies
    assert body["event"] == "batch.ended" and body["batch_id"] == batch_id
    assert (body["status"], body["outcome"], body["success"], body["failed"]) == ("completed", "completed_with_failures", 8, 2)
    assert batch_env.sql("SELECT notified_status FROM la_batch_run WHERE task_id = :b", b=batch_id)[0][0].startswith(
        "completed@"
    )

    # The hooks and the reaper call batch_ended too: the same ending is never notified twice.
    notify.batch_ended(batch_id)
    notify.batch_ended(batch_id)
    assert notify.wait_idle(30)
    assert len(inbox.messages) == 1 and len(receiver.bodies) == 1

    # A panel-side cancel is an ending of its own.
    batch_env.sim.configure(fail_uids=[], latency_ms=50)
    batch_env.seed({7: 200})

    async def cancel_midway():
        flow = asyncio.create_task(account_check(tenant_id=7, return_state=True))
        while not batch_env.sql("SELECT id FROM la_batch_task WHERE id > :b AND processed_count >= 10", b=batch_id):
            await asyncio.sleep(0.1)
        batch_env.sql("UPDATE la_batch_task SET task_status = 'cancelled' WHERE id > :b", b=batch_id)
        return await flow

    state = asyncio.run(cancel_midway())
    assert state.is_cancelled(), state.message
    assert notify.wait_idle(30)
    assert [b["outcome"] for b in receiver.bodies] == ["completed_with_failures", "cancelled"]
    assert receiver.bodies[-1]["batch_id"] != batch_id


def test_a_down_server_never_fails_the_batch_and_leaks_nothing(
    batch_env: BatchEnv, configure, failing_receiver, caplog
) -> None:
    password, token = "s3cret-smtp-pass", "tok-webhook-123"
    configure(
        smtp_url=f"smtp://ops:{password}@127.0.0.1:{_free_port()}",  # nothing listens there
        notify_email=json.dumps({"*": ["ops@example.com"]}),
        notify_webhooks=json.dumps({"*": [f"{failing_receiver.url}/hook/{token}?token={token}"]}),
        notify_attempts=3, notify_backoff_base_s=0.05, notify_backoff_max_s=0.1,
    )
    caplog.set_level(logging.INFO)
    batch_id = run_with_failures(batch_env, failing=0)

    assert batch_env.batch(batch_id)["task_status"] == "completed"
    assert notify.wait_idle(30)
    assert len(failing_receiver.bodies) == 3  # retried a bounded number of times
    lines = [r.getMessage() for r in caplog.records if r.name == "batchlib.notify"]
    assert lines == [
        f"batch {batch_id}: email to 1 recipient(s) failed after 3 attempt(s): ConnectionRefusedError",
        f"batch {batch_id}: webhook #1 ({failing_receiver.url}) failed after 3 attempt(s): HTTP 503",
    ]
    assert password not in caplog.text and token not in caplog.text


def test_the_reaper_and_the_hooks_notify_their_endings_once(batch_env: BatchEnv, configure, receiver) -> None:
    import uuid

    from flows.reaper import reaper
    from tasks.hooks import close_owned_batches
    from tests.flows.test_maintenance import _running_batch

    configure(notify_webhooks=json.dumps({"*": [receiver.url]}))
    gone = _running_batch(batch_env, 1, str(uuid.uuid4()), silent_s=30)  # its flow run does not exist
    silent = _running_batch(batch_env, 2, str(uuid.uuid4()), silent_s=500)  # no heartbeat for long
    hooked_run = str(uuid.uuid4())
    hooked = _running_batch(batch_env, 3, hooked_run, silent_s=0)

    assert reaper(auto_resume_max=0) == {"gone": [gone], "stale": [silent], "resumed": []}
    assert close_owned_batches(hooked_run, "cancelled", None) == [hooked]
    assert reaper(auto_resume_max=0) == {"gone": [], "stale": [], "resumed": []}
    notify.batch_ended(gone)
    assert notify.wait_idle(30)

    assert sorted((b["batch_id"], b["outcome"]) for b in receiver.bodies) == [
        (gone, "failed"), (silent, "failed"), (hooked, "cancelled"),
    ]
