"""Backpressure through a real deferd: the limit, the priority queue, and load signals.

Upstreams are scripted and slow on purpose, so a fixed limit of one or two slots is full while
the test sends more. Each request's urgency comes from its deferd-priority header through the
priority filter, as it would in a mesh.
"""

import threading
import time

import harness
from harness import Reply

# The request that has the slot takes long enough for the once-a-second queue gauge to see
# the requests queued behind it; the others are quick.
HOLD_SECONDS = 2.0
QUICK_SECONDS = 0.05


def hold_or_quick(request):
    delay = HOLD_SECONDS if request.target.startswith("/hold") else QUICK_SECONDS
    return Reply(200, [], b"done", delay=delay)


def priority_policy(backpressure):
    return {"priority": {"inherit": False}, "backpressure": backpressure}


class Client(threading.Thread):
    """One request in the background, recording its status, reason and completion time."""

    def __init__(self, port, urgency=None, headers=None, path="/"):
        super().__init__(daemon=True)
        self.port = port
        self.headers = dict(headers or {})
        if urgency is not None:
            self.headers["deferd-priority"] = f"u={urgency}"
        self.path = path
        self.response = None
        self.error = None
        self.finished_at = None
        self.elapsed = None

    def run(self):
        started = time.monotonic()
        try:
            self.response = harness.http_request(self.port, "GET", self.path, self.headers)
        except Exception as e:  # reported by the test that reads it
            self.error = e
        self.finished_at = time.monotonic()
        self.elapsed = self.finished_at - started

    def result(self, timeout=10.0):
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"request {self.headers} got no response within {timeout}s")
        if self.error is not None:
            raise AssertionError(f"request {self.headers} failed: {self.error}")
        return self.response


def wait_for_queue(deferd, cluster, length, timeout=5.0):
    """Wait until the admission controller reports `length` waiting requests (1 s gauge)."""

    def queued():
        metrics = deferd.metrics()
        total = sum(
            metrics.value("deferd_backpressure_queue_depth", cluster=cluster, urgency=str(u))
            for u in range(8)
        )
        return total >= length

    harness.wait_until(queued, timeout, f"{length} queued requests")


