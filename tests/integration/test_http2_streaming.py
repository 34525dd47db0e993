"""A 512 MiB HTTP/2 response to a slow reader, with deferd's resident memory sampled throughout.

The client (h2peer) acknowledges received DATA only after pausing, so its flow-control window
is what limits the transfer. deferd must pass that back pressure to the upstream (nginx) by
not reading it, so its resident set size stays far below the body size. The bound (64 MiB) is
checked on regular builds only, because ASan's shadow memory and quarantine make RSS
meaningless in sanitized builds.
"""

import time

import harness
import h2peer
from test_streaming import RssSampler

BODY_BYTES = 512 << 20
RSS_LIMIT_BYTES = 64 << 20
TRANSFER_TIMEOUT_SECONDS = 180
# The reader pauses after each window's worth of data, which makes it slower than nginx.
PAUSE_EVERY_BYTES = 8 << 20
PAUSE_SECONDS = 0.02
# nginx keeps an idle connection for 75 s, so an end of stream that waits for the upstream to
# close comes far later than this.
END_AFTER_BODY_SECONDS = 10


class Http2StreamingTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = harness.Nginx(big=True).start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config(
                "inbound", cls.port, [{"match": {"prefix": "/"}, "cluster": "nginx"}])],
            clusters=[harness.cluster_config("nginx", [cls.nginx.port])],
            access_log=False,
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_slow_reader_bounded_memory(self):
        last = BODY_BYTES - 1
        deadline = time.monotonic() + TRANSFER_TIMEOUT_SECONDS
        with RssSampler(self.deferd) as sampler, \
                h2peer.H2Client(self.port, keep_body=False, auto_ack=False) as client:
            stream_id = client.request("GET", "/static/big",
                                       headers=[("range", f"bytes=0-{last}")])
            stream = client.streams[stream_id]
            since_pause = 0
            body_done_at = None
            while not stream.done:
                if time.monotonic() > deadline:
                    self.fail(f"transfer incomplete after {TRANSFER_TIMEOUT_SECONDS} s: {stream}")
                before = stream.body_length
                if not client.read_once(timeout=1.0):
                    break
                if body_done_at is None and stream.body_length == BODY_BYTES:
                    body_done_at = time.monotonic()
                if body_done_at and time.monotonic() - body_done_at > END_AFTER_BODY_SECONDS:
                    self.fail(f"the whole body arrived but the stream did not end: {stream}")
                since_pause += stream.body_length - before
                if since_pause >= PAUSE_EVERY_BYTES:
                    time.sleep(PAUSE_SECONDS)
                    since_pause = 0
                pending = client.unacked.get(stream_id, 0)
                if pending > 0:
                    client.ack(stream_id, pending)
        self.assertEqual(stream.status, 206, stream)
        self.assertEqual(stream.body_length, BODY_BYTES)
        self.assertTrue(stream.ended, stream)
        if not harness.sanitized_build():
            self.assertLess(sampler.peak, RSS_LIMIT_BYTES,
                            f"peak RSS {sampler.peak >> 20} MiB over {sampler.samples} samples")


if __name__ == "__main__":
    harness.main()
