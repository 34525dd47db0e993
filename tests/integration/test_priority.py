"""Priority inheritance across a chain of services, each behind its own deferd.

Four services call each other in a line, A -> B -> C -> D. Each app forwards `traceparent` on
its sub-call but never the priority header, as most apps do. Every deferd has an untrusted
inbound listener (only 127.0.0.1 is trusted) and an outbound listener whose policy inherits with
max_depth 2. Each app responds with the priority header it received, followed by what the next
service answered, so one request shows what every hop saw.
"""

import http.client
import json
import threading
import time
import uuid

import harness
from harness import Reply

SERVICES = ["a", "b", "c", "d"]
MAX_DEPTH = 2
OUTBOUND_DEFAULT = 5  # the outbound routes' default urgency: "low"
UNTRUSTED_SOURCE = "127.0.0.2"


def traceparent():
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def request_from(source, port, headers, path="/"):
    """One GET from a chosen loopback source address, returning (status, body)."""
    conn = http.client.HTTPConnection(
        harness.LOOPBACK, port, timeout=harness.IO_TIMEOUT, source_address=(source, 0)
    )
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class ServiceApp:
    """A scripted app: reports the priority it received and calls the next service."""

    def __init__(self, name):
        self.name = name
        self.outbound_port = None  # the app's own deferd outbound listener, None for the last
        self.upstream = harness.RawUpstream(handler=self.handle)

    def handle(self, request):
        seen = [{"service": self.name, "priority": request.header("deferd-priority")}]
        if self.outbound_port is not None:
            headers = {"traceparent": request.header("traceparent") or ""}
            status, body = request_from(harness.LOOPBACK, self.outbound_port, headers)
            if status != 200:
                return Reply(502, [], f"sub-call answered {status}".encode())
            seen += json.loads(body)
        return Reply(200, [("content-type", "application/json")], json.dumps(seen).encode())


def sidecar(app, next_inbound_port):
    """A deferd beside `app`: inbound to the app, outbound to the next service's sidecar."""
    inbound = harness.listener_config(
        "inbound", harness.free_port(), [{"cluster": "app", "policy": "serve"}]
    )
    inbound["trust"] = "untrusted"
    inbound["trusted_cidrs"] = ["127.0.0.1/32"]
    inbound["priority_floor"] = "normal"
    listeners = [inbound]
    clusters = [harness.cluster_config("app", [app.upstream.port])]
    outbound_port = None
    if next_inbound_port is not None:
        outbound_port = harness.free_port()
        listeners.append(
            harness.listener_config(
                "outbound",
                outbound_port,
                [{"cluster": "next", "policy": "call", "priority": "low"}],
                direction="outbound",
            )
        )
        clusters.append(harness.cluster_config("next", [next_inbound_port]))
    policies = {
        "serve": {"priority": {"inherit": {"from": ["traceparent"]}}},
        "call": {"priority": {"inherit": {"from": ["traceparent"], "max_depth": MAX_DEPTH}}},
    }
    deferd = harness.Deferd(listeners, clusters, extra={"policies": policies})
    return deferd, inbound["address"].split(":")[1], outbound_port


class InheritanceChainTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.apps = [ServiceApp(name) for name in SERVICES]
        for app in cls.apps:
            cls.addClassCleanup(app.upstream.close)

        # Start from the end of the chain, since each sidecar needs the next one's port.
        cls.sidecars = {}
        next_port = None
        for app in reversed(cls.apps):
            deferd, inbound_port, outbound_port = sidecar(app, next_port)
            deferd.start()
            cls.addClassCleanup(deferd.stop)
            app.outbound_port = outbound_port
            cls.sidecars[app.name] = deferd
            next_port = int(inbound_port)
        cls.entry_port = next_port

    def call_chain(self, source, headers):
        status, body = request_from(source, self.entry_port, headers)
        self.assertEqual(status, 200, body)
        return {hop["service"]: hop["priority"] for hop in json.loads(body)}

    def test_critical_request_inherited_to_max_depth(self):
        trace = traceparent()
        seen = self.call_chain(
            harness.LOOPBACK,
            {"deferd-priority": "u=0", "traceparent": trace, "x-request-id": "chain-critical"},
        )
        self.assertEqual(
            seen,
            {
                "a": "u=0, hop=0",
                "b": "u=0, hop=1",
                "c": "u=0, hop=2",
                # C's call would be the third inheritance step: D gets the route default.
                "d": f"u={OUTBOUND_DEFAULT}, hop=3",
            },
        )

        # Every deferd logs where the urgency came from.
        def entries():
            # The access log is flushed in batches; wait until both lines of this request are
            # in. Only this test sends a sub-call at urgency 0 from A.
            found = {}
            for entry in self.sidecars["a"].access_log_entries():
                if entry["request_id"] == "chain-critical":
                    found["inbound"] = entry
                elif entry["listener"] == "outbound" and entry["urgency"] == 0:
                    found["outbound"] = entry
            return found if len(found) == 2 else None

        logged = harness.wait_until(entries, 5.0, "A's access log lines")
        inbound, outbound = logged["inbound"], logged["outbound"]
        self.assertEqual(
            (inbound["urgency"], inbound["requested_urgency"], inbound["priority_source"]),
            (0, 0, "header"),
        )
        self.assertEqual((outbound["urgency"], outbound["priority_source"]), (0, "inherited"))

        metrics = self.sidecars["c"].metrics()
        self.assertGreaterEqual(
            metrics.value("deferd_priority_depth_exceeded_total", listener="outbound"), 1
        )
        self.assertGreaterEqual(
            metrics.value(
                "deferd_priority_requests_total", listener="outbound", urgency="5", source="default"
            ),
            1,
        )

    def test_forged_urgency_stays_clamped(self):
        before = self.sidecars["a"].metrics().value("deferd_priority_clamped_total", listener="inbound")
        seen = self.call_chain(
            UNTRUSTED_SOURCE, {"deferd-priority": "u=0, hop=1", "traceparent": traceparent()}
        )
        self.assertEqual(
            seen,
            {
                "a": "u=3, hop=0",
                "b": "u=3, hop=1",
                "c": "u=3, hop=2",
                "d": f"u={OUTBOUND_DEFAULT}, hop=3",
            },
        )
        after = self.sidecars["a"].metrics().value("deferd_priority_clamped_total", listener="inbound")
        self.assertEqual(after - before, 1)

    def test_connection_cannot_strip_the_priority_header(self):
        # Naming the header in Connection must not remove it before the trust rules see it, so
        # an outside caller cannot turn a clamp into the route default or the reverse.
        seen = self.call_chain(
            UNTRUSTED_SOURCE,
            {
                "deferd-priority": "u=6",
                "connection": "deferd-priority",
                "traceparent": traceparent(),
            },
        )
        self.assertEqual(seen["a"], "u=6, hop=0")
        self.assertEqual(seen["b"], "u=6, hop=1")

    def test_request_without_priority_gets_defaults(self):
        seen = self.call_chain(harness.LOOPBACK, {"traceparent": traceparent()})
        self.assertEqual(seen["a"], "u=3, hop=0")
        self.assertEqual(seen["b"], "u=3, hop=1")

    def test_malformed_priority_falls_back_and_is_counted(self):
        before = self.sidecars["a"].metrics().value(
            "deferd_priority_malformed_total", listener="inbound"
        )
        seen = self.call_chain(
            harness.LOOPBACK, {"deferd-priority": "u=banana", "traceparent": traceparent()}
        )
        self.assertEqual(seen["a"], "u=3, hop=0")
        after = self.sidecars["a"].metrics().value(
            "deferd_priority_malformed_total", listener="inbound"
        )
        self.assertEqual(after - before, 1)

    def test_unrelated_call_does_not_inherit(self):
        # A sub-call whose trace is unknown to the sidecar gets the outbound route default.
        status, body = request_from(
            harness.LOOPBACK,
            self.apps[0].outbound_port,
            {"traceparent": traceparent()},
        )
        self.assertEqual(status, 200, body)
        seen = {hop["service"]: hop["priority"] for hop in json.loads(body)}
        self.assertEqual(seen["b"], f"u={OUTBOUND_DEFAULT}, hop=0")


class ChainApp:
    """An app that waits `delay` seconds, then calls the next service (if any) and reports
    what every hop saw; its `saw` list records the priority of each request it received."""

    def __init__(self, name, delay=0.0):
        self.name = name
        self.delay = delay
        self.outbound_port = None
        self.saw = []
        self.upstream = harness.RawUpstream(handler=self.handle)

    def handle(self, request):
        self.saw.append((request.header("traceparent"), request.header("deferd-priority")))
        time.sleep(self.delay)
        seen = [{"service": self.name, "priority": request.header("deferd-priority")}]
        if self.outbound_port is not None:
            headers = {"traceparent": request.header("traceparent") or ""}
            status, body = request_from(harness.LOOPBACK, self.outbound_port, headers)
            if status != 200:
                return Reply(502, [], f"sub-call answered {status}".encode())
            seen += json.loads(body)
        return Reply(200, [("content-type", "application/json")], json.dumps(seen).encode())


def chain_sidecar(app, next_inbound_port, serve_policy):
    """A trusted-loopback sidecar like sidecar() above, with a chosen inbound policy."""
    inbound = harness.listener_config(
        "inbound", harness.free_port(), [{"cluster": "app", "policy": "serve"}]
    )
    inbound["trust"] = "untrusted"
    inbound["trusted_cidrs"] = ["127.0.0.1/32"]
    listeners = [inbound]
    clusters = [harness.cluster_config("app", [app.upstream.port])]
    if next_inbound_port is not None:
        app.outbound_port = harness.free_port()
        listeners.append(
            harness.listener_config(
                "outbound", app.outbound_port, [{"cluster": "next", "policy": "call"}],
                direction="outbound",
            )
        )
        clusters.append(harness.cluster_config("next", [next_inbound_port]))
    policies = {"serve": serve_policy, "call": {"priority": {"inherit": {"from": ["traceparent"]}}}}
    deferd = harness.Deferd(listeners, clusters, extra={"policies": policies})
    port = int(inbound["address"].split(":")[1])
    return deferd, port


