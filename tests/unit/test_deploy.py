"""deploy/: the Kubernetes manifests run commands that exist, with settings the code reads,
on the ports Prometheus scrapes; the alerts and the dashboard use metrics the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from prometheus_client import REGISTRY
from typer.testing import CliRunner

import services.ledger.adapters.metrics
import services.ledger.api.app
import services.ledger.api.routes.health
import services.notifier.metrics
import services.tiers.metrics  # noqa: F401  (each import registers its metrics)
from services.ledger.bootstrap import Settings
from services.ledger.cli import app
from services.notifier.bootstrap import NotifierSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
WORKLOADS = {"Deployment", "Job", "CronJob"}


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"])
    return dict(doc["spec"]["template"])


def _subcommands(command: Any) -> dict[str, Any]:
    # typer's groups are click groups, but not always of the `click` module imported here
    return dict(getattr(command, "commands", {}))


def _command(args: list[str]) -> Any:
    """The click command that `loyalty ARGS` runs."""
    command: Any = typer.main.get_command(app)
    for word in args:
        if word not in _subcommands(command):
            break
        command = _subcommands(command)[word]
    return command


def _exported_metrics() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("loyalty_"):
            continue
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
            "gauge": [""],
        }[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_every_container_runs_a_loyalty_command_that_exists() -> None:
    runner = CliRunner()
    seen = 0
    for doc in _documents():
        if doc["kind"] not in WORKLOADS:
            continue
        for container in _pod_spec(doc)["spec"]["containers"]:
            assert container["image"] == "loyalty-ledger"
            result = runner.invoke(app, [*container["args"], "--help"])
            assert result.exit_code == 0, (doc["metadata"]["name"], result.output)
            seen += 1
    assert seen == 7  # topics, ingest, relay, api, tiers, notifier, verify


def test_every_setting_given_is_one_the_code_reads() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    literals = kustomization["configMapGenerator"][0]["literals"]
    given = {literal.split("=", 1)[0] for literal in literals}
    options = {
        envvar
        for command in _all_commands(typer.main.get_command(app))
        for param in command.params
        for envvar in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
    }
    settings = {f"LOYALTY_{name.upper()}" for name in Settings.model_fields}
    settings |= {f"LOYALTY_NOTIFIER_{name.upper()}" for name in NotifierSettings.model_fields}
    eventsourcing = {"PERSISTENCE_MODULE"}
    unknown = given - options - settings - eventsourcing
    assert not unknown, unknown
    assert {"LOYALTY_PROGRAM", "LOYALTY_METRICS_HOST", "KAFKA_BOOTSTRAP_SERVERS"} <= given


def _all_commands(command: Any) -> list[Any]:
    found = [command]
    for sub in _subcommands(command).values():
        found += _all_commands(sub)
    return found


def test_prometheus_scrapes_the_port_each_process_serves_metrics_on() -> None:
    checked = 0
    for doc in _documents():
        if doc["kind"] != "Deployment":
            continue
        template = doc["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        port = int(annotations["prometheus.io/port"])
        (container,) = template["spec"]["containers"]
        assert port in {p["containerPort"] for p in container["ports"]}
        args: list[str] = container["args"]
        if "--port" in args:  # the API serves /metrics on its own port
            served = int(args[args.index("--port") + 1])
        else:
            params = {p.name: p for p in _command(args).params}
            served = int(params["metrics_port"].default)
        assert port == served, doc["metadata"]["name"]
        checked += 1
    assert checked == 5


def test_the_local_scrape_targets_are_the_default_ports() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    local = next(job for job in config["scrape_configs"] if job["job_name"] == "loyalty-local")
    ports = {
        group["labels"]["component"]: int(group["targets"][0].rsplit(":", 1)[1])
        for group in local["static_configs"]
    }

    def default(*args: str) -> int:
        params = {p.name: p for p in _command(list(args)).params}
        return int(params["metrics_port"].default if "metrics_port" in params else 0)

    assert ports["ledger"] == default("serve")
    assert ports["tiers"] == default("tiers", "serve")
    assert ports["notifier"] == default("notify", "run")
    assert ports["api"] == int({p.name: p for p in _command(["api"]).params}["port"].default)
    assert len(set(ports.values())) == len(ports)  # one machine: no two on one port
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).exists()


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    exported = _exported_metrics()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "loyalty-ledger.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bloyalty_[a-z_]+", expr)}
    assert used, "no metric found in the alerts or the dashboard"
    assert used <= exported, sorted(used - exported)
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["alert"]
        assert rule["annotations"]["summary"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], check=True, capture_output=True, text=True
    ).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    assert sorted(kinds) == sorted(
        ["Namespace", "ConfigMap", "Job", "CronJob", "Service", *["Deployment"] * 5]
    )
