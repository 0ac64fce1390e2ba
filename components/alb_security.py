"""The ALB's access-log bucket and its optional AWS WAF web ACL (AWS managed rule groups)."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from components.acks import acknowledge


class AccessLogBucket(Construct):
    """An S3 bucket for ALB access logs: SSE-S3, SSL only, no public access, logs expire.

    ALB access logs support only SSE-S3 (AES256) on the bucket, not SSE-KMS ("Access logs for
    your Application Load Balancer", Elastic Load Balancing User Guide). The bucket is retained
    when the stack is deleted (a non-empty bucket cannot be deleted by CloudFormation); its
    objects expire after ``expiration_days``.

    Args:
        scope: Parent construct (the load balancer component).
        construct_id: Construct ID, e.g. ``"AccessLogs"``.
        expiration_days: Days a log object is kept.

    Attributes:
        bucket: The ``s3.Bucket``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, expiration_days: int) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAccessLogs",
                    expiration=Duration.days(expiration_days),
                    noncurrent_version_expiration=Duration.days(7),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )
        acknowledge(
            self.bucket,
            "AwsSolutions-S1",
            "This bucket receives the ALB's access logs; logging the log bucket's own "
            "accesses would need another bucket, and that one another.",
        )


@dataclass(frozen=True)
class ManagedRuleGroup:
    """An AWS managed rule group and the rules in it that only count (never block)."""

    name: str
    priority: int
    count_only: tuple[str, ...] = ()


#: The AWS managed rule groups of the web ACL ("AWS Managed Rules rule groups list", AWS WAF
#: Developer Guide). SizeRestrictions_BODY blocks request bodies over 8 KB, which a chat
#: completion with a long prompt exceeds: it counts instead of blocking.
MANAGED_RULE_GROUPS = (
    ManagedRuleGroup("AWSManagedRulesAmazonIpReputationList", 10),
    ManagedRuleGroup("AWSManagedRulesCommonRuleSet", 20, count_only=("SizeRestrictions_BODY",)),
    ManagedRuleGroup("AWSManagedRulesKnownBadInputsRuleSet", 30),
)


class WebAcl(Construct):
    """A regional AWS WAF web ACL on ``load_balancer``: default allow, AWS managed rule groups.

    Blocked and counted requests are logged to a CloudWatch Logs group whose name starts with
    ``aws-waf-logs-`` (required by AWS WAF), 30 days.

    Args:
        scope: Parent construct.
        construct_id: Construct ID, e.g. ``"Waf"``.
        load_balancer: The ALB to protect.
        name: Name of the web ACL and its metrics, e.g. ``humansa-production``.

    Attributes:
        web_acl: The ``wafv2.CfnWebACL``.
        log_group: Its log group.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        load_balancer: elbv2.IApplicationLoadBalancer,
        name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        rules = [
            wafv2.CfnWebACL.RuleProperty(
                name=group.name,
                priority=group.priority,
                statement=wafv2.CfnWebACL.StatementProperty(
                    managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                        vendor_name="AWS",
                        name=group.name,
                        rule_action_overrides=[
                            wafv2.CfnWebACL.RuleActionOverrideProperty(
                                name=rule,
                                action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={}),
                            )
                            for rule in group.count_only
                        ]
                        or None,
                    )
                ),
                override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                    cloud_watch_metrics_enabled=True,
                    metric_name=f"{name}-{group.name}",
                    sampled_requests_enabled=True,
                ),
            )
            for group in MANAGED_RULE_GROUPS
        ]
        self.web_acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            name=name,
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            description=f"{name}: AWS managed rule groups in front of the ALB",
            rules=rules,
            visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True,
                metric_name=name,
                sampled_requests_enabled=True,
            ),
        )
        wafv2.CfnWebACLAssociation(
            self,
            "Association",
            resource_arn=load_balancer.load_balancer_arn,
            web_acl_arn=self.web_acl.attr_arn,
        )
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"aws-waf-logs-{name}",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        stack = Stack.of(self)
        wafv2.CfnLoggingConfiguration(
            self,
            "Logging",
            resource_arn=self.web_acl.attr_arn,
            # AWS WAF wants the group ARN without the trailing ":*" that LogGroup.log_group_arn has.
            log_destination_configs=[
                stack.format_arn(
                    service="logs",
                    resource="log-group",
                    resource_name=self.log_group.log_group_name,
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            ],
            logging_filter={
                "DefaultBehavior": "DROP",
                "Filters": [
                    {
                        "Behavior": "KEEP",
                        "Requirement": "MEETS_ANY",
                        "Conditions": [
                            {"ActionCondition": {"Action": "BLOCK"}},
                            {"ActionCondition": {"Action": "COUNT"}},
                        ],
                    }
                ],
            },
        )
