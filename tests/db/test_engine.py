"""The MariaDB engine against the real server: PyMySQL's TLS context is built once per process."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.pool import NullPool

from db.engine import make_engine


def test_connections_share_one_tls_context_and_the_url_s_options_still_apply(mysql_url: str) -> None:
    engine = make_engine(mysql_url, poolclass=NullPool)  # every checkout is a new connection
    plain = make_engine(mysql_url + "&ssl_disabled=true", poolclass=NullPool)
    try:
        first, second = engine.raw_connection(), engine.raw_connection()
        try:
            assert first.driver_connection is not second.driver_connection
            assert first.driver_connection.ctx is second.driver_connection.ctx is not None
        finally:
            first.close()
            second.close()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        off = plain.raw_connection()
        try:  # the URL turned TLS off: no context at all, as PyMySQL does
            assert getattr(off.driver_connection, "ctx", None) is None and not off.driver_connection.ssl
        finally:
            off.close()
    finally:
        engine.dispose()
        plain.dispose()
