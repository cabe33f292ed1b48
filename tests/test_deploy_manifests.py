"""The Kubernetes manifests hang together: every path a kustomization names exists, every
patch hits a resource, every Deployment is probed over gRPC and runs unprivileged, every
AGENTRT_* variable the manifests set is one the service actually reads, and the code
sandbox's components give the tools pod what bubblewrap needs (rendered by `kubectl
kustomize` with and without them)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_executor.config import Settings as ExecutorSettings
from agent_executor.domain.services_config import OPENAI_FAMILY, parse_services_config
from agent_gateway.config import Settings as GatewaySettings
from agent_registry.config import Settings as RegistrySettings
from agentrt_kit.settings import ServiceSettings, env_name
from tool_service.config import Settings as ToolsSettings
from tool_service.domain.sandbox import Limits

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> dict[str, Any]:
    return load_all(directory / "kustomization.yaml")[0]


def collect(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(resources, patches) a kustomization builds from, following bases and components."""
    k = kustomization(directory)
    resources: list[dict[str, Any]] = []
    patches: list[dict[str, Any]] = list(k.get("patches", []))
    for entry in [*k.get("resources", []), *k.get("components", [])]:
        target = (directory / entry).resolve()
        if target.is_dir():
            sub_resources, sub_patches = collect(target)
            resources += sub_resources
            patches += sub_patches
        else:
            resources += load_all(target)
    for generator in k.get("configMapGenerator", []):
        resources.append({"kind": "ConfigMap", "metadata": {"name": generator["name"]}})
    for generator in k.get("secretGenerator", []):
        resources.append({"kind": "Secret", "metadata": {"name": generator["name"]}})
    return resources, patches


KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
OVERLAYS = sorted((K8S / "overlays").iterdir())


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_path_a_kustomization_names_exists(directory: Path) -> None:
    k = kustomization(directory)
    for entry in [*k.get("resources", []), *k.get("components", [])]:
        assert (directory / entry).exists(), f"{directory}: {entry} is missing"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_patch_targets_a_resource_of_the_overlay(overlay: Path) -> None:
    resources, patches = collect(overlay)
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    for patch in patches:
        target = patch["target"]
        assert (target["kind"], target["name"]) in names, target


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_deployments_are_probed_and_unprivileged(overlay: Path) -> None:
    """gRPC services by their health service; the gateway by /readyz and /healthz."""
    resources, _ = collect(overlay)
    deployments = [r for r in resources if r["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            port = container["ports"][0]
            if port["name"] == "http":
                assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
                assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            else:
                for probe in ("readinessProbe", "livenessProbe"):
                    assert container[probe]["grpc"]["port"] == port["containerPort"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert "requests" in container["resources"]


def known_variables() -> set[str]:
    names = {env_name(ServiceSettings, f) for f in ServiceSettings.model_fields}
    names |= {env_name(RegistrySettings, f) for f in RegistrySettings.model_fields}
    names |= {env_name(ToolsSettings, f) for f in ToolsSettings.model_fields}
    names |= {env_name(ExecutorSettings, f) for f in ExecutorSettings.model_fields}
    names |= {env_name(GatewaySettings, f) for f in GatewaySettings.model_fields}
    # Provider keys the executor's services config reads from the environment.
    names |= {key for _, key in OPENAI_FAMILY.values() if key}
    return names


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_variable_the_manifests_set_is_read_by_a_service(overlay: Path) -> None:
    resources, patches = collect(overlay)
    known = known_variables()
    seen: set[str] = set()
    for resource in resources:
        if resource["kind"] == "ConfigMap":
            # Keys with a dot are files mounted as volumes, not environment variables.
            seen |= {k for k in resource.get("data", {}) if "." not in k}
        if resource["kind"] == "Deployment":
            for container in resource["spec"]["template"]["spec"]["containers"]:
                seen |= {e["name"] for e in container.get("env", [])}
    for patch in patches:
        for op in yaml.safe_load(patch["patch"]):
            value = op.get("value")
            if isinstance(value, dict) and "name" in value:
                seen.add(value["name"])
            elif op["path"].startswith("/data/"):
                seen.add(op["path"].removeprefix("/data/"))
    k = kustomization(K8S / "base")
    for generator in k.get("configMapGenerator", []):
        seen |= {literal.split("=", 1)[0] for literal in generator.get("literals", [])}
    agentrt = {name for name in seen if name.startswith("AGENTRT_")}
    assert agentrt, "no AGENTRT_ variables found"
    assert agentrt <= known, agentrt - known


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_the_executor_services_config_parses(overlay: Path) -> None:
    resources, _ = collect(overlay)
    config_map = next(
        r
        for r in resources
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "executor-services"
    )
    config = parse_services_config(json.loads(config_map["data"]["services.json"]), {})
    assert config.default_provider in config.providers


def test_the_gateway_is_in_every_overlay_and_its_secrets_exist_in_dev() -> None:
    for overlay in OVERLAYS:
        resources, _ = collect(overlay)
        assert ("Deployment", "gateway") in {(r["kind"], r["metadata"]["name"]) for r in resources}
    dev, _ = collect(K8S / "overlays" / "dev")
    secrets = {r["metadata"]["name"] for r in dev if r["kind"] == "Secret"}
    assert {"agentrt-service-token", "agentrt-runtime-token", "agentrt-api-keys"} <= secrets
    assert env_name(GatewaySettings, "runtime_token") == "AGENTRT_RUNTIME_TOKEN"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_grpc_clients_reach_every_replica_through_headless_services(overlay: Path) -> None:
    resources, _ = collect(overlay)
    headless = {
        r["metadata"]["name"]
        for r in resources
        if r["kind"] == "Service" and r["spec"].get("clusterIP") == "None"
    }
    targets = [
        value
        for r in resources
        if r["kind"] == "ConfigMap"
        for key, value in r.get("data", {}).items()
        if key.endswith("_TARGET")
    ]
    assert targets
    for target in targets:
        assert target.startswith("dns:///"), target
        assert target.removeprefix("dns:///").split(":")[0] in headless, target


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_the_gateway_believes_forwarded_addresses_from_cluster_proxies_only(
    overlay: Path,
) -> None:
    import ipaddress

    resources, _ = collect(overlay)
    gateway = next(
        r for r in resources if r["kind"] == "Deployment" and r["metadata"]["name"] == "gateway"
    )
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    name = env_name(GatewaySettings, "forwarded_allow_ips")
    trusted = [ipaddress.ip_network(n.strip()) for n in env[name].split(",")]
    assert trusted  # behind an ingress, the client's address comes from X-Forwarded-For
    assert all(n.is_private for n in trusted)  # never `*`: only the cluster's own proxies


BROKER_COMPONENTS = ["queue-redis", "queue-rabbitmq", "bus-redis"]


@pytest.mark.parametrize("name", BROKER_COMPONENTS)
def test_each_broker_component_patches_the_executor_with_settings_it_reads(name: str) -> None:
    """Added to the base, a queue or bus component sets the backend and its URL."""
    resources, _ = collect(K8S / "base")
    _, patches = collect(K8S / "components" / name)
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    known = known_variables()
    backend = "AGENTRT_BUS_BACKEND" if name.startswith("bus") else "AGENTRT_QUEUE_BACKEND"
    set_to: dict[str, Any] = {}
    for patch in patches:
        assert (patch["target"]["kind"], patch["target"]["name"]) in names, patch["target"]
        for op in yaml.safe_load(patch["patch"]):
            value = op["value"]
            if isinstance(value, dict):
                set_to[value["name"]] = value["valueFrom"]["secretKeyRef"]
            else:
                set_to[op["path"].removeprefix("/data/")] = value
    assert set(set_to) <= known, set(set_to) - known
    assert set_to[backend] == name.partition("-")[2]
    url = backend.replace("BACKEND", "URL")
    assert set_to[url]["name"] in ("agentrt-queue", "agentrt-bus")
    example = {"redis": "redis://r:6379/0", "rabbitmq": "amqp://u:p@r:5672/v"}[set_to[backend]]
    settings = ExecutorSettings(**{backend: set_to[backend], url: example})
    assert getattr(settings, backend.removeprefix("AGENTRT_").lower()) == set_to[backend]


def find(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name)


def patched(resource: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """`resource` after the JSON 6902 `add` operations of the patches that target it."""
    out = copy.deepcopy(resource)
    for patch in patches:
        target = patch["target"]
        if (target["kind"], target["name"]) != (resource["kind"], resource["metadata"]["name"]):
            continue
        for op in yaml.safe_load(patch["patch"]):
            assert op["op"] == "add", op
            *parents, last = op["path"].strip("/").split("/")
            node: Any = out
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[last] = op["value"]
    return out


def tools_container(deployment: dict[str, Any]) -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "tools")


def test_the_sandbox_component_relaxes_only_what_bubblewrap_needs() -> None:
    base, _ = collect(K8S / "base")
    _, patches = collect(K8S / "components" / "sandbox")
    names = {(r["kind"], r["metadata"]["name"]) for r in base}
    assert all((p["target"]["kind"], p["target"]["name"]) in names for p in patches)
    before = find(base, "Deployment", "tools")
    # Without the component the pod keeps the runtime's defaults (no sandbox, no run_code).
    assert before["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    assert "procMount" not in tools_container(before)["securityContext"]
    after = patched(before, patches)
    pod = after["spec"]["template"]["spec"]
    assert pod["hostUsers"] is False  # Kubernetes accepts procMount Unmasked only then
    context = tools_container(after)["securityContext"]
    assert context["seccompProfile"] == {"type": "Unconfined"}  # unshare, mount, pivot_root
    assert context["appArmorProfile"] == {"type": "Unconfined"}  # the default denies mount
    assert context["procMount"] == "Unmasked"  # bubblewrap mounts a fresh proc
    # Everything else stays as unprivileged as before.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context.get("privileged") is not True


def test_the_gvisor_component_runs_the_tools_pods_under_runsc() -> None:
    base, _ = collect(K8S / "base")
    resources, patches = collect(K8S / "components" / "sandbox-gvisor")
    after = patched(find(base, "Deployment", "tools"), patches)
    name = after["spec"]["template"]["spec"]["runtimeClassName"]
    runtime_class = find(resources, "RuntimeClass", name)
    assert runtime_class["apiVersion"] == "node.k8s.io/v1"
    assert runtime_class["handler"] == "runsc"
    others = [r for r in base if r["kind"] == "Deployment" and r["metadata"]["name"] != "tools"]
    assert all(
        "runtimeClassName" not in patched(r, patches)["spec"]["template"]["spec"] for r in others
    )


def test_the_tools_memory_limit_holds_its_concurrent_sandboxes() -> None:
    """Sandboxes run in the tools container's memory (no cgroup of their own in a pod)."""
    resources, _ = collect(K8S / "base")
    data = find(resources, "ConfigMap", "tools")["data"]
    prefix = "AGENTRT_TOOLS_"
    settings = ToolsSettings(
        **{k.removeprefix(prefix).lower(): v for k, v in data.items() if "SANDBOX" in k}
    )
    container = tools_container(find(resources, "Deployment", "tools"))
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith(("Mi", "Gi")), limit
    limit_mb = int(limit[:-2]) * (1024 if limit.endswith("Gi") else 1)
    # A program at run_code's default memory, plus its tmpfs folders (scratch: /tmp and home).
    per_sandbox = (
        Limits().memory_mb + 2 * settings.sandbox_scratch_mb + settings.sandbox_output_dir_mb
    )
    service_mb = 256
    assert limit_mb >= service_mb + settings.sandbox_max_concurrent * per_sandbox


def test_the_tools_pod_has_a_writable_tmp_on_its_read_only_root() -> None:
    resources, _ = collect(K8S / "base")
    container = tools_container(find(resources, "Deployment", "tools"))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pod = find(resources, "Deployment", "tools")["spec"]["template"]["spec"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert next(v for v in pod["volumes"] if v["name"] == tmp["name"])["emptyDir"] == {}


def test_no_manifest_runs_code_unsandboxed() -> None:
    """The development setting that runs code with no isolation is set nowhere (comments
    may name it, to say so)."""
    name = env_name(ToolsSettings, "unsafe_unsandboxed_code")
    assert name == "AGENTRT_TOOLS_UNSAFE_UNSANDBOXED_CODE"
    files = sorted(K8S.rglob("*.yaml"))
    assert files
    offenders = [p for p in files if name in json.dumps(load_all(p))]
    assert not offenders


KUBECTL = shutil.which("kubectl")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
@pytest.mark.parametrize(
    "components",
    [(), ("sandbox",), ("sandbox-gvisor",), ("sandbox", "sandbox-gvisor")],
    ids=lambda c: "+".join(c) or "none",
)
def test_every_overlay_renders_with_and_without_the_sandbox_components(
    overlay: Path, components: tuple[str, ...], tmp_path: Path
) -> None:
    assert KUBECTL is not None, "kubectl is needed to render the overlays (.ci/run installs it)"

    def here(path: Path) -> str:  # kustomize refuses absolute paths
        return os.path.relpath(path, tmp_path)

    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [here(overlay)],
                "components": [here(K8S / "components" / c) for c in components],
            }
        )
    )
    done = subprocess.run(
        [KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    tools = find(rendered, "Deployment", "tools")
    pod = tools["spec"]["template"]["spec"]
    assert (pod.get("runtimeClassName") == "gvisor") == ("sandbox-gvisor" in components)
    assert (pod.get("hostUsers") is False) == ("sandbox" in components)
    context = tools_container(tools)["securityContext"]
    assert (context.get("procMount") == "Unmasked") == ("sandbox" in components)
    classes = [r for r in rendered if r["kind"] == "RuntimeClass"]
    if "sandbox-gvisor" in components:
        assert [(c["metadata"]["name"], c["handler"]) for c in classes] == [("gvisor", "runsc")]
        assert "namespace" not in classes[0]["metadata"]  # cluster-scoped
    else:
        assert not classes
