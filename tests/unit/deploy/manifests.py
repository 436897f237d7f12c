"""Helpers for the static checks of deploy/: env files, compose interpolation, the
settings a container would get, and the topics the stream worker uses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from touchstream.settings import Settings, env_variables, load_settings

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
KNOWN = {name for name, _, _ in env_variables()}
DEFAULTS = {name: default for name, default, _ in env_variables()}
# A variable name; a wildcard mention such as TOUCHSTREAM_METRICS__* is not one.
REFERENCE = re.compile(r"\bTOUCHSTREAM_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_]*\*)")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)
DAY_MS = 86_400_000


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (docker compose / kubectl --from-env-file), comments skipped."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def interpolate(text: str, environment: dict[str, str]) -> str:
    """Compose's ${...} interpolation; a required variable that is unset raises."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = environment.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"required variable {name} is not set: {arg}")
        return ""

    return INTERPOLATION.sub(replace, text)


def secret_placeholders(keys: list[str]) -> dict[str, str]:
    """Non-empty stand-ins for the secrets an example file leaves blank."""
    return {key: f"test-{key.lower()}" for key in keys}


def settings_from(env: dict[str, str]) -> Settings:
    """What a container with exactly this environment gets (raises if invalid)."""
    unknown = sorted(name for name in env if name.startswith("TOUCHSTREAM_") and name not in KNOWN)
    assert not unknown, f"unknown settings: {unknown}"
    return load_settings(env)


def references(path: Path) -> set[str]:
    return set(REFERENCE.findall(path.read_text()))


def deploy_text_files() -> list[Path]:
    files = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        try:
            path.read_text()
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def worker_topics(settings: Settings) -> dict[str, int]:
    """Every topic a stream worker reads or writes, with the partitions it expects:
    the settings' topics and the changelog of each Faust table."""
    from touchstream.kafka_admin import topic_names
    from touchstream.streams.app import create_app

    # Topic names and partitions do not depend on connection security; without it
    # the app builds with no CA file on this machine.
    plain = settings.kafka.model_copy(update={"security_protocol": "PLAINTEXT"})
    app = create_app(settings.model_copy(update={"kafka": plain}))
    topics = {name: settings.kafka.partitions for name in topic_names(settings)}
    for table in app.tables.values():
        topics[table.changelog_topic.get_topic_name()] = table.partitions or 0
    return topics


def run_topics_script(env: dict[str, str], tmp_path: Path) -> list[dict[str, Any]]:
    """Run deploy/compose/create-topics.sh against a recording kafka-topics.sh; the
    topics it would create, with their arguments."""
    record = tmp_path / "calls.txt"
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\n')
    fake.chmod(0o755)
    subprocess.run(
        ["bash", str(DEPLOY / "compose" / "create-topics.sh")],
        env={"PATH": "/usr/bin:/bin", "KAFKA_BIN": str(tmp_path), **env},
        check=True,
        capture_output=True,
        timeout=30,
    )
    created = []
    for line in record.read_text().splitlines():
        args = line.split()
        if "--create" not in args:
            continue
        configs = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--config")
        created.append(
            {
                "name": args[args.index("--topic") + 1],
                "partitions": int(args[args.index("--partitions") + 1]),
                "replicas": int(args[args.index("--replication-factor") + 1]),
                "config": configs,
            }
        )
    return created
