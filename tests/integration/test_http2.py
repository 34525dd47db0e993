"""HTTP/2 cleartext with prior knowledge, on the listener that also serves HTTP/1.1.

Clients are curl --http2-prior-knowledge, nghttp and the scripted h2peer client. The upstream
is the scripted HTTP/1.1 RawUpstream, so each case checks the exact HTTP/1.1 bytes deferd
sent for an HTTP/2 request, and what came back to the client.
"""

import os
import subprocess
import time

import h2.settings

import harness
import h2peer
from harness import Reply

TRAILER_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: x-checksum\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1234\r\n\r\n"
)


# Larger than loopback's socket buffers on both ends, so a client that does not read leaves
# deferd's write in flight.
BIG_BODY_BYTES = 16 << 20


class Http2Test(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.curl = harness.require_tool("curl")
        cls.nghttp = harness.require_tool("nghttp")
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/down"}, "cluster": "down"},
            {"match": {"prefix": "/slow"}, "cluster": "scripted", "timeout": "300ms"},
            {"match": {"prefix": "/"}, "cluster": "scripted"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("down", [harness.free_port()], connect_timeout="500ms"),
                harness.cluster_config("scripted", [cls.upstream.port]),
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        if request.target.startswith("/trailers"):
            return Reply(action="raw", raw=TRAILER_RESPONSE)
        if request.target.startswith("/slow"):
            return Reply(200, [], b"late", delay=1.5)
        if request.target.startswith("/many-fields"):
            # About 59 KB as HTTP/1.1, but 74 KB as HTTP/2 counts it (32 bytes more per field),
            # above nghttp2's default sending limit of 64 KiB.
            fields = [(f"x-field-{i:03d}", "v" * 100) for i in range(540)]
            return Reply(200, fields, b"many")
        if request.target.startswith("/big"):
            return Reply(200, [], b"x" * BIG_BODY_BYTES)
        if request.target.startswith("/partial"):
            return Reply(200, [], b"x" * 100, action="partial", partial_bytes=10)
        if request.target.startswith("/hop"):
            return Reply(
                200,
                [("Connection", "x-private, close"), ("X-Private", "secret"),
                 ("Keep-Alive", "timeout=5"), ("X-Kept", "yes")],
                b"ok",
            )
        return harness.echo_reply(request)

    def setUp(self):
        self.upstream.reset()

    def last_request(self):
        return self.upstream.wait_for_requests(1)[-1]

    def test_curl_get_reaches_http1_upstream(self):
        result = subprocess.run(
            [self.curl, "-s", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version}",
             f"http://{harness.LOOPBACK}:{self.port}/hello?x=1"],
            capture_output=True, timeout=10,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.endswith(b"\n2"), result.stdout)
        request = self.last_request()
        self.assertEqual(request.method, "GET")
        self.assertEqual(request.target, "/hello?x=1")
        self.assertEqual(request.version, "HTTP/1.1")
        self.assertEqual(request.header("host"), f"{harness.LOOPBACK}:{self.port}")
        self.assertEqual(request.header("x-forwarded-for"), harness.LOOPBACK)
        self.assertIsNotNone(request.header("x-request-id"))

    def test_curl_post_body_arrives_whole(self):
        body = bytes(range(256)) * 1000
        result = subprocess.run(
            [self.curl, "-s", "--http2-prior-knowledge", "--data-binary", "@-",
             f"http://{harness.LOOPBACK}:{self.port}/upload"],
            input=body, capture_output=True, timeout=10,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        request = self.last_request()
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.header("content-length"), str(len(body)))
        self.assertEqual(request.body_length, len(body))
        self.assertFalse(request.chunked)

    def test_http1_still_served_on_same_listener(self):
        resp = harness.http_get(self.port, "/plain")
        self.assertStatus(resp, 200)
        self.assertEqual(self.last_request().target, "/plain")

    def test_nghttp_receives_response_trailers(self):
        result = subprocess.run(
            [self.nghttp, "-v", f"http://{harness.LOOPBACK}:{self.port}/trailers"],
            capture_output=True, timeout=10,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        output = result.stdout.decode()
        self.assertIn("hello world", output)
        self.assertIn("x-checksum: 1234", output)

    def test_response_trailers_and_connection_fields(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/trailers")
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(bytes(stream.body), b"hello world")
        self.assertEqual(stream.trailer("x-checksum"), "1234")
        names = [name for name, _ in stream.headers]
        for forbidden in ("connection", "keep-alive", "transfer-encoding"):
            self.assertNotIn(forbidden, names)

    def test_fields_named_by_connection_not_forwarded(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/hop")
        self.assertEqual(stream.status, 200, stream)
        self.assertIsNone(stream.header("x-private"))
        self.assertIsNone(stream.header("connection"))
        self.assertEqual(stream.header("x-kept"), "yes")

    def test_request_trailers_forwarded_chunked(self):
        with h2peer.H2Client(self.port) as client:
            stream_id = client.request("POST", "/with-trailers", end_stream=False,
                                       headers=[("te", "trailers")])
            client.send_data(stream_id, b"abcdef")
            client.send_trailers(stream_id, [("x-digest", "42")])
            stream = client.wait(stream_id)
        self.assertEqual(stream.status, 200, stream)
        request = self.last_request()
        self.assertTrue(request.chunked)
        self.assertEqual(request.body_length, 6)
        self.assertIsNone(request.header("te"))
        raw = bytes(self.upstream.all_bytes())
        self.assertIn(b"0\r\nx-digest: 42\r\n\r\n", raw)

    def test_split_cookies_joined(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/cookies", headers=[("cookie", "a=1"), ("cookie", "b=2")])
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(self.last_request().header_values("cookie"), ["a=1; b=2"])

    def test_connection_specific_request_field_rejected(self):
        with h2peer.H2Client(self.port, validate=False) as client:
            stream = client.get("/bad", headers=[("connection", "keep-alive")])
        self.assertEqual(stream.reset_code, 1, stream)  # PROTOCOL_ERROR
        self.assertEqual(self.upstream.snapshot()[0], [])

    def test_te_other_than_trailers_rejected(self):
        with h2peer.H2Client(self.port, validate=False) as client:
            stream = client.get("/te", headers=[("te", "gzip")])
        self.assertEqual(stream.reset_code, 1, stream)  # PROTOCOL_ERROR
        self.assertEqual(self.upstream.snapshot()[0], [])

    def test_upstream_cut_mid_body_resets_stream(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/partial")
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.reset_code, 2, stream)  # INTERNAL_ERROR
        self.assertFalse(stream.ended)

    def test_large_response_head_reaches_http2_client(self):
        result = subprocess.run(
            [self.curl, "-s", "--http2-prior-knowledge", "-D", "-", "--max-time", "10",
             f"http://{harness.LOOPBACK}:{self.port}/many-fields"],
            capture_output=True, timeout=15,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/2 200"), head[:100])
        self.assertEqual(head.count(b"\r\nx-field-"), 540)
        self.assertEqual(body, b"many")

    def test_connection_window_raised(self):
        # RFC 9113 starts a connection's window at 65535 bytes for all its streams together;
        # the listener's connection_window_size (1 MiB by default) replaces it.
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/hello")
            self.assertEqual(stream.status, 200, stream)
            self.assertEqual(client.conn.outbound_flow_control_window, 1024 * 1024)

    def test_reset_behind_blocked_write_keeps_headers(self):
        # A client that does not read: stream 1's large body fills the socket buffers and keeps
        # deferd's write in flight while stream 3's response starts and its upstream is cut.
        window = 2**31 - 1
        with h2peer.H2Client(self.port, keep_body=False,
                             settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
                             ) as client:
            client.conn.increment_flow_control_window(window - 65535)
            client.flush()
            big = client.request("GET", "/big")
            time.sleep(0.5)
            cut = client.request("GET", "/partial")
            time.sleep(0.5)
            stream = client.wait(cut, timeout=30)
            client.wait(big, timeout=30)
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.reset_code, 2, stream)  # INTERNAL_ERROR
        self.assertEqual(client.streams[big].body_length, BIG_BODY_BYTES)

    def test_content_length_mismatch_reset(self):
        with h2peer.H2Client(self.port, validate=False) as client:
            stream_id = client.request("POST", "/short", end_stream=False,
                                       headers=[("content-length", "10")])
            client.send_data(stream_id, b"abc", end_stream=True)
            stream = client.wait(stream_id)
        self.assertEqual(stream.reset_code, 1, stream)

    def test_upstream_down_is_503(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/down/here")
        self.assertEqual(stream.status, 503, stream)
        self.assertEqual(stream.header("deferd-reason"), "connect-failed")
        self.assertEqual(bytes(stream.body), b"connect-failed\n")
        metrics = self.deferd.metrics()
        self.assertGreaterEqual(metrics.value("deferd_local_replies_total", listener="inbound",
                                              protocol="http2", reason="connect-failed"), 1)

    def test_route_timeout_is_504(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/slow")
        self.assertEqual(stream.status, 504, stream)
        self.assertEqual(stream.header("deferd-reason"), "upstream-timeout")

    def test_bodiless_requests_reuse_upstream(self):
        with h2peer.H2Client(self.port) as client:
            for i in range(10):
                self.assertEqual(client.get(f"/reuse/{i}").status, 200)
        requests, _, connections = self.upstream.snapshot()
        self.assertEqual(len(requests), 10)
        for request in requests:
            self.assertFalse(request.chunked, request)
            self.assertIsNone(request.header("transfer-encoding"))
        self.assertLessEqual(connections, 1, "each GET should reuse the kept-alive connection")

    def test_many_streams_on_one_connection(self):
        with h2peer.H2Client(self.port) as client:
            ids = [client.request("GET", f"/multi/{i}") for i in range(20)]
            results = [client.wait(stream_id) for stream_id in ids]
        self.assertEqual([r.status for r in results], [200] * 20)
        targets = sorted(r.target for r in self.upstream.snapshot()[0])
        self.assertEqual(targets, sorted(f"/multi/{i}" for i in range(20)))

    def test_client_reset_cancels_upstream_request(self):
        with h2peer.H2Client(self.port) as client:
            stream_id = client.request("GET", "/slow/cancel")
            self.upstream.wait_for_requests(1)
            client.reset(stream_id)
            client.read_once(timeout=0.3)
            other = client.get("/after-reset")
        self.assertEqual(other.status, 200)
        entries = self.deferd.access_log_entries()

        def cancelled():
            return any(e["path"] == "/slow/cancel" and e["reason"] == "downstream-closed"
                       for e in self.deferd.access_log_entries())

        harness.wait_until(cancelled, 5, f"access log entry of the reset stream: {entries}")

    def test_access_log_and_metrics(self):
        def counts():
            metrics = self.deferd.metrics()
            return (
                metrics.value("deferd_requests_total", listener="inbound", cluster="scripted",
                              protocol="http2", status_class="2xx"),
                metrics.value("deferd_requests_total", listener="inbound", cluster="scripted",
                              protocol="http1"),
                metrics.value("deferd_request_duration_seconds_count", listener="inbound",
                              cluster="scripted", protocol="http2"),
            )

        before = counts()
        with h2peer.H2Client(self.port) as client:
            client.get("/logged")
        after = counts()
        self.assertEqual(after[0] - before[0], 1)
        self.assertEqual(after[1] - before[1], 0)
        self.assertEqual(after[2] - before[2], 1)

        def logged():
            return [e for e in self.deferd.access_log_entries() if e["path"] == "/logged"]

        harness.wait_until(logged, 5, "access log entry for /logged")
        entry = logged()[0]
        self.assertEqual(entry["protocol"], "HTTP/2")
        self.assertEqual(entry["status"], 200)


class Http2UpstreamTest(harness.DeferdTestCase):
    """HTTP/2 from client to an h2c upstream (nghttpd) through an http2 cluster."""

    BODY = b"served by nghttpd\n"

    @classmethod
    def setUpClass(cls):
        cls.curl = harness.require_tool("curl")
        cls.nghttp = harness.require_tool("nghttp")
        nghttpd = harness.require_tool("nghttpd")
        docroot = harness.make_dir("nghttpd")
        with open(os.path.join(docroot, "index.txt"), "wb") as f:
            f.write(cls.BODY)
        cls.nghttpd_port = harness.free_port()
        cls.nghttpd = harness.start_process(
            [nghttpd, "--no-tls", "-a", harness.LOOPBACK, "-d", docroot, "--echo-upload",
             "--trailer", "x-upstream-trailer: yes", str(cls.nghttpd_port)],
            "nghttpd")
        cls.addClassCleanup(harness.stop_process, cls.nghttpd)
        harness.wait_for_port(cls.nghttpd_port, proc=cls.nghttpd, what="nghttpd")
        cls.goaway = h2peer.H2Upstream(refuse_connections=1)
        cls.addClassCleanup(cls.goaway.close)
        cls.scripted = h2peer.H2Upstream(refuse_connections=0)
        cls.addClassCleanup(cls.scripted.close)
        cls.shut_window = h2peer.H2Upstream(refuse_connections=0, initial_window=0,
                                            lifetime=120)
        cls.addClassCleanup(cls.shut_window.close)

        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/goaway"}, "cluster": "goaway"},
            {"match": {"prefix": "/scripted"}, "cluster": "scripted"},
            {"match": {"prefix": "/shut-window"}, "cluster": "shut-window", "timeout": "1s"},
            {"match": {"prefix": "/idle"}, "cluster": "short-idle"},
            {"match": {"prefix": "/"}, "cluster": "h2"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("h2", [cls.nghttpd_port], protocol="http2"),
                harness.cluster_config("goaway", [cls.goaway.port], protocol="http2"),
                harness.cluster_config("scripted", [cls.scripted.port], protocol="http2"),
                harness.cluster_config("shut-window", [cls.shut_window.port], protocol="http2"),
                harness.cluster_config("short-idle", [cls.nghttpd_port], protocol="http2",
                                       idle_timeout="500ms"),
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_curl_through_to_nghttpd(self):
        result = subprocess.run(
            [self.curl, "-s", "--http2-prior-knowledge",
             f"http://{harness.LOOPBACK}:{self.port}/index.txt"],
            capture_output=True, timeout=10,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, self.BODY)

    # The shut-window upstream lets no body byte in. Its route timeout (1s) runs from the end of
    # the client's request, so the request ends in a 504 long before stream_idle_timeout (5m).
    # A GET first makes sure deferd has applied the upstream's SETTINGS before the POST, which
    # goes on the same upstream connection.
    SHUT_WINDOW_BODY = b"x" * 30000

    def test_shut_window_times_out_http2(self):
        with h2peer.H2Client(self.port) as client:
            self.assertEqual(client.get("/shut-window/warm").status, 200)
            stream_id = client.request("POST", "/shut-window/after-body", end_stream=False)
            client.send_data(stream_id, self.SHUT_WINDOW_BODY, end_stream=True)
            stream = client.wait(stream_id)
        self.assertEqual(stream.status, 504, stream)
        self.assertEqual(stream.header("deferd-reason"), "upstream-timeout")

    def test_body_after_early_head_http1(self):
        # The upstream sends its response head at once and its body when the request ends, so
        # the client's chunks must still be read after the head has arrived.
        with harness.RawClient(self.port) as client:
            client.send(b"POST /scripted/early-head HTTP/1.1\r\nHost: app\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n")
            for chunk in (b"5\r\npiece\r\n", b"5\r\npiece\r\n", b"0\r\n\r\n"):
                time.sleep(0.3)
                client.send(chunk)
            resp = client.read_response("POST")
        self.assertStatus(resp, 200)
        self.assertEqual(resp.body, b"served")

    def test_bad_chunk_after_early_head_closes(self):
        # The 200 head is with the client already, so a framing error can only close the
        # connection: a 400 written after it would read as a second response. The shut window
        # keeps every body byte in deferd, where a framing error could still get a 400.
        def bad_requests():
            return self.deferd.metrics().value("deferd_local_replies_total", listener="inbound",
                                               protocol="http1", reason="bad-request") or 0

        before = bad_requests()
        with harness.RawClient(self.port) as client:
            client.send(b"GET /shut-window/warm HTTP/1.1\r\nHost: app\r\n\r\n")
            self.assertStatus(client.read_response(), 200)
            client.send(b"POST /shut-window/early-head HTTP/1.1\r\nHost: app\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n5\r\npiece\r\n")
            time.sleep(0.3)
            client.send(b"zz\r\n")
            data = b""
            deadline = time.monotonic() + harness.IO_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    chunk = client.sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertEqual(data.count(b"HTTP/1.1 "), 1, data)
        self.assertEqual(bad_requests(), before)

    def test_upstream_reset_after_head(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/scripted/reset-after-head")
            self.assertEqual(stream.status, 200, stream)
            self.assertEqual(stream.reset_code, 2, stream)  # INTERNAL_ERROR
            # The next stream is served: the failed one was released cleanly.
            self.assertEqual(client.get("/scripted/after").status, 200)

    def test_shut_window_times_out_http1(self):
        with harness.RawClient(self.port) as client:
            client.send(b"GET /shut-window/warm HTTP/1.1\r\nHost: app\r\n\r\n")
            self.assertStatus(client.read_response(), 200)
            client.send(b"POST /shut-window/after-body HTTP/1.1\r\nHost: app\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(self.SHUT_WINDOW_BODY)
                        + self.SHUT_WINDOW_BODY)
            resp = client.read_response("POST")
        self.assertLocalReply(resp, 504, "upstream-timeout")

    def test_upstream_connection_window_raised(self):
        # RFC 9113 starts a connection's window at 65535 bytes for all its streams together.
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/scripted/window")
        self.assertEqual(stream.status, 200, stream)
        # Earlier tests' responses on the same connection may not have been acknowledged yet.
        self.assertGreater(int(stream.body), 4 * 1024 * 1024 - 65535)

    def test_nghttp_sees_upstream_trailer(self):
        result = subprocess.run(
            [self.nghttp, "-v", f"http://{harness.LOOPBACK}:{self.port}/index.txt"],
            capture_output=True, timeout=10,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        output = result.stdout.decode()
        self.assertIn("served by nghttpd", output)
        self.assertIn("x-upstream-trailer: yes", output)

    def test_upload_echoed_with_request_trailers(self):
        body = bytes(range(256)) * 2000  # 512000 bytes: more than one stream window
        with h2peer.H2Client(self.port) as client:
            stream_id = client.request("POST", "/echo", end_stream=False)
            client.send_data(stream_id, body)
            client.send_trailers(stream_id, [("x-request-trailer", "1")])
            stream = client.wait(stream_id, timeout=10)
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(bytes(stream.body), body)

    def test_http1_client_to_http2_cluster(self):
        resp = harness.http_get(self.port, "/index.txt")
        self.assertStatus(resp, 200)
        self.assertEqual(resp.body, self.BODY)

    def test_http1_upload_to_http2_cluster(self):
        body = bytes(range(256)) * 2000
        resp = harness.http_request(self.port, "POST", "/echo", body=body, timeout=10)
        self.assertStatus(resp, 200)
        self.assertEqual(resp.body, body)

    def test_http1_upload_with_expect_continue(self):
        # An upload that waits for "100 Continue" on an upstream connection already open, so
        # the upstream stream requests body bytes before the client sends them.
        self.assertStatus(harness.http_get(self.port, "/index.txt"), 200, "warm-up")
        path = os.path.join(harness.make_dir("expect"), "upload.bin")
        body = os.urandom(3 * 1024 * 1024)
        with open(path, "wb") as f:
            f.write(body)
        for framing in ([], ["-H", "transfer-encoding: chunked"]):
            with self.subTest(framing=framing or "content-length"):
                result = subprocess.run(
                    [self.curl, "-s", "-H", "expect: 100-continue", *framing, "--data-binary",
                     f"@{path}", "-m", "20", "-o", "-", f"http://{harness.LOOPBACK}:{self.port}/echo"],
                    capture_output=True, timeout=30,
                )
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertEqual(len(result.stdout), len(body))
                self.assertTrue(result.stdout == body, "the echoed body differs from the upload")
        self.assertTrue(self.deferd.alive())

    def test_http1_keep_alive_after_bodyless_end(self):
        # Responses whose last frame has no DATA bytes must still end the exchange, so the
        # next request on the connection gets its response.
        for path, status, body in [("/scripted/no-content", 204, b""),
                                   ("/scripted/split-end", 200, b"hello")]:
            with self.subTest(path=path), harness.RawClient(self.port, timeout=5) as client:
                for _ in range(2):
                    client.send(f"GET {path} HTTP/1.1\r\nHost: h2\r\n\r\n".encode())
                    response = client.read_response()
                    self.assertStatus(response, status)
                    self.assertEqual(response.body, body)

        harness.wait_until(
            lambda: self.deferd.metrics().value("deferd_requests_in_flight",
                                                listener="inbound") == 0,
            5, "no request left in flight")

    def test_http1_client_gets_chunked_trailers(self):
        with harness.RawClient(self.port) as client:
            client.send(b"GET /scripted/trailers HTTP/1.1\r\nHost: h2\r\nTE: trailers\r\n\r\n")
            data = b""
            deadline = time.monotonic() + 5
            while not data.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in data:
                self.assertLess(time.monotonic(), deadline, data)
                try:
                    chunk = client.sock.recv(65536)
                except TimeoutError:
                    self.fail(f"no trailer section in time: {data!r}")
                self.assertTrue(chunk, f"connection closed early: {data!r}")
                data += chunk
        self.assertIn(b"transfer-encoding: chunked", data.lower())
        self.assertIn(b"served", data)
        self.assertIn(b"\r\n0\r\nx-upstream-trailer: yes\r\n\r\n", data)

    def test_idle_upstream_connection_closed(self):
        with h2peer.H2Client(self.port) as client:
            # nghttpd has no such file: its 404 is enough to open the connection.
            self.assertEqual(client.get("/idle/missing").status, 404)

        def active():
            return self.deferd.metrics().value("deferd_upstream_connections_active",
                                               cluster="short-idle")

        self.assertEqual(active(), 1)
        # The worker checks idle connections once a second.
        harness.wait_until(lambda: active() == 0, 5, "the idle h2c upstream connection to close")

    def test_goaway_before_processing_is_retried(self):
        before = self.deferd.metrics().value(
            "deferd_upstream_failures_total", cluster="goaway", reason="reset") or 0
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/goaway/first")
        self.assertEqual(stream.status, 200, f"{stream}\n{self.deferd.log()}")
        self.assertEqual(bytes(stream.body), b"served")
        self.assertEqual(self.goaway.connections, 2)
        self.assertEqual(self.goaway.requests, 1)
        # The refused attempt counts, though the retry succeeded.
        after = self.deferd.metrics().value(
            "deferd_upstream_failures_total", cluster="goaway", reason="reset")
        self.assertEqual(after, before + 1)

    def test_malformed_response_is_bad_response(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/scripted/malformed")
        self.assertEqual(stream.status, 502, stream)
        self.assertEqual(stream.header("deferd-reason"), "bad-upstream-response", stream)
        self.assertEqual(self.deferd.metrics().value(
            "deferd_upstream_failures_total", cluster="scripted", reason="bad-response"), 1)


class RequestIdOffTest(harness.DeferdTestCase):
    """A listener with generate_request_id: false adds no x-request-id, on either protocol."""

    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream()
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        listener = harness.listener_config("inbound", cls.port, [{"cluster": "app"}])
        listener["generate_request_id"] = False
        cls.deferd = harness.Deferd(
            listeners=[listener],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def setUp(self):
        self.upstream.reset()

    def test_http1_request_gets_no_id(self):
        self.assertEqual(harness.http_get(self.port, "/one").status, 200)
        request = self.upstream.wait_for_requests(1)[-1]
        self.assertEqual(request.header_values("x-request-id"), [], repr(request))

    def test_http2_request_gets_no_id(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/two")
        self.assertEqual(stream.status, 200, stream)
        request = self.upstream.wait_for_requests(1)[-1]
        self.assertEqual(request.header_values("x-request-id"), [], repr(request))

    def test_caller_id_kept(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/three", headers=[("x-request-id", "caller-7")])
        self.assertEqual(stream.status, 200, stream)
        request = self.upstream.wait_for_requests(1)[-1]
        self.assertEqual(request.header_values("x-request-id"), ["caller-7"], repr(request))



class StreamIdleTimeoutTest(harness.DeferdTestCase):
    """stream_idle_timeout (1s here) ends a stream on which nothing moved, but an HTTP/2 upload
    that keeps moving outlasts it, to either upstream protocol. Once the request has arrived, a
    longer route timeout alone bounds the wait for the response head."""

    PIECES = 8
    PIECE_GAP = 0.3  # seconds, so the upload lasts about twice stream_idle_timeout

    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.h2_upstream = h2peer.H2Upstream(refuse_connections=0)
        cls.addClassCleanup(cls.h2_upstream.close)
        cls.shut_window = h2peer.H2Upstream(refuse_connections=0, initial_window=0,
                                            lifetime=120)
        cls.addClassCleanup(cls.shut_window.close)
        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/h2"}, "cluster": "h2"},
            {"match": {"prefix": "/shut-window"}, "cluster": "shut-window", "timeout": "3s"},
            {"match": {"prefix": "/slow-head"}, "cluster": "h1", "timeout": "4s"},
            {"match": {"prefix": "/"}, "cluster": "h1"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes,
                                               limits={"stream_idle_timeout": "1s"})],
            clusters=[
                harness.cluster_config("h1", [cls.upstream.port]),
                harness.cluster_config("h2", [cls.h2_upstream.port], protocol="http2"),
                harness.cluster_config("shut-window", [cls.shut_window.port],
                                       protocol="http2"),
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        if request.target.startswith("/slow-head"):
            return Reply(200, [], b"late", delay=2.0)
        return harness.echo_reply(request)

    def slow_upload(self, path):
        with h2peer.H2Client(self.port) as client:
            stream_id = client.request("POST", path, end_stream=False)
            for i in range(self.PIECES):
                time.sleep(self.PIECE_GAP)
                client.send_data(stream_id, b"piece", end_stream=i == self.PIECES - 1)
            return client.wait(stream_id)

    def test_moving_upload_to_http1_upstream(self):
        stream = self.slow_upload("/upload")
        self.assertEqual(stream.status, 200, stream)
        self.assertIsNone(stream.reset_code, stream)

    def test_moving_upload_to_http2_upstream(self):
        stream = self.slow_upload("/h2/after-body")
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(bytes(stream.body), b"served")

    def test_stalled_upload_is_reset(self):
        with h2peer.H2Client(self.port) as client:
            stream_id = client.request("POST", "/stalled", end_stream=False)
            client.send_data(stream_id, b"piece")
            stream = client.wait(stream_id)
        self.assertEqual(stream.reset_code, 8, stream)  # CANCEL

    def test_route_timeout_outlasts_idle_timeout(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/slow-head")
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(bytes(stream.body), b"late")

    def test_shut_window_waits_for_route_timeout(self):
        with h2peer.H2Client(self.port) as client:
            self.assertEqual(client.get("/shut-window/warm").status, 200)
            stream_id = client.request("POST", "/shut-window/after-body", end_stream=False)
            client.send_data(stream_id, b"x" * 30000, end_stream=True)
            stream = client.wait(stream_id)
        self.assertEqual(stream.status, 504, stream)
        self.assertEqual(stream.header("deferd-reason"), "upstream-timeout")
        # Logged as for an HTTP/1.1 client; no other test of this class fails an upstream.
        self.assertIn(f"cluster shut-window: upstream 127.0.0.1:{self.shut_window.port} failed: "
                      "timed out", self.deferd.log())



if __name__ == "__main__":
    harness.main()
