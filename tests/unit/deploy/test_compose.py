"""deploy/compose and deploy/Dockerfile, checked statically (no Docker engine here):
the files parse, images are pinned, Kafka is a 3-broker KRaft cluster with RF 3 and
min.insync.replicas 2, every Touchstream container gets valid settings that agree
with the other services (brokers, ClickHouse, metrics ports), start order holds,
and the topics job creates exactly the topics the workers use."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.manifests import (
    DAY_MS,
    DEPLOY,
    INTERPOLATION,
    KNOWN,
    ROOT,
    deploy_text_files,
    interpolate,
    load_all_yaml,
    load_yaml,
    read_env_file,
    references,
    run_topics_script,
    secret_placeholders,
    settings_from,
    worker_topics,
)
from touchstream.settings import Settings, Topics, load_settings
from touchstream.streams.processes import worker_processes

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_FILE = COMPOSE_DIR / "touchstream.env"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
VERB_PORT = {"worker": "worker_port", "sink": "port"}
PINNED = re.compile(r"^[a-z0-9./-]+:(v?\d+(\.\d+)+)([-.][A-Za-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed = load_yaml(COMPOSE_FILE)
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def dot_env() -> dict[str, str]:
    """A filled-in .env: the example's keys, blank secrets given stand-in values."""
    example = read_env_file(ENV_EXAMPLE)
    blank = [key for key, value in example.items() if not value]
    return {**example, **secret_placeholders(blank)}


def container_env(service: dict[str, Any]) -> dict[str, str]:
    """The environment compose gives a service: env_file, then `environment`,
    interpolated from .env."""
    env: dict[str, str] = {}
    env_files = service.get("env_file") or []
    for name in [env_files] if isinstance(env_files, str) else env_files:
        env.update(read_env_file(COMPOSE_DIR / name))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for key, value in environment.items():
        env[key] = interpolate(str(value), dot_env())
    return env


def touchstream_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services.items()
        if str(svc.get("image", "")).startswith("touchstream:")
    }


def image_of(service: dict[str, Any]) -> str:
    return interpolate(str(service["image"]), dot_env())


def test_every_deploy_yaml_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert COMPOSE_FILE in files
    for path in files:
        assert load_all_yaml(path), f"{path} is empty"


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert "image" in service, f"{name}: no image (a built service needs a tag too)"
        image = image_of(service)
        assert PINNED.match(image), f"{name}: image {image!r} is not pinned to a version"
        assert not image.endswith(":latest")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert bases and all(PINNED.match(base) for base in bases), bases
    assert all(base.startswith("python:3.11.") and "-slim" in base for base in bases)


def test_the_image_is_built_from_this_repository_with_the_constraints(
    services: dict[str, Any],
) -> None:
    built = [svc for svc in touchstream_services(services).values() if "build" in svc]
    assert built, "no service builds the touchstream image"
    for service in built:
        context = (COMPOSE_DIR / service["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / service["build"]["dockerfile"]) == DEPLOY / "Dockerfile"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"pip install[^\n]*\\\n\s*-c constraints.txt \.", dockerfile)
    # Every folder the package is built from is copied in, and let through the
    # Dockerfile's own ignore file.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {
        path.split("/")[0] for path in pyproject["tool"]["setuptools"]["package-dir"].values()
    }
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    copied = {
        source
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M)
        for source in line.split()[:-1]
    }
    for folder in folders | {"pyproject.toml", "constraints.txt", "README.md"}:
        assert folder in copied, folder
        assert f"!{folder}/" in ignore or f"!{folder}" in ignore, folder
    assert re.search(r"^USER 10001", dockerfile, re.M), "the image runs as a non-root user"
    assert 'ENTRYPOINT ["touchstream"]' in dockerfile


