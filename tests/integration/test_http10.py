"""HTTP/1.0 clients: deferd speaks HTTP/1.1 upstream, but must not send a 1.0 client framing
it cannot read. A chunked upstream response reaches the client unchunked and ended by close."""

import harness
from harness import RawClient, Reply


class Http10Test(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, [{"cluster": "app"}])],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        if request.target.startswith("/chunked"):
            return Reply(200, [], chunks=[b"hello ", b"world"])
        return Reply(200, [], b"sized")

    def test_chunked_response_unchunked_for_http10(self):
        with RawClient(self.port) as c:
            c.send(b"GET /chunked HTTP/1.0\r\nHost: t\r\n\r\n")
            received, closed = c.read_to_close()
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertTrue(closed, "deferd must close a close-delimited HTTP/1.0 response")
        self.assertNotIn(b"transfer-encoding", head.lower(), f"head: {head!r}")
        self.assertEqual(body, b"hello world", f"received: {received!r}")

    def test_upstream_gets_http11(self):
        self.upstream.reset()
        with RawClient(self.port) as c:
            c.send(b"GET /sized HTTP/1.0\r\nHost: t\r\n\r\n")
            received, closed = c.read_to_close()
        requests = self.upstream.wait_for_requests(1)
        self.assertEqual(requests[0].version, "HTTP/1.1", repr(requests[0]))
        self.assertTrue(received.startswith(b"HTTP/1.1 200"), f"received: {received!r}")
        self.assertTrue(received.endswith(b"sized"), f"received: {received!r}")
        self.assertTrue(closed, "an HTTP/1.0 request without keep-alive ends its connection")


if __name__ == "__main__":
    harness.main()
