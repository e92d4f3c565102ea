"""nickname_change (批量昵称修改): ``{"items": [{"account_id": 1, "nickname": "..."}, ...]}``."""

from batchlib.handlers.profile_change import profile_change_type
from batchlib.validation import check_nickname

NICKNAME_CHANGE = profile_change_type("nickname_change", "Nickname change", "nickname", check_nickname, "change_nickname")
