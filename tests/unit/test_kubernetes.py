"""deploy/kubernetes/, checked offline: every manifest against the Kubernetes API's own
schema (the kubernetes-validate package ships the OpenAPI-derived JSON schemas of each
release; strict: an unknown field is an error), and against cellblock itself: the
ConfigMap's config loads, the probes run `cellblock status --check`, the ports, keys
and labels agree, and the privileges are exactly the ones stated."""

from __future__ import annotations

import copy
import pathlib
import re
from typing import Any

import pytest

from supervisor.config import load_config

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (the dev extra)")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra: make setup")

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSIONS = ["1.30.0", "1.37.0"]  # appArmorProfile needs 1.30; the newest the package ships
STATED_CAPS = {"SYS_ADMIN", "SETUID", "SETGID", "SETPCAP", "NET_ADMIN", "KILL", "CHOWN", "FOWNER", "DAC_OVERRIDE"}


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_the_kubernetes_api(version: str) -> None:
    docs = manifests()
    assert set(docs) == {"Namespace", "ConfigMap", "Secret", "Service", "DaemonSet"}
    for kind, doc in docs.items():
        assert kv.validate(doc, version, strict=True), kind


def test_the_schema_check_catches_a_wrong_field() -> None:
    broken = copy.deepcopy(manifests()["DaemonSet"])
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilitiez"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(manifests()["Service"])
    wrong_type["spec"]["ports"][0]["port"] = "seven"
    with pytest.raises(kv.ValidationError):
        kv.validate(wrong_type, VERSIONS[-1], strict=True)


def container() -> dict[str, Any]:
    return dict(manifests()["DaemonSet"]["spec"]["template"]["spec"]["containers"][0])


def test_the_config_in_the_configmap_loads_and_matches_the_pod(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cellblock.toml"
    path.write_text(manifests()["ConfigMap"]["data"]["cellblock.toml"])
    config = load_config(str(path))
    (listen,) = config.service.listen
    port = int(listen.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"curve": port}
    service = manifests()["Service"]["spec"]
    assert service["clusterIP"] == "None" and service["ports"][0]["port"] == port
    assert service["ports"][0]["targetPort"] == "curve"
    labels = manifests()["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["selector"].items())
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in manifests()["DaemonSet"]["spec"]["template"]["spec"]["volumes"]}
    keys = {item["path"]: item["mode"] for item in volumes["keys"]["secret"]["items"]}
    assert config.service.server_key == f"{mounts['keys']}/server.key_secret"
    assert config.service.authorized_keys == f"{mounts['keys']}/authorized_keys"
    assert keys == {"server.key_secret": 0o400, "authorized_keys": 0o444}
    assert set(keys) == set(manifests()["Secret"]["stringData"])
    assert mounts["run"] == config.service.runtime_dir and mounts["state"] == config.service.state_dir


def test_the_probes_ask_cellblock_status() -> None:
    c = container()
    for probe, check in (("startupProbe", "live"), ("livenessProbe", "live"), ("readinessProbe", "ready")):
        command = c[probe]["exec"]["command"]
        assert command[0].endswith("/cellblock") and command[1] == "status", command
        assert command[-2:] == ["--check", check], command


def test_privileges_are_the_stated_ones_and_no_more() -> None:
    spec = manifests()["DaemonSet"]["spec"]["template"]["spec"]
    sc = container()["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == STATED_CAPS
    assert sc["privileged"] is False and sc["readOnlyRootFilesystem"] is True
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host), host
    host_paths = [v for v in spec["volumes"] if "hostPath" in v]
    assert [v["name"] for v in host_paths] == ["state"]
    assert spec["automountServiceAccountToken"] is False
    # Each added capability is explained in the manifest's own comment.
    text = (DEPLOY / "daemonset.yaml").read_text()
    for cap in STATED_CAPS:
        assert re.search(rf"^#.*\b{cap}\b", text, re.MULTILINE), f"{cap} is added but not explained"
