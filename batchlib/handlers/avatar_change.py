"""avatar_change (批量头像更换): ``{"items": [{"account_id": 1, "avatar_url": "https://..."}, ...]}``."""

from batchlib.handlers.profile_change import profile_change_type
from batchlib.validation import check_avatar_url

AVATAR_CHANGE = profile_change_type("avatar_change", "Avatar change", "avatar_url", check_avatar_url, "change_avatar")
