"""The admin panel's original DDL, verbatim (docs/design.md §3). Existing installations have it."""

from __future__ import annotations

__all__ = ["BATCH_TASK_DDL", "BATCH_TASK_DETAIL_DDL", "ORIGINAL_DDL"]

BATCH_TASK_DDL = """\
CREATE TABLE `la_batch_task` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `tenant_id` int(11) NOT NULL COMMENT '租户ID',
  `task_name` varchar(255) NOT NULL COMMENT '任务名称',
  `task_type` varchar(50) NOT NULL COMMENT '任务类型',
  `task_status` varchar(20) NOT NULL DEFAULT 'pending' COMMENT '任务状态',
  `total_count` int(11) NOT NULL DEFAULT 0 COMMENT '总数',
  `processed_count` int(11) NOT NULL DEFAULT 0 COMMENT '已处理数',
  `success_count` int(11) NOT NULL DEFAULT 0 COMMENT '成功数',
  `failed_count` int(11) NOT NULL DEFAULT 0 COMMENT '失败数',
  `task_data` text COMMENT '任务数据(JSON)',
  `create_admin_id` int(11) NOT NULL COMMENT '创建者ID',
  `start_time` int(11) DEFAULT NULL COMMENT '开始时间',
  `end_time` int(11) DEFAULT NULL COMMENT '结束时间',
  `error_message` text COMMENT '错误信息',
  `create_time` int(11) NOT NULL,
  `update_time` int(11) NOT NULL,
  `delete_time` int(11) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `idx_tenant_task` (`tenant_id`, `task_type`),
  KEY `idx_status` (`task_status`),
  KEY `idx_create_time` (`create_time`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='批量任务表'"""

BATCH_TASK_DETAIL_DDL = """\
CREATE TABLE `la_batch_task_detail` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `task_id` int(11) NOT NULL COMMENT '任务ID',
  `item_id` int(11) NOT NULL COMMENT '项目ID(如账号ID)',
  `item_data` text COMMENT '项目数据(JSON)',
  `status` varchar(20) NOT NULL DEFAULT 'pending' COMMENT '状态',
  `result` text COMMENT '处理结果(JSON)',
  `error_message` text COMMENT '错误信息',
  `process_time` int(11) DEFAULT NULL COMMENT '处理时间',
  `create_time` int(11) NOT NULL,
  `update_time` int(11) NOT NULL,
  PRIMARY KEY (`id`),
  KEY `idx_task_id` (`task_id`),
  KEY `idx_status` (`status`),
  FOREIGN KEY (`task_id`) REFERENCES `la_batch_task` (`id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='批量任务详情表'"""

ORIGINAL_DDL = {"la_batch_task": BATCH_TASK_DDL, "la_batch_task_detail": BATCH_TASK_DETAIL_DDL}
