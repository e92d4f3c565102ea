"""Item handlers, one module per batch type; importing a module registers its type."""

from batchlib.handlers import account_check, add_friend, avatar_change, nickname_change, pin_sync  # noqa: F401