def test_kafka_is_a_kraft_cluster_of_three_with_rf3_and_min_isr2(
    services: dict[str, Any],
) -> None:
    brokers = {
        name: container_env(svc)
        for name, svc in services.items()
        if image_of(svc).startswith("apache/kafka:") and "KAFKA_NODE_ID" in container_env(svc)
    }
    assert len(brokers) == 3
    voters = {}
    for name, env in brokers.items():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert f"PLAINTEXT://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        voters[env["KAFKA_NODE_ID"]] = name
        # KRaft needs one cluster id, a base64url UUID (16 bytes), on every node.
        cluster_id = env["CLUSTER_ID"]
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
        assert services[name]["healthcheck"]["test"]
        volume = services[name]["volumes"][0].split(":")
        assert volume[1] == env["KAFKA_LOG_DIRS"], f"{name}: the log dir is not on a volume"
    quorum = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in brokers.values()}
    assert quorum == {",".join(f"{node}@{voters[node]}:9093" for node in sorted(voters))}
    assert len({env["CLUSTER_ID"] for env in brokers.values()}) == 1


def test_every_touchstream_container_gets_valid_settings_that_match_the_stack(
    services: dict[str, Any],
) -> None:
    ours = touchstream_services(services)
    assert {"worker", "sink", "migrate"} <= set(ours)
    brokers = sorted(name for name in services if name.startswith("kafka-"))
    for name, service in ours.items():
        verb = service["command"][0]
        settings = settings_from(container_env(service))
        assert settings.kafka.bootstrap_servers == ",".join(f"{b}:9092" for b in brokers)
        assert settings.kafka.replication_factor == len(brokers) == 3
        assert settings.kafka.acks == "all" and settings.kafka.enable_idempotence
        assert settings.clickhouse_dsn == "http://clickhouse:8123"
        # Each gets the secrets it uses, and only those.
        writes = verb in ("sink", "migrate")
        assert bool(settings.clickhouse.password.get_secret_value()) is writes, name
        assert (settings.pii_key is not None) is (verb == "worker"), name
        assert settings.metrics.host == "0.0.0.0"  # noqa: S104 - scraped from other containers
        if verb == "worker":
            # One process per container: the one /metrics port exposed below is all
            # of it, and the container is what the engine restarts.
            assert worker_processes(settings, cpus=64) == 1
        if verb in VERB_PORT:
            port = getattr(settings.metrics, VERB_PORT[verb])
            assert port == getattr(Settings().metrics, VERB_PORT[verb])  # 9465 / 9464
            assert service["expose"] == [str(port)]
            assert f"127.0.0.1:{port}/metrics" in " ".join(service["healthcheck"]["test"])
    migrate = settings_from(container_env(ours["migrate"]))
    assert migrate.clickhouse.bi_password.get_secret_value(), "migrate creates the BI user"
    # ClickHouse: the writer is the user the server container creates, and BI tools
    # reach it on the same HTTP port as the local stack's (SERVE_PORT).
    clickhouse = container_env(services["clickhouse"])
    assert clickhouse["CLICKHOUSE_USER"] == migrate.clickhouse.username
    assert clickhouse["CLICKHOUSE_PASSWORD"] == migrate.clickhouse.password.get_secret_value()
    assert clickhouse["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"] == "1"  # to create the BI user
    port = Settings().clickhouse.serve_port
    assert f"{port}:8123" in services["clickhouse"]["ports"]


def test_every_touchstream_variable_in_deploy_exists() -> None:
    seen = set()
    for path in deploy_text_files():
        for name in references(path):
            assert name in KNOWN, f"{path.relative_to(ROOT)}: {name} is not a setting"
            seen.add(name)
    assert "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS" in seen


def test_secrets_come_from_dot_env_which_is_not_committed(compose: dict[str, Any]) -> None:
    required = {
        match["name"]
        for match in INTERPOLATION.finditer(COMPOSE_FILE.read_text())
        if match["op"] in (":?", "?")
    }
    example = read_env_file(ENV_EXAMPLE)
    assert required <= set(example), required - set(example)
    assert all(not example[name] for name in required), "the example holds no secrets"
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text().split()
    for secret in compose["secrets"].values():
        assert secret["environment"] in example
    # Secrets are not in the committed env file.
    assert not any(
        word in key for key in read_env_file(ENV_FILE) for word in ("PASSWORD", "PII_KEY")
    )
    with pytest.raises(KeyError, match="required variable"):
        interpolate(COMPOSE_FILE.read_text(), {})


