"""HTTP/2 clients that misbehave on purpose: each is cut off and counted, and deferd keeps
serving every other connection.

Cases: rapid reset (CVE-2023-44487: open a stream and reset it at once, many times), and
oversized or too many request headers. Then a SETTINGS flood whose acknowledgements the client
never reads, a flood of empty DATA frames, more concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS, and a drain that
lets open streams finish after GOAWAY.
"""

import re
import signal
import socket
import subprocess
import time

import h2.connection
import h2.config
import h2.errors
import h2.settings

import harness
import h2peer
from harness import Reply

RAPID_RESETS = 2000  # more than deferd's burst of 200 resets
ENHANCE_YOUR_CALM = 11
REFUSED_STREAM = 7
EMPTY_FRAMES = 100  # more than the listener's default max_empty_frames of 16


class Http2FloodTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        routes = [{"match": {"prefix": "/"}, "cluster": "scripted"}]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config(
                "inbound", cls.port, routes,
                limits={"max_header_bytes": 8192, "max_header_count": 50})],
            clusters=[harness.cluster_config("scripted", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        if request.target.startswith("/slow"):
            return Reply(200, [], b"slow-done", delay=1.0)
        return Reply(200, [], b"ok")

    def assertServing(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/healthy")
        self.assertEqual(stream.status, 200, f"{stream}\n{self.deferd.log()}")
        self.assertEqual(harness.http_get(self.port, "/healthy-http1").status, 200)

    def test_rapid_reset_ends_in_enhance_your_calm(self):
        before = self.deferd.metrics().value("deferd_http2_flood_goaways_total",
                                             listener="inbound")
        with h2peer.H2Client(self.port) as client:
            deadline = time.monotonic() + 10
            sent = 0
            try:
                for _ in range(RAPID_RESETS):
                    if time.monotonic() > deadline:
                        break
                    stream_id = client.conn.get_next_available_stream_id()
                    client.conn.send_headers(stream_id, [
                        (":method", "GET"), (":path", "/reset"), (":scheme", "http"),
                        (":authority", "flood")], end_stream=True)
                    client.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
                    client.flush()
                    sent += 1
            except (BrokenPipeError, ConnectionResetError):
                pass
            goaway = client.wait_closed(timeout=10)
        self.assertIsNotNone(goaway, f"no GOAWAY after {sent} resets")
        self.assertEqual(goaway[0], ENHANCE_YOUR_CALM)
        after = self.deferd.metrics().value("deferd_http2_flood_goaways_total", listener="inbound")
        self.assertEqual(after, before + 1)
        self.assertServing()

    def test_oversized_headers_rejected(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/big", headers=[("x-big", "a" * 4000), ("x-big2", "b" * 6000)])
        self.assertEqual(stream.status, 431, stream)
        self.assertEqual(stream.header("deferd-reason"), "header-too-large")
        metrics = self.deferd.metrics()
        self.assertGreaterEqual(metrics.value("deferd_local_replies_total", listener="inbound",
                                              reason="header-too-large"), 1)
        self.assertServing()

    def test_too_many_headers_rejected(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/many", headers=[(f"x-h{i}", "v") for i in range(80)])
        self.assertEqual(stream.status, 431, stream)
        self.assertEqual(stream.header("deferd-reason"), "too-many-headers")
        self.assertServing()

    def test_settings_flood_unread_acks_closes_connection(self):
        # The client sends SETTINGS frames and never reads, so their ACKs pile up in deferd.
        before = self.deferd.metrics().value("deferd_http2_connection_errors_total",
                                             listener="inbound")
        goaways_before = self.deferd.metrics().value("deferd_http2_flood_goaways_total",
                                                     listener="inbound")
        config = h2.config.H2Configuration(client_side=True)
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        sock = socket.create_connection((harness.LOOPBACK, self.port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frame = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS on stream 0
        closed = False
        try:
            sock.sendall(conn.data_to_send())
            deadline = time.monotonic() + 10
            for _ in range(2000):
                if time.monotonic() > deadline:
                    break
                sock.sendall(frame * 100)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            closed = True
        finally:
            sock.close()
        def counted():
            return self.deferd.metrics().value("deferd_http2_connection_errors_total",
                                               listener="inbound") >= before + 1

        harness.wait_until(counted, 5, f"a counted connection error (socket closed: {closed})")
        # The GOAWAY is written without waiting, so this client, which reads nothing, may never
        # see it; the counter shows it was sent.
        self.assertEqual(self.deferd.metrics().value("deferd_http2_flood_goaways_total",
                                                     listener="inbound"), goaways_before + 1)
        self.assertServing()

    def test_empty_data_flood_ends_in_enhance_your_calm(self):
        before = self.deferd.metrics().value("deferd_http2_flood_goaways_total",
                                             listener="inbound")
        with h2peer.H2Client(self.port) as client:
            stream_id = client.request("POST", "/upload", end_stream=False)
            try:
                for _ in range(EMPTY_FRAMES):
                    client.conn.send_data(stream_id, b"")
                client.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            goaway = client.wait_closed(timeout=10)
        self.assertIsNotNone(goaway, f"no GOAWAY after {EMPTY_FRAMES} empty DATA frames")
        self.assertEqual(goaway[0], ENHANCE_YOUR_CALM)
        after = self.deferd.metrics().value("deferd_http2_flood_goaways_total", listener="inbound")
        self.assertEqual(after, before + 1)
        self.assertServing()

    def test_continuation_flood_closes_connection(self):
        before = self.deferd.metrics().value("deferd_http2_connection_errors_total",
                                             listener="inbound")
        config = h2.config.H2Configuration(client_side=True)
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        sock = socket.create_connection((harness.LOOPBACK, self.port), timeout=5)
        # HEADERS without END_HEADERS on stream 1, then empty CONTINUATION frames that never
        # end the header block: more than the 8 that deferd allows.
        headers = b"\x00\x00\x00\x01\x00\x00\x00\x00\x01"
        continuation = b"\x00\x00\x00\x09\x00\x00\x00\x00\x01"
        closed = False
        try:
            sock.sendall(conn.data_to_send() + headers + continuation * 100)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if not sock.recv(65536):
                    closed = True
                    break
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        finally:
            sock.close()
        self.assertTrue(closed, "deferd kept the connection open")
        after = self.deferd.metrics().value("deferd_http2_connection_errors_total",
                                            listener="inbound")
        self.assertEqual(after, before + 1)
        self.assertServing()

    def test_concurrent_streams_over_limit_refused(self):
        with h2peer.H2Client(self.port) as client:
            # The streams open before deferd's SETTINGS is read, or h2 would hold the client to
            # the limit itself.
            limit = 100
            ids = [client.request("GET", f"/slow/{i}") for i in range(limit + 5)]
            results = [client.wait(i, timeout=10) for i in ids]
        refused = [r for r in results if r.reset_code == REFUSED_STREAM]
        answered = [r for r in results if r.status == 200]
        self.assertEqual(len(answered), limit)
        self.assertEqual(len(refused), 5)
        self.assertServing()


class Http2DrainTest(harness.DeferdTestCase):
    def test_drain_lets_open_streams_finish(self):
        # The response takes longer than the two GOAWAY frames of the drain (1 to 2 s apart).
        upstream = harness.RawUpstream(handler=lambda r: Reply(200, [], b"done", delay=3.0))
        self.addCleanup(upstream.close)
        port = harness.free_port()
        deferd = harness.Deferd(
            listeners=[harness.listener_config(
                "inbound", port, [{"match": {"prefix": "/"}, "cluster": "up"}])],
            clusters=[harness.cluster_config("up", [upstream.port])],
            drain_timeout="5s",
        ).start()
        self.addCleanup(deferd.stop)
        # nghttp, because python3-h2 treats a GOAWAY as the end of every stream.
        nghttp = harness.start_process(
            [harness.require_tool("nghttp"), "-v", f"http://{harness.LOOPBACK}:{port}/in-flight"],
            "nghttp", stdout=subprocess.PIPE)
        upstream.wait_for_requests(1)
        deferd.signal(signal.SIGTERM)
        output, _ = nghttp.communicate(timeout=10)
        output = output.decode()
        self.assertEqual(nghttp.returncode, 0, output)
        # First a GOAWAY that only stops new streams, then the one with the last stream id.
        goaways = re.findall(r"recv GOAWAY frame.*?\(last_stream_id=(\d+), error_code=(\w+)",
                             output, re.S)
        self.assertEqual(len(goaways), 2, output)
        self.assertEqual(goaways[0], ("2147483647", "NO_ERROR"), output)
        # nghttp's request is its first stream after the idle ones it opens for priorities.
        last_stream, error = goaways[1]
        self.assertEqual(error, "NO_ERROR", output)
        self.assertLess(int(last_stream), 2147483647, output)
        self.assertGreater(int(last_stream), 0, output)
        self.assertIn("done", output)
        self.assertIn(":status: 200", output)
        self.assertEqual(deferd.proc.wait(timeout=10), 0)


if __name__ == "__main__":
    harness.main()
