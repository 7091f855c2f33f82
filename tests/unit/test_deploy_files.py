"""The deployment files are claims too: the Kubernetes manifest's settings load as the code
reads them, and it has what docs/cluster.md says it has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from isaacfs.core import config

REPO = Path(__file__).resolve().parents[2]


def documents() -> dict[str, Any]:
    found = list(yaml.safe_load_all((REPO / "deploy/kubernetes/isaacfs.yaml").read_text()))
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in found}


def test_the_daemonset_mounts_for_the_host_and_is_never_rolled_under_running_pods() -> None:
    daemon = documents()["DaemonSet/isaacfs"]["spec"]
    assert daemon["updateStrategy"]["type"] == "OnDelete"
    container = daemon["template"]["spec"]["containers"][0]
    assert container["securityContext"]["privileged"] is True
    assets = next(mount for mount in container["volumeMounts"] if mount["name"] == "assets")
    assert assets["mountPropagation"] == "Bidirectional"
    assert container["command"][:3] == ["isaacfs", "mount", assets["mountPath"]]


def test_a_workload_sees_remounts_and_points_isaac_lab_at_the_mount() -> None:
    pod = documents()["Pod/isaaclab-train-example"]["spec"]["containers"][0]
    assets = next(mount for mount in pod["volumeMounts"] if mount["name"] == "assets")
    assert assets["mountPropagation"] == "HostToContainer"
    assert {"name": "ISAACSIM_ASSET_ROOT", "value": assets["mountPath"]} in pod["env"]


def test_the_configmaps_tiers_load_as_the_daemon_reads_them() -> None:
    data = documents()["ConfigMap/isaacfs-tiers"]["data"]
    settings = config.load(env=dict(data), config_file=Path("/nonexistent"))
    assert settings.tiers and settings.tiers[0].startswith("s3://") and settings.upstream.startswith("https://")
    assert settings.mode == data["ISAACFS_MODE"] and settings.allow_other


def test_the_slurm_scripts_are_shell_that_parses() -> None:
    import subprocess

    for name in ("isaacfs-prolog", "isaacfs-epilog"):
        script = REPO / "deploy/slurm" / name
        assert script.stat().st_mode & 0o111, f"{name} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)