def test_start_order_and_health(services: dict[str, Any]) -> None:
    def needs(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    brokers = {name for name in services if name.startswith("kafka-")}
    assert needs("topics") == dict.fromkeys(brokers, "service_healthy")
    assert needs("migrate") == {"clickhouse": "service_healthy"}
    assert needs("sink") == {
        "topics": "service_completed_successfully",
        "migrate": "service_completed_successfully",
    }
    assert needs("worker") == {
        "topics": "service_completed_successfully",
        "sink": "service_healthy",
    }
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
        one_shot = name in ("topics", "migrate")
        assert (service["restart"] == "no") is one_shot, name
        if not one_shot:
            assert service["healthcheck"]["test"], f"{name} has no health check"
    assert str(services["worker"]["deploy"]["replicas"]).startswith("${WORKERS:-")


def test_volumes_and_mounted_files_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared
    for stateful in ("kafka-1", "kafka-2", "kafka-3", "clickhouse", "prometheus", "grafana"):
        assert any(not v.startswith(".") for v in services[stateful]["volumes"]), stateful


def test_the_topics_job_creates_what_the_workers_use(
    services: dict[str, Any], tmp_path: Path
) -> None:
    env = container_env(services["topics"])
    created = {topic["name"]: topic for topic in run_topics_script(env, tmp_path)}
    settings = settings_from({**env, **secret_placeholders(["TOUCHSTREAM_PII_KEY"])})
    expected = worker_topics(settings)
    assert set(created) == set(expected)
    for name, topic in created.items():
        # One partition count everywhere: the workers' own, and each table's changelog
        # equal to its source topic's.
        assert topic["partitions"] == expected[name] == settings.kafka.partitions == 12
        assert topic["replicas"] == 3
        assert topic["config"]["min.insync.replicas"] == "2"
    contract = {settings.topic(role) for role in ("clickstream", "orders", "feedback")}
    contract |= {settings.topic(role) for role in ("dead_letters", "kpis", "alerts")}
    # State topics are compacted and kept: table changelogs, and internal topics
    # whose setting says "compacted".
    state = {
        settings.topic(role)
        for role, field in Topics.model_fields.items()
        if "compacted" in (field.description or "")
    }
    for name, topic in created.items():
        config = topic["config"]
        if name.endswith("-changelog") or name in state:
            assert config == {
                "min.insync.replicas": "2",
                "cleanup.policy": "compact",
                "retention.ms": "-1",
            }
        elif name in contract:
            assert config["cleanup.policy"] == "delete"
            assert int(config["retention.ms"]) == 7 * DAY_MS
        else:
            assert config["cleanup.policy"] == "delete"
            assert int(config["retention.ms"]) == 3 * DAY_MS
    # The script's default names are the settings' defaults, for every topic role.
    script = (COMPOSE_DIR / "create-topics.sh").read_text()
    defaults = dict(re.findall(r"\$\{TOUCHSTREAM_TOPICS__([A-Z_]+):-([^}]+)\}", script))
    assert {k.lower(): v for k, v in defaults.items()} == {
        role: field.default for role, field in Topics.model_fields.items()
    }


def test_the_topics_job_follows_prefix_partitions_and_app_id(tmp_path: Path) -> None:
    env = {
        "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "k:9092",
        "TOUCHSTREAM_KAFKA__TOPIC_PREFIX": "shop1.",
        "TOUCHSTREAM_KAFKA__PARTITIONS": "6",
        "TOUCHSTREAM_KAFKA__REPLICATION_FACTOR": "1",
        "TOUCHSTREAM_STREAMS__APP_ID": "cx",
        "TOUCHSTREAM_TOPICS__ORDERS": "orders.v2",
    }
    created = {topic["name"]: topic for topic in run_topics_script(env, tmp_path)}
    assert set(created) == set(worker_topics(load_settings(env)))
    assert "shop1.orders.v2" in created and "shop1.touchstream.alert-state.v1" in created
    assert not any(name.startswith("cx-") for name in created)  # no Faust table left
    assert {t["partitions"] for t in created.values()} == {6}
    assert {t["config"]["min.insync.replicas"] for t in created.values()} == {"1"}


def test_prometheus_scrapes_every_touchstream_service_under_the_shared_job_names(
    services: dict[str, Any],
) -> None:
    ours = load_yaml(COMPOSE_DIR / "prometheus.yml")
    shared = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in ours["scrape_configs"]}
    shared_jobs = {job["job_name"] for job in shared["scrape_configs"]}
    assert {name for name in jobs if name.startswith("touchstream")} == {
        name for name in shared_jobs if name.startswith("touchstream")
    }
    defaults = Settings().metrics
    for job, service, port in [
        ("touchstream-worker", "worker", defaults.worker_port),
        ("touchstream-sink", "sink", defaults.port),
    ]:
        [sd] = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A" and sd["port"] == port
        assert service in services
    assert jobs["clickhouse"]["static_configs"][0]["targets"] == ["clickhouse:9363"]
    assert "<port>9363</port>" in (COMPOSE_DIR / "clickhouse/config.d/touchstream.xml").read_text()
    [manager] = ours["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = manager.split(":")
    assert host in services and f"{port}:9093" in services[host]["ports"]
    assert ours["rule_files"] == ["rules/*.yml"]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] if v.startswith("."))
    assert mounts["../prometheus/rules"] == "/etc/prometheus/rules"
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert list((DEPLOY / "prometheus" / "rules").glob("*.yml")), "no rules to mount"


