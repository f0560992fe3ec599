"""The deploy artefacts are valid and agree with the code: queues, stop timeouts, probes, metric names.

Checked offline with what runs here: kubernetes-validate's bundled schemas (KEDA's CRDs are not among
them: those get a structural check), the Compose specification's JSON Schema, `systemd-analyze verify`.
Docker itself cannot run on this machine, so the image and the compose file are never started here.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate.utils as kv
import pytest
import yaml

from deskmail.workers import metrics
from deskmail.workers.config import SETTINGS
from deskmail.workers.constants import MailService, Queue

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DATA = Path(__file__).resolve().parents[1] / "data"
FINAL_REPLY = float(SETTINGS["DESKMAIL_SMTP_FINAL_REPLY_TIMEOUT"].default)
TRANSPORT_QUEUES = {s.queue.value for s in MailService}


def manifests() -> list[dict]:
    docs: list[dict] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict]:
    return [d for d in manifests() if d["kind"] == kind]


def queues_of(deployment: dict) -> list[str]:
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    return command[command.index("-Q") + 1:] if "-Q" in command else []


def shutdown_timeout(command: list[str]) -> float:
    return float(command[command.index("--worker-shutdown-timeout") + 1]) / 1000


@pytest.mark.parametrize("doc", [d for d in manifests() if not d["apiVersion"].startswith("keda.sh/")],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_kubernetes_object_is_valid_against_the_kubernetes_schema(doc):
    kv.validate(doc, kv.latest_version(), strict=True)


def test_kubernetes_validate_refuses_a_broken_deployment():
    broken = copy.deepcopy(of_kind("Deployment")[0])
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "eleven minutes"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def test_every_queue_has_a_deployment_and_every_transport_queue_a_keda_scaler_on_its_length():
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    consumed = [q for d in deployments.values() for q in queues_of(d)]
    assert sorted(consumed) == sorted(q.value for q in Queue)  # each queue exactly once
    scaled = of_kind("ScaledObject")
    auths = {a["metadata"]["name"]: a for a in of_kind("TriggerAuthentication")}
    secrets = {s["metadata"]["name"]: s for s in of_kind("Secret")}
    by_queue = {}
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        target = deployments[spec["scaleTargetRef"]["name"]]
        [trigger] = spec["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "rabbitmq" and meta["mode"] == "QueueLength" and int(meta["value"]) > 0
        assert meta["protocol"] == "amqp" and queues_of(target) == [meta["queueName"]]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        ref = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"][0]
        assert ref["parameter"] == "host" and ref["key"] in secrets[ref["name"]]["stringData"]
        by_queue[meta["queueName"]] = obj
    assert set(by_queue) == TRANSPORT_QUEUES


def test_pods_outlive_the_longest_exchange_and_every_deployment_has_a_disruption_budget():
    config = of_kind("ConfigMap")[0]["data"]
    final_reply = float(config["DESKMAIL_SMTP_FINAL_REPLY_TIMEOUT"])
    budgets = [b["spec"]["selector"]["matchLabels"] for b in of_kind("PodDisruptionBudget")]
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        command = pod["containers"][0]["command"]
        if command[0] == "dramatiq":
            assert shutdown_timeout(command) > final_reply
            assert pod["terminationGracePeriodSeconds"] > shutdown_timeout(command)
            probes = pod["containers"][0]
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert deployment["spec"]["selector"]["matchLabels"] in budgets
        names = {e.get("configMapRef", e.get("secretRef"))["name"] for e in pod["containers"][0]["envFrom"]}
        assert names == {"deskmail-config", "deskmail-secrets"}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_errors(doc: dict) -> list[str]:
    schema = json.loads((DATA / "compose-spec.schema.json").read_text())
    validator = jsonschema.Draft201909Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_compose_file_is_valid_against_the_compose_specification():
    assert compose_errors(compose()) == []
    broken = compose()
    broken["services"]["scheduler"]["restart_after"] = "always"
    assert compose_errors(broken)


def duration(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", text))


def test_compose_runs_a_worker_per_queue_with_probes_and_a_stop_grace_longer_than_a_send():
    services = compose()["services"]
    workers = {name: s for name, s in services.items() if s.get("command", [""])[0] == "dramatiq"}
    consumed = [q for s in workers.values() for q in s["command"][s["command"].index("-Q") + 1:]]
    assert sorted(consumed) == sorted(q.value for q in Queue)
    for name in [*workers, "scheduler"]:
        service = services[name]
        assert float(service["environment"]["DESKMAIL_SMTP_FINAL_REPLY_TIMEOUT"]) == FINAL_REPLY
        assert service["environment"]["DESKMAIL_METRICS_PORT"] == "9300"
        assert duration(service["stop_grace_period"]) > FINAL_REPLY and service["healthcheck"]["test"]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for service in workers.values():
        assert duration(service["stop_grace_period"]) > shutdown_timeout(service["command"]) > FINAL_REPLY
    assert services["postgres"]["healthcheck"] and services["rabbitmq"]["healthcheck"]
    scraped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert set(scraped["scrape_configs"][0]["dns_sd_configs"][0]["names"]) == {*workers, "scheduler"}


def unit(name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (DEPLOY / "systemd" / name).read_text().splitlines()
                if "=" in line and not line.startswith("#"))


def test_systemd_units_restart_always_and_workers_stop_after_the_longest_exchange():
    worker, scheduler = unit("deskmail-worker@.service"), unit("deskmail-scheduler.service")
    assert worker["Restart"] == scheduler["Restart"] == "always"
    assert worker["KillMode"] == "mixed"
    shutdown = float(re.search(r"--worker-shutdown-timeout (\d+)", worker["ExecStart"]).group(1)) / 1000
    assert float(worker["TimeoutStopSec"]) > shutdown > FINAL_REPLY
    assert "-Q $DESKMAIL_WORKER_QUEUES" in worker["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verifies_the_units(tmp_path):
    # verify insists that ExecStart's program and the environment file exist: point them at this checkout
    bin_dir = str(Path(sys.executable).parent)
    for path in (DEPLOY / "systemd").glob("*.service"):
        text = path.read_text().replace("/opt/deskmail/.venv/bin", bin_dir)
        text = text.replace("/etc/deskmail/deskmail.env", str(DEPLOY / "systemd" / "deskmail.env.example"))
        text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.MULTILINE)
        (tmp_path / path.name).write_text(text)
    (tmp_path / "broken.service").write_text((tmp_path / "deskmail-scheduler.service").read_text()
                                             .replace("Restart=always", "Restart=sometimes"))
    for name in ("deskmail-worker@deskmail.smtp.service", "deskmail-scheduler.service", "broken.service"):
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        complaints = [line for line in done.stderr.splitlines() if tmp_path.name in line or name in line]
        if name == "broken.service":
            assert any("sometimes" in line for line in complaints)
        else:
            assert done.returncode == 0 and complaints == [], done.stderr


def test_the_image_runs_as_a_user_and_stops_workers_gently():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", text, re.MULTILINE)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    assert cmd[:2] == ["dramatiq", "deskmail.workers.app:setup"] and shutdown_timeout(cmd) > FINAL_REPLY


def exposed_names() -> set[str]:
    """Every sample name deskmail's endpoint can serve."""
    names = {metrics.PREFIX + g for g in metrics.HELP} | {
        "deskmail_ledger_up", "deskmail_scheduler_heartbeat_age_seconds", "deskmail_schedulers_alive"}
    for instrument in vars(metrics.instruments()).values():
        for family in instrument.describe():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


def referenced(expressions: list[str]) -> set[str]:
    return {m for e in expressions for m in re.findall(r"\bdeskmail_[a-z0-9_]+", e)}


def test_alert_rules_are_complete_and_name_only_metrics_that_exist():
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    assert {"DeskmailSchedulerStopped", "DeskmailOldestMailTooOld", "DeskmailProjectPausedForHours",
            "DeskmailConfigurationError", "DeskmailAmbiguousMails"} <= {r["alert"] for r in rules}
    for rule in rules:
        assert rule["expr"] and rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
    used = referenced([r["expr"] for r in rules])
    assert used and used <= exposed_names(), used - exposed_names()


def test_the_grafana_dashboard_queries_only_metrics_that_exist():
    dashboard = json.loads((DEPLOY / "grafana" / "deskmail.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    used = referenced(expressions)
    assert used <= exposed_names(), used - exposed_names()
    assert {"deskmail_send_duration_seconds_bucket", "deskmail_backlog_mails", "deskmail_quota_used",
            "deskmail_scheduler_heartbeat_age_seconds", "deskmail_token_refresh_failures_total"} <= used
