"""The breaker filter end to end, with scripted loopback backends that the tests kill, slow
down and restart.

Each test starts its own deferd with one outbound listener whose route uses a `breaker`
policy, so breakers, capacities and metrics never leak from one test to the next. Load is
bounded in requests and time everywhere.
"""

import http.client
import os
import signal
import subprocess
import sys
import threading
import time

import h2peer
import harness
from harness import Reply

HERE = os.path.dirname(os.path.abspath(__file__))
CHAOS_SCRIPT = os.path.join(os.path.dirname(HERE), "chaos_breaker.py")
# The policy of start_deferd's route; the breaker metrics carry it as their `policy` label.
POLICY = "guard"


def text_reply(body, delay=0.0, status=200):
    def handler(_request):
        return Reply(status, [("content-type", "text/plain")], body, delay=delay)

    return handler


def breaker_policy(**options):
    """A breaker section that opens after three failures in a row and probes after 1 s."""
    policy = {
        "open_when": {"consecutive_failures": 3},
        "cooldown": "1s",
        "max_cooldown": "1s",
        "jitter": "0%",
        "half_open": {"probes": 2, "timeout": "1s"},
    }
    policy.update(options)
    return policy


def start_deferd(clusters, policy, mode="enforce", service="checkout", route_timeout="5s"):
    port = harness.free_port()
    listener = harness.listener_config(
        "outbound",
        port,
        [{"cluster": "primary", "policy": POLICY, "timeout": route_timeout}],
        direction="outbound",
    )
    deferd = harness.Deferd(
        [listener],
        clusters,
        extra={
            "node": {"service": service},
            "policies": {POLICY: {"mode": mode, "breaker": policy}},
        },
    )
    deferd.start()
    return deferd, port


class Client:
    """One keep-alive connection that records each request's latency."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def get(self, path="/", headers=None):
        """Return (status, deferd-reason or None, body, seconds)."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    harness.LOOPBACK, self.port, timeout=self.timeout
                )
            started = time.perf_counter()
            try:
                self.conn.request("GET", path, headers=headers or {})
                resp = self.conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # deferd closed a kept-alive connection between requests: retry once, fresh.
                self.close()
                if attempt == 1:
                    raise
                continue
            elapsed = time.perf_counter() - started
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return resp.status, resp.getheader("deferd-reason"), body, elapsed
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def percentile(values, share):
    ordered = sorted(values)
    index = min(len(ordered) - 1, int(len(ordered) * share))
    return ordered[index]


class BreakerTestCase(harness.DeferdTestCase):
    def setUp(self):
        self.closers = []

    def tearDown(self):
        if self.deferd is not None:
            self.deferd.stop()
            self.deferd = None
        for close in reversed(self.closers):
            close()

    def upstream(self, handler, port=0):
        upstream = harness.RawUpstream(handler=handler, port=port)
        self.closers.append(upstream.close)
        return upstream

    def metric(self, name, **labels):
        return self.deferd.metrics().value(name, **labels)

    def wait_metric(self, name, expected, timeout=5.0, **labels):
        def reached():
            return self.metric(name, **labels) >= expected

        harness.wait_until(reached, timeout, f"{name}{labels} to reach {expected}")

    def trip(self, client, limit=10):
        """Send requests until the breaker of `primary` has opened."""
        for _ in range(limit):
            client.get()
            if self.metric(
                "deferd_breaker_transitions_total", policy=POLICY, cluster="primary", to="open"
            ):
                return
        self.fail_with_log(f"the breaker did not open after {limit} failing requests")


