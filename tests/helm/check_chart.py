"""Lints and renders deploy/helm/sygnal with Helm's own Go SDK (helm-python-sdk, no helm
binary needed) and validates every rendered manifest against Kubernetes' OpenAPI schemas
(kubernetes-validate). Run by tests/tests/packaging.rs, which checks the rendered objects and
runs `sygnal check` on the rendered config.

usage: check_chart.py CHART OUT_DIR  (writes OUT_DIR/<case>.json: the rendered documents)
"""

import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml

# Kinds without a schema in kubernetes-validate: Prometheus Operator custom resources.
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}

CASES = {
    "defaults": {},
    "scaled": {
        "redis": {"url": "redis://sygnal-redis:6379"},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "secretMounts": [
            {"name": "apns", "secretName": "sygnal-apns-key", "mountPath": "/etc/sygnal/secrets/apns"}
        ],
        "config": {
            "apps": {
                "com.example.ios": {
                    "type": "apns",
                    "keyfile": "/etc/sygnal/secrets/apns/AuthKey.p8",
                    "key_id": "ABCDEFGHIJ",
                    "team_id": "KLMNOPQRST",
                    "topic": "com.example.ios",
                },
                "*": {"type": "unifiedpush"},
            },
            "http": {"shutdown_timeout": 20},
        },
    },
    "config-from-secret": {"existingConfigSecret": "sygnal-config", "podDisruptionBudget": {"enabled": False}},
}


def main():
    chart_dir, out_dir = sys.argv[1], sys.argv[2]
    lint = helm.lint(chart_dir)
    errors = lint.get("errors") or []
    # Helm's severities: 1 info, 2 warning, 3 error.
    problems = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2]
    if errors or problems:
        sys.exit(f"helm lint: {errors} {problems}")
    version = kubernetes_validate.utils.latest_version()
    for case, values in CASES.items():
        with helm.Chart.load(chart_dir) as chart:
            chart.validate_schema(values)
            rendered = chart.render(values, name="push", namespace="matrix")
        documents = []
        for template, text in sorted(rendered.items()):
            if template.endswith("NOTES.txt"):
                continue
            for document in yaml.safe_load_all(text):
                if not document:
                    continue
                if (document.get("apiVersion"), document.get("kind")) not in CUSTOM_RESOURCES:
                    kubernetes_validate.validate(document, version, strict=True)
                documents.append(document)
        with open(f"{out_dir}/{case}.json", "w") as out:
            json.dump(documents, out)
    print(f"helm lint clean; {len(CASES)} value sets rendered and valid for Kubernetes {version}")


if __name__ == "__main__":
    main()
