"""The account-level CloudTrail trail and its log bucket."""

from __future__ import annotations

from aws_cdk import CfnElement, CfnResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from config.monitoring import LOG_RETENTION_DAYS, AuditConfig

# CloudWatch Logs retention in days -> the CDK enum (same order, INFINITE left out).
_RETENTION = dict(
    zip(
        LOG_RETENTION_DAYS,
        [m for m in logs.RetentionDays if m is not logs.RetentionDays.INFINITE],
        strict=True,
    )
)


class AuditTrail(Construct):
    """A multi-region CloudTrail trail with log-file validation, all management events.

    Log files go to an encrypted, versioned, SSL-only S3 bucket with public access blocked and a
    lifecycle (Standard-IA, then Glacier, then expiry, from ``AuditConfig``); the bucket's server
    access logs go to a second bucket. Both buckets are retained when the stack is deleted.
    Instantiate it only when ``config.enabled`` is true (once per account, in the CI stack).

    Args:
        scope: Parent construct (the account-level CI stack).
        construct_id: Construct ID, e.g. ``"AuditTrail"``.
        config: Lifecycle and CloudWatch Logs delivery settings.

    Attributes:
        trail: The CloudTrail trail.
        bucket: The log-file bucket.
        access_log_bucket: The bucket receiving ``bucket``'s server access logs.
        log_group: The CloudWatch Logs group, or None when ``config.cloudwatch_logs`` is false.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: AuditConfig) -> None:
        super().__init__(scope, construct_id)
        if not config.enabled:
            raise ValueError("AuditTrail: audit.enabled is false; do not create the trail")
        # Server access logs delivered under a bucket policy, not the legacy LogDeliveryWrite ACL
        # (cfn-lint W3045), whatever the app's feature flags say.
        self.node.set_context("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy", True)

        self.access_log_bucket = s3.Bucket(
            self,
            "AccessLogBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,  # the only one S3 log delivery supports
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAccessLogs",
                    expiration=Duration.days(config.expiration_days or 365),
                )
            ],
        )
        transitions = []
        if config.transition_to_infrequent_access_days is not None:
            transitions.append(
                s3.Transition(
                    storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                    transition_after=Duration.days(config.transition_to_infrequent_access_days),
                )
            )
        if config.transition_to_glacier_days is not None:
            transitions.append(
                s3.Transition(
                    storage_class=s3.StorageClass.GLACIER,
                    transition_after=Duration.days(config.transition_to_glacier_days),
                )
            )
        expiration = (
            Duration.days(config.expiration_days) if config.expiration_days is not None else None
        )
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="trail-bucket/",
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="TrailLogFiles",
                    transitions=transitions or None,
                    expiration=expiration,
                    noncurrent_version_expiration=Duration.days(30),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
        )

        self.log_group: logs.LogGroup | None = None
        if config.cloudwatch_logs:
            self.log_group = logs.LogGroup(
                self,
                "LogGroup",
                retention=_RETENTION[config.cloudwatch_logs_retention_days],
                removal_policy=RemovalPolicy.RETAIN,
            )

        self.trail = cloudtrail.Trail(
            self,
            "Trail",
            bucket=self.bucket,
            is_multi_region_trail=True,
            include_global_service_events=True,
            enable_file_validation=True,
            management_events=cloudtrail.ReadWriteType.ALL,
            send_to_cloud_watch_logs=config.cloudwatch_logs,
            cloud_watch_log_group=self.log_group,
        )
        if self.log_group is not None:
            # The trail's GetAtt on its logs role already orders the two; CDK adds a redundant
            # DependsOn on the role as well (cfn-lint W3005). Keep only the two policies.
            stack = Stack.of(self)
            role = self.trail.node.find_child("LogsRole")
            needed = [
                self.bucket.policy.node.default_child if self.bucket.policy else None,
                role.node.find_child("DefaultPolicy").node.default_child,
            ]
            trail_resource = self.trail.node.default_child
            assert isinstance(trail_resource, CfnResource)
            trail_resource.add_override(
                "DependsOn",
                [stack.get_logical_id(r) for r in needed if isinstance(r, CfnElement)],
            )
