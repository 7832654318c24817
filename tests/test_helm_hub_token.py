"""The chart's server-wide hub token: only the Secret's name and key reach the Deployment
(the service reads the Secret; download Jobs get a secretKeyRef to it)."""

from __future__ import annotations

from pathlib import Path

from tests.test_helm import custom_values, deployment_env, helm_binary, render

__all__ = ["helm_binary"]  # the fixture, used by name


def test_the_hub_token_secret_is_named_not_inlined(helm_binary: Path, tmp_path: Path) -> None:
    values = {
        **custom_values("models"),
        "huggingFace": {
            "endpoint": "https://huggingface.co",
            "tokenSecret": "hub-token",
            "tokenKey": "token",
        },
    }
    env = deployment_env(render(helm_binary, tmp_path, namespace="mp", values=values))
    assert env["MODELPLANE_HUB_TOKEN_SECRET"] == "hub-token"
    assert env["MODELPLANE_HUB_TOKEN_KEY"] == "token"


def test_without_a_token_secret_none_is_set(helm_binary: Path, tmp_path: Path) -> None:
    env = deployment_env(render(helm_binary, tmp_path, namespace="mp", values=custom_values("m")))
    assert "MODELPLANE_HUB_TOKEN_SECRET" not in env
    assert "MODELPLANE_HUB_TOKEN_KEY" not in env
