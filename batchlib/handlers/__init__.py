"""Item handlers, one module per batch type; importing a module registers its type."""

from batchlib.handlers import account_check  # noqa: F401
