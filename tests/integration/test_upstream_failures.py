"""Upstreams that are down, slow, or break the connection, and the local replies they cause.

Each case checks the status, the deferd-reason header, and the counters
deferd_local_replies_total{listener,reason} and deferd_upstream_failures_total{cluster,reason}.
"""

import time

import h2peer
import harness
from harness import RawClient, Reply

ROUTE_TIMEOUT_SECONDS = 0.5
SLOW_DELAY_SECONDS = 2.0


def upstream_failures(metrics, cluster, reason):
    return metrics.value("deferd_upstream_failures_total", cluster=cluster, reason=reason)


class UpstreamFailuresTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        # Nothing listens here: connections are refused.
        cls.closed_port = harness.free_port()
        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/down"}, "cluster": "down"},
            {
                "match": {"prefix": "/slow"},
                "cluster": "scripted",
                "timeout": f"{int(ROUTE_TIMEOUT_SECONDS * 1000)}ms",
            },
            {"match": {"prefix": "/"}, "cluster": "scripted"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("down", [cls.closed_port], connect_timeout="500ms"),
                harness.cluster_config("scripted", [cls.upstream.port], connect_timeout="500ms"),
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        path = request.target
        if path.startswith("/slow"):
            return Reply(200, [], b"late", delay=SLOW_DELAY_SECONDS)
        if path.startswith("/reset"):
            return Reply(action="reset")
        if path.startswith("/close"):
            return Reply(action="close")
        if path.startswith("/half-head"):
            return Reply(action="raw", raw=b"HTTP/1.1 200 OK\r\nContent-Le")
        if path.startswith("/bad-status"):
            return Reply(action="raw", raw=b"HTTP/1.1 999 Whatever\r\nContent-Length: 2\r\n\r\nok")
        if path.startswith("/bad-chunk"):
            return Reply(action="raw",
                         raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        if path.startswith("/no-content"):
            return Reply(action="raw", raw=b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
        if path.startswith("/garbage"):
            return Reply(action="raw", raw=b"HELLO WORLD\r\n\r\n")
        if path.startswith("/partial"):
            return Reply(200, [], b"x" * 100, action="partial", partial_bytes=10)
        return Reply(200, [], b"ok")

    def counters(self, cluster, local_reason, failure_reason):
        metrics = self.deferd.metrics()
        local = metrics.value("deferd_local_replies_total", listener="inbound", reason=local_reason)
        return local, upstream_failures(metrics, cluster, failure_reason)

    def assertCountersGrew(self, before, after, what):
        self.assertEqual(
            after[0] - before[0], 1,
            f"{what}: deferd_local_replies_total grew by {after[0] - before[0]}, expected 1",
        )
        self.assertEqual(
            after[1] - before[1], 1,
            f"{what}: deferd_upstream_failures_total grew by {after[1] - before[1]}, expected 1",
        )

    def assertStillServing(self):
        self.assertStatus(harness.http_get(self.port, "/ok"), 200, "request after the failure")

    def test_connection_refused(self):
        before = self.counters("down", "connect-failed", "connect-failed")
        resp = harness.http_get(self.port, "/down")
        self.assertLocalReply(resp, 503, "connect-failed")
        retry_after = resp.header("retry-after")
        self.assertIsNotNone(retry_after, f"503 without retry-after: {resp!r}")
        self.assertRegex(retry_after, r"^\d+$", "retry-after is not a number of seconds")
        after = self.counters("down", "connect-failed", "connect-failed")
        self.assertCountersGrew(before, after, "connection refused")
        self.assertStillServing()

    def test_upstream_slower_than_route_timeout(self):
        before = self.counters("scripted", "upstream-timeout", "timeout")
        started = time.monotonic()
        resp = harness.http_get(self.port, "/slow")
        elapsed = time.monotonic() - started
        self.assertLocalReply(resp, 504, "upstream-timeout")
        self.assertGreaterEqual(elapsed, ROUTE_TIMEOUT_SECONDS - 0.05, "504 before the route timeout")
        self.assertLess(
            elapsed, SLOW_DELAY_SECONDS, f"504 took {elapsed:.2f}s, the route timeout is "
            f"{ROUTE_TIMEOUT_SECONDS}s"
        )
        after = self.counters("scripted", "upstream-timeout", "timeout")
        self.assertCountersGrew(before, after, "upstream timeout")
        self.assertStillServing()

    def test_reset_before_headers(self):
        before = self.counters("scripted", "upstream-reset", "reset")
        resp = harness.http_get(self.port, "/reset")
        self.assertLocalReply(resp, 502, "upstream-reset")
        after = self.counters("scripted", "upstream-reset", "reset")
        self.assertCountersGrew(before, after, "reset before headers")
        self.assertStillServing()

    def test_close_before_headers(self):
        before = self.counters("scripted", "upstream-reset", "reset")
        resp = harness.http_get(self.port, "/close")
        self.assertLocalReply(resp, 502, "upstream-reset")
        after = self.counters("scripted", "upstream-reset", "reset")
        self.assertCountersGrew(before, after, "close before headers")
        self.assertStillServing()

    def test_close_inside_headers(self):
        before = self.counters("scripted", "upstream-reset", "reset")
        resp = harness.http_get(self.port, "/half-head")
        self.assertLocalReply(resp, 502, "upstream-reset")
        after = self.counters("scripted", "upstream-reset", "reset")
        self.assertCountersGrew(before, after, "close inside the response headers")
        self.assertStillServing()

    def test_unparsable_response(self):
        before = self.counters("scripted", "bad-upstream-response", "bad-response")
        resp = harness.http_get(self.port, "/garbage")
        self.assertLocalReply(resp, 502, "bad-upstream-response")
        after = self.counters("scripted", "bad-upstream-response", "bad-response")
        self.assertCountersGrew(before, after, "unparsable response")
        self.assertStillServing()

    def test_status_outside_range(self):
        # RFC 9110 defines status codes 100 to 599, so a 999 is a bad response for either client.
        before = self.counters("scripted", "bad-upstream-response", "bad-response")
        self.assertLocalReply(harness.http_get(self.port, "/bad-status"), 502,
                              "bad-upstream-response")
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/bad-status")
        self.assertEqual(stream.status, 502, stream)
        self.assertEqual(stream.header("deferd-reason"), "bad-upstream-response")
        after = self.counters("scripted", "bad-upstream-response", "bad-response")
        self.assertEqual(after[1] - before[1], 2, "deferd_upstream_failures_total growth")
        self.assertStillServing()

    def test_bad_first_chunk_gets_reply(self):
        # The 200 head waits for the first body bytes, so a body that fails to parse at once
        # still leaves room for a 502.
        before = self.counters("scripted", "bad-upstream-response", "bad-response")
        resp = harness.http_get(self.port, "/bad-chunk")
        self.assertLocalReply(resp, 502, "bad-upstream-response")
        after = self.counters("scripted", "bad-upstream-response", "bad-response")
        self.assertCountersGrew(before, after, "invalid first chunk")
        self.assertStillServing()

    def test_no_content_length_dropped_from_204(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/no-content")
        self.assertIsNone(stream.reset_code, stream)
        self.assertEqual(stream.status, 204)
        self.assertIsNone(stream.header("content-length"))

        with RawClient(self.port) as c:
            c.send(b"GET /no-content HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers = c.read_head()
        self.assertEqual(status, 204)
        self.assertNotIn("content-length", [name.lower() for name, _ in headers])
        self.assertStillServing()

    def test_close_inside_body(self):
        # The 200 head was already sent, so deferd cannot reply; it must close the client
        # connection so the client sees a truncated body instead of waiting for the rest.
        metrics = self.deferd.metrics()
        before = upstream_failures(metrics, "scripted", "reset")
        with RawClient(self.port) as c:
            c.send(b"GET /partial HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers = c.read_head()
            self.assertEqual(status, 200, f"expected the upstream's 200 head, got {status}")
            rest, closed = c.read_to_close()
        self.assertTrue(closed, "deferd kept the client connection open after a truncated body")
        self.assertEqual(rest, b"x" * 10, "body bytes before the close")
        after = upstream_failures(self.deferd.metrics(), "scripted", "reset")
        self.assertEqual(after - before, 1, "deferd_upstream_failures_total{reason=reset} growth")
        self.assertStillServing()


if __name__ == "__main__":
    harness.main()
