"""One line for the AWS failures every operator command meets (no credentials, expired or
rejected credentials, access denied, no network), naming the setting and the fix.

Used by ``make status|logs|shell`` (:mod:`humansa_ops.operate`) and ``make keys|usage``
(``ml_server.admin.cli``) in place of botocore's "An error occurred (...) when calling the ...
operation" text.
"""

from __future__ import annotations

import os

# Error codes of a request whose credentials AWS does not accept. An opt-in region not enabled
# for the account answers the same way ("Enable or disable AWS Regions in your account", AWS
# Account Management Reference Guide: Regions launched after 2019-03-20, such as ap-east-1, are
# disabled until enabled).
REJECTED = frozenset(
    {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "AuthFailure"}
)
EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})

CREDENTIALS_HINT = (
    "set AWS_PROFILE to a profile of ~/.aws/config (after `aws sso login --profile <name>` for "
    "SSO) or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "")).strip()
    return ""


def explain(exc: Exception, *, region: str) -> str:
    """One line saying what failed and what to do, for a botocore ``ClientError`` or
    ``BotoCoreError`` raised while talking to ``region``."""
    from botocore import exceptions as e

    profile = os.environ.get("AWS_PROFILE", "")
    if isinstance(exc, e.NoCredentialsError | e.PartialCredentialsError):
        return f"no AWS credentials found: {CREDENTIALS_HINT}"
    if isinstance(exc, e.ProfileNotFound):
        return (
            f"AWS_PROFILE={profile}: no such profile in ~/.aws/config "
            "(`aws configure list-profiles` lists them)"
        )
    if isinstance(exc, e.SSOError | e.SSOTokenLoadError | e.UnauthorizedSSOTokenError):
        return (
            f"the SSO session of AWS_PROFILE={profile or '(default)'} is missing or expired: "
            f"aws sso login{' --profile ' + profile if profile else ''}"
        )
    if isinstance(exc, e.TokenRetrievalError | e.CredentialRetrievalError):
        return f"AWS credentials could not be obtained ({exc}): {CREDENTIALS_HINT}"
    if isinstance(exc, e.EndpointConnectionError | e.ConnectTimeoutError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        where = f"AWS_ENDPOINT_URL={endpoint}" if endpoint else f"AWS in {region}"
        return f"cannot reach {where} ({exc}): check the network (or the endpoint)"
    if isinstance(exc, e.ClientError):
        code, message, operation = _code(exc), _message(exc), exc.operation_name
        if code in EXPIRED:
            return (
                f"the AWS credentials have expired ({code} on {operation}): get new ones "
                f"(aws sso login{' --profile ' + profile if profile else ''}, or a new session)"
            )
        if code in REJECTED:
            return (
                f"AWS does not accept these credentials in {region} ({code} on {operation}): "
                f"check them ({CREDENTIALS_HINT}), and that {region} is enabled for the account "
                f"(opt-in regions: aws account get-region-opt-status --region-name {region})"
            )
        if code in DENIED:
            return (
                f"the credentials may not call {operation} in {region} ({code}: {message}); use "
                "a role that may read the environment's stacks, logs and instances"
            )
        return f"AWS refused {operation} in {region} ({code}: {message})"
    return f"AWS call failed in {region}: {exc}"