class OverloadedCalleeTest(harness.DeferdTestCase):
    """A -> B -> C with C overloaded: sub-calls of critical requests survive, sheddable ones
    are shed at C's sidecar."""

    def test_critical_sub_calls_survive_overload(self):
        apps = [ChainApp("a"), ChainApp("b"), ChainApp("c", delay=0.2)]
        for app in apps:
            self.addCleanup(app.upstream.close)
        inherit = {"priority": {"inherit": {"from": ["traceparent"]}}}
        overloaded = {
            "priority": {"inherit": {"from": ["traceparent"]}},
            "backpressure": {
                "limiter": "fixed", "initial_limit": 2, "min_limit": 2, "max_limit": 2,
                "queue": {"max_length": 4, "max_wait": "10s", "aging": "1m"},
            },
        }
        next_port = None
        for app, policy in reversed(list(zip(apps, [inherit, inherit, overloaded]))):
            deferd, next_port = chain_sidecar(app, next_port, policy)
            deferd.start()
            self.addCleanup(deferd.stop)

        critical = [Chain(next_port, 0) for _ in range(4)]
        sheddable = [Chain(next_port, 7) for _ in range(16)]
        everyone = critical + sheddable
        for chain in sheddable[:8] + critical + sheddable[8:]:
            chain.start()
        for chain in everyone:
            chain.join(30.0)
            self.assertFalse(chain.is_alive(), "a chain got no answer within 30 s")

        self.assertEqual([c.status for c in critical], [200] * 4)
        shed = [c for c in sheddable if c.status != 200]
        self.assertGreater(len(shed), 0, "nothing sheddable was shed under overload")
        # Every request that reached C ran at the urgency it inherited.
        self.assertTrue(all(p in ("u=0, hop=2", "u=7, hop=2") for _, p in apps[2].saw), apps[2].saw)


class Chain(threading.Thread):
    """One request entering the chain at `port` with urgency `urgency`."""

    def __init__(self, port, urgency):
        super().__init__(daemon=True)
        self.port = port
        self.urgency = urgency
        self.status = None

    def run(self):
        headers = {"deferd-priority": f"u={self.urgency}", "traceparent": traceparent()}
        try:
            self.status, _ = request_from(harness.LOOPBACK, self.port, headers)
        except OSError as e:
            self.status = repr(e)


class BoostTest(harness.DeferdTestCase):
    """B's app has one slot. A low-urgency request takes it and makes its sub-call to C late;
    a critical request waiting behind it boosts the holder, so the holder's sub-call reaches C
    at the critical urgency."""

    def test_holder_sub_call_inherits_boost(self):
        holder_app = ChainApp("b", delay=1.0)
        c_app = ChainApp("c")
        for app in (holder_app, c_app):
            self.addCleanup(app.upstream.close)

        c_deferd, c_port = chain_sidecar(c_app, None, {"priority": None})
        c_deferd.start()
        self.addCleanup(c_deferd.stop)
        serve = {
            "priority": {"inherit": {"from": ["traceparent"]}, "boost": {"after": "50ms"}},
            "backpressure": {
                "limiter": "fixed", "initial_limit": 1, "min_limit": 1, "max_limit": 1,
                "queue": {"max_length": 4, "max_wait": "10s"},
            },
        }
        b_deferd, b_port = chain_sidecar(holder_app, c_port, serve)
        b_deferd.start()
        self.addCleanup(b_deferd.stop)

        holder_trace = traceparent()
        holder = threading.Thread(
            target=request_from,
            args=(harness.LOOPBACK, b_port, {"deferd-priority": "u=6", "traceparent": holder_trace}),
            daemon=True,
        )
        holder.start()
        harness.wait_until(lambda: holder_app.saw, 5.0, "the holder to reach B's app")
        status, _ = request_from(
            harness.LOOPBACK, b_port, {"deferd-priority": "u=0", "traceparent": traceparent()}
        )
        self.assertEqual(status, 200)
        holder.join(10.0)

        holder_at_c = [p for trace, p in c_app.saw if trace == holder_trace]
        self.assertEqual(holder_at_c, ["u=0, hop=1"])

        def counted():
            return b_deferd.metrics().value("deferd_priority_boosts_total", cluster="app") >= 1

        harness.wait_until(counted, 5.0, "the boost in B's metrics")


if __name__ == "__main__":
    harness.main()