class QueueTest(harness.DeferdTestCase):
    """A fixed limit of one slot and a queue of two, held by a slow request."""

    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=hold_or_quick)
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        backpressure = {
            "limiter": "fixed",
            "initial_limit": 1,
            "min_limit": 1,
            "max_limit": 1,
            # Aging slower than any test, so waiting requests keep the urgency they came with.
            "queue": {"max_length": 2, "max_wait": "5s", "aging": "1m"},
            "deadline_header": "x-deadline",
            "emit_signal": True,
        }
        cls.deferd = harness.Deferd(
            listeners=[
                harness.listener_config(
                    "inbound", cls.port, [{"cluster": "app", "policy": "protect"}]
                )
            ],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
            extra={"policies": {"protect": priority_policy(backpressure)}},
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def hold_the_slot(self):
        holder = Client(self.port, urgency=3, path="/hold")
        holder.start()
        harness.wait_until(lambda: len(self.upstream.requests) >= 1, 5.0, "the first request")
        return holder

    def setUp(self):
        # Requests of the previous test have all completed, so forget them.
        self.upstream.reset()

    def test_urgent_first_least_urgent_displaced(self):
        holder = self.hold_the_slot()

        sheddable = Client(self.port, urgency=7)
        sheddable.start()
        wait_for_queue(self.deferd, "app", 1)
        critical = Client(self.port, urgency=0)
        critical.start()
        wait_for_queue(self.deferd, "app", 2)

        # The queue is full: a newcomer of urgency 5 displaces the waiting urgency 7.
        low = Client(self.port, urgency=5)
        low.start()

        shed = sheddable.result()
        self.assertLocalReply(shed, 503, "queue-displaced")
        self.assertEqual(shed.header("retry-after"), "1")
        self.assertIsNotNone(shed.header("endpoint-load-metrics"))

        for client in (holder, critical, low):
            self.assertStatus(client.result(), 200)
        self.assertLess(critical.finished_at, low.finished_at, "urgency 0 was served after 5")

        # Decisions reach the metrics on deferd's one-second tick.
        def counted():
            return self.deferd.metrics().value(
                "deferd_backpressure_decisions_total",
                policy="protect",
                decision="displaced",
                urgency="7",
                mode="enforce",
            ) >= 1

        harness.wait_until(counted, 5.0, "the displaced decision in the metrics")

    def test_newcomer_least_urgent_is_shed_at_once(self):
        holder = self.hold_the_slot()
        waiting = [Client(self.port, urgency=1), Client(self.port, urgency=1)]
        for client in waiting:
            client.start()
        wait_for_queue(self.deferd, "app", 2)

        started = time.monotonic()
        newcomer = harness.http_get(self.port, headers={"deferd-priority": "u=6"})
        self.assertLocalReply(newcomer, 503, "load-shed")
        self.assertLess(time.monotonic() - started, 0.2, "shedding took longer than 200 ms")
        for client in [holder] + waiting:
            self.assertStatus(client.result(), 200)

    def test_disconnect_while_queued_frees_the_place(self):
        holder = self.hold_the_slot()
        gone = harness.RawClient(self.port)
        gone.send(b"GET / HTTP/1.1\r\nHost: a\r\ndeferd-priority: u=1\r\n\r\n")
        other = Client(self.port, urgency=1)
        other.start()
        wait_for_queue(self.deferd, "app", 2)
        gone.close()

        # The queue has room for two. Had the closed client kept its place, this urgency 4 newcomer
        # would be shed; with the place free, it waits and is served.
        late = Client(self.port, urgency=4)
        late.start()
        self.assertStatus(late.result(), 200)
        self.assertStatus(other.result(), 200)
        self.assertStatus(holder.result(), 200)
        # The closed request never reached the upstream.
        self.assertEqual(len(self.upstream.requests), 3)

    def test_deadline_that_cannot_be_met_is_answered(self):
        holder = self.hold_the_slot()
        started = time.monotonic()
        resp = harness.http_get(self.port, headers={"deferd-priority": "u=1", "x-deadline": "150ms"})
        elapsed = time.monotonic() - started
        self.assertLocalReply(resp, 504, "deadline-exceeded")
        self.assertLess(elapsed, 1.0, "the deadline was not kept")
        self.assertStatus(holder.result(), 200)

    def test_grpc_timeout_is_a_deadline(self):
        holder = self.hold_the_slot()
        resp = harness.http_get(self.port, headers={"grpc-timeout": "100m"})
        self.assertLocalReply(resp, 504, "deadline-exceeded")
        self.assertStatus(holder.result(), 200)

    def test_response_reports_load(self):
        resp = harness.http_get(self.port)
        self.assertStatus(resp, 200)
        report = resp.header("endpoint-load-metrics")
        self.assertIsNotNone(report)
        self.assertTrue(report.startswith("TEXT application_utilization="), report)


class MaxWaitTest(harness.DeferdTestCase):
    """max_wait: reject replies 503 queue-timeout; proceed lets the request through."""

    def start_deferd(self, action):
        upstream = harness.RawUpstream(handler=lambda r: Reply(200, [], b"ok", delay=0.5))
        self.addCleanup(upstream.close)
        port = harness.free_port()
        backpressure = {
            "limiter": "fixed",
            "initial_limit": 1,
            "min_limit": 1,
            "max_limit": 1,
            "queue": {"max_length": 4, "max_wait": "100ms", "on_max_wait": action},
        }
        deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", port, [{"cluster": "app", "policy": "p"}])],
            clusters=[harness.cluster_config("app", [upstream.port])],
            extra={"policies": {"p": priority_policy(backpressure)}},
        ).start()
        self.addCleanup(deferd.stop)
        return port, upstream

    def test_reject_after_max_wait(self):
        port, upstream = self.start_deferd("reject")
        holder = Client(port)
        holder.start()
        harness.wait_until(lambda: upstream.requests, 5.0, "the first request")
        started = time.monotonic()
        resp = harness.http_get(port)
        self.assertLocalReply(resp, 503, "queue-timeout")
        self.assertLess(time.monotonic() - started, 0.4)
        self.assertStatus(holder.result(), 200)

    def test_proceed_after_max_wait(self):
        port, upstream = self.start_deferd("proceed")
        holder = Client(port)
        holder.start()
        harness.wait_until(lambda: upstream.requests, 5.0, "the first request")
        started = time.monotonic()
        resp = harness.http_get(port)
        self.assertStatus(resp, 200)
        # Forced through after 100 ms, while the holder still had its slot.
        self.assertLess(time.monotonic() - started, 0.9)
        self.assertStatus(holder.result(), 200)


