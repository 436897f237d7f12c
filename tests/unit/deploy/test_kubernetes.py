"""deploy/kubernetes, checked statically: the kustomizations list every manifest,
each container has resources and (if it runs for long) probes on its metrics port,
references only the ConfigMap and Secret keys that exist, and gets valid settings
from them; Services and ServiceMonitors find the pods under the shared job names;
the KafkaTopics are exactly the topics the workers use, with the partitions,
replication and retention that deploy/compose creates too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.manifests import (
    DAY_MS,
    DEPLOY,
    load_all_yaml,
    load_yaml,
    read_env_file,
    run_topics_script,
    secret_placeholders,
    settings_from,
    worker_topics,
)
from touchstream.settings import Settings
from touchstream.streams.processes import worker_processes

K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
CONFIG = read_env_file(BASE / "config.env")
SECRET_KEYS = list(read_env_file(BASE / "secrets.env.example"))
SECRET = "touchstream-secrets"
# Made outside this repository (K8S README): the Kafka cluster CA, key ca.crt.
EXTERNAL_SECRETS = {"touchstream-kafka-ca": {"ca.crt"}}
LONG_RUNNING = {"touchstream-worker": "worker_port", "touchstream-sink": "port"}


def resources(directory: Path) -> list[dict[str, Any]]:
    kustomization = load_yaml(directory / "kustomization.yaml")
    docs = []
    for name in kustomization["resources"]:
        docs += load_all_yaml(directory / name)
    return docs


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return resources(BASE)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "Job")}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def test_kustomizations_list_every_manifest() -> None:
    for directory in (BASE, K8S / "monitoring", K8S / "topics"):
        kustomization = load_yaml(directory / "kustomization.yaml")
        listed = set(kustomization["resources"])
        present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, f"{directory.name}: listed {listed}, present {present}"
        for doc in resources(directory):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
    generators = load_yaml(BASE / "kustomization.yaml")["configMapGenerator"]
    assert [(g["name"], g["envs"]) for g in generators] == [("touchstream-config", ["config.env"])]


def test_workers_sink_and_migrate_run_the_pinned_image(base: list[dict[str, Any]]) -> None:
    found = workloads(base)
    assert set(found) == {"touchstream-worker", "touchstream-sink", "touchstream-migrate"}
    verbs = {name: pod_spec(w)["containers"][0]["args"] for name, w in found.items()}
    assert verbs == {
        "touchstream-worker": ["worker"],
        "touchstream-sink": ["sink"],
        "touchstream-migrate": ["migrate"],
    }
    [image] = load_yaml(BASE / "kustomization.yaml")["images"]
    assert image["name"] == "touchstream" and re.fullmatch(r"\d+\.\d+\.\d+", image["newTag"])
    for workload in found.values():
        for container in pod_spec(workload)["containers"]:
            assert container["image"] == image["name"]  # the tag comes from `images`
    assert found["touchstream-worker"]["kind"] == "Deployment"  # state is in changelogs
    assert found["touchstream-migrate"]["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"


def test_every_container_has_resources_probes_and_a_locked_down_context(
    base: list[dict[str, Any]],
) -> None:
    for name, workload in workloads(base).items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"] for v in spec["volumes"]}
        for container in spec["containers"]:
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, name
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert set(mounts.values()) <= volumes
            # The data dir is writable (read-only root file system otherwise).
            assert {"/var/lib/touchstream", "/tmp"} <= set(mounts)  # noqa: S108 - mount paths
            if name not in LONG_RUNNING:
                continue
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            settings = Settings()  # the metrics port defaults: 9465 worker, 9464 sink
            assert ports == {"metrics": getattr(settings.metrics, LONG_RUNNING[name])}
            for probe in ("readinessProbe", "livenessProbe"):
                check = container[probe]["httpGet"]
                assert check == {"path": "/metrics", "port": "metrics"}, (name, probe)


def test_containers_reference_only_existing_config_and_secret_keys(
    base: list[dict[str, Any]],
) -> None:
    secret_keys = {SECRET: set(SECRET_KEYS), **EXTERNAL_SECRETS}
    readme = (K8S / "README.md").read_text()
    for external in EXTERNAL_SECRETS:
        assert external in readme, f"{external} is not documented"
    for name, workload in workloads(base).items():
        spec = pod_spec(workload)
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secret_keys
        for container in spec["containers"]:
            assert container["envFrom"] == [{"configMapRef": {"name": "touchstream-config"}}]
            for variable in container.get("env", []):
                ref = variable["valueFrom"]["secretKeyRef"]
                assert ref["key"] in secret_keys[ref["name"]], (name, ref)
                assert variable["name"] == ref["key"]


def container_settings(container: dict[str, Any]) -> Settings:
    """The settings this container gets: the ConfigMap, and its Secret keys."""
    secrets = secret_placeholders([v["name"] for v in container.get("env", [])])
    return settings_from({**CONFIG, **secrets})


def test_every_container_gets_valid_settings(base: list[dict[str, Any]]) -> None:
    used = set()
    for name, workload in workloads(base).items():
        [container] = pod_spec(workload)["containers"]
        settings = container_settings(container)
        used |= {variable["name"] for variable in container.get("env", [])}
        assert settings.kafka.bootstrap_servers and not settings.embedded_clickhouse
        assert settings.kafka.security_protocol == "SASL_SSL"
        assert str(settings.kafka.ssl_cafile).startswith("/etc/touchstream/kafka-ca/")
        assert settings.kafka.replication_factor == 3
        assert settings.metrics.host == "0.0.0.0"  # noqa: S104 - scraped by Prometheus
        if name == "touchstream-worker":
            assert settings.pii_key is not None and settings.pii_key.get_secret_value()
            # One process per pod, whatever its CPU limit: one /metrics port per pod.
            assert worker_processes(settings, cpus=64) == 1
        if name in ("touchstream-sink", "touchstream-migrate"):
            assert settings.clickhouse.password.get_secret_value()
        if name == "touchstream-migrate":
            assert settings.clickhouse.bi_password.get_secret_value()
    assert used == set(SECRET_KEYS), "every Secret key is used, and only those"
    # Least privilege: the worker never sees the ClickHouse passwords.
    worker = pod_spec(workloads(base)["touchstream-worker"])["containers"][0]
    assert not any("CLICKHOUSE" in v["name"] for v in worker["env"])
    assert ".gitignore" in {p.name for p in BASE.iterdir()}
    assert "secrets.env" in (BASE / ".gitignore").read_text().split()


def test_services_and_monitors_find_the_pods_under_the_shared_job_names(
    base: list[dict[str, Any]],
) -> None:
    services = by_kind(base, "Service")
    deployments = by_kind(base, "Deployment")
    shared = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"] for job in shared["scrape_configs"]}
    assert set(services) == set(LONG_RUNNING) and set(services) <= jobs
    monitors = by_kind(resources(K8S / "monitoring"), "ServiceMonitor")
    assert set(monitors) == set(services)
    for name, service in services.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["clusterIP"] == "None"  # every pod a target
        [port] = service["spec"]["ports"]
        container = pod_spec(deployments[name])["containers"][0]
        assert port["targetPort"] in {p["name"] for p in container["ports"]}
        monitor = monitors[name]["spec"]
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert [e["port"] for e in monitor["endpoints"]] == [port["name"]]


def test_topics_are_what_the_workers_use_with_the_compose_choices(tmp_path: Path) -> None:
    topics = by_kind(resources(K8S / "topics"), "KafkaTopic")
    settings = container_settings({"env": [{"name": key} for key in SECRET_KEYS]})
    expected = worker_topics(settings)
    declared = {doc["spec"]["topicName"]: doc["spec"] for doc in topics.values()}
    assert set(declared) == set(expected)
    for doc in topics.values():
        assert doc["metadata"]["labels"]["strimzi.io/cluster"]
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", doc["metadata"]["name"])
    for name, spec in declared.items():
        assert spec["partitions"] == expected[name] == settings.kafka.partitions
        assert spec["replicas"] == settings.kafka.replication_factor == 3
        assert spec["config"]["min.insync.replicas"] == 2
    # The same choices as deploy/compose's topics job, topic by topic.
    compose = {
        topic["name"]: topic
        for topic in run_topics_script(
            {
                "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "k:9092",
                "TOUCHSTREAM_KAFKA__PARTITIONS": "12",
            },
            tmp_path,
        )
    }
    assert set(compose) == set(declared)
    for name, spec in declared.items():
        assert {k: str(v) for k, v in spec["config"].items()} == compose[name]["config"], name
        assert spec["partitions"] == compose[name]["partitions"]
    raw = [settings.topic(role) for role in ("clickstream", "orders", "feedback")]
    assert {int(declared[name]["config"]["retention.ms"]) for name in raw} == {7 * DAY_MS}
