"""gRPC calls that get a local reply from deferd: every such reply reaches the client as a gRPC status.

A local reply to a request with content-type application/grpc is an HTTP 200 trailers-only
response carrying grpc-status, grpc-message and deferd-reason. The gRPC library (Debian's
python3-grpcio) must parse it as the call's status; h2peer checks the exact frames.
"""

import time

import grpc

import harness
import h2peer
from harness import Reply

METHOD = "/deferd.test.Echo/Unary"
GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]
SLOW_SECONDS = 2.0


def identity(data):
    return data


class GrpcLocalRepliesTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/deferd.test.Down/"}, "cluster": "down"},
            {"match": {"prefix": "/deferd.test.Echo/"}, "cluster": "scripted"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("down", [harness.free_port()], connect_timeout="500ms"),
                harness.cluster_config("scripted", [cls.upstream.port]),
            ],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)
        cls.channel = grpc.insecure_channel(f"{harness.LOOPBACK}:{cls.port}")
        cls.addClassCleanup(cls.channel.close)

    @staticmethod
    def reply_for(request):
        if request.header("x-slow"):
            return Reply(200, [("content-type", "application/grpc")], b"", delay=SLOW_SECONDS)
        return Reply(200, [("content-type", "application/grpc"), ("grpc-status", "0")], b"")

    def setUp(self):
        self.upstream.reset()

    def call(self, method, timeout=5.0, metadata=None):
        stub = self.channel.unary_unary(
            method, request_serializer=identity, response_deserializer=identity
        )
        with self.assertRaises(grpc.RpcError) as raised:
            stub(b"\x00", timeout=timeout, metadata=metadata)
        return raised.exception

    def test_upstream_down_is_unavailable(self):
        error = self.call("/deferd.test.Down/Unary")
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE, error)
        self.assertEqual(error.details(), "connect-failed")
        trailing = dict(error.trailing_metadata() or ())
        self.assertEqual(trailing.get("deferd-reason"), "connect-failed")

    def test_no_route_is_unimplemented(self):
        error = self.call("/deferd.test.Missing/Unary")
        self.assertEqual(error.code(), grpc.StatusCode.UNIMPLEMENTED, error)
        self.assertEqual(error.details(), "no-route")

    def test_trailers_only_frames(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.wait(
                client.request("POST", "/deferd.test.Down/Unary", headers=GRPC_HEADERS,
                               body=b"\x00\x00\x00\x00\x00")
            )
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.header("grpc-status"), "14")
        self.assertEqual(stream.header("grpc-message"), "connect-failed")
        self.assertEqual(stream.header("content-type"), "application/grpc")
        self.assertIsNone(stream.trailers)  # one HEADERS frame with END_STREAM
        self.assertEqual(stream.body_length, 0)

    def test_deadline_expires_upstream(self):
        started = time.monotonic()
        with h2peer.H2Client(self.port) as client:
            stream = client.wait(
                client.request("POST", METHOD, body=b"\x00\x00\x00\x00\x00",
                               headers=GRPC_HEADERS + [("grpc-timeout", "300m"), ("x-slow", "1")])
            )
        elapsed = time.monotonic() - started
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.header("grpc-status"), "4")
        self.assertEqual(stream.header("deferd-reason"), "deadline-exceeded")
        self.assertLess(elapsed, SLOW_SECONDS - 0.5, "deferd waited past the deadline")
        metrics = self.deferd.metrics()
        self.assertGreaterEqual(
            metrics.value("deferd_local_replies_total", listener="inbound",
                          reason="deadline-exceeded"), 1)

        def logged():
            return [e for e in self.deferd.access_log_entries()
                    if e["reason"] == "deadline-exceeded"]

        harness.wait_until(logged, 5, "access log entry with reason deadline-exceeded")
        self.assertEqual(logged()[-1]["grpc_status"], "4")

    def test_grpc_library_sees_deadline(self):
        error = self.call(METHOD, timeout=0.3, metadata=[("x-slow", "1")])
        self.assertEqual(error.code(), grpc.StatusCode.DEADLINE_EXCEEDED, error)

    def test_remaining_time_sent_upstream(self):
        with h2peer.H2Client(self.port) as client:
            client.wait(
                client.request("POST", METHOD, body=b"\x00\x00\x00\x00\x00",
                               headers=GRPC_HEADERS + [("grpc-timeout", "5S")])
            )
        request = self.upstream.wait_for_requests(1)[-1]
        sent = request.header("grpc-timeout")
        self.assertIsNotNone(sent)
        units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
        seconds = int(sent[:-1]) * units[sent[-1]]
        self.assertLess(seconds, 5.0)
        self.assertGreater(seconds, 4.0)


if __name__ == "__main__":
    harness.main()
