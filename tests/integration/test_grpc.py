"""gRPC through deferd to a real gRPC server over an http2 cluster.

Client and server are Debian's python3-grpcio with raw-bytes methods (no generated code), so
what deferd relays is exactly what the test sends. Cases: all four call types, metadata and
trailing metadata both ways, and a server error status. Then a 10,000-message server stream
that must arrive incrementally, a deadline that expires upstream, and an upstream that is down.
"""

import threading
import time
from concurrent import futures

import grpc

import harness

SERVICE = "deferd.test.Echo"
STREAM_MESSAGES = 10_000
STREAM_PAUSE_EVERY = 1_000
STREAM_PAUSE_SECONDS = 0.05


class EchoServer:
    """A gRPC server on a free loopback port with the four call types."""

    def __init__(self):
        self.seen_timeouts = []  # time_remaining() of each Slow call, in seconds
        self.lock = threading.Lock()
        handlers = grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((handlers,))
        self.port = self.server.add_insecure_port(f"{harness.LOOPBACK}:0")
        self.server.start()

    def stop(self):
        self.server.stop(grace=None)

    def unary(self, request, context):
        metadata = dict(context.invocation_metadata())
        context.set_trailing_metadata((("x-echo-trailer", metadata.get("x-echo", "")),))
        return request

    def server_stream(self, request, context):
        for i in range(int(request)):
            if i > 0 and i % STREAM_PAUSE_EVERY == 0:
                time.sleep(STREAM_PAUSE_SECONDS)
            yield b"%08d" % i

    def client_stream(self, request_iterator, context):
        count = 0
        size = 0
        for message in request_iterator:
            count += 1
            size += len(message)
        return b"%d %d" % (count, size)

    def bidi(self, request_iterator, context):
        for message in request_iterator:
            yield message[::-1]

    def slow(self, request, context):
        with self.lock:
            self.seen_timeouts.append(context.time_remaining())
        time.sleep(2.0)
        return request

    def fail(self, request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item")


def identity(data):
    return data


class GrpcTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = EchoServer()
        cls.addClassCleanup(cls.server.stop)
        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/deferd.test.Down/"}, "cluster": "down"},
            {"match": {"prefix": f"/{SERVICE}/"}, "cluster": "grpc"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("grpc", [cls.server.port], protocol="http2"),
                harness.cluster_config("down", [harness.free_port()], protocol="http2",
                                       connect_timeout="500ms"),
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)
        cls.channel = grpc.insecure_channel(f"{harness.LOOPBACK}:{cls.port}")
        cls.addClassCleanup(cls.channel.close)

    def method(self, kind, name):
        factory = {
            "unary": self.channel.unary_unary,
            "server": self.channel.unary_stream,
            "client": self.channel.stream_unary,
            "bidi": self.channel.stream_stream,
        }[kind]
        return factory(f"/{SERVICE}/{name}", request_serializer=identity,
                       response_deserializer=identity)

    def test_unary_with_metadata(self):
        call = self.method("unary", "Unary")
        response, info = call.with_call(b"ping", timeout=5, metadata=[("x-echo", "abc")])
        self.assertEqual(response, b"ping")
        self.assertEqual(info.code(), grpc.StatusCode.OK)
        self.assertEqual(dict(info.trailing_metadata()).get("x-echo-trailer"), "abc")

    def test_server_streaming_arrives_incrementally(self):
        call = self.method("server", "ServerStream")
        arrivals = []
        expected = 0
        for message in call(str(STREAM_MESSAGES).encode(), timeout=30):
            self.assertEqual(message, b"%08d" % expected)
            expected += 1
            arrivals.append(time.monotonic())
        self.assertEqual(expected, STREAM_MESSAGES)
        # The server pauses 9 times for 50 ms: a relay that buffered the whole stream would
        # deliver the first message at about the same time as the last.
        pauses = (STREAM_MESSAGES // STREAM_PAUSE_EVERY - 1) * STREAM_PAUSE_SECONDS
        self.assertGreater(arrivals[-1] - arrivals[0], pauses * 0.8)

    def test_client_streaming(self):
        call = self.method("client", "ClientStream")
        messages = [b"x" * (i % 100) for i in range(500)]
        response = call(iter(messages), timeout=10)
        self.assertEqual(response, b"%d %d" % (len(messages), sum(len(m) for m in messages)))

    def test_bidi_streaming(self):
        call = self.method("bidi", "Bidi")
        messages = [b"message-%d" % i for i in range(200)]
        responses = list(call(iter(messages), timeout=10))
        self.assertEqual(responses, [m[::-1] for m in messages])

    def test_server_error_status_passes_through(self):
        call = self.method("unary", "Fail")
        with self.assertRaises(grpc.RpcError) as raised:
            call(b"", timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(raised.exception.details(), "no such item")

        def logged():
            return [e for e in self.deferd.access_log_entries()
                    if e["path"] == f"/{SERVICE}/Fail"]

        harness.wait_until(logged, 5, "access log entry of the failed call")
        self.assertEqual(logged()[-1]["grpc_status"], "5")
        self.assertEqual(logged()[-1]["protocol"], "HTTP/2")

    def test_deadline_expires_upstream(self):
        call = self.method("unary", "Slow")
        with self.assertRaises(grpc.RpcError) as raised:
            call(b"", timeout=0.5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        harness.wait_until(lambda: self.server.seen_timeouts, 5, "the Slow call at the server")
        remaining = self.server.seen_timeouts[-1]
        self.assertIsNotNone(remaining, "the server saw no deadline")
        # gRPC core rounds a received timeout to its own clock granularity, so allow 10 ms.
        # test_grpc_local_replies checks that the value sent upstream is the time left.
        self.assertLess(remaining, 0.51)

    def test_upstream_down_is_unavailable(self):
        call = self.channel.unary_unary("/deferd.test.Down/Unary", request_serializer=identity,
                                        response_deserializer=identity)
        with self.assertRaises(grpc.RpcError) as raised:
            call(b"", timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(raised.exception.details(), "connect-failed")

    def test_http1_request_to_down_http2_cluster(self):
        resp = harness.http_request(self.port, "POST", "/deferd.test.Down/Unary", body=b"x")
        self.assertLocalReply(resp, 503, "connect-failed")

    def test_calls_share_upstream_connections(self):
        call = self.method("unary", "Unary")
        before = self.deferd.metrics().value("deferd_upstream_connections_created_total",
                                             cluster="grpc")
        pool = futures.ThreadPoolExecutor(max_workers=16)
        results = list(pool.map(lambda i: call(b"%d" % i, timeout=10), range(64)))
        pool.shutdown()
        self.assertEqual(results, [b"%d" % i for i in range(64)])
        after = self.deferd.metrics().value("deferd_upstream_connections_created_total",
                                            cluster="grpc")
        self.assertLessEqual(after - before, 1, "64 calls should share one connection")


if __name__ == "__main__":
    harness.main()
