"""Keep the Prefect API credential out of logs switched to DEBUG.

The ``websockets`` library logs every frame and handshake header at DEBUG. Prefect's event
and log streams authenticate over a websocket with ``{"type": "auth", "token": "<user:password>"}``,
so an operator who sets the root logger to DEBUG would see ``PREFECT_API_AUTH_STRING`` in the
output. This filter masks the token (and any Basic/Bearer header) in those records; it is
installed on the websockets loggers when the ``tasks`` package is imported, i.e. in every flow
run process.
"""

from __future__ import annotations

import logging
import re

__all__ = ["CredentialMask", "install"]

WEBSOCKET_LOGGERS = ("websockets.client", "websockets.server")
_SECRET = re.compile(r"""("token"\s*:\s*")[^"']*|(\b(?:Basic|Bearer)\s+)[^\s'"]+""", re.IGNORECASE)


class CredentialMask(logging.Filter):
    """Replace auth tokens and Basic/Bearer credentials in a record's message with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a record that cannot be formatted carries nothing to mask)
            return True
        masked = _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "***", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install() -> None:
    """Attach the mask to the websockets loggers (once)."""
    for name in WEBSOCKET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, CredentialMask) for f in logger.filters):
            logger.addFilter(CredentialMask())
