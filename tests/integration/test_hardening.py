"""Requests and responses that are legal but unusual, or invalid in ways a careless proxy
passes on: several X-Forwarded-For lines, empty lines before a request, invalid Host values,
HTTP/1.0 expectations and missing Host, and an unsolicited 101 from the upstream."""

import harness
from harness import RawClient, Reply


class HardeningTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        routes = [
            {"match": {"authority": "inventory", "prefix": "/"}, "cluster": "app"},
            {"match": {"prefix": "/"}, "cluster": "app"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        if request.target.startswith("/switch"):
            return Reply(action="raw", raw=b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        return Reply(200, [], b"ok")

    def setUp(self):
        self.upstream.reset()

    def test_forwarded_for_lines_all_kept(self):
        with RawClient(self.port) as c:
            c.send(
                b"GET /xff HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\n"
                b"X-Forwarded-For: 7.7.7.7\r\n\r\n"
            )
            self.assertStatus(c.read_response(), 200)
        request = self.upstream.wait_for_requests(1)[0]
        self.assertEqual(
            request.header_values("x-forwarded-for"),
            ["6.6.6.6, 7.7.7.7, 127.0.0.1"],
            repr(request),
        )

    def test_empty_line_before_request_ignored(self):
        with RawClient(self.port) as c:
            c.send(b"\r\nGET /after-crlf HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertStatus(c.read_response(), 200, "request after an empty line")
            # A POST followed by a stray CRLF, then a second request on the same connection.
            c.send(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi\r\n")
            self.assertStatus(c.read_response(), 200, "POST")
            c.send(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertStatus(c.read_response(), 200, "request after POST and stray CRLF")

    def test_invalid_host_rejected(self):
        for host in [b"a b", b"a/b", b"inventory:80@evil", b"inventory:abc",
                     b"inventory:99999999"]:
            with self.subTest(host=host):
                with RawClient(self.port) as c:
                    c.send(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                    resp = c.read_response()
                self.assertLocalReply(resp, 400, "bad-request", f"Host: {host!r}")
        requests, _, _ = self.upstream.snapshot()
        self.assertEqual(requests, [], "a request with an invalid Host reached the upstream")

    def test_http10_expect_ignored(self):
        with RawClient(self.port) as c:
            c.send(
                b"POST /e HTTP/1.0\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
                b"\r\nhi"
            )
            received, _ = c.read_to_close()
        self.assertFalse(received.startswith(b"HTTP/1.1 100"), f"received: {received!r}")
        self.assertTrue(received.startswith(b"HTTP/1.1 200"), f"received: {received!r}")
        request = self.upstream.wait_for_requests(1)[0]
        self.assertIsNone(request.header("expect"), repr(request))
        self.assertEqual(request.body, b"hi")

    def test_http10_without_host_gets_one(self):
        with RawClient(self.port) as c:
            c.send(b"GET /nohost HTTP/1.0\r\n\r\n")
            received, _ = c.read_to_close()
        self.assertTrue(received.startswith(b"HTTP/1.1 200"), f"received: {received!r}")
        request = self.upstream.wait_for_requests(1)[0]
        self.assertEqual(
            request.header("host"), f"127.0.0.1:{self.upstream.port}", repr(request)
        )

    def test_chunked_body_with_bare_lf_rejected(self):
        # Chunk lines ended by LF alone never complete under RFC 9112: deferd must answer at
        # once instead of waiting for a CRLF until the stream idle timeout.
        with RawClient(self.port, timeout=3) as c:
            c.send(
                b"POST /lf HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\nabc\n0\n\n"
            )
            resp = c.read_response()
        self.assertLocalReply(resp, 400, "bad-request", "chunked body with bare LF")
        requests, _, _ = self.upstream.snapshot()
        self.assertEqual(requests, [], "the request with a bare-LF body reached the upstream")

    def test_unsolicited_switching_protocols(self):
        with RawClient(self.port) as c:
            c.send(b"GET /switch HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = c.read_response()
        self.assertLocalReply(resp, 502, "bad-upstream-response", "101 from the upstream")


if __name__ == "__main__":
    harness.main()
