"""The ALB's access logs, deletion protection, header hygiene and the optional WAF."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match

from components.alb_security import MANAGED_RULE_GROUPS
from tests.conftest import ENVIRONMENTS, Synth
from tests.ops_checks import only_resource


def _attributes(synth: Synth, env: str) -> dict[str, str]:
    _, alb = only_resource(
        synth.template(env, "Service"), "AWS::ElasticLoadBalancingV2::LoadBalancer"
    )
    return {a["Key"]: a["Value"] for a in alb["LoadBalancerAttributes"]}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_access_logs_to_an_sse_s3_bucket_with_lifecycle(synth: Synth, env: str) -> None:
    attributes = _attributes(synth, env)
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.prefix"] == "alb"
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    template = synth.template(env, "Service")
    buckets = template.find_resources(
        "AWS::S3::Bucket", {"Properties": {"LifecycleConfiguration": Match.any_value()}}
    )
    (bucket,) = [b["Properties"] for b in buckets.values()]
    # ALB access logs support only SSE-S3 on the bucket (not SSE-KMS).
    assert bucket["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        ]
    }
    assert bucket["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is True
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == synth.configs[env].service.access_log_days
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Allow", "Action": "s3:PutObject"})]
                )
            }
        },
    )


def test_deletion_protection_in_production_only(synth: Synth) -> None:
    assert _attributes(synth, "production")["deletion_protection.enabled"] == "true"
    for env in ("dev", "staging"):
        assert _attributes(synth, env).get("deletion_protection.enabled", "false") == "false"


def test_waf_in_production_only(synth: Synth) -> None:
    for env in ("dev", "staging"):
        assert synth.configs[env].service.waf is False
        synth.template(env, "Service").resource_count_is("AWS::WAFv2::WebACL", 0)
    template = synth.template("production", "Service")
    acl_id, acl = only_resource(template, "AWS::WAFv2::WebACL")
    assert acl["Scope"] == "REGIONAL"
    assert acl["DefaultAction"] == {"Allow": {}}
    groups = {r["Name"]: r for r in acl["Rules"]}
    assert set(groups) == {g.name for g in MANAGED_RULE_GROUPS}
    for rule in groups.values():
        assert rule["OverrideAction"] == {"None": {}}
        assert rule["Statement"]["ManagedRuleGroupStatement"]["VendorName"] == "AWS"
    # Long prompts exceed the common rule set's 8 KB body limit: that rule only counts.
    common = groups["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    assert common["RuleActionOverrides"] == [
        {"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}}
    ]
    _, association = only_resource(template, "AWS::WAFv2::WebACLAssociation")
    assert association["WebACLArn"] == {"Fn::GetAtt": [acl_id, "Arn"]}
    assert "Ref" in association["ResourceArn"]
    template.has_resource_properties(
        "AWS::Logs::LogGroup", {"LogGroupName": "aws-waf-logs-humansa-production"}
    )
    template.has_resource_properties(
        "AWS::WAFv2::LoggingConfiguration", {"ResourceArn": {"Fn::GetAtt": [acl_id, "Arn"]}}
    )
