"""docs/runbook.md: one section per alert rule and no other, each saying what it
means, what to check and what to do; the SQL it tells an operator to run works
against the schema `touchstream migrate` creates, and the named queries it
mentions exist."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import yaml

from touchstream.sinks import named
from touchstream.sinks.migrate import migrate

ROOT = Path(__file__).resolve().parents[3]
RUNBOOK = ROOT / "docs" / "runbook.md"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "touchstream.rules.yml"


def sections() -> dict[str, str]:
    text = RUNBOOK.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_one_section_per_alert_with_means_check_do() -> None:
    alerts = [
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    ]
    found = {title: body for title, body in sections().items() if title.startswith("Touchstream")}
    assert sorted(found) == sorted(alerts)
    for title, body in found.items():
        for part in ("**Means.**", "**Check.**", "**Do.**"):
            assert part in body, f"{title}: no {part}"


def test_the_sql_in_the_runbook_runs_against_the_schema(ch: Any) -> None:
    database = f"r_{uuid.uuid4().hex[:8]}"
    migrate(ch, database)
    text = RUNBOOK.read_text()
    sqls = [s for s in re.findall(r'touchstream query "([^"]+)"', text) if s != "<SELECT>"]
    assert len(sqls) >= 8
    for sql in sqls:
        assert sql.lstrip().upper().startswith("SELECT")
        ch.query(re.sub(r"\btouchstream\.(?=[a-z_]+\b)", f"{database}.", sql))


def test_the_named_queries_in_the_runbook_exist() -> None:
    mentioned = set(re.findall(r"touchstream query ([a-z_]+)\b", RUNBOOK.read_text()))
    assert mentioned, "the runbook points at named queries"
    available = named.load_all()
    assert mentioned <= set(available), mentioned - set(available)
    for name, param in re.findall(
        r"touchstream query ([a-z_]+)((?: --param \w+=\S+)*)", RUNBOOK.read_text()
    ):
        names = {p.name for p in available[name].params}
        given = set(re.findall(r"--param (\w+)=", param))
        assert given <= names, f"{name}: unknown parameters {given - names}"