class ShadowTest(harness.DeferdTestCase):
    def test_shadow_counts_and_lets_everything_through(self):
        upstream = harness.RawUpstream(handler=lambda r: Reply(200, [], b"ok", delay=0.3))
        self.addCleanup(upstream.close)
        port = harness.free_port()
        backpressure = {"limiter": "fixed", "initial_limit": 1, "min_limit": 1, "max_limit": 1,
                        "queue": {"max_length": 0}}
        policy = priority_policy(backpressure)
        policy["mode"] = "shadow"
        deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", port, [{"cluster": "app", "policy": "p"}])],
            clusters=[harness.cluster_config("app", [upstream.port])],
            extra={"policies": {"p": policy}},
        ).start()
        self.addCleanup(deferd.stop)

        clients = [Client(port, urgency=5) for _ in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            self.assertStatus(client.result(), 200)

        def counted():
            return deferd.metrics().value(
                "deferd_backpressure_decisions_total",
                policy="p", decision="shed", urgency="5", mode="shadow",
            ) >= 1

        harness.wait_until(counted, 5.0, "shadow shed decisions")


class DirectLoad:
    """Six clients that call `port` back to back, bypassing the caller, for at most 8 s."""

    CLIENTS = 6
    SECONDS = 8.0

    def __init__(self, port):
        self.port = port
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True)
                        for _ in range(self.CLIENTS)]
        for thread in self.threads:
            thread.start()

    def run(self):
        deadline = time.monotonic() + self.SECONDS
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                harness.http_get(self.port, timeout=10.0)
            except AssertionError:
                pass

    def stop(self):
        self.stopped.set()
        for thread in self.threads:
            thread.join(12.0)