def test_grafana_gets_the_shared_dashboards_and_data_sources(services: dict[str, Any]) -> None:
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    shared = DEPLOY / "grafana"
    # The shared dashboard provider, and the dashboards where it looks for them.
    assert mounts["../grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    [provider] = load_yaml(shared / "provisioning/dashboards/touchstream.yml")["providers"]
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    # The data sources: the shared ones (names, uids, types, settings) with this
    # network's hosts, so every uid the dashboards use resolves.
    ours_dir = "./grafana/provisioning/datasources"
    assert mounts[ours_dir] == "/etc/grafana/provisioning/datasources"
    ours = {
        d["uid"]: d for d in load_yaml(COMPOSE_DIR / ours_dir / "touchstream.yml")["datasources"]
    }
    theirs = {
        d["uid"]: d
        for d in load_yaml(shared / "provisioning/datasources/touchstream.yml")["datasources"]
    }
    assert set(ours) == set(theirs)
    hosts = {"url": "http://prometheus:9090", "host": "clickhouse"}
    for uid, source in ours.items():
        expected = {k: v for k, v in theirs[uid].items() if k not in ("url", "jsonData")}
        assert {k: v for k, v in source.items() if k not in ("url", "jsonData")} == expected
        data, shared_data = source.get("jsonData", {}), theirs[uid].get("jsonData", {})
        assert {k: v for k, v in data.items() if k != "host"} == {
            k: v for k, v in shared_data.items() if k != "host"
        }
        if "url" in source:
            assert source["url"] == hosts["url"]
        if "host" in data:
            assert data["host"] == hosts["host"]
            assert data["port"] == Settings().clickhouse.serve_port
            assert data["username"] == Settings().clickhouse.bi_user
    used = set()
    for dashboard in (shared / "dashboards").glob("*.json"):
        used |= set(re.findall(r'"uid":\s*"(touchstream-[a-z]+)"', dashboard.read_text()))
    assert {"touchstream-prometheus", "touchstream-clickhouse"} <= used
    # The ClickHouse password the data source expands is the BI user's.
    env = container_env(services["grafana"])
    password = re.search(r"\$\{(\w+)\}", str(ours["touchstream-clickhouse"]["secureJsonData"]))
    assert password is not None
    migrate = settings_from(container_env(services["migrate"]))
    assert env[password[1]] == migrate.clickhouse.bi_password.get_secret_value()
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    plugin, _, version = env["GF_PLUGINS_PREINSTALL_SYNC"].partition("@")
    assert plugin == "grafana-clickhouse-datasource" and re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert plugin == theirs["touchstream-clickhouse"]["type"]


def test_prometheus_config_with_the_mounted_rules_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: `apt-get install -y prometheus` (Debian), or `make test`")
    # The container's layout: the config with the shared rules beside it.
    (tmp_path / "prometheus.yml").write_text((COMPOSE_DIR / "prometheus.yml").read_text())
    (tmp_path / "rules").symlink_to(DEPLOY / "prometheus" / "rules")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule files found" in result.stdout + result.stderr


def test_alertmanager_routes_reach_declared_receivers() -> None:
    config = load_yaml(COMPOSE_DIR / "alertmanager.yml")
    receivers = {receiver["name"] for receiver in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert all(route["receiver"] in receivers for route in routes)
    assert "alertname" in config["route"]["group_by"]
