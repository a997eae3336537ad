"""The deployment bundle: Prometheus config passes promtool, the image builds a complete package, the
compose file, Kubernetes manifests and systemd unit are consistent and point at files that exist.

No container engine runs here, so the image itself is not built: the test builds the wheel from exactly
the files the Dockerfile copies and checks it carries the migrations and the ``calmon`` entry point.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import load_settings
from tests.support.services import promtool, require_binary

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
TOKENS = ("CALMON_TOKEN_INGEST", "CALMON_TOKEN_SCRAPE", "CALMON_TOKEN_ADMIN")


def test_prometheus_config_passes_promtool_with_the_shipped_rules(tmp_path: Path) -> None:
    text = (DEPLOY / "prometheus.yml").read_text()
    config = yaml.safe_load(text)
    (rules,) = config["rule_files"]
    assert Path(rules).name == "calmon.rules.yml" and (ROOT / "alerts" / Path(rules).name).exists()
    (calmon,) = [job for job in config["scrape_configs"] if job["job_name"] == "calmon"]
    assert calmon["authorization"]["type"] == "Bearer"
    token_file = calmon["authorization"]["credentials_file"]
    # the container paths, pointed at this checkout so promtool can follow them
    (tmp_path / "token").write_text("scrape-token\n")
    local = text.replace(rules, str(ROOT / "alerts" / "calmon.rules.yml")).replace(
        token_file, str(tmp_path / "token")
    )
    (tmp_path / "prometheus.yml").write_text(local)
    result = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "rule files found" in result.stdout


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions()
    bases = [args for op, args in instructions if op == "FROM"]
    assert bases and all(re.match(r"python:3\.1[1-9]-slim", base) for base in bases)
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    (healthcheck,) = [args for op, args in final if op == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "--interval" in healthcheck
    assert any(op == "EXPOSE" and args == "8000" for op, args in final)
    assert any(op == "ENTRYPOINT" and '"calmon"' in args for op, args in final)
    for op, args in instructions:
        if op == "COPY" and "--from" not in args:
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"


def test_the_files_the_image_copies_build_a_complete_package(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for op, args in dockerfile_instructions():
        if op == "COPY" and "--from" not in args and "deploy/" not in args:
            *sources, _ = args.split()
            for source in sources:
                target = context / source
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / source, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("calmon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "monitor/store/migrations/env.py",
        "monitor/store/migrations/versions/0001_initial.py",
        "monitor/dashboards.py",
        "monitor/py.typed",
    ):
        assert needed in names
    shipped = {Path(n).name for n in names if n.startswith("monitor/store/migrations/versions/")}
    on_disk = {p.name for p in (ROOT / "monitor/store/migrations/versions").glob("*.py")}
    assert on_disk <= shipped
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "calmon = monitor.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TOKENS:
        monkeypatch.setenv(name, f"{name.lower()}-value")


def test_shipped_config_is_valid_and_the_configmap_is_the_same(token_env: None, tmp_path: Path) -> None:
    settings = load_settings(DEPLOY / "calmon.yml")
    assert settings.auth.protect_metrics and {t.token_env for t in settings.auth.tokens} == set(TOKENS)
    assert settings.drift.min_labelled >= 1000
    (configmap,) = [d for d in kube_documents() if d["kind"] == "ConfigMap"]
    assert yaml.safe_load(configmap["data"]["calmon.yml"]) == yaml.safe_load(
        (DEPLOY / "calmon.yml").read_text()
    )


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def test_compose_runs_two_replicas_postgres_prometheus_alertmanager_grafana() -> None:
    config = compose()
    services = config["services"]
    assert {"postgres", "migrate", "calmon-1", "calmon-2", "prometheus", "alertmanager", "grafana"} <= set(
        services
    )
    for name in ("calmon-1", "calmon-2", "migrate"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert service["environment"]["CALMON_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert set(TOKENS) <= set(service["environment"])
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("calmon-1", "calmon-2"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in services["postgres"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert "scrape_token" in services["prometheus"]["secrets"]
    assert config["secrets"]["scrape_token"] == {"environment": "CALMON_TOKEN_SCRAPE"}


def test_compose_mounts_files_that_exist() -> None:
    mounts = []
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts.append((source, target))
                assert (DEPLOY / source).exists(), f"{source} (mounted at {target}) does not exist"
    targets = dict((t, s) for s, t in mounts)
    assert targets["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    assert targets["/etc/prometheus/rules/calmon.rules.yml"] == "../alerts/calmon.rules.yml"
    assert targets["/etc/alertmanager/alertmanager.yml"] == "../alerts/alertmanager.yml"
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/calmon.yml").read_text())
    assert targets[provider["providers"][0]["options"]["path"]] == "../dashboards"


def test_compose_documents_every_required_variable() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert required and all(name in header for name in required)


def kube_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization["resources"]:
        assert (KUBE / resource).exists(), resource
        documents += [d for d in yaml.safe_load_all((KUBE / resource).read_text()) if d]
    return documents


def test_kubernetes_manifests_are_consistent() -> None:
    documents = kube_documents()
    for document in documents:
        assert document["apiVersion"] and document["kind"] and document["metadata"]["name"]
    by_kind = {d["kind"]: d for d in documents}
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000}
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for each in [*pod["initContainers"], container]:
        assert each["resources"]["requests"] and each["resources"]["limits"]
        assert each["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"secretRef": {"name": "calmon-secrets"}} in each["envFrom"]
    assert pod["initContainers"][0]["args"] == ["db", "upgrade"]
    (config_volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    readme = (KUBE / "README.md").read_text()
    assert "calmon-secrets" in readme and all(token in readme for token in TOKENS)
    assert "CALMON_DATABASE_URL" in readme


def test_kustomize_renders_the_bundle_when_kubectl_is_here() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # not a service the suite needs: the structural test above covers the bundle
        return
    result = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in rendered} == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    assert all(d["metadata"]["namespace"] == "calmon" for d in rendered)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze", "systemd")
    unit = (DEPLOY / "systemd" / "calmon.service").read_text()
    assert "ExecStart=/opt/calmon/bin/calmon --config /etc/calmon/calmon.yml serve" in unit
    assert "User=calmon" in unit and "KillSignal=SIGTERM" in unit
    local = tmp_path / "calmon.service"
    local.write_text(unit.replace("/opt/calmon/bin/calmon", str(Path(sys.executable).with_name("calmon"))))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
