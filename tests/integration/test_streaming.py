"""1 GiB downloads and uploads through deferd, with its resident memory sampled throughout.

deferd streams bodies through bounded buffers, so its resident set size must stay far below
the body size. The bound (64 MiB) is checked on regular builds only, because ASan's shadow
memory and quarantine make RSS meaningless in sanitized builds.
"""

import json
import os
import subprocess
import threading

import harness

GIB = 1 << 30
RSS_LIMIT_BYTES = 64 << 20
TRANSFER_TIMEOUT_SECONDS = 120


class RssSampler:
    """Sample a process's VmRSS every 10 ms on a thread and keep the peak."""

    def __init__(self, deferd):
        self.deferd = deferd
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                rss = self.deferd.vm_rss_bytes()
            except OSError:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def count_upload(request):
    """Reply with the number of body bytes the upstream received."""
    body = json.dumps({"body_length": request.body_length, "chunked": request.chunked})
    return harness.Reply(200, [("Content-Type", "application/json")], body.encode())


class StreamingTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.curl = harness.require_tool("curl")
        cls.nginx = harness.Nginx(big=True).start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.sink = harness.RawUpstream(handler=count_upload)
        cls.addClassCleanup(cls.sink.close)
        cls.port = harness.free_port()
        routes = [
            {"match": {"prefix": "/static/"}, "cluster": "web"},
            {"match": {"prefix": "/upload"}, "cluster": "sink", "timeout": "120s"},
        ]
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("web", [cls.nginx.port]),
                harness.cluster_config("sink", [cls.sink.port]),
            ],
            access_log=False,
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def url(self, path):
        return f"http://{harness.LOOPBACK}:{self.port}{path}"

    def run_curl(self, args, stdin=subprocess.DEVNULL):
        """Run curl as a tracked process; return (exit status, stdout, stderr)."""
        out_dir = harness.make_dir("curl")
        out_path = os.path.join(out_dir, "stdout")
        log_path = os.path.join(out_dir, "stderr")
        with open(out_path, "wb") as out:
            proc = harness.start_process(
                [self.curl, "--silent", "--show-error", "--max-time",
                 str(TRANSFER_TIMEOUT_SECONDS), *args],
                "curl", log_path=log_path, stdin=stdin, stdout=out,
            )
            try:
                proc.wait(timeout=TRANSFER_TIMEOUT_SECONDS + 10)
            finally:
                harness.stop_process(proc)
        with open(out_path, "rb") as f:
            stdout = f.read()
        return proc.returncode, stdout, harness.log_tail(log_path)

    def assertRssBounded(self, sampler, what):
        self.assertGreater(sampler.samples, 0, "no RSS samples were taken")
        peak_mib = sampler.peak / (1 << 20)
        print(f"{what}: deferd's peak RSS {peak_mib:.1f} MiB over {sampler.samples} samples")
        if harness.sanitized_build():
            print("RSS bound not checked: ASan's shadow memory inflates RSS in sanitized builds")
            return
        self.assertLess(
            sampler.peak, RSS_LIMIT_BYTES,
            f"{what}: deferd's peak RSS was {peak_mib:.1f} MiB, expected under "
            f"{RSS_LIMIT_BYTES >> 20} MiB for a streamed {GIB >> 20} MiB body",
        )

    def test_download_1gib(self):
        with RssSampler(self.deferd) as sampler:
            status, stdout, stderr = self.run_curl(
                ["-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                 self.url("/static/big")]
            )
        self.assertEqual(status, 0, f"curl exited with {status}: {stderr}")
        self.assertEqual(stdout.decode(), f"200 {GIB}", "status and bytes downloaded")
        self.assertRssBounded(sampler, "1 GiB download")

    def test_upload_1gib_content_length(self):
        body_path = os.path.join(harness.make_dir("upload"), "body")
        with open(body_path, "wb") as f:
            f.truncate(GIB)
        with RssSampler(self.deferd) as sampler:
            status, stdout, stderr = self.run_curl(
                ["-T", body_path, "-w", "\n%{http_code} %{size_upload}",
                 self.url("/upload/content-length")]
            )
        self.assertEqual(status, 0, f"curl exited with {status}: {stderr}")
        body, _, summary = stdout.decode().rpartition("\n")
        self.assertEqual(summary, f"200 {GIB}", f"status and bytes uploaded; body {body!r}")
        self.assertEqual(json.loads(body)["body_length"], GIB, "bytes the upstream received")
        self.assertRssBounded(sampler, "1 GiB upload with Content-Length")

    def test_upload_1gib_chunked(self):
        head = harness.require_tool("head")
        producer = harness.start_process(
            [head, "-c", str(GIB), "/dev/zero"], "head", stdout=subprocess.PIPE
        )
        self.addCleanup(harness.stop_process, producer)
        try:
            with RssSampler(self.deferd) as sampler:
                status, stdout, stderr = self.run_curl(
                    ["-T", "-", "-w", "\n%{http_code}", self.url("/upload/chunked")],
                    stdin=producer.stdout,
                )
        finally:
            producer.stdout.close()
        self.assertEqual(status, 0, f"curl exited with {status}: {stderr}")
        # curl's size_upload counts the chunk framing too, so only the upstream's count is exact.
        body, _, summary = stdout.decode().rpartition("\n")
        self.assertEqual(summary, "200", f"status; body {body!r}")
        self.assertEqual(json.loads(body)["body_length"], GIB, "bytes the upstream received")
        self.assertRssBounded(sampler, "1 GiB chunked upload")


if __name__ == "__main__":
    harness.main()
