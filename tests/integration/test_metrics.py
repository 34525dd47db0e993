"""The admin listener: /metrics checked by promtool and against known traffic, and the
/healthz, /ready and /config endpoints."""

import subprocess

import harness
from harness import RawClient

# Every family the proxy core exports, with its Prometheus type.
EXPECTED_FAMILIES = {
    "deferd_requests_total": "counter",
    "deferd_request_duration_seconds": "histogram",
    "deferd_requests_in_flight": "gauge",
    "deferd_downstream_connections_active": "gauge",
    "deferd_upstream_connections_active": "gauge",
    "deferd_upstream_connections_created_total": "counter",
    "deferd_upstream_failures_total": "counter",
    "deferd_local_replies_total": "counter",
    "deferd_config_reloads_total": "counter",
}


def declared_types(text):
    """Return {family: type} from the '# TYPE' lines of a Prometheus text exposition."""
    types = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            types[parts[2]] = parts[3]
    return types


class MetricsTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = harness.Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.port = harness.free_port()
        routes = [{"match": {"prefix": "/static/"}, "cluster": "web"}]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[harness.cluster_config("web", [cls.nginx.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def request(self, path, count):
        for _ in range(count):
            resp = harness.http_get(self.port, path)
            self.assertIn(resp.status, (200, 404), f"GET {path}: {resp!r}")

    def test_promtool_accepts_metrics(self):
        promtool = harness.require_tool("promtool")
        self.request("/static/index.html", 2)
        self.request("/nothing", 1)
        text = self.deferd.admin_get("/metrics").body
        result = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
        )
        self.assertEqual(
            result.returncode, 0,
            "promtool check metrics reported problems:\n"
            + (result.stdout + result.stderr).decode("utf-8", "replace"),
        )

    def test_metric_families_declared(self):
        self.request("/static/index.html", 1)
        types = declared_types(self.deferd.admin_get("/metrics").body.decode())
        for family, expected in EXPECTED_FAMILIES.items():
            self.assertEqual(types.get(family), expected, f"# TYPE of {family}")

    def test_counters_after_known_traffic(self):
        before = self.deferd.metrics()
        self.request("/static/index.html", 10)
        self.request("/static/missing.html", 2)
        self.request("/nothing", 3)
        after = self.deferd.metrics()

        def grew(name, **labels):
            return after.value(name, **labels) - before.value(name, **labels)

        self.assertEqual(grew("deferd_requests_total", listener="inbound", cluster="web",
                              status_class="2xx"), 10, "2xx requests to cluster web")
        self.assertEqual(grew("deferd_requests_total", listener="inbound", cluster="web",
                              status_class="4xx"), 2, "4xx requests to cluster web (nginx 404)")
        self.assertEqual(grew("deferd_request_duration_seconds_count", listener="inbound",
                              cluster="web"), 12, "histogram count for cluster web")
        self.assertEqual(grew("deferd_request_duration_seconds_bucket", listener="inbound",
                              cluster="web", le="+Inf"), 12, "histogram +Inf bucket")
        self.assertGreater(grew("deferd_request_duration_seconds_sum", listener="inbound",
                                cluster="web"), 0, "histogram sum")
        self.assertEqual(grew("deferd_local_replies_total", listener="inbound", reason="no-route"),
                         3, "no-route local replies")
        self.assertEqual(after.value("deferd_requests_in_flight", listener="inbound"), 0,
                         "requests in flight once all responses arrived")

        created = after.value("deferd_upstream_connections_created_total", cluster="web")
        self.assertGreaterEqual(created, 1, "upstream connections created")
        self.assertLessEqual(created, 15, "upstream connections created for 15 sequential requests")
        self.assertGreaterEqual(after.value("deferd_upstream_connections_active", cluster="web"), 1,
                                "idle keep-alive connections to nginx count as active")

    def test_histogram_buckets_cumulative(self):
        self.request("/static/index.html", 3)
        buckets = self.deferd.metrics().find(
            "deferd_request_duration_seconds_bucket", listener="inbound", cluster="web",
            protocol="http1"
        )
        self.assertTrue(buckets, "no deferd_request_duration_seconds_bucket samples")
        ordered = sorted(buckets, key=lambda b: float(b[0]["le"]))
        counts = [value for _, value in ordered]
        self.assertEqual(counts, sorted(counts), f"bucket counts not cumulative: {ordered}")
        self.assertEqual(ordered[-1][0]["le"], "+Inf")

    def test_downstream_connection_gauge(self):
        # Connections of earlier tests are closed, but deferd may not have seen the FIN yet.
        base = 0
        harness.wait_until(
            lambda: self.deferd.metrics().value(
                "deferd_downstream_connections_active", listener="inbound") == base,
            5, "deferd_downstream_connections_active to drop to 0 before the test",
        )
        clients = [RawClient(self.port) for _ in range(3)]
        try:
            # A request on each makes sure deferd accepted the connection.
            for c in clients:
                c.send(b"GET /static/index.html HTTP/1.1\r\nHost: t\r\n\r\n")
                self.assertStatus(c.read_response(), 200)
            harness.wait_until(
                lambda: self.deferd.metrics().value(
                    "deferd_downstream_connections_active", listener="inbound") == base + 3,
                5, f"deferd_downstream_connections_active to reach {base + 3}",
            )
        finally:
            for c in clients:
                c.close()
        harness.wait_until(
            lambda: self.deferd.metrics().value(
                "deferd_downstream_connections_active", listener="inbound") == base,
            5, f"deferd_downstream_connections_active to return to {base}",
        )


class AdminTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream()
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config(
                "inbound", cls.port, [{"match": {"prefix": "/"}, "cluster": "app"}])],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_healthz(self):
        self.assertStatus(self.deferd.admin_get("/healthz"), 200, "/healthz")

    def test_ready(self):
        self.assertStatus(self.deferd.admin_get("/ready"), 200, "/ready")

    def test_config_shows_effective_config(self):
        resp = self.deferd.admin_get("/config")
        self.assertStatus(resp, 200, "/config")
        text = resp.body.decode()
        self.assertIn("integration", text, "node.service in /config")
        self.assertIn("inbound", text, "listener name in /config")
        self.assertIn(f"127.0.0.1:{self.upstream.port}", text, "endpoint in /config")

    def test_unknown_path(self):
        self.assertStatus(self.deferd.admin_get("/no-such-page"), 404, "unknown admin path")

    def test_post_not_allowed(self):
        resp = harness.http_request(self.deferd.admin_port, "POST", "/metrics")
        self.assertStatus(resp, 405, "POST /metrics")



class AccessLogFullTest(harness.DeferdTestCase):
    """An access log on a full device: requests are still served, and the lost bytes are
    counted and logged once."""

    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream()
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, [{"cluster": "app"}])],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
            extra={"access_log": {"path": "/dev/full"}},  # every write fails with ENOSPC
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def dropped(self):
        return self.deferd.metrics().value("deferd_access_log_dropped_bytes_total")

    def test_dropped_bytes_counted(self):
        self.assertEqual(self.dropped(), 0)
        for i in range(3):
            self.assertStatus(harness.http_get(self.port, f"/lost/{i}"), 200)
        # The worker flushes its access log buffer on a timer.
        harness.wait_until(lambda: self.dropped() > 0, 5, "dropped access log bytes counted")
        self.assertEqual(self.deferd.log().count("access log write to /dev/full failed"), 1,
                         self.deferd.log())


if __name__ == "__main__":
    harness.main()
