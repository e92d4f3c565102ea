"""Serve every deployment of prefect.yaml, with its schedules, from this one process.

    python -m deployments.serve [--only maintenance,account-check] [--no-schedules]

Local all-in-one use: no work pool or worker is needed; flow runs start as subprocesses of
this process, in the repository. Needs ``PREFECT_API_URL`` (a ``prefect server start``)
for schedules and the UI; the ``BATCH_*`` settings come from this process's environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from deployments.bootstrap import HEARTBEAT_FREQUENCY_S
from deployments.spec import REPO_ROOT, DeploymentSpec, load_specs

__all__ = ["runner_deployments", "main"]


def runner_deployments(specs: list[DeploymentSpec], *, schedules: bool = True) -> list[Any]:
    """``flow.to_deployment(...)`` for each spec, as prefect.yaml declares it."""
    from prefect.flows import load_flow_from_entrypoint

    out = []
    for spec in specs:
        flow = load_flow_from_entrypoint(str(REPO_ROOT / spec.entrypoint))
        out.append(flow.to_deployment(
            name=spec.name,
            description=spec.description,
            tags=spec.tags,
            parameters=spec.parameters,
            schedules=spec.schedule_objects() if schedules else None,
            concurrency_limit=spec.concurrency_object(),
            triggers=spec.trigger_objects() or None,
        ))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated deployment names (default: all)")
    parser.add_argument("--no-schedules", action="store_true", help="serve for manual runs only")
    args = parser.parse_args(argv)
    specs = load_specs()
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        unknown = wanted - {s.name for s in specs}
        if unknown:
            parser.error(f"unknown deployments: {', '.join(sorted(unknown))}")
        specs = [s for s in specs if s.name in wanted]
    os.chdir(REPO_ROOT)  # flow runs start here, so batchlib/db/tasks/flows import
    # Served runs are subprocesses inheriting this environment: they must heartbeat, or the
    # bootstrap's zombie automation marks every run longer than its window Crashed.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_FREQUENCY_S))
    from prefect import serve

    serve(*runner_deployments(specs, schedules=not args.no_schedules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
