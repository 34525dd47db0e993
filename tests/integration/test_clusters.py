"""Clusters: load balancing, endpoints given as DNS names, and the per-endpoint connection limit.

Each test sends real requests through deferd to scripted upstreams and checks which upstream
received them, so a balancer that always picks the first endpoint, or a pool that ignores its
limit, fails here.
"""

import threading
import time

import harness
from harness import Reply

SLOW_DELAY_SECONDS = 1.0


def tagged_reply(tag):
    """A handler that answers 200 with `tag` as the body."""
    return lambda request: Reply(200, [], tag.encode())


class RoundRobinTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.first = harness.RawUpstream(handler=tagged_reply("first"))
        cls.addClassCleanup(cls.first.close)
        cls.second = harness.RawUpstream(handler=tagged_reply("second"))
        cls.addClassCleanup(cls.second.close)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[
                harness.listener_config("inbound", cls.port, [{"cluster": "pair"}])
            ],
            clusters=[
                harness.cluster_config(
                    "pair", [cls.first.port, cls.second.port], lb="round_robin"
                )
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_alternates_between_endpoints(self):
        bodies = []
        for i in range(10):
            resp = harness.http_get(self.port, f"/rr/{i}")
            self.assertStatus(resp, 200, f"request {i}")
            bodies.append(resp.body)
        self.assertEqual(bodies.count(b"first"), 5, f"bodies: {bodies}")
        self.assertEqual(bodies.count(b"second"), 5, f"bodies: {bodies}")
        for i in range(1, len(bodies)):
            self.assertNotEqual(bodies[i], bodies[i - 1], f"round robin repeated at {i}: {bodies}")


class DnsEndpointTest(harness.DeferdTestCase):
    """`localhost` goes through the resolver; it may yield ::1 first, where nothing listens,
    and deferd must then fall back to the other address instead of failing the request."""

    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=tagged_reply("resolved"))
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, [{"cluster": "named"}])],
            clusters=[
                {
                    "name": "named",
                    "endpoints": [f"localhost:{cls.upstream.port}"],
                    "resolve_every": "1s",
                    "connect_timeout": "500ms",
                }
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_requests_reach_resolved_address(self):
        for i in range(6):
            resp = harness.http_get(self.port, f"/dns/{i}")
            self.assertStatus(resp, 200, f"request {i} to a DNS-named endpoint")
            self.assertEqual(resp.body, b"resolved")

    def test_still_served_after_reresolution(self):
        # resolve_every is 1 s: after two periods the endpoint set was refreshed at least once,
        # and pooled connections to an unchanged address must keep working.
        resp = harness.http_get(self.port, "/dns/before")
        self.assertStatus(resp, 200, "before re-resolution")
        # Waiting for time to pass is the point here, not for a condition.
        time.sleep(2.2)
        resp = harness.http_get(self.port, "/dns/after")
        self.assertStatus(resp, 200, "after re-resolution")


class ConnectionLimitTest(harness.DeferdTestCase):
    """max_connections: 1 with one worker allows one upstream connection: a second concurrent
    request waits for it, and gives up with 503 connection-limit after connect_timeout."""

    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, [{"cluster": "narrow"}])],
            clusters=[
                harness.cluster_config(
                    "narrow", [cls.upstream.port], max_connections=1, connect_timeout="300ms"
                )
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        if request.target.startswith("/slow"):
            return Reply(200, [], b"slow", delay=SLOW_DELAY_SECONDS)
        return Reply(200, [], b"fast")

    def test_second_request_rejected_at_limit(self):
        results = {}

        def slow():
            results["slow"] = harness.http_get(self.port, "/slow")

        thread = threading.Thread(target=slow)
        thread.start()
        self.upstream.wait_for_requests(1)

        resp = harness.http_get(self.port, "/fast")
        thread.join(10)

        self.assertLocalReply(resp, 503, "connection-limit", "request over the connection limit")
        self.assertStatus(results.get("slow"), 200, "the request holding the connection")
        _, _, accepted = self.upstream.snapshot()
        self.assertEqual(accepted, 1, "upstream connections opened with max_connections: 1")

    def test_waiter_gets_released_connection(self):
        # A request that arrives while the only connection is busy for less than
        # connect_timeout gets it when it is released, instead of failing.
        self.upstream.reset()
        results = {}

        def first():
            results["first"] = harness.http_get(self.port, "/first")

        def second():
            results["second"] = harness.http_get(self.port, "/second")

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

        self.assertStatus(results.get("first"), 200, "first of two quick requests")
        self.assertStatus(results.get("second"), 200, "second of two quick requests")


if __name__ == "__main__":
    harness.main()
