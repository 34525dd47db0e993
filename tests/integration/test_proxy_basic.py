"""HTTP/1.1 proxying through deferd to nginx and to a scripted upstream.

Checks what reaches the upstream (Host, X-Forwarded-For, x-request-id, hop-by-hop removal,
route header mutation), what reaches the client (HEAD/204/304 framing, chunked bodies,
100-continue), routing, and upstream keep-alive reuse.
"""

import http.client
import os
import subprocess
import uuid

import harness
from harness import RawClient, Reply

HOP_BY_HOP = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]


class ProxyBasicTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = harness.Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.app = harness.RawUpstream()
        cls.addClassCleanup(cls.app.close)
        cls.canary = harness.RawUpstream()
        cls.addClassCleanup(cls.canary.close)

        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/static/"}, "cluster": "web"},
            {
                "match": {"prefix": "/raw/", "headers": [{"name": "x-canary", "exact": "1"}]},
                "cluster": "canary",
            },
            {
                "match": {"prefix": "/raw/"},
                "cluster": "app",
                "request_headers": {"add": {"x-added": "yes"}, "remove": ["x-drop"]},
                "response_headers": {"add": {"x-resp": "yes"}, "remove": ["server"]},
            },
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("web", [cls.nginx.port], connect_timeout="1s"),
                harness.cluster_config("app", [cls.app.port], connect_timeout="1s"),
                harness.cluster_config("canary", [cls.canary.port], connect_timeout="1s"),
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def setUp(self):
        self.app.reset()
        self.canary.reset()
        self.app.handler = harness.echo_reply
        self.curl = harness.require_tool("curl")

    def url(self, path):
        return f"http://{harness.LOOPBACK}:{self.port}{path}"

    def unique_path(self, prefix="/raw/"):
        return prefix + uuid.uuid4().hex

    def received(self, upstream, target):
        """Wait for the request with `target` at `upstream` and return it."""

        def find():
            requests, _, _ = upstream.snapshot()
            return next((r for r in requests if r.target == target), None)

        return harness.wait_until(find, harness.IO_TIMEOUT, f"request {target} at the upstream")

    def run_curl(self, *args, timeout=30):
        result = subprocess.run(
            [self.curl, "--silent", "--show-error", "--max-time", "20", *args],
            capture_output=True,
            timeout=timeout,
        )
        return result

    # Plain proxying and connection reuse

    def test_get_static_via_curl(self):
        out = os.path.join(harness.make_dir("curl"), "body")
        result = self.run_curl("-o", out, "-w", "%{http_code}", self.url("/static/index.html"))
        self.assertEqual(result.returncode, 0, f"curl failed: {result.stderr!r}")
        self.assertEqual(result.stdout, b"200", f"curl status; stderr {result.stderr!r}")
        with open(out, "rb") as f:
            self.assertEqual(f.read(), harness.Nginx.INDEX_BODY)

    def test_keep_alive_reuses_upstream_connection(self):
        before = self.deferd.metrics().value(
            "deferd_upstream_connections_created_total", cluster="web"
        )
        conn = http.client.HTTPConnection(harness.LOOPBACK, self.port, timeout=5)
        self.addCleanup(conn.close)
        first_socket = None
        for i in range(50):
            conn.request("GET", "/static/index.html")
            resp = conn.getresponse()
            body = resp.read()
            self.assertEqual(resp.status, 200, f"request {i}")
            self.assertEqual(body, harness.Nginx.INDEX_BODY, f"request {i}")
            if first_socket is None:
                first_socket = conn.sock
            self.assertIs(conn.sock, first_socket, f"deferd closed the client connection at {i}")

        after = self.deferd.metrics().value(
            "deferd_upstream_connections_created_total", cluster="web"
        )
        self.assertLessEqual(
            after - before, 1, f"50 requests on one connection opened {after - before} upstream "
            "connections; expected at most 1 (keep-alive reuse)"
        )

    def test_curl_many_urls_one_connection(self):
        before = self.deferd.metrics().value(
            "deferd_upstream_connections_created_total", cluster="web"
        )
        urls = [self.url("/static/index.html")] * 20
        args = []
        for u in urls:
            args += ["-o", "/dev/null", u]
        result = self.run_curl("-w", "%{http_code} %{num_connects}\n", *args)
        self.assertEqual(result.returncode, 0, f"curl failed: {result.stderr!r}")
        lines = result.stdout.decode().split()
        statuses = lines[0::2]
        connects = [int(n) for n in lines[1::2]]
        self.assertEqual(statuses, ["200"] * 20)
        self.assertEqual(sum(connects), 1, f"curl opened {sum(connects)} connections to deferd")

        after = self.deferd.metrics().value(
            "deferd_upstream_connections_created_total", cluster="web"
        )
        self.assertLessEqual(after - before, 1, "upstream connections created for 20 requests")

    # Responses without a body

    def test_head_has_no_body(self):
        with RawClient(self.port) as c:
            c.send(b"HEAD /static/index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = c.read_response("HEAD")
            self.assertStatus(resp, 200, "HEAD")
            length = resp.header("content-length")
            if length is not None:
                self.assertEqual(int(length), len(harness.Nginx.INDEX_BODY))
            # A body wrongly sent after the HEAD response would be read as the next status line.
            c.send(b"GET /static/index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = c.read_response()
            self.assertStatus(resp, 200, "GET after HEAD")
            self.assertEqual(resp.body, harness.Nginx.INDEX_BODY)

    def test_204_has_no_body(self):
        with RawClient(self.port) as c:
            c.send(b"GET /static/no-content HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = c.read_response()
            self.assertStatus(resp, 204, "GET /static/no-content")
            self.assertIsNone(resp.header("transfer-encoding"), f"204 with framing: {resp!r}")
            c.send(b"GET /static/index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = c.read_response()
            self.assertStatus(resp, 200, "GET after 204")
            self.assertEqual(resp.body, harness.Nginx.INDEX_BODY)

    def test_304_not_modified(self):
        first = harness.http_get(self.port, "/static/index.html")
        self.assertStatus(first, 200, "first GET")
        last_modified = first.header("last-modified")
        self.assertIsNotNone(last_modified, f"nginx sent no Last-Modified through deferd: {first!r}")

        with RawClient(self.port) as c:
            c.send(
                b"GET /static/index.html HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: "
                + last_modified.encode()
                + b"\r\n\r\n"
            )
            resp = c.read_response()
            self.assertStatus(resp, 304, "conditional GET")
            c.send(b"GET /static/index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = c.read_response()
            self.assertStatus(resp, 200, "GET after 304")
            self.assertEqual(resp.body, harness.Nginx.INDEX_BODY)

    # Request headers as the upstream sees them

    def test_unnamed_status_reason_phrase(self):
        # An upstream's own phrase is forwarded, and an empty one stays empty rather than
        # becoming a placeholder.
        cases = [("", "HTTP/1.1 299 "), ("Custom", "HTTP/1.1 299 Custom")]
        with RawClient(self.port) as client:
            for reason, expected in cases:
                self.app.handler = lambda _request, reason=reason: Reply(
                    299, [("Content-Type", "text/plain")], b"ok", reason=reason
                )
                client.send(b"GET /raw/reason HTTP/1.1\r\nHost: t\r\n\r\n")
                resp = client.read_response()
                self.assertEqual(client.status_line, expected, reason)
                self.assertEqual((resp.status, resp.body), (299, b"ok"), reason)

    def test_host_preserved(self):
        path = self.unique_path()
        resp = harness.http_get(self.port, path, headers={"Host": "example.test:8443"})
        self.assertStatus(resp, 200, path)
        request = self.received(self.app, path)
        self.assertEqual(request.header_values("host"), ["example.test:8443"], repr(request))

    def test_x_forwarded_for_added(self):
        path = self.unique_path()
        self.assertStatus(harness.http_get(self.port, path), 200, path)
        request = self.received(self.app, path)
        self.assertEqual(request.header_values("x-forwarded-for"), ["127.0.0.1"], repr(request))

    def test_x_forwarded_for_appended(self):
        path = self.unique_path()
        resp = harness.http_get(self.port, path, headers={"X-Forwarded-For": "203.0.113.7"})
        self.assertStatus(resp, 200, path)
        request = self.received(self.app, path)
        values = request.header_values("x-forwarded-for")
        self.assertEqual(len(values), 1, f"expected one X-Forwarded-For, got {values!r}")
        self.assertRegex(values[0], r"^203\.0\.113\.7,\s*127\.0\.0\.1$")

    def test_request_id_generated(self):
        ids = []
        for _ in range(2):
            path = self.unique_path()
            self.assertStatus(harness.http_get(self.port, path), 200, path)
            request = self.received(self.app, path)
            values = request.header_values("x-request-id")
            self.assertEqual(len(values), 1, f"expected one x-request-id, got {request!r}")
            self.assertTrue(values[0].strip(), "generated x-request-id is empty")
            ids.append(values[0])
        self.assertNotEqual(ids[0], ids[1], "two requests got the same generated x-request-id")

    def test_request_id_kept(self):
        path = self.unique_path()
        resp = harness.http_get(self.port, path, headers={"x-request-id": "client-id-42"})
        self.assertStatus(resp, 200, path)
        request = self.received(self.app, path)
        self.assertEqual(request.header_values("x-request-id"), ["client-id-42"], repr(request))

    def test_hop_by_hop_request_headers_removed(self):
        path = self.unique_path()
        with RawClient(self.port) as c:
            c.send(
                f"GET {path} HTTP/1.1\r\n"
                "Host: t\r\n"
                "Connection: keep-alive, x-secret\r\n"
                "x-secret: 1\r\n"
                "Keep-Alive: timeout=5\r\n"
                "Proxy-Connection: keep-alive\r\n"
                "TE: trailers\r\n"
                "Trailer: x-checksum\r\n"
                "Upgrade: websocket\r\n"
                "x-end-to-end: 1\r\n"
                "\r\n".encode()
            )
            resp = c.read_response()
            self.assertStatus(resp, 200, path)
        request = self.received(self.app, path)
        names = request.header_names()
        for name in HOP_BY_HOP + ["x-secret"]:
            self.assertNotIn(name, names, f"hop-by-hop header {name} reached the upstream:\n"
                             f"{request.head_bytes.decode('latin-1')}")
        self.assertEqual(request.header_values("x-end-to-end"), ["1"], repr(request))

    def test_hop_by_hop_response_headers_removed(self):
        path = self.unique_path()
        self.app.handler = lambda request: Reply(
            200,
            [
                ("Connection", "x-resp-secret"),
                ("x-resp-secret", "1"),
                ("Keep-Alive", "timeout=3"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "x-checksum"),
                ("Upgrade", "h2c"),
                ("x-visible", "1"),
            ],
            b"ok",
        )
        with RawClient(self.port) as c:
            c.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            resp = c.read_response()
        self.assertStatus(resp, 200, path)
        self.assertIsNone(resp.header("x-resp-secret"), f"x-resp-secret reached the client: {resp!r}")
        for name in ["proxy-connection", "trailer", "upgrade"]:
            self.assertIsNone(resp.header(name), f"{name} reached the client: {resp!r}")
        self.assertNotEqual(resp.header("keep-alive"), "timeout=3", f"upstream Keep-Alive: {resp!r}")
        connection = (resp.header("connection") or "").lower()
        self.assertNotIn("x-resp-secret", connection, f"upstream Connection: {resp!r}")
        self.assertEqual(resp.header("x-visible"), "1")
        self.assertEqual(resp.body, b"ok")

    # Routing and route header mutation

    def test_route_mutates_request_headers(self):
        path = self.unique_path()
        resp = harness.http_get(
            self.port, path, headers={"x-drop": "1", "x-added": "no", "x-other": "2"}
        )
        self.assertStatus(resp, 200, path)
        request = self.received(self.app, path)
        self.assertEqual(request.header_values("x-added"), ["yes"], repr(request))
        self.assertEqual(request.header_values("x-drop"), [], repr(request))
        self.assertEqual(request.header_values("x-other"), ["2"], repr(request))

    def test_route_mutates_response_headers(self):
        self.app.handler = lambda request: Reply(
            200, [("Server", "scripted-upstream"), ("x-upstream", "1")], b"ok"
        )
        resp = harness.http_get(self.port, self.unique_path())
        self.assertStatus(resp, 200)
        self.assertEqual(resp.header_values("x-resp"), ["yes"], repr(resp))
        self.assertNotIn("scripted-upstream", resp.header_values("server"), repr(resp))
        self.assertEqual(resp.header("x-upstream"), "1", repr(resp))

    def test_header_match_selects_cluster(self):
        path = self.unique_path()
        self.assertStatus(harness.http_get(self.port, path, headers={"x-canary": "1"}), 200)
        self.received(self.canary, path)
        requests, _, _ = self.app.snapshot()
        self.assertEqual([r.target for r in requests if r.target == path], [],
                         "x-canary: 1 also reached cluster app")

        other = self.unique_path()
        self.assertStatus(harness.http_get(self.port, other, headers={"x-canary": "2"}), 200)
        self.received(self.app, other)
        requests, _, _ = self.canary.snapshot()
        self.assertEqual([r.target for r in requests if r.target == other], [],
                         "x-canary: 2 reached cluster canary")

    def test_no_route_returns_404(self):
        with RawClient(self.port) as c:
            c.send(b"GET /nothing/here HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = c.read_response()
            self.assertLocalReply(resp, 404, "no-route")
            # no-route does not close the connection.
            c.send(b"GET /static/index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertStatus(c.read_response(), 200, "GET after no-route")

    # Request bodies

    def test_expect_100_continue_raw(self):
        path = self.unique_path()
        with RawClient(self.port) as c:
            c.send(
                f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            status, headers = c.read_head()
            self.assertEqual(status, 100, f"expected interim 100 Continue, got {status} {headers}")
            c.send(b"hello world")
            resp = c.read_response()
            self.assertStatus(resp, 200, path)
        request = self.received(self.app, path)
        self.assertEqual(request.body, b"hello world")
        self.assertNotIn("expect", request.header_names(), f"Expect was forwarded: {request!r}")

    def test_expect_100_continue_curl(self):
        path = self.unique_path()
        body_path = os.path.join(harness.make_dir("curl"), "body")
        with open(body_path, "wb") as f:
            f.write(os.urandom(65536))
        result = self.run_curl(
            "--verbose", "--expect100-timeout", "10", "-H", "Expect: 100-continue",
            "--data-binary", "@" + body_path, "-o", "/dev/null", "-w", "%{http_code}",
            self.url(path),
        )
        self.assertEqual(result.returncode, 0, f"curl failed: {result.stderr[-2000:]!r}")
        self.assertEqual(result.stdout, b"200")
        self.assertIn(b"< HTTP/1.1 100 Continue", result.stderr, "curl saw no 100 Continue")
        request = self.received(self.app, path)
        self.assertEqual(request.body_length, 65536)
        self.assertNotIn("expect", request.header_names(), f"Expect was forwarded: {request!r}")

    def test_chunked_upload_raw(self):
        path = self.unique_path()
        with RawClient(self.port) as c:
            c.send(
                f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            self.assertStatus(c.read_response(), 200, path)
        request = self.received(self.app, path)
        self.assertEqual(request.body, b"hello world")

    def test_chunked_upload_curl(self):
        path = self.unique_path()
        body = os.urandom(300000)
        body_path = os.path.join(harness.make_dir("curl"), "body")
        with open(body_path, "wb") as f:
            f.write(body)
        result = self.run_curl(
            "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + body_path,
            "-o", "/dev/null", "-w", "%{http_code}", self.url(path),
        )
        self.assertEqual(result.returncode, 0, f"curl failed: {result.stderr!r}")
        self.assertEqual(result.stdout, b"200")
        request = self.received(self.app, path)
        self.assertEqual(request.body_length, len(body))
        self.assertEqual(request.body, body)

    def test_chunked_response(self):
        chunks = [b"a" * 1000, b"b" * 70000, b"c"]
        self.app.handler = lambda request: Reply(200, [], chunks=chunks)
        with RawClient(self.port) as c:
            c.send(f"GET {self.unique_path()} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            resp = c.read_response()
            self.assertStatus(resp, 200)
            self.assertEqual(resp.body, b"".join(chunks))
            # The connection stays usable after the last chunk.
            c.send(b"GET /static/index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertStatus(c.read_response(), 200, "GET after chunked response")

    # Access log

    def test_access_log_records_request(self):
        request_id = "log-" + uuid.uuid4().hex
        resp = harness.http_get(self.port, "/static/index.html", headers={"x-request-id": request_id})
        self.assertStatus(resp, 200)

        def entry():
            return next(
                (e for e in self.deferd.access_log_entries() if e.get("request_id") == request_id),
                None,
            )

        found = harness.wait_until(entry, 10, f"access log line with request_id {request_id}")
        self.assertEqual(found.get("status"), 200, repr(found))
        self.assertEqual(found.get("listener"), "inbound", repr(found))
        self.assertEqual(found.get("cluster"), "web", repr(found))
        self.assertEqual(found.get("method"), "GET", repr(found))
        self.assertEqual(found.get("path"), "/static/index.html", repr(found))
        self.assertEqual(found.get("response_bytes"), len(harness.Nginx.INDEX_BODY), repr(found))


if __name__ == "__main__":
    harness.main()
