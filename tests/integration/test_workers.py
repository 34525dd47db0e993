"""Several workers: each accepts on its own SO_REUSEPORT socket, and together they serve
every connection and count every request once."""

import harness

WORKERS = 2
CONNECTIONS = 40


class WorkersTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream()
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, [{"cluster": "app"}])],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
            extra={"workers": WORKERS},
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_every_connection_served_and_counted(self):
        # One request per new connection, so the kernel spreads them over the workers.
        for i in range(CONNECTIONS):
            resp = harness.http_get(self.port, f"/w/{i}")
            self.assertStatus(resp, 200, f"request {i}")

        metrics = self.deferd.metrics()
        served = metrics.value(
            "deferd_requests_total", listener="inbound", cluster="app", status_class="2xx"
        )
        self.assertEqual(served, CONNECTIONS, "2xx requests counted over all workers")
        accepted = metrics.value("deferd_downstream_connections_total", listener="inbound")
        self.assertGreaterEqual(accepted, CONNECTIONS, "downstream connections counted")


class WorkersDrainTest(harness.DeferdTestCase):
    def test_drain_stops_every_worker(self):
        upstream = harness.RawUpstream()
        self.addCleanup(upstream.close)
        port = harness.free_port()
        deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", port, [{"cluster": "app"}])],
            clusters=[harness.cluster_config("app", [upstream.port])],
            extra={"workers": WORKERS},
        ).start()
        self.addCleanup(deferd.stop)

        resp = harness.http_get(port, "/before-drain")
        self.assertStatus(resp, 200, "request before the drain")
        code = deferd.stop()
        self.assertEqual(code, 0, f"exit status after SIGTERM; log:\n{deferd.log()}")


if __name__ == "__main__":
    harness.main()
