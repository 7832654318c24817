"""The chart's storage-alert values: the threshold as a plain value, the webhook URL only as a
reference to a Secret (it is its own credential)."""

from __future__ import annotations

from pathlib import Path

from tests.test_helm import custom_values, deployment_env, helm_binary, render

__all__ = ["helm_binary"]  # the fixture, used by name


def test_storage_alert_values_reach_the_deployment(helm_binary: Path, tmp_path: Path) -> None:
    values = {
        **custom_values("models"),
        "storageAlerts": {"threshold": "0.9", "webhookSecret": "alert-hook"},
    }
    env = deployment_env(render(helm_binary, tmp_path, namespace="mp", values=values))
    assert env["MODELPLANE_STORAGE_ALERT_THRESHOLD"] == "0.9"
    hook = env["MODELPLANE_STORAGE_ALERT_WEBHOOK_URL"]
    assert hook == {"secretKeyRef": {"name": "alert-hook", "key": "url"}}


def test_without_a_webhook_secret_no_url_is_set(helm_binary: Path, tmp_path: Path) -> None:
    env = deployment_env(render(helm_binary, tmp_path, namespace="mp", values=custom_values("m")))
    assert env["MODELPLANE_STORAGE_ALERT_THRESHOLD"] == "0.85"
    assert "MODELPLANE_STORAGE_ALERT_WEBHOOK_URL" not in env