class LoadSignalTest(harness.DeferdTestCase):
    """caller outbound -> two callee sidecars -> their apps; one callee is overloaded.

    The overloaded callee's inbound reports its load; the caller smooths it, marks that
    endpoint deferring after hold_above, and sends new calls to the other callee. When the load
    falls, the endpoint leaves deferring after hold_below.
    """

    def callee(self, delay):
        app = harness.RawUpstream(handler=lambda r: Reply(200, [], b"ok", delay=delay))
        self.addCleanup(app.close)
        port = harness.free_port()
        backpressure = {"limiter": "fixed", "initial_limit": 2, "min_limit": 2, "max_limit": 2,
                        "queue": {"max_length": 100, "max_wait": "5s"}, "emit_signal": True}
        deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", port, [{"cluster": "app", "policy": "serve"}])],
            clusters=[harness.cluster_config("app", [app.port])],
            extra={"policies": {"serve": {"backpressure": backpressure}}},
        ).start()
        self.addCleanup(deferd.stop)
        return port, app

    def test_caller_avoids_deferring_callee_and_comes_back(self):
        busy_port, busy_app = self.callee(delay=0.3)
        idle_port, idle_app = self.callee(delay=0.0)

        out_port = harness.free_port()
        signal = {"ttl": "3s", "ewma_half_life": "100ms", "defer_above": 0.9,
                  "hold_above": "200ms", "resume_below": 0.5, "hold_below": "500ms"}
        caller = harness.Deferd(
            listeners=[harness.listener_config(
                "outbound", out_port, [{"cluster": "callee", "policy": "call"}],
                direction="outbound")],
            clusters=[harness.cluster_config("callee", [busy_port, idle_port], lb="round_robin")],
            extra={"policies": {"call": {"backpressure": {"limiter": "fixed", "initial_limit": 100,
                                                          "min_limit": 1, "max_limit": 100,
                                                          "signal": signal}}}},
        ).start()
        self.addCleanup(caller.stop)

        # Load the busy callee directly, past its two slots, for a bounded time.
        load = DirectLoad(busy_port)

        # Calls through the caller carry the busy callee's signal back; keep calling until the
        # caller marks it deferring.
        def deferring():
            resp = harness.http_get(out_port)
            self.assertStatus(resp, 200)
            self.assertIsNone(resp.header("endpoint-load-metrics"), "signal reached the app")
            value = caller.metrics().value("deferd_backpressure_endpoints_deferring", cluster="callee")
            return value >= 1

        harness.wait_until(deferring, 6.0, "the busy callee to defer", interval=0.05)

        # New calls now avoid it.
        busy_before = len(busy_app.requests)
        idle_before = len(idle_app.requests)
        for _ in range(10):
            self.assertStatus(harness.http_get(out_port), 200)
        self.assertEqual(len(idle_app.requests) - idle_before, 10)
        self.assertLessEqual(len(busy_app.requests) - busy_before, 6 * 2)  # only the loaders'

        # Load falls: the endpoint resumes after hold_below, or is forgotten after ttl.
        load.stop()

        def resumed():
            harness.http_get(out_port)
            value = caller.metrics().value("deferd_backpressure_endpoints_deferring", cluster="callee")
            return value == 0

        harness.wait_until(resumed, 8.0, "the callee to stop deferring", interval=0.1)

        # The balancer sends calls to it again, although it sent no report while avoided: the
        # once-a-second tick clears its flag when its signal is no longer deferring.
        def reached_again():
            before = len(busy_app.requests)
            for _ in range(4):
                self.assertStatus(harness.http_get(out_port), 200)
            return len(busy_app.requests) > before

        harness.wait_until(reached_again, 5.0, "calls to reach the former deferring callee",
                           interval=0.2)

    def test_limit_halves_while_every_endpoint_defers(self):
        busy_port, _ = self.callee(delay=0.3)

        out_port = harness.free_port()
        signal = {"ttl": "3s", "ewma_half_life": "100ms", "defer_above": 0.9,
                  "hold_above": "200ms", "resume_below": 0.6, "hold_below": "500ms"}
        caller = harness.Deferd(
            listeners=[harness.listener_config(
                "outbound", out_port, [{"cluster": "callee", "policy": "call"}],
                direction="outbound")],
            clusters=[harness.cluster_config("callee", [busy_port])],
            extra={"policies": {"call": {"backpressure": {"limiter": "fixed", "initial_limit": 40,
                                                          "min_limit": 1, "max_limit": 100,
                                                          "signal": signal}}}},
        ).start()
        self.addCleanup(caller.stop)

        def limit():
            return caller.metrics().value("deferd_backpressure_limit", cluster="callee")

        harness.wait_until(lambda: limit() == 40, 3.0, "the caller's limit to be published")

        # Load the callee directly, past its two slots, for a bounded time.
        load = DirectLoad(busy_port)

        # The only endpoint defers, so all of them do: the caller halves its limit.
        def halved():
            harness.http_get(out_port, timeout=10.0)
            return limit() == 20

        harness.wait_until(halved, 6.0, "the caller's limit to halve", interval=0.05)

        load.stop()

        # Each call's own request is in flight when its report is made, so the callee reports
        # 0.5 at least; resume_below is 0.6 for that.
        def restored():
            harness.http_get(out_port)
            return limit() == 40

        harness.wait_until(restored, 8.0, "the caller's limit to come back", interval=0.1)


if __name__ == "__main__":
    harness.main()
