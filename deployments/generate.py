"""What derives from the batch types' declarations: prefect.yaml's batch deployments and the
table of docs/batch-types.md.

    python -m deployments.generate --check   # exit 1 when either file differs from the declarations
    python -m deployments.generate --write   # rewrite the generated parts of both files

Each file stays a real file, edited by hand everywhere else: only the lines between its two
markers are generated. A test runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batchlib.batch_types import BatchType, batch_types

__all__ = ["PREFECT_YAML", "BATCH_TYPES_DOC", "deployments_block", "docs_table", "regenerate", "main"]

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"
BATCH_TYPES_DOC = ROOT / "docs" / "batch-types.md"
YAML_MARKERS = (
    "  # >>> batch types, generated from their declarations: python -m deployments.generate --write\n",
    "  # <<< batch types\n",
)
DOC_MARKERS = (
    "<!-- batch types, generated from their declarations: python -m deployments.generate --write -->\n",
    "<!-- end of the generated table -->\n",
)


def _inputs(batch_type: BatchType) -> list[str]:
    names = list(batch_type.inputs)
    if batch_type.staged_as is not None:
        names.append(f"{batch_type.staged_as}_file")
    return names


def deployments_block() -> str:
    """One deployment per batch type, in prefect.yaml's shape (tag ``batch`` and the type)."""
    lines = []
    for batch_type in batch_types():
        inputs = "".join(f", {name}" for name in _inputs(batch_type))
        lines += [
            f"  - name: {batch_type.flow_name}\n",
            f"    entrypoint: {batch_type.entrypoint}\n",
            f"    description: {batch_type.title} of one tenant (tenant_id{inputs}; batch_id claims or resumes a row).\n",
            f"    tags: [batch, {batch_type.name}]\n",
            "    work_pool: *batch_pool\n",
            "\n",
        ]
    return "".join(lines)


def docs_table() -> str:
    """The table of every batch type for docs/batch-types.md."""
    rows = [
        "| task_type | flow / deployment | what it does | task_data keys | items file columns | calls |\n",
        "|---|---|---|---|---|---|\n",
    ]
    for t in batch_types():
        keys = ", ".join(f"`{k}`" for k in t.inputs) or "none"
        columns = ", ".join(f"`{k}`" for k in t.item_keys) if t.staged_as else "-"
        calls = " + ".join(name for name, used in (("platform", t.uses_platform), ("IPFS node", t.uses_kubo)) if used)
        rows.append(f"| `{t.name}` | `{t.deployment}` | {t.title} | {keys} | {columns} | {calls or '-'} |\n")
    return "".join(rows)


def _replace_between(text: str, markers: tuple[str, str], body: str, path: Path) -> str:
    begin, end = markers
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"{path}: the generated part must sit between exactly one {begin.strip()!r} and one {end.strip()!r}")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return head + begin + body + end + tail


def regenerate() -> dict[Path, tuple[str, str]]:
    """Each generated file: (its text now, its text as the declarations make it)."""
    out = {}
    for path, markers, body in ((PREFECT_YAML, YAML_MARKERS, deployments_block()), (BATCH_TYPES_DOC, DOC_MARKERS, docs_table())):
        text = path.read_text()
        out[path] = (text, _replace_between(text, markers, body, path))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.generate", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when a generated part is out of date")
    mode.add_argument("--write", action="store_true", help="rewrite the generated parts")
    args = parser.parse_args(argv)
    stale = [path for path, (now, wanted) in regenerate().items() if now != wanted]
    if args.write:
        for path in stale:
            path.write_text(regenerate()[path][1])
            print(f"rewrote {path.relative_to(ROOT)}")
        return 0
    for path in stale:
        print(f"{path.relative_to(ROOT)} differs from the batch types' declarations: "
              "run python -m deployments.generate --write", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
