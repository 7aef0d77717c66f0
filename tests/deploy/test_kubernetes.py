"""The Kubernetes manifests (deploy/kubernetes) agree with the app they deploy: probe paths
are real routes, ports and config keys agree, the pod outlives the service's drain, and it
passes the restricted Pod Security Standard."""

from __future__ import annotations

from typing import Any

import yaml

from service.config import Settings
from tests.deploy.test_deploy_files import DEFAULT_PORT, K8S, SETTINGS, answers


def k8s(kind: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                return doc
    raise AssertionError(f"no {kind} in {K8S}")


def test_kubernetes_probes_ports_gpu_and_config_agree_with_the_app() -> None:
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = container["ports"][0]
    assert port["containerPort"] == DEFAULT_PORT
    assert not answers("/no-such-probe")  # the check itself can fail
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert answers(get["path"]), probe
        assert get["port"] in (port["name"], port["containerPort"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1

    config = k8s("ConfigMap")
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == config["metadata"]["name"]
    assert set(config["data"]) <= SETTINGS

    # The pod outlives the preStop pause plus the service's drain after SIGTERM.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    effective = Settings(**{k.removeprefix("FCN_").lower(): v for k, v in config["data"].items()})
    shutdown = float(pre_stop[1]) + effective.drain_delay_s + effective.drain_timeout_s
    assert pod["terminationGracePeriodSeconds"] > shutdown

    # The "restricted" Pod Security Standard, and a CPU limit the service sizes itself by.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True
    assert float(container["resources"]["limits"]["cpu"]) >= 1
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HOME"].startswith("/tmp")
    assert env["CUDA_CACHE_PATH"].startswith("/tmp")
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    service = k8s("Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])

    hpa = k8s("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kustomization_lists_every_manifest_and_names_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    (container,) = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    (image,) = kustomization["images"]
    assert image["name"] == container["image"]
    assert image["newTag"]
