"""A listener's `http2` limits, and how deferd ends a stream whose response came early.

A listener with `http2: { max_concurrent_streams: 3 }` advertises 3 in its SETTINGS frame and
resets streams past it with REFUSED_STREAM. A stream that gets its whole response (here a
local reply) before the client finished sending its request body ends with the response's
END_STREAM and then RST_STREAM NO_ERROR (RFC 9113 section 8.1), so the client stops sending.
"""

import time
import unittest

import h2.settings

import harness
import h2peer
from harness import Reply

MAX_STREAMS = 3
NO_ERROR = 0
REFUSED_STREAM = 7


def wait_for_reset(client, stream_id, timeout=harness.IO_TIMEOUT):
    """Read until `stream_id` has an RST_STREAM or the deadline passes; return the stream."""
    deadline = time.monotonic() + timeout
    stream = client.streams[stream_id]
    while stream.reset_code is None and time.monotonic() < deadline and not client.closed:
        client.read_once(timeout=0.2)
    return stream


class Http2LimitsTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream(handler=cls.reply_for)
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        routes = [{"match": {"prefix": "/api"}, "cluster": "scripted"}]
        listener = harness.listener_config("inbound", cls.port, routes)
        listener["http2"] = {"max_concurrent_streams": MAX_STREAMS, "initial_window_size": 65535}
        cls.deferd = harness.Deferd(
            listeners=[listener],
            clusters=[harness.cluster_config("scripted", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    @staticmethod
    def reply_for(request):
        if request.target.startswith("/api/slow"):
            return Reply(200, [], b"slow-done", delay=1.0)
        return Reply(200, [], b"ok")

    def test_settings_advertise_listener_limits(self):
        with h2peer.H2Client(self.port) as client:
            stream = client.get("/api/one")
            settings = client.conn.remote_settings
            self.assertEqual(stream.status, 200, f"{stream}\n{self.deferd.log()}")
            self.assertEqual(settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS],
                             MAX_STREAMS)
            self.assertEqual(settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE], 65535)

    def test_streams_over_limit_refused(self):
        with h2peer.H2Client(self.port) as client:
            # The streams open before deferd's SETTINGS is read, or h2 would hold the client to
            # the limit itself.
            ids = [client.request("GET", f"/api/slow/{i}") for i in range(MAX_STREAMS + 2)]
            results = [client.wait(i, timeout=10) for i in ids]
        answered = [r for r in results if r.status == 200]
        refused = [r for r in results if r.reset_code == REFUSED_STREAM]
        self.assertEqual(len(answered), MAX_STREAMS, results)
        self.assertEqual(len(refused), 2, results)

    def test_local_reply_before_body_end_resets_no_error(self):
        with h2peer.H2Client(self.port) as client:
            # /elsewhere matches no route: a 404 local reply while the body is still open.
            stream_id = client.request("POST", "/elsewhere", body=b"x" * 1000, end_stream=False)
            stream = wait_for_reset(client, stream_id)
        self.assertEqual(stream.status, 404, f"{stream}\n{self.deferd.log()}")
        self.assertEqual(stream.header("deferd-reason"), "no-route")
        self.assertTrue(stream.ended, f"no END_STREAM before the reset: {stream}")
        self.assertEqual(stream.reset_code, NO_ERROR, f"{stream}\n{self.deferd.log()}")

    def test_local_reply_after_body_end_not_reset(self):
        with h2peer.H2Client(self.port) as client:
            stream_id = client.request("POST", "/elsewhere", body=b"x" * 1000, end_stream=True)
            stream = client.wait(stream_id)
            # Anything deferd would send after the response arrives within this read.
            client.read_once(timeout=0.3)
        self.assertEqual(stream.status, 404, f"{stream}\n{self.deferd.log()}")
        self.assertTrue(stream.ended)
        self.assertIsNone(stream.reset_code, stream)

    def test_connection_serves_after_early_reply(self):
        with h2peer.H2Client(self.port) as client:
            first = client.request("POST", "/elsewhere", body=b"x" * 100, end_stream=False)
            wait_for_reset(client, first)
            stream = client.get("/api/after")
        self.assertEqual(stream.status, 200, f"{stream}\n{self.deferd.log()}")
        self.assertEqual(bytes(stream.body), b"ok")


if __name__ == "__main__":
    unittest.main()
