"""The Dockerfile and deploy/kubernetes agree with each other and with the server.

No cluster here: these read the files and check what a wrong value would break in one
(a grace period shorter than the drain, a proxy timeout under the heartbeat, a probe on
the wrong path, a selector that matches nothing). The schemas and the policy check
are make deploy-lint's; the image itself is tests/test_image.py's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from echo.config import ServerSettings
from tests.support import SERVER_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUBERNETES / name).read_text())
    return document


def resources() -> dict[str, dict[str, Any]]:
    """The resources kustomization.yaml applies, by kind."""
    kustomization = load("kustomization.yaml")
    found = {}
    for name in kustomization["resources"]:
        document = load(name)
        found[document["kind"]] = document
    return found


def deployment_env() -> dict[str, str]:
    (container,) = resources()["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # the Downward API: a pod's name, at most 253 characters of [a-z0-9.-]
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = "echo-" + "7c9d8f6b5-x2k4p" * 16
    return env


def settings() -> ServerSettings:
    return ServerSettings.from_env(deployment_env())


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resources()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    result: dict[str, Any] = only
    return result


def test_kustomization_applies_every_manifest_of_the_folder_into_one_namespace() -> None:
    kustomization = load("kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert kustomization["namespace"] == "echo"
    kinds = resources()
    assert set(kinds) == {
        "Namespace",
        "Deployment",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for kind, document in kinds.items():
        if kind != "Namespace":
            assert document["metadata"]["namespace"] == "echo", kind
    (image,) = kustomization["images"]
    assert container()["image"].split(":")[0] == image["name"]


def test_every_setting_is_a_server_variable_with_a_valid_value() -> None:
    env = deployment_env()
    assert set(env) <= set(SERVER_VARIABLES), set(env) - set(SERVER_VARIABLES)
    current = settings()  # raises ConfigError on a bad value
    assert current.instance_name.startswith("echo-"), "INSTANCE_NAME takes any pod name"
    assert current.log_format == "json"
    assert current.drain_delay > 0


def test_the_grace_period_outlasts_the_drain_and_both_shutdown_phases() -> None:
    current = settings()
    needed = current.drain_delay + 2 * current.shutdown_timeout
    assert pod_spec()["terminationGracePeriodSeconds"] > needed


def test_probes_ask_readyz_and_healthz_on_the_served_port() -> None:
    spec = container()
    (port,) = spec["ports"]
    assert port["containerPort"] == settings().port == 8080
    assert re.search(r"^EXPOSE 8080$", DOCKERFILE, re.MULTILINE)
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # Readiness turns within the drain: the pod is out of the endpoints before it closes.
    readiness = spec["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < settings().drain_delay
    annotations = resources()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_pod_is_restricted_and_runs_as_the_images_user() -> None:
    match = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE)
    assert match is not None, "a numeric USER, which runAsNonRoot can check"
    pod, spec = pod_spec(), container()
    security = pod["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (
        int(match.group(1)),
        int(match.group(2)),
    )
    assert security["runAsNonRoot"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    own = spec["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    limits, requests = spec["resources"]["limits"], spec["resources"]["requests"]
    assert set(limits) == set(requests) == {"cpu", "memory"}
    namespace = resources()["Namespace"]["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_selectors_find_the_pods() -> None:
    kinds = resources()
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (port,) = kinds["Service"]["spec"]["ports"]
    assert port["targetPort"] == container()["ports"][0]["name"]
    monitor = load("prometheus/servicemonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        kinds["Service"]["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_two_replicas_one_may_be_disrupted_and_rollouts_keep_capacity() -> None:
    kinds = resources()
    spec = kinds["Deployment"]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


def test_the_ingress_outwaits_the_heartbeat_and_passes_a_full_message() -> None:
    ingress = resources()["Ingress"]
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    current = settings()
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        # A silent peer is pinged after one to two intervals of silence.
        assert int(annotations[prefix + timeout]) > 2 * current.heartbeat_interval
    size = annotations[prefix + "proxy-body-size"]
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    assert int(size[:-1]) * units[size[-1].lower()] >= current.max_message_size
    assert "http_503" in annotations[prefix + "proxy-next-upstream"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = resources()["Service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] == service["spec"]["ports"][0]["name"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    # The console page through the Ingress is admitted: its https origin is allowed.
    (host,) = ingress["spec"]["tls"][0]["hosts"]
    assert f"https://{host}" in deployment_env()["ALLOWED_ORIGINS"].split(",")


def test_the_dockerfile_builds_on_an_official_slim_python_by_default() -> None:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match is not None
    assert re.fullmatch(r"python:3\.1[1-9]-slim-\w+", match.group(1))
    assert DOCKERFILE.count("FROM ${BASE_IMAGE}") == 2
    assert re.search(r"^STOPSIGNAL SIGTERM$", DOCKERFILE, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["echo-server"\]$', DOCKERFILE, re.MULTILINE)
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in dockerignore, "an allow-list: nothing enters the build context by default"
    assert not [line for line in dockerignore if line.startswith("!") and ".env" in line]