class FallbackTest(BreakerTestCase):
    MAX_CONCURRENT = 4
    FALLBACK_DELAY = 0.3
    HOLDERS = MAX_CONCURRENT
    REQUESTS_PER_HOLDER = 30
    MEASURED_REQUESTS = 300

    def test_fallback_capacity_then_recovery(self):
        primary = self.upstream(text_reply(b"primary"))
        primary_port = primary.port
        in_flight = {"now": 0, "max": 0}
        lock = threading.Lock()

        def fallback_handler(_request):
            with lock:
                in_flight["now"] += 1
                in_flight["max"] = max(in_flight["max"], in_flight["now"])
            time.sleep(self.FALLBACK_DELAY)
            with lock:
                in_flight["now"] -= 1
            return Reply(200, [("content-type", "text/plain")], b"fallback")

        fallback = self.upstream(fallback_handler)
        clusters = [
            harness.cluster_config("primary", [primary_port]),
            harness.cluster_config(
                "cache",
                [fallback.port],
                capacity={"max_concurrent": self.MAX_CONCURRENT, "max_rps": 1000},
            ),
        ]
        policy = breaker_policy(fallback={"cluster": "cache"}, cooldown="2s", max_cooldown="2s")
        self.deferd, port = start_deferd(clusters, policy)
        client = Client(port)
        self.assertEqual(client.get()[2], b"primary")

        # Kill the primary: three connect failures open its breaker.
        primary.close()
        self.trip(client)

        # Holder threads keep the fallback's slots busy with slow requests. One measuring
        # client, in this thread, times the rejections; the holders mostly wait on their
        # sockets, so they barely delay its measurements.
        results = []
        results_lock = threading.Lock()
        stop = threading.Event()

        def hold():
            own = Client(port)
            try:
                for _ in range(self.REQUESTS_PER_HOLDER):
                    if stop.is_set():
                        break
                    response = own.get()
                    with results_lock:
                        results.append(response)
                    if response[0] != 200:
                        time.sleep(0.01)  # the measuring client took the slot; no busy loop
            finally:
                own.close()

        load_started = time.monotonic()
        holders = [threading.Thread(target=hold) for _ in range(self.HOLDERS)]
        for thread in holders:
            thread.start()
        time.sleep(self.FALLBACK_DELAY / 2)  # the holders take the slots first
        measured = []
        try:
            for _ in range(self.MEASURED_REQUESTS):
                measured.append(client.get())
        finally:
            stop.set()
            for thread in holders:
                thread.join(timeout=60)
        self.assertFalse(any(t.is_alive() for t in holders), "a holder did not finish in 60 s")
        results += measured

        load_seconds = time.monotonic() - load_started
        served = [r for r in results if r[0] == 200]
        rejected = [r for r in results if r[1] == "fallback-capacity"]
        # Each cooldown ends with up to `probes` (2) probes to the dead primary.
        probes = [r for r in results if r[1] == "connect-failed"]
        other = [r for r in results if r[0] != 200 and r[1] not in ("fallback-capacity",
                                                                    "connect-failed")]
        self.assertLessEqual(len(results), self.HOLDERS * self.REQUESTS_PER_HOLDER
                             + self.MEASURED_REQUESTS)
        self.assertEqual(other, [], "only fallback answers and capacity rejections expected")
        self.assertLessEqual(len(probes), 2 * (int(load_seconds / 2) + 1))
        self.assertTrue(all(r[2] == b"fallback" for r in served), "the dead primary answered")
        self.assertGreaterEqual(len(served), self.MAX_CONCURRENT)
        self.assertTrue(all(r[0] == 503 for r in rejected))
        self.assertLessEqual(in_flight["max"], self.MAX_CONCURRENT)
        measured_rejections = [r for r in measured if r[1] == "fallback-capacity"]
        self.assertGreater(len(measured_rejections), self.MEASURED_REQUESTS // 2)

        rejection_p99 = percentile([r[3] for r in measured_rejections], 0.99)
        print(
            f"fallback: {len(served)} served, {len(rejected)} rejected, rejection p99 "
            f"{rejection_p99 * 1000:.2f} ms, fallback peak concurrency {in_flight['max']}",
            file=sys.stderr,
        )
        self.assertLess(rejection_p99, 0.005, "capacity rejections must be answered at once")

        metrics = self.deferd.metrics()
        self.assertEqual(
            metrics.value(
                "deferd_breaker_fallback_requests_total",
                policy=POLICY,
                cluster="primary",
                fallback="cache",
            ),
            len(served),
        )
        self.assertEqual(
            metrics.value(
                "deferd_breaker_fallback_rejections_total",
                policy=POLICY, cluster="primary",
                reason="max_concurrent",
            )
            + metrics.value(
                "deferd_breaker_fallback_rejections_total",
                policy=POLICY,
                cluster="primary",
                reason="max_rps",
            ),
            len(rejected),
        )

        # Restart the primary on its port: after the cooldown the probes succeed and the
        # breaker closes, and traffic returns to the primary.
        self.upstream(text_reply(b"primary"), port=primary_port)

        def back_on_primary():
            return client.get()[2] == b"primary"

        harness.wait_until(back_on_primary, 10, "requests to reach the restarted primary")
        # The first request on the primary was a probe; the second probe closes the breaker.
        for _ in range(5):
            self.assertEqual(client.get()[2], b"primary")
        self.assertEqual(
            self.metric(
                "deferd_breaker_transitions_total",
                policy=POLICY, cluster="primary",
                to="closed",
                cause="probes_succeeded",
            ),
            1,
        )
        self.wait_metric(
            "deferd_breaker_state", 1, policy=POLICY, cluster="primary", state="closed"
        )
        client.close()


class Http2FallbackTest(BreakerTestCase):
    """Streams of one HTTP/2 connection follow the redirect, within the fallback's capacity."""

    FALLBACK_DELAY = 0.5

    def test_streams_redirected_within_capacity(self):
        primary = self.upstream(text_reply(b"primary"))
        fallback = self.upstream(text_reply(b"fallback", delay=self.FALLBACK_DELAY))
        clusters = [
            harness.cluster_config("primary", [primary.port]),
            harness.cluster_config("cache", [fallback.port],
                                   capacity={"max_concurrent": 1, "max_rps": 1000}),
        ]
        policy = breaker_policy(fallback={"cluster": "cache"}, cooldown="30s",
                                max_cooldown="30s")
        self.deferd, port = start_deferd(clusters, policy)

        with h2peer.H2Client(port) as client:
            self.assertEqual(bytes(client.get("/").body), b"primary")

            # Kill the primary: three failing streams open its breaker.
            primary.close()
            for _ in range(10):
                client.get("/")
                if self.metric("deferd_breaker_transitions_total", policy=POLICY,
                               cluster="primary", to="open"):
                    break
            else:
                self.fail_with_log("the breaker did not open on HTTP/2 streams")

            # Three concurrent streams: the fallback takes one at a time, so one is redirected
            # and the other two are rejected at once rather than queued.
            started = time.monotonic()
            ids = [client.request("GET", f"/item/{i}") for i in range(3)]
            results = {stream_id: client.wait(stream_id, timeout=10) for stream_id in ids}
            served = [r for r in results.values() if r.status == 200]
            rejected = [r for r in results.values() if r.status == 503]

            self.assertEqual(len(served), 1, results)
            self.assertEqual(bytes(served[0].body), b"fallback")
            self.assertEqual(len(rejected), 2, results)
            for stream in rejected:
                self.assertEqual(stream.header("deferd-reason"), "fallback-capacity")
            self.assertLess(time.monotonic() - started, self.FALLBACK_DELAY + 2.0)

            # The redirected request carried the loop guard.
            forwarded = fallback.wait_for_requests(1)[0]
            self.assertIsNotNone(forwarded.header("deferd-fallback-path"))

            # With the fallback free again, the next stream is redirected too.
            self.assertEqual(bytes(client.get("/again", timeout=10).body), b"fallback")

        self.assertEqual(self.metric("deferd_breaker_fallback_requests_total", policy=POLICY,
                                     cluster="primary", fallback="cache"), 2)
        self.assertEqual(self.metric("deferd_breaker_fallback_rejections_total", policy=POLICY,
                                     cluster="primary", reason="max_concurrent"), 2)


class SlowCallTest(BreakerTestCase):
    def test_opens_on_slow_call_rate(self):
        primary = self.upstream(text_reply(b"slow", delay=0.25))
        clusters = [harness.cluster_config("primary", [primary.port])]
        policy = breaker_policy(
            window={"type": "count", "size": 10, "min_requests": 5},
            open_when={
                "failure_rate": "0%",
                "slow_call_rate": "60%",
                "slow_call": "100ms",
                "consecutive_failures": 0,
            },
            cooldown="30s",
            max_cooldown="30s",
        )
        self.deferd, port = start_deferd(clusters, policy)
        client = Client(port)
        for _ in range(5):
            status, _, body, _ = client.get()
            self.assertEqual((status, body), (200, b"slow"))

        status, reason, _, seconds = client.get()
        self.assertEqual((status, reason), (503, "breaker-open"))
        self.assertLess(seconds, 0.1)
        conn = http.client.HTTPConnection(harness.LOOPBACK, port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        retry_after = int(resp.getheader("retry-after"))
        self.assertTrue(25 <= retry_after <= 30, f"retry-after {retry_after}")

        metrics = self.deferd.metrics()
        self.assertEqual(
            metrics.value(
                "deferd_breaker_transitions_total",
                policy=POLICY, cluster="primary",
                to="open",
                cause="slow_call_rate",
            ),
            1,
        )
        self.assertEqual(
            metrics.value(
                "deferd_breaker_calls_total", policy=POLICY, cluster="primary", outcome="slow"
            ),
            5,
        )
        self.assertEqual(
            metrics.value(
                "deferd_breaker_calls_total", policy=POLICY, cluster="primary", outcome="rejected"
            ),
            2,
        )
        client.close()


class HangingProbeTest(BreakerTestCase):
    def test_probe_that_hangs_reopens_after_probe_timeout(self):
        primary = self.upstream(text_reply(b"primary"))
        primary_port = primary.port
        clusters = [harness.cluster_config("primary", [primary_port])]
        # The first trip cools down for 500 ms, the reopening after the probe for 5 s.
        policy = breaker_policy(
            cooldown="500ms",
            max_cooldown="5s",
            cooldown_multiplier=10,
            half_open={"probes": 1, "timeout": "500ms"},
        )
        self.deferd, port = start_deferd(clusters, policy, route_timeout="4s")
        client = Client(port)
        primary.close()
        self.trip(client)

        # The primary comes back but hangs for 3 s on every request.
        self.upstream(text_reply(b"late", delay=3.0), port=primary_port)
        time.sleep(0.6)  # past the cooldown

        probe_result = {}

        def probe():
            own = Client(port)
            probe_result["response"] = own.get()
            own.close()

        thread = threading.Thread(target=probe)
        started = time.monotonic()
        thread.start()
        self.wait_metric(
            "deferd_breaker_transitions_total",
            1,
            timeout=3.0,
            policy=POLICY, cluster="primary",
            to="open",
            cause="probe_timeout",
        )
        reopened_after = time.monotonic() - started
        self.assertLess(reopened_after, 2.5, "the breaker must reopen at the probe timeout")

        # While the probe still hangs, other requests are rejected at once.
        status, reason, _, _ = client.get()
        self.assertEqual((status, reason), (503, "breaker-open"))

        thread.join(timeout=10)
        self.assertFalse(thread.is_alive())
        # The late response reaches the client but does not close the breaker.
        self.assertEqual(probe_result["response"][2], b"late")
        self.assertEqual(
            self.metric(
                "deferd_breaker_transitions_total",
                policy=POLICY, cluster="primary",
                to="closed",
                cause="probes_succeeded",
            ),
            0,
        )
        client.close()


class ReloadTest(BreakerTestCase):
    def reload(self, policy):
        before = self.metric("deferd_config_reloads_total", result="success")
        self.deferd.config["policies"][POLICY]["breaker"] = policy
        self.deferd.write_config()
        self.deferd.signal(signal.SIGHUP)
        self.wait_metric("deferd_config_reloads_total", before + 1, result="success")

    @staticmethod
    def fresh_get(port):
        client = Client(port)
        try:
            return client.get()
        finally:
            client.close()

    def test_open_breaker_survives_reload(self):
        dead_port = harness.free_port()
        clusters = [harness.cluster_config("primary", [dead_port])]
        policy = breaker_policy(cooldown="30s", max_cooldown="30s")
        self.deferd, port = start_deferd(clusters, policy)
        client = Client(port)
        self.trip(client)

        client.close()

        # A kept-alive connection stays on the snapshot it started with, so each check below
        # opens a new one. The same breaker section: the breaker stays open.
        self.deferd.config["listeners"][0]["routes"][0]["timeout"] = "3s"
        self.reload(dict(policy))
        self.assertEqual(self.fresh_get(port)[1], "breaker-open")

        # A changed section starts a new, closed breaker. The worker applies the new snapshot
        # shortly after the reload is counted.
        changed = dict(policy, cooldown="20s", max_cooldown="20s")
        self.reload(changed)
        harness.wait_until(
            lambda: self.fresh_get(port)[1] == "connect-failed", 5, "a new, closed breaker"
        )

    def test_removed_breaker_clears_its_gauge(self):
        dead_port = harness.free_port()
        clusters = [harness.cluster_config("primary", [dead_port])]
        policy = breaker_policy(cooldown="30s", max_cooldown="30s")
        self.deferd, port = start_deferd(clusters, policy)
        client = Client(port)
        self.trip(client)
        client.close()
        self.wait_metric("deferd_breaker_state", 1, policy=POLICY, cluster="primary", state="open")

        # The route keeps its policy, which loses its breaker section: no breaker watches the
        # cluster any more, so its state gauge must not report it open.
        before = self.metric("deferd_config_reloads_total", result="success")
        del self.deferd.config["policies"][POLICY]["breaker"]
        self.deferd.config["policies"][POLICY]["fault"] = {"delay": {"percent": "0%",
                                                                       "duration": "1ms"}}
        self.deferd.write_config()
        self.deferd.signal(signal.SIGHUP)
        self.wait_metric("deferd_config_reloads_total", before + 1, result="success")

        for state in ("closed", "open", "half_open"):
            self.assertEqual(self.metric("deferd_breaker_state", policy=POLICY,
                                         cluster="primary", state=state), 0, state)
        self.assertEqual(self.fresh_get(port)[1], "connect-failed")


class ShadowTest(BreakerTestCase):
    def test_shadow_counts_and_lets_everything_through(self):
        dead_port = harness.free_port()
        clusters = [harness.cluster_config("primary", [dead_port])]
        policy = breaker_policy(cooldown="30s", max_cooldown="30s")
        self.deferd, port = start_deferd(clusters, policy, mode="shadow")
        client = Client(port)
        reasons = [client.get()[1] for _ in range(8)]
        self.assertEqual(reasons, ["connect-failed"] * 8, "shadow mode must not reject")

        metrics = self.deferd.metrics()
        self.assertEqual(
            metrics.value(
                "deferd_breaker_shadow_rejections_total", policy=POLICY, cluster="primary"
            ),
            5,
        )
        self.assertEqual(
            metrics.value(
                "deferd_breaker_calls_total", policy=POLICY, cluster="primary", outcome="rejected"
            ),
            0,
        )
        self.assertEqual(
            metrics.value(
                "deferd_breaker_transitions_total",
                policy=POLICY, cluster="primary",
                to="open",
                cause="consecutive_failures",
            ),
            1,
        )
        client.close()


class OutlierTest(BreakerTestCase):
    def test_failing_endpoint_is_ejected(self):
        good = self.upstream(text_reply(b"good"))
        bad = self.upstream(text_reply(b"bad", status=500))
        clusters = [harness.cluster_config("primary", [good.port, bad.port])]
        policy = breaker_policy(
            open_when={"failure_rate": "0%", "consecutive_failures": 0},
            outlier={
                "consecutive_failures": 2,
                "base_ejection": "30s",
                "max_ejection_percent": "50%",
            },
        )
        self.deferd, port = start_deferd(clusters, policy)
        client = Client(port)
        bodies = [client.get()[2] for _ in range(6)]
        self.assertEqual(bodies.count(b"bad"), 2, f"round robin before the ejection: {bodies}")

        bodies = [client.get()[2] for _ in range(20)]
        self.assertEqual(bodies, [b"good"] * 20, "the ejected endpoint still got traffic")
        self.wait_metric("deferd_outlier_ejected_endpoints", 1, policy=POLICY, cluster="primary")
        client.close()


class SharedClusterTest(BreakerTestCase):
    """Two policies each put a breaker on one cluster: the metrics keep the two apart."""

    STATES = ("closed", "open", "half_open")

    def states(self, metrics, policy):
        return {
            state: metrics.value(
                "deferd_breaker_state", policy=policy, cluster="primary", state=state
            )
            for state in self.STATES
        }

    def test_tripped_breaker_leaves_other_policy_closed(self):
        # Requests under /fail/ get 500s, the rest 200s.
        def handler(request):
            status = 500 if request.target.startswith("/fail/") else 200
            return Reply(status, [("content-type", "text/plain")], b"primary")

        primary = self.upstream(handler)
        port = harness.free_port()
        routes = [
            {"match": {"prefix": "/fail/"}, "cluster": "primary", "policy": "trips"},
            {"match": {"prefix": "/"}, "cluster": "primary", "policy": "stays"},
        ]
        listener = harness.listener_config("outbound", port, routes, direction="outbound")
        policies = {
            "trips": {"breaker": breaker_policy(cooldown="30s", max_cooldown="30s")},
            "stays": {"breaker": breaker_policy(cooldown="30s", max_cooldown="30s")},
        }
        self.deferd = harness.Deferd(
            [listener],
            [harness.cluster_config("primary", [primary.port])],
            extra={"policies": policies},
        )
        self.deferd.start()

        # Before any traffic both breakers export all three states, closed.
        self.wait_metric("deferd_breaker_state", 2, cluster="primary", state="closed")
        metrics = self.deferd.metrics()
        for policy in ("trips", "stays"):
            self.assertEqual(len(metrics.find("deferd_breaker_state", policy=policy)), 3, policy)
            self.assertEqual(
                self.states(metrics, policy), {"closed": 1, "open": 0, "half_open": 0}, policy
            )

        # Three 500s in a row open the breaker of "trips" only.
        client = Client(port)
        for _ in range(3):
            self.assertEqual(client.get("/fail/x")[0], 500)
        self.assertEqual(client.get("/fail/x")[:2], (503, "breaker-open"))
        self.assertEqual(client.get("/ok")[:3], (200, None, b"primary"))
        client.close()

        # The gauges are refreshed once a second.
        self.wait_metric("deferd_breaker_state", 1, policy="trips", cluster="primary",
                         state="open")
        metrics = self.deferd.metrics()
        self.assertEqual(self.states(metrics, "trips"), {"closed": 0, "open": 1, "half_open": 0})
        self.assertEqual(self.states(metrics, "stays"), {"closed": 1, "open": 0, "half_open": 0})
        self.assertEqual(
            metrics.value(
                "deferd_breaker_transitions_total",
                policy="trips",
                cluster="primary",
                to="open",
                cause="consecutive_failures",
            ),
            1,
        )
        self.assertEqual(
            metrics.value("deferd_breaker_transitions_total", policy="stays", to="open"), 0
        )
        self.assertEqual(
            metrics.value("deferd_breaker_calls_total", policy="trips", outcome="failure"), 3
        )
        self.assertEqual(
            metrics.value("deferd_breaker_calls_total", policy="trips", outcome="rejected"), 1
        )
        self.assertEqual(
            metrics.value("deferd_breaker_calls_total", policy="stays", outcome="success"), 1
        )
        self.assertEqual(
            metrics.value("deferd_breaker_calls_total", policy="stays", outcome="failure"), 0
        )


class LoopTest(BreakerTestCase):
    def test_mutual_fallbacks_stop_loop(self):
        # Two sidecars, each with a dead primary, each the other's fallback.
        ports = {"a": harness.free_port(), "b": harness.free_port()}
        sidecars = {}
        for name, other in (("a", "b"), ("b", "a")):
            clusters = [
                harness.cluster_config("primary", [harness.free_port()]),
                harness.cluster_config(
                    "peer", [ports[other]], capacity={"max_concurrent": 10, "max_rps": 100}
                ),
            ]
            listener = harness.listener_config(
                "outbound",
                ports[name],
                [{"cluster": "primary", "policy": POLICY}],
                direction="outbound",
            )
            policy = breaker_policy(
                cooldown="30s",
                max_cooldown="30s",
                fallback={"cluster": "peer", "on_loop": "reject" if name == "a" else "primary"},
            )
            deferd = harness.Deferd(
                [listener],
                clusters,
                extra={
                    "node": {"service": f"svc-{name}"},
                    "policies": {POLICY: {"breaker": policy}},
                },
            )
            deferd.start()
            self.closers.append(deferd.stop)
            sidecars[name] = deferd

        for name in ("a", "b"):
            client = Client(ports[name])
            reasons = [client.get()[1] for _ in range(3)]
            client.close()
            self.assertEqual(reasons, ["connect-failed"] * 3)

        # a -> b -> a: a finds itself on the path and rejects.
        client = Client(ports["a"])
        status, reason, _, _ = client.get()
        client.close()
        self.assertEqual((status, reason), (503, "fallback-loop"))
        # b -> a -> b: b finds itself on the path and sends to its own (dead) primary.
        client = Client(ports["b"])
        status, reason, _, _ = client.get()
        client.close()
        self.assertEqual((status, reason), (503, "connect-failed"))

        # Each request crossed each sidecar's fallback once, never more: a redirected both
        # requests once and stopped the first; b likewise, and stopped the second.
        for name in ("a", "b"):
            metrics = sidecars[name].metrics()
            self.assertEqual(
                metrics.value(
                    "deferd_breaker_fallback_requests_total",
                    policy=POLICY,
                    cluster="primary",
                    fallback="peer",
                ),
                2,
                name,
            )
            self.assertEqual(
                metrics.value(
                    "deferd_breaker_fallback_rejections_total",
                    policy=POLICY, cluster="primary",
                    reason="fallback_loop",
                ),
                1,
                name,
            )


class ChaosTest(harness.DeferdTestCase):
    def test_short_chaos_run_loses_no_request(self):
        result = subprocess.run(
            [sys.executable, CHAOS_SCRIPT, "--duration", "6", "--max-requests", "600"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        print(result.stdout.strip().splitlines()[-1], file=sys.stderr)


if __name__ == "__main__":
    harness.main()
