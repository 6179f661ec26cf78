"""docker-compose.yml and the k8s/ overlays, validated offline by the real tools (check-jsonschema against the
compose-spec, `kubectl kustomize` into `kubernetes-validate --strict`, promtool), and read back to check that they
start the service the README's run command starts: the same image, a configuration the service accepts, the
probes on its real health routes."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_export.__main__ import main as export_main
from service.core.settings import Settings
from tests.conftest import venv_tool

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBECTL = shutil.which("kubectl")
if KUBECTL is None and os.environ.get("RECO_TEST_REQUIRE_KUBECTL") == "1":
    raise RuntimeError("RECO_TEST_REQUIRE_KUBECTL=1 but kubectl (with kustomize) is not installed")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
SECRETS = {"redis-password": "r" * 24, "admin-token": "a" * 32, "api-key": "k" * 32, "postgres-password": "p" * 24}


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text."""
    stages = {}
    for chunk in re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[1:]:
        name = re.match(r"\S+(?:\s+AS\s+(\S+))?", chunk)
        assert name is not None
        assert name.group(1), f"unnamed stage: FROM {chunk.splitlines()[0]}"
        stages[name.group(1)] = chunk
    return stages


def exec_form(stage: str, instruction: str) -> list[str]:
    match = re.search(rf"^{instruction}\s+(\[.*\])\s*$", stage, flags=re.MULTILINE)
    assert match is not None, f"no {instruction} in exec form"
    return list(json.loads(match.group(1)))


