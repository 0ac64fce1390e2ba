"""The infra side of the admin API: its key as a per-environment secret, the URL as an output."""

from __future__ import annotations

import pytest

from components.boot import PLACEHOLDER_SECRET_VALUE, secret_name
from tests.conftest import ENVIRONMENTS, Synth


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_admin_key_secret_and_service_url_output(synth: Synth, env: str) -> None:
    template = synth.template_json(env, "Service")
    secrets = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::SecretsManager::Secret"
    ]
    admin = [p for p in secrets if p["Name"] == secret_name(env, "ADMIN_API_KEY")]
    assert len(admin) == 1 and admin[0]["SecretString"] == PLACEHOLDER_SECRET_VALUE
    url = template["Outputs"]["ServiceUrl"]["Value"]
    scheme = "https://" if synth.configs[env].service.certificate_arn else "http://"
    # http(s):// then the ALB's DNS name (a GetAtt) or the configured domain name.
    rendered = str(url)
    assert scheme in rendered
    assert "DNSName" in rendered or str(synth.configs[env].service.domain_name) in rendered
