"""Data stack: RDS settings per environment and the database SSM parameters."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match

from tests.conftest import Synth

EXPECTED = {
    # env: (instance class, multi-AZ, deletion protection, backup days, deletion policy)
    "dev": ("db.t4g.micro", False, False, 1, "Delete"),
    "staging": ("db.t4g.micro", False, False, 7, "Delete"),
    "production": ("db.t4g.small", True, True, 14, "Snapshot"),
}


@pytest.mark.parametrize("env", sorted(EXPECTED))
def test_rds_per_environment(synth: Synth, env: str) -> None:
    instance_class, multi_az, protection, backup_days, policy = EXPECTED[env]
    template = synth.template(env, "Data")
    template.has_resource(
        "AWS::RDS::DBInstance",
        {
            "DeletionPolicy": policy,
            "Properties": Match.object_like(
                {
                    "Engine": "postgres",
                    "EngineVersion": "16.13",
                    "DBInstanceClass": instance_class,
                    "MultiAZ": multi_az,
                    "DeletionProtection": protection,
                    "BackupRetentionPeriod": backup_days,
                    "StorageEncrypted": True,
                    "StorageType": "gp3",
                    "AllocatedStorage": "20",
                    "PubliclyAccessible": False,
                    "DBName": "humansa",
                    "Port": "5432",
                }
            ),
        },
    )


@pytest.mark.parametrize("env", sorted(EXPECTED))
def test_tls_forced_and_generated_secret(synth: Synth, env: str) -> None:
    template = synth.template(env, "Data")
    template.has_resource_properties(
        "AWS::RDS::DBParameterGroup",
        {"Family": "postgres16", "Parameters": {"rds.force_ssl": "1"}},
    )
    template.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {
            "Name": f"humansa/{env}/db",
            "GenerateSecretString": Match.object_like(
                {"SecretStringTemplate": '{"username":"humansa"}', "GenerateStringKey": "password"}
            ),
        },
    )
    # the master secret and the app secret (humansa_app, components/db_bootstrap.py)
    template.resource_count_is("AWS::SecretsManager::SecretTargetAttachment", 2)


@pytest.mark.parametrize("env", sorted(EXPECTED))
def test_database_parameters(synth: Synth, env: str) -> None:
    template = synth.template(env, "Data")
    values = {
        "db_host": {"Fn::GetAtt": [Match.any_value(), "Endpoint.Address"]},
        "db_port": {"Fn::GetAtt": [Match.any_value(), "Endpoint.Port"]},
        "db_username": "humansa_app",  # the server's own login, not the master
        "db_name": "humansa",
    }
    for name, value in values.items():
        template.has_resource_properties(
            "AWS::SSM::Parameter",
            {"Name": f"/humansa/{env}/{name}", "Type": "String", "Value": value},
        )
    template.resource_count_is("AWS::SSM::Parameter", len(values))
    # The password never becomes a parameter.
    assert "db_password" not in str(synth.template_json(env, "Data"))


@pytest.mark.parametrize("env", sorted(EXPECTED))
def test_database_in_isolated_subnets(synth: Synth, env: str) -> None:
    template = synth.template(env, "Data")
    template.has_resource_properties(
        "AWS::RDS::DBSubnetGroup",
        {
            "SubnetIds": Match.array_with(
                [{"Fn::ImportValue": Match.string_like_regexp("DataSubnet")}]
            )
        },
    )
    template.has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {
            "GroupDescription": Match.string_like_regexp("PostgreSQL from the fleet only"),
            "SecurityGroupIngress": Match.absent(),
        },
    )


def test_production_secret_is_retained_with_the_snapshot(synth: Synth) -> None:
    for env in ("dev", "staging", "production"):
        template = synth.template_json(env, "Data")
        (db,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::RDS::DBInstance"]
        # the master secret, the app secret (humansa_app) and the GHCR token (retained with
        # termination_protection, which production sets too)
        secrets = [
            r for r in template["Resources"].values() if r["Type"] == "AWS::SecretsManager::Secret"
        ]
        assert len(secrets) == 3
        for secret in secrets:
            if env == "production":
                assert db["DeletionPolicy"] == "Snapshot"
                assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"
            else:
                assert secret.get("DeletionPolicy", "Delete") == "Delete"


def test_rds_log_groups_get_a_retention(synth: Synth) -> None:
    for env, days in (("dev", 30), ("staging", 30), ("production", 90)):
        template = synth.template_json(env, "Data")
        retentions = [
            r["Properties"]
            for r in template["Resources"].values()
            if r["Type"] == "Custom::LogRetention"
        ]
        names = sorted(json.dumps(p["LogGroupName"]) for p in retentions)
        assert len(names) == 2 and "postgresql" in names[0] + names[1] and "upgrade" in names[1]
        assert {p["RetentionInDays"] for p in retentions} == {days}