def settings_from(env: dict[str, str], bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's settings as a deployment's environment makes them (every RECO_* name must be a setting)."""
    fields = {f"RECO_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in env if k.startswith("RECO_")} - fields
    assert not unknown, f"not settings of the service: {unknown}"
    for key in fields:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.bundle_path == Path("/bundles/current")
    assert not settings.dev_mode
    return settings.model_copy(update={"bundle_path": bundle})


# --- docker compose -------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def interpolate(value: str) -> str:
    """${VAR:?message} / ${VAR:-default} as compose would, with the required secrets set."""
    given = {
        "REDIS_PASSWORD": SECRETS["redis-password"],
        "RECO_ADMIN_TOKEN": SECRETS["admin-token"],
        "RECO_API_KEY": SECRETS["api-key"],
        "POSTGRES_PASSWORD": SECRETS["postgres-password"],
    }

    def one(m: re.Match[str]) -> str:
        name, op, rest = m.group(1), m.group(2), m.group(3)
        if name in given:
            return given[name]
        assert op == ":-", f"${{{name}}} is required but has no value in this test"
        return str(rest)

    return re.sub(r"\$\{(\w+)(:[?-])?([^}]*)\}", one, value)


def test_compose_file_validates_against_the_compose_spec() -> None:
    run = subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("name", ["recsys", "recsys-gpu"])
def test_compose_starts_the_service_with_a_configuration_it_accepts(
    name: str, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = compose()
    service = spec["services"][name]
    stages = dockerfile_stages()
    assert service["build"]["target"] in stages
    assert service["build"]["target"] == list(stages)[-1], "the service image is the Dockerfile's default target"
    # The bundle comes from the export job's volume, after it finished; PostgreSQL and Redis are up first.
    assert service["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    export = spec["services"]["export"]
    assert export["build"]["target"] == "exporter"
    assert "exporter" in stages
    volume = next(v.split(":")[0] for v in export["volumes"] if v.endswith(":/bundles"))
    assert f"{volume}:/bundles" in service["volumes"]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])

    env = {k: interpolate(str(v)) for k, v in service["environment"].items()}
    settings = settings_from(env, tiny_bundle, monkeypatch)
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == SECRETS["redis-password"]
    assert "--requirepass" in spec["services"]["redis"]["command"]
    # The system of record is the compose PostgreSQL, on a volume; its password is the one the service uses.
    postgres = spec["services"]["postgres"]
    assert settings.database == f"postgresql+psycopg://reco:{SECRETS['postgres-password']}@postgres:5432/reco"
    assert interpolate(postgres["environment"]["POSTGRES_PASSWORD"]) == SECRETS["postgres-password"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    # The retrainer: the export image on the same volume and database, `retrain` every RETRAIN_INTERVAL.
    retrain = spec["services"]["retrain"]
    assert retrain["image"] == export["image"]
    assert f"{volume}:/bundles" in retrain["volumes"]
    assert interpolate(retrain["environment"]["RECO_DATABASE_URL"]) == settings.database
    assert retrain["command"][:3] == ["retrain", "--bundles", "/bundles"]
    assert interpolate(retrain["command"][retrain["command"].index("--every") + 1]) == "3600"
    assert settings.bundle_sync_s > 0  # the service follows what it publishes
    assert (settings.device == "cuda") == (name == "recsys-gpu")
    if name == "recsys-gpu":
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia"
        assert "gpu" in devices[0]["capabilities"]
        assert service["build"]["args"]["EXTRAS"] == "gpu"


def test_compose_monitoring_is_wired_to_the_service() -> None:
    spec = compose()
    names = set(spec["services"]) | {
        alias for s in spec["services"].values() for n in (s.get("networks") or {}).values() for alias in n["aliases"]
    }
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    for target in targets:
        assert target.split(":")[0] in names, target
    assert all(s.get("profiles") for n, s in spec["services"].items() if n.startswith("recsys"))

    grafana = spec["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "reco.yml").read_text())["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "reco.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {datasource["uid"]}


def test_exporter_image_builds_the_demo_bundle_only_when_there_is_none(tiny_bundle: Path, tmp_path: Path) -> None:
    # The export image's default command, as the compose job and the k8s init container run it: with a bundle
    # already in the volume it returns at once.
    command = exec_form(dockerfile_stages()["exporter"], "CMD")
    assert exec_form(dockerfile_stages()["exporter"], "ENTRYPOINT") == ["python", "-m", "model_export"]
    assert "--if-missing" in command
    (tmp_path / "current").symlink_to(tiny_bundle, target_is_directory=True)
    assert export_main([tmp_path.as_posix() if a == "/bundles" else a for a in command]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]


def test_every_image_stage_runs_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    for name in ("exporter", list(stages)[-1]):
        users = re.findall(r"^USER\s+(\S+)", stages[name], flags=re.MULTILINE)
        assert users, f"stage {name} sets no USER"
        assert users[-1] not in {"root", "0"}, name


# --- Kubernetes -----------------------------------------------------------------------------------------------


def kustomize(overlay: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    run = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


@needs_kubectl
@pytest.mark.parametrize("overlay", [*OVERLAYS, "cpu-distributed"])
def test_overlay_passes_strict_kubernetes_validation(overlay: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(kustomize(overlay)))
    run = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "--quiet", str(rendered)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ERROR" not in run.stdout + run.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_runs_the_service_hardened_probed_and_configured(
    overlay: str, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = kustomize(overlay)
    deployment = find(docs, "Deployment", "reco-service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"reco-service:{overlay}"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] < pod["terminationGracePeriodSeconds"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    bootstrap = find(docs, "Job", "reco-bundle-bootstrap")["spec"]["template"]["spec"]
    cron = find(docs, "CronJob", "reco-retrain")
    retrain = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod  # no pod trains its own bundle: replicas serve the registry's
    for spec in (pod, bootstrap, retrain):
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/bundles", "/tmp"}, c["name"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"reco-bundles"}  # one volume every replica and the retrainer share
    claim = find(docs, "PersistentVolumeClaim", "reco-bundles")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert next(m for m in container["volumeMounts"] if m["mountPath"] == "/bundles")["readOnly"] is True

    # The bootstrap Job runs the export image's default command (the demo bundle, only if there is none); the
    # CronJob retrains on a schedule, never two at once, with the database URL from the Secret.
    (init,) = bootstrap["containers"]
    assert init["image"].startswith("reco-exporter")
    assert init["args"] == exec_form(dockerfile_stages()["exporter"], "CMD")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (job,) = retrain["containers"]
    assert job["image"].startswith("reco-exporter")
    assert job["args"][:1] == ["retrain"]
    assert {v["name"] for v in job["env"]} >= {"POSTGRES_PASSWORD", "RECO_DATABASE_URL"}

    # The environment the service would see: ConfigMap + Secret references.
    config = find(docs, "ConfigMap", "reco-config")
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    env = dict(config["data"])
    for var in container["env"]:
        if "value" in var:  # $(NAME) refers to an earlier variable, as Kubernetes expands it
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "reco-secrets"
        env[var["name"]] = SECRETS[ref["key"]]
    settings = settings_from(env, tiny_bundle, monkeypatch)
    redis_service = find(docs, "Service", "reco-redis")
    assert settings.redis_url == f"redis://{redis_service['metadata']['name']}:6379/0"
    # Every replica shares one system of record: the StatefulSet's PostgreSQL, on a claimed volume.
    postgres = find(docs, "StatefulSet", "reco-postgres")
    postgres_service = find(docs, "Service", "reco-postgres")
    host = postgres_service["metadata"]["name"]
    assert settings.database == f"postgresql+psycopg://reco:{SECRETS['postgres-password']}@{host}:5432/reco"
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert postgres_service["spec"]["selector"].items() <= postgres["spec"]["template"]["metadata"]["labels"].items()
    assert (settings.device == "cuda") == (overlay == "gpu")
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == (overlay == "gpu")

    # Service, ServiceMonitor, HPA and PDB all point at these pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(docs, "Service", "reco-service")
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = find(docs, "ServiceMonitor", "reco-service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert find(docs, "HorizontalPodAutoscaler", "reco-service")["spec"]["scaleTargetRef"]["name"] == "reco-service"
    budget = find(docs, "PodDisruptionBudget", "reco-service")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


@needs_kubectl
def test_prometheusrule_is_the_repository_alert_rules(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_prometheusrule.py"), "--check"])
    assert run.returncode == 0, "k8s/base/prometheusrule.yaml is out of date"
    rule = find(kustomize("cpu"), "PrometheusRule", "reco-service")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    assert [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]] == [
        r["alert"] for g in alerts for r in g["rules"]
    ]
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # test_deploy's promtool tests say so
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    run = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_kubectl
def test_distributed_retrain_pods_find_each_other_and_train_together(tmp_path: Path) -> None:
    """k8s/overlays/cpu-distributed: each retrain is an indexed Job of N pods under torchrun, rank = completion
    index, rank 0 found by its DNS name under a headless Service. Then the rendered container runs here, once per
    pod, with the environment Kubernetes would give it (pod 0's name resolving to this machine): a tiny build in
    place of `retrain` (which needs the database), trained by the N processes together, one bundle written."""
    docs = kustomize("cpu-distributed")
    single = find(kustomize("cpu"), "CronJob", "reco-retrain")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    job = find(docs, "CronJob", "reco-retrain")["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    env = {v["name"]: v for v in container["env"]}
    nodes = int(env["PET_NNODES"]["value"])
    assert nodes >= 2
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == nodes
    assert env["PET_NPROC_PER_NODE"]["value"] == "1"
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    service = find(docs, "Service", "reco-train")
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["template"]["metadata"]["labels"].items()
    assert env["PET_MASTER_ADDR"]["value"] == f"$(JOB_NAME)-0.{service['metadata']['name']}"
    assert int(env["PET_MASTER_PORT"]["value"]) in {p["port"] for p in service["spec"]["ports"]}
    (one,) = single["containers"]
    assert container["args"] == one["args"]  # the same command as one pod runs, under torchrun
    assert container["command"][:3] == ["python", "-m", "torch.distributed.run"]
    assert container["command"][3:] == ["-m", *exec_form(dockerfile_stages()["exporter"], "ENTRYPOINT")[2:]]

    port = str(_free_port())
    command = [sys.executable, *container["command"][1:], "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]
    pods = []
    for index in range(nodes):
        pod_env = {k: v["value"] for k, v in env.items() if "value" in v and k.startswith("PET_")}
        pod_env |= {"PET_NODE_RANK": str(index), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": port}
        pods.append(
            subprocess.Popen(
                [*command, "--json"],
                cwd=ROOT,
                env={**os.environ, **pod_env, "OMP_NUM_THREADS": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600) for p in pods]
    for p, (_, err) in zip(pods, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "training jobs done" in outputs[1][1]
    written = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line.startswith("{")]
    assert len(written) == 1  # pod 0 alone writes
    assert [p.name for p in tmp_path.iterdir() if p.name != "current"] == [written[0]["version"]]
