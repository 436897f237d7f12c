"""Named journey queries: parameterised SQL files in sinks/queries/.

Each file starts with ``-- description: ...`` and one ``-- param: name Type = default``
line per parameter (no ``= default``: required). The SQL uses ClickHouse's own
bound parameters (``{name:Type}``, and ``{db:Identifier}`` for the database), so
no value is ever formatted into the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

_PARAM = re.compile(r"^--\s*param:\s*(?P<name>\w+)\s+(?P<type>.+?)(?:\s*=\s*(?P<default>.*))?$")


class QueryError(ValueError):
    """A named query is unknown or its parameters are wrong; the message says which."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[Param, ...]
    sql: str

    def bind(self, given: dict[str, str], database: str) -> dict[str, Any]:
        known = {p.name for p in self.params}
        unknown = sorted(set(given) - known)
        if unknown:
            raise QueryError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; it takes "
                + (", ".join(sorted(known)) or "none")
            )
        values: dict[str, Any] = {"db": database}
        for param in self.params:
            value = given.get(param.name, param.default)
            if value is None:
                raise QueryError(f"{self.name}: --param {param.name}=... is required")
            values[param.name] = value
        return values


def _parse(name: str, text: str) -> NamedQuery:
    description, params, body = "", [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-- description:"):
            description = stripped.split(":", 1)[1].strip()
        elif (match := _PARAM.match(stripped)) is not None:
            params.append(Param(match["name"], match["type"].strip(), match["default"]))
        else:
            body.append(line)
    return NamedQuery(name, description, tuple(params), "\n".join(body).strip())


def load_all() -> dict[str, NamedQuery]:
    folder = resources.files("touchstream.sinks.queries")
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            name = entry.name[: -len(".sql")]
            found[name] = _parse(name, entry.read_text("utf-8"))
    return dict(sorted(found.items()))


def get(name: str) -> NamedQuery:
    queries = load_all()
    if name not in queries:
        raise QueryError(f"no named query {name!r}; known: {', '.join(queries)}")
    return queries[name]


def run(client: Any, query: NamedQuery, database: str, given: dict[str, str]) -> Any:
    """Run a named query; returns clickhouse-connect's QueryResult."""
    return client.query(query.sql, parameters=query.bind(given, database))
