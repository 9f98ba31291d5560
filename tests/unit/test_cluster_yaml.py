"""cluster.yaml is a valid Ray cluster launcher file (checked with Ray's own schema)."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_rays_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a schema violation
    assert config["provider"]["type"] == "local"
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
