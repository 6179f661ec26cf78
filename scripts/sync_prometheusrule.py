"""Write k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml (the one source of the alert rules).

python scripts/sync_prometheusrule.py          # rewrite the file
python scripts/sync_prometheusrule.py --check  # exit 1 when it is out of date (the tests check this too)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET = ROOT / "k8s" / "base" / "prometheusrule.yaml"


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].strip()
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "reco-service", "labels": {"app.kubernetes.io/name": "reco-service"}},
        "spec": {"groups": groups},
    }
    header = (
        "# Generated from deploy/prometheus/alerts.yml by scripts/sync_prometheusrule.py: edit that file, then run\n"
        "# the script. For the Prometheus Operator (kube-prometheus-stack).\n"
    )
    return header + yaml.safe_dump(resource, sort_keys=False, width=200)


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python scripts/sync_prometheusrule.py")
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
