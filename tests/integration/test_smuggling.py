"""Requests with ambiguous or invalid framing, and requests over the header limits.

deferd must reject each with a local reply, close the connection, and forward nothing to the
upstream: a proxy and an upstream that disagree on where a request ends let a client hide a
second request inside the first (request smuggling).

To show that nothing was forwarded, each test then sends a valid sentinel request on a new
connection and waits for it at the upstream. deferd runs one worker, so anything it forwarded
from the rejected request would have reached the upstream before the sentinel did.
"""

import time
import uuid

import harness
from harness import RawClient

MAX_HEADER_BYTES = 8192
MAX_HEADER_COUNT = 50
HEADER_TIMEOUT_SECONDS = 2

# The bytes after each framing header: a body and, hidden behind it, a second request.
HIDDEN = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"

SMUGGLING_CASES = {
    "content-length and transfer-encoding": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + HIDDEN
    ),
    "transfer-encoding and content-length": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n" + HIDDEN
    ),
    "two differing content-length headers": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\n"
        b"hello" + HIDDEN
    ),
    "two equal content-length headers": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
        b"hello" + HIDDEN
    ),
    "content-length list with differing values": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 41\r\n\r\nhello" + HIDDEN
    ),
    "negative content-length": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\nhello" + HIDDEN
    ),
    "content-length with a plus sign": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello" + HIDDEN
    ),
    "invalid chunk size": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n" + HIDDEN
    ),
    "chunk size overflowing 64 bits": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000005\r\nhello\r\n0\r\n\r\n" + HIDDEN
    ),
    "transfer-encoding gzip": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n" + HIDDEN
    ),
    "transfer-encoding identity": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + HIDDEN
    ),
    "transfer-encoding xchunked": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + HIDDEN
    ),
    "chunked not the final transfer coding": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
        b"0\r\n\r\n" + HIDDEN
    ),
    "whitespace before the header colon": (
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n" + HIDDEN
    ),
}

MALFORMED_REQUEST_LINES = {
    "missing version": b"GET /\r\nHost: t\r\n\r\n",
    "extra token": b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n",
    "control character in method": b"G\x01T / HTTP/1.1\r\nHost: t\r\n\r\n",
    "unknown protocol": b"GET / FOO/1.1\r\nHost: t\r\n\r\n",
    "not http": b"hello\r\n\r\n",
    "tls client hello": bytes.fromhex("160301006a0100006603030000") + b"\x00" * 40 + b"\r\n\r\n",
}


class SmugglingTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream()
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        limits = {
            "header_timeout": f"{HEADER_TIMEOUT_SECONDS}s",
            "idle_timeout": "10s",
            "max_header_bytes": MAX_HEADER_BYTES,
            "max_header_count": MAX_HEADER_COUNT,
        }
        cls.deferd = harness.Deferd(
            listeners=[
                harness.listener_config(
                    "inbound", cls.port, [{"match": {"prefix": "/"}, "cluster": "app"}], limits
                )
            ],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def setUp(self):
        self.upstream.reset()

    def assertNothingForwarded(self, context):
        """Send a sentinel request and check it is the only thing the upstream received."""
        # The sentinel carries a body so that this check does not depend on how deferd
        # handles bodiless requests, which other tests cover.
        sentinel = "/sentinel-" + uuid.uuid4().hex
        resp = harness.http_request(self.port, "POST", sentinel, body=b"x")
        self.assertStatus(resp, 200, f"{context}: sentinel request")
        self.upstream.wait_for_requests(1)
        requests, _, _ = self.upstream.snapshot()
        targets = [r.target for r in requests]
        self.assertEqual(targets, [sentinel], f"{context}: the upstream received other requests")
        received = self.upstream.all_bytes()
        self.assertEqual(
            received, requests[0].head_bytes + b"x",
            f"{context}: the upstream received bytes besides the sentinel: {received!r}",
        )

    def assertRejected(self, data, status, reason, context):
        """Send `data` on a new connection; expect one local reply, then a closed connection."""
        with RawClient(self.port) as c:
            c.send(data)
            received, closed = c.read_to_close()
        responses = harness.parse_responses(received)
        if not responses:
            self.fail_with_log(f"{context}: expected a {status} reply, got {received!r}")
        resp = responses[0]
        self.assertLocalReply(resp, status, reason, context)
        self.assertEqual(
            (resp.header("connection") or "").lower(), "close",
            f"{context}: expected 'Connection: close', got {resp!r}",
        )
        self.assertTrue(closed, f"{context}: deferd kept the connection open after {status}")
        self.assertEqual(
            len(responses), 1, f"{context}: expected one response, got {len(responses)}: {received!r}"
        )
        self.assertNothingForwarded(context)

    def test_valid_request_reaches_upstream(self):
        # Control: a well-formed request with a body is forwarded, so the checks above can fail.
        with RawClient(self.port) as c:
            c.send(b"POST /control HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            self.assertStatus(c.read_response(), 200, "control request")
        requests = self.upstream.wait_for_requests(1)
        self.assertEqual(requests[0].target, "/control")
        self.assertEqual(requests[0].body, b"hello")

    def test_ambiguous_framing_rejected(self):
        for name, data in SMUGGLING_CASES.items():
            with self.subTest(name):
                self.upstream.reset()
                self.assertRejected(data, 400, "bad-request", name)

    def test_malformed_request_line_rejected(self):
        for name, data in MALFORMED_REQUEST_LINES.items():
            with self.subTest(name):
                self.upstream.reset()
                self.assertRejected(data, 400, "bad-request", name)

    def test_missing_host_rejected(self):
        # RFC 9112 section 3.2: an HTTP/1.1 request without Host gets 400.
        self.assertRejected(b"GET / HTTP/1.1\r\n\r\n", 400, "bad-request", "no Host header")

    def test_header_bytes_over_limit(self):
        data = (
            b"GET / HTTP/1.1\r\nHost: t\r\nx-big: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n\r\n"
        )
        self.assertRejected(data, 431, "header-too-large", "header block over max_header_bytes")

    def test_header_count_over_limit(self):
        fields = b"".join(b"x-h-%d: v\r\n" % i for i in range(MAX_HEADER_COUNT + 10))
        data = b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n"
        self.assertRejected(data, 431, "too-many-headers", "header count over max_header_count")

    def test_headers_under_limits_accepted(self):
        fields = b"".join(b"x-h-%d: v\r\n" % i for i in range(MAX_HEADER_COUNT - 10))
        fields += b"x-big: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n"
        with RawClient(self.port) as c:
            c.send(b"GET /under HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
            self.assertStatus(c.read_response(), 200, "headers under both limits")

    def test_slow_headers_time_out(self):
        with RawClient(self.port, timeout=HEADER_TIMEOUT_SECONDS + 5) as c:
            started = time.monotonic()
            c.send(b"GET /slow-headers HTTP/1.1\r\nHost: t\r\n")
            received, closed = c.read_to_close(timeout=HEADER_TIMEOUT_SECONDS + 3)
            elapsed = time.monotonic() - started
        self.assertTrue(closed, f"connection still open {elapsed:.1f}s after partial headers")
        self.assertGreaterEqual(elapsed, HEADER_TIMEOUT_SECONDS - 0.5, "closed before header_timeout")
        responses = harness.parse_responses(received)
        self.assertEqual(len(responses), 1, f"expected one 408 reply, got {received!r}")
        self.assertLocalReply(responses[0], 408, "header-timeout")
        self.assertNothingForwarded("partial headers")


if __name__ == "__main__":
    harness.main()
