"""The admin system's own accounts table, as a real installation has it (for tests).

Other column names than ours, tinyint status codes, columns of its own (``login_ip``), NOT
NULL columns with defaults. ``PANEL_SETTINGS`` are the ``BATCH_ACCOUNT_*`` settings (lower
case, without the prefix) that adopt it.
"""

from __future__ import annotations

import json
import re

import pymysql
from sqlalchemy.engine import make_url

from db.ddl import ORIGINAL_DDL

__all__ = ["PANEL_ACCOUNTS_DDL", "CODES", "PANEL_SETTINGS", "panel_database", "show_create"]

PANEL_ACCOUNTS_DDL = """\
CREATE TABLE `la_alt_account` (
  `id` int(11) unsigned NOT NULL AUTO_INCREMENT,
  `tenant_id` int(11) NOT NULL DEFAULT 0 COMMENT '租户ID',
  `uid` varchar(64) NOT NULL DEFAULT '' COMMENT '平台UID',
  `nick_name` varchar(100) NOT NULL DEFAULT '' COMMENT '昵称',
  `avatar` varchar(500) NOT NULL DEFAULT '' COMMENT '头像',
  `token` varchar(1024) NOT NULL DEFAULT '',
  `refresh_token` varchar(1024) NOT NULL DEFAULT '',
  `expire_time` int(11) NOT NULL DEFAULT 0,
  `status` tinyint(1) NOT NULL DEFAULT 1 COMMENT '1正常 2封禁 3禁用 4受限',
  `login_ip` varchar(45) NOT NULL DEFAULT '',
  `create_time` int(11) NOT NULL,
  `update_time` int(11) NOT NULL,
  `delete_time` int(11) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `idx_tenant` (`tenant_id`),
  UNIQUE KEY `uk_uid` (`uid`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='小号表'"""

CODES = {"alive": 1, "banned": 2, "disabled": 3, "restricted": 4}
PANEL_SETTINGS = {
    "account_col_platform_uid": "uid",
    "account_col_nickname": "nick_name",
    "account_col_avatar_url": "avatar",
    "account_col_access_token": "token",
    "account_col_token_expires_at": "expire_time",
    "account_col_last_check_time": "",
    "account_col_token_version": "",
    "account_status_map": json.dumps(CODES),
}


def _connect(url: str) -> pymysql.connections.Connection:
    u = make_url(url)
    return pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           database=u.database, autocommit=True, charset="utf8mb4")


def panel_database(url: str) -> None:
    """The panel's tables as an existing installation has them (nothing of ours yet)."""
    conn = _connect(url)
    with conn.cursor() as cur:
        for ddl in (*ORIGINAL_DDL.values(), PANEL_ACCOUNTS_DDL):
            cur.execute(ddl)
    conn.close()


def show_create(url: str, table: str = "la_alt_account") -> str:
    """The table's definition (its AUTO_INCREMENT counter, moved by the rows inserted, left out)."""
    conn = _connect(url)
    with conn.cursor() as cur:
        cur.execute(f"SHOW CREATE TABLE `{table}`")
        text = cur.fetchone()[1]
    conn.close()
    return re.sub(r" AUTO_INCREMENT=\d+", "", text)
