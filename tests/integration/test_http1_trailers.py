"""Trailer sections of chunked HTTP/1.1 messages, relayed by deferd in both directions.

A chunked request's trailers reach an HTTP/1.1 upstream in the re-encoded chunked body, and an
HTTP/2 upstream as a trailer HEADERS frame. A chunked response's trailers reach an HTTP/1.1
client. Fields that a trailer section must not carry onward (Host, framing and
connection-specific fields) are dropped. An HTTP/1.0 client gets the body without chunking, so
without trailers.
"""

import time
import unittest

import harness
import h2peer
from harness import Reply

# The upstream closes the connection after this message, so the head carries Connection:
# close. A pooled connection that closes unannounced can fail the next request sent on it.
CHUNKED_WITH_TRAILERS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nHost: evil.example\r\n\r\n"
)


class Http1TrailersTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.h2_upstream = h2peer.H2Upstream(refuse_connections=0)
        cls.addClassCleanup(cls.h2_upstream.close)
        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/h2"}, "cluster": "h2"},
            {"match": {"prefix": "/"}, "cluster": "scripted"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("scripted", [cls.upstream.port]),
                harness.cluster_config("h2", [cls.h2_upstream.port], protocol="http2"),
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        if request.target.startswith("/trailers"):
            # Closes after the message, which is complete by then.
            return Reply(action="raw", raw=CHUNKED_WITH_TRAILERS)
        return Reply(200, [], b"ok")

    def read_until_trailer_end(self, client):
        """Read until a chunked body's last-chunk and trailer section arrived; return the bytes."""
        data = b""
        deadline = time.monotonic() + harness.IO_TIMEOUT
        while b"\r\n0\r\n" not in data or not data.endswith(b"\r\n\r\n"):
            self.assertLess(time.monotonic(), deadline, f"no trailer section in time: {data!r}")
            chunk = client.sock.recv(65536)
            self.assertTrue(chunk, f"connection closed early: {data!r}")
            data += chunk
        return data

    def test_request_trailers_reach_http1_upstream(self):
        self.upstream.reset()
        with harness.RawClient(self.port) as client:
            client.send(b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"6\r\nabcdef\r\n0\r\nX-Digest: 42\r\nHost: evil.example\r\n\r\n")
            resp = client.read_response()
        self.assertStatus(resp, 200)
        raw = self.upstream.all_bytes()
        self.assertIn(b"6\r\nabcdef\r\n0\r\nx-digest: 42\r\n\r\n", raw)
        self.assertNotIn(b"evil.example", raw)

    def test_request_without_trailers_unchanged(self):
        self.upstream.reset()
        with harness.RawClient(self.port) as client:
            client.send(b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n0\r\n\r\n")
            resp = client.read_response()
        self.assertStatus(resp, 200)
        self.assertIn(b"3\r\nabc\r\n0\r\n\r\n", self.upstream.all_bytes())

    def test_response_trailers_reach_http1_client(self):
        with harness.RawClient(self.port) as client:
            client.send(b"GET /trailers HTTP/1.1\r\nHost: app\r\nTE: trailers\r\n\r\n")
            data = self.read_until_trailer_end(client)
        self.assertIn(b"transfer-encoding: chunked", data.lower())
        self.assertIn(b"5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n", data)
        self.assertNotIn(b"evil.example", data)

    def test_http10_client_gets_body_without_trailers(self):
        with harness.RawClient(self.port) as client:
            client.send(b"GET /trailers HTTP/1.0\r\nHost: app\r\n\r\n")
            data, closed = client.read_to_close()
        self.assertTrue(closed, data)
        self.assertTrue(data.endswith(b"\r\n\r\nhello"), data)
        self.assertNotIn(b"x-checksum", data.lower())

    def test_request_trailers_reach_http2_upstream(self):
        with harness.RawClient(self.port) as client:
            client.send(b"POST /h2/after-trailers HTTP/1.1\r\nHost: app\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n"
                        b"6\r\nabcdef\r\n0\r\nX-Digest: 42\r\nHost: evil.example\r\n\r\n")
            resp = client.read_response()
        self.assertStatus(resp, 200)
        self.assertEqual(resp.body, b"served")
        with self.h2_upstream.lock:
            received = list(self.h2_upstream.request_trailers)
        self.assertIn([("x-digest", "42")], received)


if __name__ == "__main__":
    unittest.main()
