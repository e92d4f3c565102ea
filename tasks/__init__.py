"""Prefect tasks: the only place where side effects are wired to Prefect.

Arguments are plain ids and values; clients and sessions are built inside from settings.
"""

from tasks import log_redaction

log_redaction.install()  # every flow run imports tasks: no Prefect credential in DEBUG logs
