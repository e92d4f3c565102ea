"""prefect.yaml, read once: the single source of the deployments, their schedules and pool.

``prefect deploy --all`` reads the file itself; ``deployments.serve`` and the tests use
these helpers so local serving and the checks never drift from what is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["REPO_ROOT", "PREFECT_YAML", "DeploymentSpec", "load_specs", "work_pool_name"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO_ROOT / "prefect.yaml"


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    name: str
    entrypoint: str
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: dict[str, Any] | int | None = None
    work_pool: str | None = None
    triggers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flow_file(self) -> Path:
        return REPO_ROOT / self.entrypoint.split(":")[0]

    def schedule_objects(self) -> list[Any]:
        from prefect.schedules import Cron, Interval

        out = []
        for s in self.schedules:
            common = {"active": s.get("active", True), "parameters": s.get("parameters") or None}
            if "interval" in s:
                out.append(Interval(s["interval"], timezone=s.get("timezone"), **common))
            elif "cron" in s:
                out.append(Cron(s["cron"], timezone=s.get("timezone"), day_or=s.get("day_or", True), **common))
            else:
                raise ValueError(f"deployment {self.name}: unsupported schedule {s}")
        return out

    def trigger_objects(self) -> list[Any]:
        """The deployment triggers (automations that start a run of this deployment)."""
        from prefect.events import DeploymentTriggerTypes
        from pydantic import TypeAdapter

        adapter = TypeAdapter(DeploymentTriggerTypes)
        return [adapter.validate_python({"name": f"{self.name}__automation_{i}", **t})
                for i, t in enumerate(self.triggers, start=1)]

    def concurrency_object(self) -> Any:
        if self.concurrency_limit is None or isinstance(self.concurrency_limit, int):
            return self.concurrency_limit
        from prefect.client.schemas.objects import ConcurrencyLimitConfig

        return ConcurrencyLimitConfig(**self.concurrency_limit)


def _raw(path: Path = PREFECT_YAML) -> dict[str, Any]:
    with path.open() as fh:
        return yaml.safe_load(fh)


def load_specs(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    specs = []
    for d in _raw(path).get("deployments") or []:
        specs.append(DeploymentSpec(
            name=d["name"],
            entrypoint=d["entrypoint"],
            description=d.get("description"),
            tags=list(d.get("tags") or []),
            parameters=dict(d.get("parameters") or {}),
            schedules=list(d.get("schedules") or []),
            concurrency_limit=d.get("concurrency_limit"),
            work_pool=(d.get("work_pool") or {}).get("name"),
            triggers=list(d.get("triggers") or []),
        ))
    return specs


def work_pool_name(path: Path = PREFECT_YAML) -> str:
    """The pool every deployment of prefect.yaml runs on (they share one)."""
    pools = {s.work_pool for s in load_specs(path) if s.work_pool}
    if len(pools) != 1:
        raise ValueError(f"expected one work pool in {path.name}, found {sorted(pools)}")
    return pools.pop()
