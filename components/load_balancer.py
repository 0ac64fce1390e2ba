"""Internet-facing ALB with the fleet's target group (port 5001, ``/health``)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from constructs import Construct

from components.acks import acknowledge
from components.alb_security import AccessLogBucket, WebAcl
from config.model import ServiceConfig

# In-flight requests on a deregistered target get this long. The server's own drain on SIGTERM
# (DRAIN_SECONDS, 600 s: no stream under 10 minutes is cut) stays below it: the ALB cuts what is
# still open at 610 s anyway. Deregistration ends early once no request is in flight.
DEREGISTRATION_DELAY_SECONDS = 610

# The target must not close an idle connection the ALB may still reuse: its keep-alive outlasts
# the ALB idle timeout ("Application Load Balancers: connection idle timeout").
KEEP_ALIVE_MARGIN_SECONDS = 5


def server_keep_alive_seconds(config: ServiceConfig) -> int:
    """The server's HTTP keep-alive: ``service.idle_timeout_seconds`` plus a margin of 5 s."""
    return config.idle_timeout_seconds + KEEP_ALIVE_MARGIN_SECONDS


class LoadBalancer(Construct):
    """The ALB, its listener(s) and the target group.

    With ``certificate_arn`` the ALB serves HTTPS on 443 and redirects 80 to it; without, it
    serves plain HTTP on 80.

    Attributes:
        alb: the ``ApplicationLoadBalancer``.
        listener: the listener that forwards to the fleet (443 with a certificate, else 80).
        target_group: the ``ApplicationTargetGroup`` on the container port.
        security_group: the ALB's security group.
        access_logs: the ``AccessLogBucket`` receiving the ALB's access logs.
        waf: the ``WebAcl`` (``service.waf``), else None.

    Args:
        config: the ``service`` section.
        vpc: the environment VPC.
        subnets: public subnets for the ALB.
        environment: environment name (for reasons in acknowledgments).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: ServiceConfig,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        environment: str,
    ) -> None:
        super().__init__(scope, construct_id)
        https = config.certificate_arn is not None
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Humansa ALB: web traffic from the internet",
            allow_all_outbound=False,
        )
        self.security_group.add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(80), "HTTP")
        if https:
            self.security_group.add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS")
        acknowledge(
            self.security_group,
            "AwsSolutions-EC23",
            "Public API entry point: the ALB must accept HTTP(S) from any address; instances "
            "and the database accept traffic only from their own upstream security group.",
        )
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "Alb",
            vpc=vpc,
            vpc_subnets=subnets,
            internet_facing=True,
            security_group=self.security_group,
            idle_timeout=Duration.seconds(config.idle_timeout_seconds),
            drop_invalid_header_fields=True,
        )
        # --- security (issue 17): access logs, deletion protection, optional WAF ---------------
        self.access_logs = AccessLogBucket(
            self, "AccessLogs", expiration_days=config.access_log_days
        )
        self.alb.log_access_logs(self.access_logs.bucket, prefix="alb")
        if config.deletion_protection:
            self.alb.set_attribute("deletion_protection.enabled", "true")
        self.waf: WebAcl | None = None
        if config.waf:
            self.waf = WebAcl(self, "Waf", load_balancer=self.alb, name=f"humansa-{environment}")
        # --- end security ----------------------------------------------------------------------
        self.target_group = elbv2.ApplicationTargetGroup(
            self,
            "TargetGroup",
            vpc=vpc,
            port=config.container_port,
            protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.INSTANCE,
            deregistration_delay=Duration.seconds(DEREGISTRATION_DELAY_SECONDS),
            health_check=elbv2.HealthCheck(
                path=config.health_path,
                port=str(config.container_port),
                healthy_http_codes="200",
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                healthy_threshold_count=2,
                unhealthy_threshold_count=3,
            ),
        )
        if https:
            assert config.certificate_arn is not None
            self.listener = self.alb.add_listener(
                "Https",
                port=443,
                protocol=elbv2.ApplicationProtocol.HTTPS,
                certificates=[elbv2.ListenerCertificate.from_arn(config.certificate_arn)],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
                default_target_groups=[self.target_group],
                open=False,
            )
            self.alb.add_redirect(source_port=80, target_port=443)
        else:
            self.listener = self.alb.add_listener(
                "Http",
                port=80,
                protocol=elbv2.ApplicationProtocol.HTTP,
                default_target_groups=[self.target_group],
                open=False,
            )
        # The server's Prometheus /metrics has no auth: it is for scrapers inside the VPC, so the
        # internet-facing listener answers it with a 404 instead of forwarding it.
        self.listener.add_action(
            "BlockMetrics",
            priority=1,
            conditions=[elbv2.ListenerCondition.path_patterns(["/metrics", "/metrics/*"])],
            action=elbv2.ListenerAction.fixed_response(
                404, content_type="application/json", message_body='{"error": "not found"}'
            ),
        )
