"""The fault filter through a real deferd: aborts, delays, gRPC aborts and header control."""

import time

import harness


class FaultTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream()
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.untrusted_port = harness.free_port()
        routes = [
            {"match": {"prefix": "/always"}, "cluster": "app", "policy": "abort_all"},
            {"match": {"prefix": "/slow"}, "cluster": "app", "policy": "delay_all"},
            {"match": {"prefix": "/"}, "cluster": "app", "policy": "by_header"},
        ]
        untrusted = harness.listener_config("outside", cls.untrusted_port, routes)
        untrusted["trust"] = "untrusted"
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes), untrusted],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
            extra={"policies": {
                "abort_all": {"fault": {"abort": {"percent": "100%", "status": 429}}},
                "delay_all": {"fault": {"delay": {"percent": "100%", "duration": "300ms"}}},
                "by_header": {"fault": {"header_control": True}},
            }},
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def setUp(self):
        self.upstream.reset()

    def test_abort_uses_configured_status(self):
        resp = harness.http_get(self.port, "/always")
        self.assertLocalReply(resp, 429, "fault-injected")
        self.assertEqual(self.upstream.requests, [])

    def test_grpc_abort_carries_grpc_status(self):
        resp = harness.http_request(self.port, "POST", "/always",
                                    {"content-type": "application/grpc"}, b"")
        self.assertStatus(resp, 200)
        self.assertEqual(resp.header("grpc-status"), "14")
        self.assertEqual(resp.header("content-type"), "application/grpc")
        self.assertEqual(resp.header("deferd-reason"), "fault-injected")
        self.assertEqual(resp.body, b"")

    def test_delay_then_forwarded(self):
        started = time.monotonic()
        resp = harness.http_get(self.port, "/slow")
        elapsed = time.monotonic() - started
        self.assertStatus(resp, 200)
        self.assertGreaterEqual(elapsed, 0.3)
        self.assertEqual(len(self.upstream.requests), 1)

    def test_client_leaving_cancels_delay(self):
        client = harness.RawClient(self.port)
        client.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        client.close()
        time.sleep(0.6)
        self.assertEqual(self.upstream.requests, [], "a cancelled delay still forwarded")
        self.assertTrue(self.deferd.alive())

    def test_header_control_on_trusted_listener(self):
        resp = harness.http_get(self.port, "/x", headers={"x-deferd-fault": "abort=503"})
        self.assertLocalReply(resp, 503, "fault-injected")

        resp = harness.http_get(self.port, "/x", headers={"x-deferd-fault": "delay=100ms"})
        self.assertStatus(resp, 200)
        forwarded = self.upstream.wait_for_requests(1)[0]
        self.assertIsNone(forwarded.header("x-deferd-fault"), "the fault header leaked upstream")

    def test_unnamed_abort_status_has_empty_reason(self):
        with harness.RawClient(self.port) as client:
            client.send(b"GET /x HTTP/1.1\r\nHost: t\r\nx-deferd-fault: abort=418\r\n\r\n")
            resp = client.read_response()
            self.assertEqual(client.status_line, "HTTP/1.1 418 ")
            self.assertLocalReply(resp, 418, "fault-injected")
            self.assertEqual(resp.body, b"fault-injected\n")

            # A HEAD reply is the same head without the body, and the connection stays usable.
            client.send(b"HEAD /x HTTP/1.1\r\nHost: t\r\nx-deferd-fault: abort=418\r\n\r\n")
            resp = client.read_response("HEAD")
            self.assertEqual(client.status_line, "HTTP/1.1 418 ")
            self.assertEqual(resp.header("content-length"), str(len(b"fault-injected\n")))

            client.send(b"GET /x HTTP/1.1\r\nHost: t\r\nx-deferd-fault: abort=503\r\n\r\n")
            resp = client.read_response()
            self.assertEqual(client.status_line, "HTTP/1.1 503 Service Unavailable")
            self.assertLocalReply(resp, 503, "fault-injected")
        self.assertEqual(self.upstream.requests, [])

    def test_header_ignored_on_untrusted_listener(self):
        resp = harness.http_get(self.untrusted_port, "/x",
                                headers={"x-deferd-fault": "abort=503"})
        self.assertStatus(resp, 200)

    def test_aborts_counted_as_local_replies(self):
        before = self.deferd.metrics().value("deferd_local_replies_total", listener="inbound",
                                             reason="fault-injected")
        for _ in range(3):
            self.assertLocalReply(harness.http_get(self.port, "/always"), 429, "fault-injected")
        after = self.deferd.metrics().value("deferd_local_replies_total", listener="inbound",
                                            reason="fault-injected")
        self.assertEqual(after, before + 3)

    def test_decisions_counted_by_policy(self):
        def count(policy, decision):
            return self.deferd.metrics().value("deferd_fault_decisions_total", policy=policy,
                                               decision=decision)

        aborts = count("abort_all", "fault-abort")
        delays = count("delay_all", "fault-delay")
        invalid = count("by_header", "fault-header-invalid")

        for _ in range(2):
            self.assertLocalReply(harness.http_get(self.port, "/always"), 429, "fault-injected")
        self.assertStatus(harness.http_get(self.port, "/slow"), 200)
        resp = harness.http_get(self.port, "/x", headers={"x-deferd-fault": "abort=200"})
        self.assertStatus(resp, 200, "an invalid fault header injects nothing")

        self.assertEqual(count("abort_all", "fault-abort"), aborts + 2)
        self.assertEqual(count("delay_all", "fault-delay"), delays + 1)
        self.assertEqual(count("by_header", "fault-header-invalid"), invalid + 1)
        self.assertEqual(count("abort_all", "fault-delay"), 0)


if __name__ == "__main__":
    harness.main()
