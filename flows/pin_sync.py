"""pin-sync: bring la_ipfs_pin in step with the pins of the tenant's IPFS node (Kubo RPC).

    python -m flows.pin_sync --tenant-id 7            # the node: BATCH_KUBO_NODES["7"], else BATCH_KUBO_URL
    python -m flows.pin_sync --resume 42
"""

from __future__ import annotations

import sys

from flows.batch_cli import base_parser, run_cli
from flows.batch_runner import batch_flow, run_batch_flow
from flows.params import BatchId, CreateAdminId, Takeover, TaskName, TenantId

TASK_TYPE = "pin_sync"


@batch_flow(TASK_TYPE)
async def pin_sync(
    tenant_id: TenantId,
    task_name: TaskName = None,
    create_admin_id: CreateAdminId = 0,
    batch_id: BatchId = None,
    takeover: Takeover = False,
):
    """List the node's recursive pins, stat each one, and record them (one detail row per pin).

    ``batch_id`` claims an existing batch row or resumes one: a batch whose listing failed
    lists again; otherwise only pins still pending are stat'ed.
    """
    return await run_batch_flow(
        TASK_TYPE, tenant_id=tenant_id, task_data=None, task_name=task_name,
        create_admin_id=create_admin_id, batch_id=batch_id, takeover=takeover,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m flows.pin_sync", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.tenant_id is None and args.resume is None:
        parser.error("give --tenant-id, or --resume BATCH_ID")
    return run_cli(pin_sync, {
        "tenant_id": args.tenant_id, "task_name": args.task_name,
        "create_admin_id": args.admin_id, "batch_id": args.resume,
        "takeover": args.takeover,
    })


if __name__ == "__main__":
    sys.exit(main())
