"""A short wrk run through deferd to nginx: every response must be a 2xx and deferd must
stay up. Nothing here asserts on speed."""

import re
import subprocess

import harness

WRK_THREADS = 1
WRK_CONNECTIONS = 16
WRK_SECONDS = 3


def parse_wrk(output):
    """Return (requests completed, non-2xx/3xx count, socket error counts) from wrk's output."""
    total = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return (
        int(total.group(1)) if total else None,
        int(non_2xx.group(1)) if non_2xx else 0,
        tuple(int(n) for n in errors.groups()) if errors else (0, 0, 0, 0),
    )


class LoadTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = harness.Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.port = harness.free_port()
        routes = [{"match": {"prefix": "/static/"}, "cluster": "web"}]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[harness.cluster_config("web", [cls.nginx.port])],
            access_log=False,
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_wrk_all_2xx(self):
        wrk = harness.require_tool("wrk")
        before = self.deferd.metrics()
        result = subprocess.run(
            [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s",
             "--timeout", "2s", f"http://{harness.LOOPBACK}:{self.port}/static/index.html"],
            capture_output=True, timeout=WRK_SECONDS + 30,
        )
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertEqual(result.returncode, 0, f"wrk failed:\n{output}")
        completed, non_2xx, socket_errors = parse_wrk(output)
        self.assertIsNotNone(completed, f"cannot read the request count from wrk:\n{output}")
        self.assertGreater(completed, 0, f"wrk completed no requests:\n{output}")
        self.assertEqual(non_2xx, 0, f"non-2xx responses under load:\n{output}")
        self.assertEqual(socket_errors, (0, 0, 0, 0),
                         f"socket errors (connect, read, write, timeout):\n{output}")

        if not self.deferd.alive():
            self.fail_with_log(f"deferd exited with status {self.deferd.proc.returncode} under load")
        self.assertStatus(self.deferd.admin_get("/healthz"), 200, "/healthz after load")
        self.assertStatus(harness.http_get(self.port, "/static/index.html"), 200, "GET after load")

        after = self.deferd.metrics()

        def grew(name, **labels):
            return after.value(name, **labels) - before.value(name, **labels)

        served = grew("deferd_requests_total", listener="inbound", cluster="web", status_class="2xx")
        # wrk stops counting at the deadline, so deferd may have served up to one request per
        # connection more than wrk reports, plus the GET above.
        self.assertGreaterEqual(served, completed, "2xx counted by deferd vs completed by wrk")
        self.assertLessEqual(served, completed + WRK_CONNECTIONS + 1, "2xx counted by deferd")
        for status_class in ("4xx", "5xx"):
            self.assertEqual(grew("deferd_requests_total", listener="inbound", cluster="web",
                                  status_class=status_class), 0, f"{status_class} under load")
        created = grew("deferd_upstream_connections_created_total", cluster="web")
        self.assertLessEqual(
            created, 2 * WRK_CONNECTIONS,
            f"{created} upstream connections for {served} requests on {WRK_CONNECTIONS} client "
            "connections; keep-alive reuse should need about one per client connection",
        )


if __name__ == "__main__":
    harness.main()
