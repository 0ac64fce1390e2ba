"""The account-level CloudTrail trail, its log bucket, its customer KMS key, its CloudWatch Logs
group and the CIS AWS Foundations metric filters and alarms on that group."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import ArnFormat, CfnElement, CfnResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
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


TRAIL_NAME = "humansa-account-trail"
LOG_GROUP_NAME = "/humansa/cloudtrail"
CIS_NAMESPACE = "Humansa/CIS"


@dataclass(frozen=True)
class CisAlarm:
    """One CIS AWS Foundations Benchmark monitoring control: a metric filter and its alarm.

    ``control`` is the Security Hub control ID (CloudWatch.N) whose filter pattern this is.
    """

    name: str
    control: str
    description: str
    pattern: str


def _any_event(*names: str, source: str | None = None) -> str:
    events = " || ".join(f"($.eventName = {n})" for n in names)
    if source is None:
        return "{ " + events + " }"
    return "{ ($.eventSource = " + source + ") && (" + events + ") }"


#: The CIS AWS Foundations Benchmark (v1.4 / v3.0 section "Monitoring") metric filters, as the
#: Security Hub controls CloudWatch.1 to CloudWatch.14 spell them.
CIS_ALARMS: tuple[CisAlarm, ...] = (
    CisAlarm(
        "RootAccountUsage",
        "CloudWatch.1",
        "The root user was used",
        '{ $.userIdentity.type = "Root" && $.userIdentity.invokedBy NOT EXISTS '
        '&& $.eventType != "AwsServiceEvent" }',
    ),
    CisAlarm(
        "UnauthorizedApiCalls",
        "CloudWatch.2",
        "API calls refused as unauthorized or access denied",
        '{ ($.errorCode = "*UnauthorizedOperation") || ($.errorCode = "AccessDenied*") }',
    ),
    CisAlarm(
        "ConsoleSignInWithoutMfa",
        "CloudWatch.3",
        "An IAM user signed in to the console without MFA",
        '{ ($.eventName = "ConsoleLogin") && ($.additionalEventData.MFAUsed != "Yes") '
        '&& ($.userIdentity.type = "IAMUser") && ($.responseElements.ConsoleLogin = "Success") }',
    ),
    CisAlarm(
        "IamPolicyChanges",
        "CloudWatch.4",
        "An IAM policy was created, changed, attached or detached",
        _any_event(
            "DeleteGroupPolicy",
            "DeleteRolePolicy",
            "DeleteUserPolicy",
            "PutGroupPolicy",
            "PutRolePolicy",
            "PutUserPolicy",
            "CreatePolicy",
            "DeletePolicy",
            "CreatePolicyVersion",
            "DeletePolicyVersion",
            "AttachRolePolicy",
            "DetachRolePolicy",
            "AttachUserPolicy",
            "DetachUserPolicy",
            "AttachGroupPolicy",
            "DetachGroupPolicy",
        ),
    ),
    CisAlarm(
        "CloudTrailChanges",
        "CloudWatch.5",
        "A CloudTrail trail was created, changed, stopped or deleted",
        _any_event("CreateTrail", "UpdateTrail", "DeleteTrail", "StartLogging", "StopLogging"),
    ),
    CisAlarm(
        "ConsoleSignInFailures",
        "CloudWatch.6",
        "A console sign-in failed",
        '{ ($.eventName = ConsoleLogin) && ($.errorMessage = "Failed authentication") }',
    ),
    CisAlarm(
        "KmsKeyDisableOrDeletion",
        "CloudWatch.7",
        "A customer KMS key was disabled or scheduled for deletion",
        _any_event("DisableKey", "ScheduleKeyDeletion", source="kms.amazonaws.com"),
    ),
    CisAlarm(
        "S3BucketPolicyChanges",
        "CloudWatch.8",
        "An S3 bucket policy, ACL, CORS, lifecycle or replication setting changed",
        _any_event(
            "PutBucketAcl",
            "PutBucketPolicy",
            "PutBucketCors",
            "PutBucketLifecycle",
            "PutBucketReplication",
            "DeleteBucketPolicy",
            "DeleteBucketCors",
            "DeleteBucketLifecycle",
            "DeleteBucketReplication",
            source="s3.amazonaws.com",
        ),
    ),
    CisAlarm(
        "ConfigChanges",
        "CloudWatch.9",
        "AWS Config recording or delivery was changed or stopped",
        _any_event(
            "StopConfigurationRecorder",
            "DeleteDeliveryChannel",
            "PutDeliveryChannel",
            "PutConfigurationRecorder",
            source="config.amazonaws.com",
        ),
    ),
    CisAlarm(
        "SecurityGroupChanges",
        "CloudWatch.10",
        "A security group or one of its rules changed",
        _any_event(
            "AuthorizeSecurityGroupIngress",
            "AuthorizeSecurityGroupEgress",
            "RevokeSecurityGroupIngress",
            "RevokeSecurityGroupEgress",
            "CreateSecurityGroup",
            "DeleteSecurityGroup",
        ),
    ),
    CisAlarm(
        "NaclChanges",
        "CloudWatch.11",
        "A network ACL or one of its entries changed",
        _any_event(
            "CreateNetworkAcl",
            "CreateNetworkAclEntry",
            "DeleteNetworkAcl",
            "DeleteNetworkAclEntry",
            "ReplaceNetworkAclEntry",
            "ReplaceNetworkAclAssociation",
        ),
    ),
    CisAlarm(
        "NetworkGatewayChanges",
        "CloudWatch.12",
        "An internet or customer gateway changed",
        _any_event(
            "CreateCustomerGateway",
            "DeleteCustomerGateway",
            "AttachInternetGateway",
            "CreateInternetGateway",
            "DeleteInternetGateway",
            "DetachInternetGateway",
        ),
    ),
    CisAlarm(
        "RouteTableChanges",
        "CloudWatch.13",
        "A route table or route changed",
        _any_event(
            "CreateRoute",
            "CreateRouteTable",
            "ReplaceRoute",
            "ReplaceRouteTableAssociation",
            "DeleteRouteTable",
            "DeleteRoute",
            "DisassociateRouteTable",
            source="ec2.amazonaws.com",
        ),
    ),
    CisAlarm(
        "VpcChanges",
        "CloudWatch.14",
        "A VPC, its attributes or a peering connection changed",
        _any_event(
            "CreateVpc",
            "DeleteVpc",
            "ModifyVpcAttribute",
            "AcceptVpcPeeringConnection",
            "CreateVpcPeeringConnection",
            "DeleteVpcPeeringConnection",
            "RejectVpcPeeringConnection",
            "AttachClassicLinkVpc",
            "DetachClassicLinkVpc",
            "DisableVpcClassicLink",
            "EnableVpcClassicLink",
        ),
    ),
)


class AuditTrail(Construct):
    """A multi-region CloudTrail trail with log-file validation, all management events.

    Log files go to an encrypted, versioned, SSL-only S3 bucket with public access blocked and a
    lifecycle (Standard-IA, then Glacier, then expiry, from ``AuditConfig``); the bucket's server
    access logs go to a second bucket. Both buckets are retained when the stack is deleted.
    The trail encrypts its log files with a customer KMS key (rotated yearly) whose policy lets
    CloudTrail use it only for this trail (``aws:SourceArn``) of this account. With
    ``config.cloudwatch_logs`` (the default) the trail also delivers to a CloudWatch Logs group
    encrypted with the same key, and the CIS metric filters (``CIS_ALARMS``) raise alarms on an
    alarm topic of this stack (encrypted with the key, CloudWatch may publish to it).
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
        key: The customer KMS key of the log files, the log group and the alarm topic.
        topic: The alarm topic of the CIS alarms, or None without CloudWatch Logs.
        alarms: CIS alarm name (``CisAlarm.name``) -> alarm; empty without CloudWatch Logs.
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
            versioned=True,  # an overwritten or deleted log object stays for 30 days
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAccessLogs",
                    expiration=Duration.days(config.expiration_days or 365),
                    noncurrent_version_expiration=Duration.days(30),
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

        stack = Stack.of(self)
        trail_arn = stack.format_arn(
            service="cloudtrail",
            resource="trail",
            resource_name=TRAIL_NAME,
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )
        self.key = kms.Key(
            self,
            "Key",
            description="Humansa account trail: log files, log group and alarm topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # AWS CloudTrail User Guide, "Configure AWS KMS key policies for CloudTrail".
        source = {"StringEquals": {"aws:SourceArn": trail_arn}}
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudTrailEncryptLogs",
                principals=[iam.ServicePrincipal("cloudtrail.amazonaws.com")],
                actions=["kms:GenerateDataKey*"],
                resources=["*"],
                conditions={
                    **source,
                    "StringLike": {
                        "kms:EncryptionContext:aws:cloudtrail:arn": stack.format_arn(
                            service="cloudtrail",
                            region="*",
                            resource="trail",
                            resource_name="*",
                            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
                        )
                    },
                },
            )
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudTrailDescribeKey",
                principals=[iam.ServicePrincipal("cloudtrail.amazonaws.com")],
                actions=["kms:DescribeKey"],
                resources=["*"],
                conditions=source,
            )
        )

        self.log_group: logs.LogGroup | None = None
        self.topic: sns.Topic | None = None
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        if config.cloudwatch_logs:
            log_group_arn = stack.format_arn(
                service="logs",
                resource="log-group",
                resource_name=LOG_GROUP_NAME,
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )
            # CloudWatch Logs User Guide, "Encrypt log data in CloudWatch Logs using AWS KMS".
            self.key.add_to_resource_policy(
                iam.PolicyStatement(
                    sid="CloudWatchLogsEncryptTrailGroup",
                    principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                    actions=[
                        "kms:Encrypt*",
                        "kms:Decrypt*",
                        "kms:ReEncrypt*",
                        "kms:GenerateDataKey*",
                        "kms:Describe*",
                    ],
                    resources=["*"],
                    conditions={"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": log_group_arn}},
                )
            )
            self.log_group = logs.LogGroup(
                self,
                "LogGroup",
                log_group_name=LOG_GROUP_NAME,
                retention=_RETENTION[config.cloudwatch_logs_retention_days],
                encryption_key=self.key,
                removal_policy=RemovalPolicy.RETAIN,
            )
            self._add_cis_alarms(self.log_group, config)

        self.trail = cloudtrail.Trail(
            self,
            "Trail",
            trail_name=TRAIL_NAME,
            bucket=self.bucket,
            encryption_key=self.key,
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

    def _add_cis_alarms(self, log_group: logs.LogGroup, config: AuditConfig) -> None:
        """The CIS metric filters on ``log_group``, an alarm each, all on one topic."""
        stack = Stack.of(self)
        # CloudWatch publishes to an encrypted topic only with a customer key it may use (the
        # AWS managed aws/sns key cannot be extended to cloudwatch.amazonaws.com).
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsUseTopicKey",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name="Humansa account audit alarms (CIS)",
            master_key=self.key,
            enforce_ssl=True,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name="Humansa-Audit-*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                },
            )
        )
        if config.alarm_email is not None:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        action = cw_actions.SnsAction(self.topic)
        for spec in CIS_ALARMS:
            metric_filter = logs.MetricFilter(
                self,
                f"{spec.name}Filter",
                log_group=log_group,
                filter_pattern=logs.FilterPattern.literal(spec.pattern),
                metric_namespace=CIS_NAMESPACE,
                metric_name=spec.name,
                metric_value="1",
                default_value=0,
            )
            alarm = cloudwatch.Alarm(
                self,
                f"{spec.name}Alarm",
                alarm_name=f"Humansa-Audit-{spec.name}",
                alarm_description=f"CIS {spec.control}: {spec.description} "
                "(CloudTrail event in the account trail's log group)",
                metric=metric_filter.metric(statistic="Sum", period=Duration.minutes(5)),
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            alarm.add_alarm_action(action)
            self.alarms[spec.name] = alarm
