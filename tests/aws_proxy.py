"""A recording HTTP proxy in front of moto: every AWS request the boot makes, as IAM would see it.

The boot runs the real AWS CLI in subprocesses, so botocore hooks inside the test cannot see its
calls; this proxy sits between the CLI (``AWS_ENDPOINT_URL``) and moto and records each request:
the signing service (from the SigV4 credential scope), the action (``X-Amz-Target`` for the JSON
protocols, ``Action=`` for the query protocol) and the parameters. It forwards everything to moto
with ``x-moto-account-id`` set, so ARNs carry the configured account.

moto implements no lifecycle actions (``CompleteLifecycleAction``,
``RecordLifecycleActionHeartbeat``). The proxy answers those itself: a stand-in for EC2 Auto
Scaling's side of the launch hook, used only in tests. It checks, as AWS does, that the group
exists and has a launch hook of that name, records the result with the time it arrived, and
answers like AWS (an empty result, or ``ValidationError`` for an unknown hook).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_LIFECYCLE_ACTIONS = ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


@dataclass
class Request:
    """One AWS API request as the service receives it.

    Attributes:
        service: SigV4 signing name (``ssm``, ``secretsmanager``, ``autoscaling``, ``ecr``...).
        region: SigV4 region.
        action: API action name (``GetParameters``).
        params: the JSON body, or the query-protocol form fields (one value each).
        status: HTTP status of the answer.
        t: arrival time (``time.time()``).
    """

    service: str
    region: str
    action: str
    params: dict[str, Any]
    status: int
    t: float

    def describe(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("Action", "Version")}
        return f"{self.service}:{self.action} {json.dumps(shown, sort_keys=True)[:300]}"


@dataclass
class Completion:
    group: str
    hook: str
    instance_id: str
    result: str
    t: float


@dataclass
class RecordingProxy:
    """Args:
    upstream_port: moto's port on 127.0.0.1.
    account: account id moto puts in ARNs (``x-moto-account-id``).
    """

    upstream_port: int
    account: str
    requests: list[Request] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    port: int = 0
    recording: bool = True
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.completions.clear()

    def _upstream(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _hook_exists(self, group: str, hook: str, headers: dict[str, str]) -> bool:
        form = urllib.parse.urlencode(
            {
                "Action": "DescribeLifecycleHooks",
                "Version": "2011-01-01",
                "AutoScalingGroupName": group,
            }
        ).encode()
        hdrs = {k: v for k, v in headers.items() if k.lower() != "x-amz-target"}
        hdrs["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
        status, _, body = self._upstream("POST", "/", hdrs, form)
        text = body.decode(errors="replace")
        hooks = re.findall(r"<LifecycleHookName>([^<]+)</LifecycleHookName>", text)
        transitions = re.findall(r"<LifecycleTransition>([^<]+)</LifecycleTransition>", text)
        return status == 200 and any(
            h == hook and t == "autoscaling:EC2_INSTANCE_LAUNCHING"
            for h, t in zip(hooks, transitions, strict=False)
        )

    def _lifecycle(self, action: str, params: dict[str, Any], headers: dict[str, str]) -> bytes:
        group = str(params.get("AutoScalingGroupName", ""))
        hook = str(params.get("LifecycleHookName", ""))
        instance = str(params.get("InstanceId", ""))
        if not self._hook_exists(group, hook, headers):
            raise _AwsError(
                400,
                "ValidationError",
                f"No active Lifecycle Action found with instance ID {instance}",
            )
        if action == "CompleteLifecycleAction":
            result = str(params.get("LifecycleActionResult", ""))
            if result not in ("CONTINUE", "ABANDON"):
                raise _AwsError(400, "ValidationError", "LifecycleActionResult must be ...")
            with self._lock:
                self.completions.append(Completion(group, hook, instance, result, time.time()))
        return (
            f'<{action}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
            f"<{action}Result/><ResponseMetadata><RequestId>stand-in</RequestId>"
            f"</ResponseMetadata></{action}Response>"
        ).encode()

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                headers["Host"] = f"127.0.0.1:{proxy.upstream_port}"
                headers["x-moto-account-id"] = proxy.account
                service, region = "", ""
                scope = _SCOPE.search(self.headers.get("Authorization", ""))
                if scope:
                    region, service = scope.group(1), scope.group(2)
                target = self.headers.get("X-Amz-Target", "")
                params: dict[str, Any]
                if target:
                    action = target.rsplit(".", 1)[-1]
                    try:
                        params = json.loads(body or b"{}")
                    except ValueError:
                        params = {}
                else:
                    form = urllib.parse.parse_qs(body.decode(errors="replace"))
                    query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                    params = {k: v[0] for k, v in {**query, **form}.items()}
                    action = str(params.get("Action", f"{self.command} {self.path}"))
                try:
                    if service == "autoscaling" and action in _LIFECYCLE_ACTIONS:
                        status, out_headers, payload = 200, [("Content-Type", "text/xml")], b""
                        payload = proxy._lifecycle(action, params, headers)
                    else:
                        status, out_headers, payload = proxy._upstream(
                            self.command, self.path, headers, body
                        )
                except _AwsError as err:
                    status, out_headers = err.status, [("Content-Type", "text/xml")]
                    payload = err.xml()
                if proxy.recording and service:
                    with proxy._lock:
                        proxy.requests.append(
                            Request(service, region, action, params, status, time.time())
                        )
                self.send_response(status)
                for k, v in out_headers:
                    if k.lower() not in _HOP_HEADERS:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _AwsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def xml(self) -> bytes:
        return (
            "<ErrorResponse><Error><Type>Sender</Type>"
            f"<Code>{self.code}</Code><Message>{self.message}</Message></Error>"
            "<RequestId>stand-in</RequestId></ErrorResponse>"
        ).encode()


@contextlib.contextmanager
def recording_proxy(upstream_port: int, account: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(upstream_port=upstream_port, account=account).start()
    try:
        yield proxy
    finally:
        proxy.stop()
