"""Process lifecycle: drain on SIGTERM, config reload on SIGHUP, and `deferd validate`."""

import copy
import os
import re
import signal
import subprocess
import threading
import time

import h2peer
import harness
from harness import RawClient, Reply

SLOW_DELAY_SECONDS = 2.0
DRAIN_TIMEOUT_SECONDS = 5


def slow_reply(request):
    if request.target.startswith("/slow"):
        return Reply(200, [], b"finished", delay=SLOW_DELAY_SECONDS)
    if request.target.startswith("/stuck"):
        return Reply(200, [], b"too late", delay=30)
    return Reply(200, [], b"ok")


class DrainTest(harness.DeferdTestCase):
    def setUp(self):
        self.upstream = harness.RawUpstream(handler=slow_reply)
        self.addCleanup(self.upstream.close)
        self.port = harness.free_port()

    def start_deferd(self, drain_timeout):
        routes = [{"match": {"prefix": "/"}, "cluster": "app", "timeout": "60s"}]
        self.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", self.port, routes)],
            clusters=[harness.cluster_config("app", [self.upstream.port])],
            drain_timeout=drain_timeout,
        ).start()
        self.addCleanup(self.deferd.stop)

    def start_requests(self, paths):
        """Send each path on its own connection from a thread; return (threads, results)."""
        results = {}

        def fetch(path):
            try:
                results[path] = harness.http_get(self.port, path, timeout=40)
            except Exception as e:  # recorded and asserted on by the test
                results[path] = e

        threads = [threading.Thread(target=fetch, args=(p,), daemon=True) for p in paths]
        for t in threads:
            t.start()
        return threads, results

    def test_sigterm_drains_in_flight_requests(self):
        self.start_deferd(f"{DRAIN_TIMEOUT_SECONDS}s")
        paths = [f"/slow/{i}" for i in range(3)]
        threads, results = self.start_requests(paths)
        self.upstream.wait_for_requests(3)

        sent_at = time.monotonic()
        self.deferd.signal(signal.SIGTERM)

        def not_ready():
            return self.deferd.admin_get("/ready", timeout=1).status == 503

        harness.wait_until(not_ready, 1.0, "/ready to return 503 after SIGTERM")
        harness.wait_until(
            lambda: not harness.port_accepts(self.port), 1.0,
            "the listener to refuse new connections after SIGTERM",
        )

        for t in threads:
            t.join(timeout=SLOW_DELAY_SECONDS + DRAIN_TIMEOUT_SECONDS)
        for path in paths:
            resp = results.get(path)
            self.assertIsInstance(resp, harness.Response, f"{path}: {resp!r}")
            self.assertStatus(resp, 200, f"in-flight {path} during drain")
            self.assertEqual(resp.body, b"finished", path)

        try:
            status = self.deferd.proc.wait(timeout=DRAIN_TIMEOUT_SECONDS + 2)
        except subprocess.TimeoutExpired:
            self.fail_with_log(f"deferd still running {DRAIN_TIMEOUT_SECONDS + 2}s after SIGTERM")
        elapsed = time.monotonic() - sent_at
        if status != 0:
            self.fail_with_log(f"deferd exited with status {status} after draining, expected 0")
        self.assertLess(elapsed, DRAIN_TIMEOUT_SECONDS + 1, "time from SIGTERM to exit")

    def test_sighup_during_drain_ignored(self):
        self.start_deferd(f"{DRAIN_TIMEOUT_SECONDS}s")
        threads, results = self.start_requests(["/slow/hup"])
        self.upstream.wait_for_requests(1)

        self.deferd.signal(signal.SIGTERM)
        harness.wait_until(
            lambda: self.deferd.admin_get("/ready", timeout=1).status == 503, 1.0,
            "/ready to return 503 after SIGTERM",
        )
        self.deferd.signal(signal.SIGHUP)

        threads[0].join(timeout=SLOW_DELAY_SECONDS + DRAIN_TIMEOUT_SECONDS)
        resp = results.get("/slow/hup")
        self.assertIsInstance(resp, harness.Response, f"/slow/hup: {resp!r}")
        self.assertStatus(resp, 200, "in-flight request after SIGHUP during drain")
        try:
            status = self.deferd.proc.wait(timeout=DRAIN_TIMEOUT_SECONDS + 2)
        except subprocess.TimeoutExpired:
            self.fail_with_log("deferd still running after the drain")
        if status != 0:
            self.fail_with_log(f"deferd exited with status {status}, expected 0")

    def test_drain_timeout_bounds_shutdown(self):
        drain_timeout = 1
        self.start_deferd(f"{drain_timeout}s")
        threads, results = self.start_requests(["/stuck"])
        self.upstream.wait_for_requests(1)

        sent_at = time.monotonic()
        self.deferd.signal(signal.SIGTERM)
        try:
            self.deferd.proc.wait(timeout=drain_timeout + 3)
        except subprocess.TimeoutExpired:
            self.fail_with_log(
                f"deferd still running {drain_timeout + 3}s after SIGTERM with drain_timeout "
                f"{drain_timeout}s and a request stuck upstream"
            )
        elapsed = time.monotonic() - sent_at
        self.assertGreaterEqual(elapsed, drain_timeout - 0.2, "exited before drain_timeout")
        # Closing the stuck request at the deadline runs its handlers during shutdown.
        if self.deferd.proc.returncode != 0:
            self.fail_with_log(
                f"deferd exited with status {self.deferd.proc.returncode} after the drain "
                "timeout, expected 0"
            )
        threads[0].join(timeout=5)
        self.assertNotIsInstance(
            results.get("/stuck"), harness.Response,
            f"the stuck request got a full response: {results.get('/stuck')!r}",
        )


class ReloadTest(harness.DeferdTestCase):
    def setUp(self):
        self.app = harness.RawUpstream()
        self.addCleanup(self.app.close)
        self.fresh = harness.RawUpstream()
        self.addCleanup(self.fresh.close)
        self.port = harness.free_port()
        self.deferd = harness.Deferd(
            listeners=[
                harness.listener_config(
                    "inbound", self.port, [{"match": {"prefix": "/a"}, "cluster": "app"}]
                )
            ],
            clusters=[harness.cluster_config("app", [self.app.port])],
        ).start()
        self.addCleanup(self.deferd.stop)

    def reloads(self, result):
        return self.deferd.metrics().value("deferd_config_reloads_total", result=result)

    def reload_and_wait(self, result):
        """Send SIGHUP and wait for deferd_config_reloads_total{result} to grow by one."""
        before = self.reloads(result)
        self.deferd.signal(signal.SIGHUP)
        harness.wait_until(
            lambda: self.reloads(result) >= before + 1, 5,
            f"deferd_config_reloads_total{{result=\"{result}\"}} to reach {before + 1}",
        )
        self.assertEqual(self.reloads(result), before + 1, f"reloads with result {result}")

    def assertKeepAliveWorks(self, client, path):
        client.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        self.assertStatus(client.read_response(), 200, f"{path} on the connection opened first")

    def test_sighup_applies_valid_config(self):
        client = RawClient(self.port)
        self.addCleanup(client.close)
        self.assertKeepAliveWorks(client, "/a/before")
        self.assertLocalReply(harness.http_get(self.port, "/new/x"), 404, "no-route", "before reload")
        failures_before = self.reloads("failure")

        config = copy.deepcopy(self.deferd.config)
        config["listeners"][0]["routes"].insert(0, {"match": {"prefix": "/new"}, "cluster": "fresh"})
        config["clusters"].append(harness.cluster_config("fresh", [self.fresh.port]))
        self.deferd.write_config(config)
        self.reload_and_wait("success")

        harness.wait_until(
            lambda: harness.http_get(self.port, "/new/x").status == 200, 5,
            "the route added by the reload to return 200",
        )
        self.assertEqual([r.target for r in self.fresh.wait_for_requests(1)][:1], ["/new/x"])
        self.assertKeepAliveWorks(client, "/a/after-reload")
        self.assertEqual(self.reloads("failure"), failures_before, "failed reloads")

    def test_waiting_request_uses_reloaded_cluster(self):
        # A request held by a fault delay picks its endpoint after the reload, so it must use
        # the new cluster settings with the new endpoints: HTTP/2 to an HTTP/2 server here.
        h2_app = h2peer.H2Upstream(refuse_connections=0)
        self.addCleanup(h2_app.close)
        config = copy.deepcopy(self.deferd.config)
        config["policies"] = {"slow": {"fault": {"delay": {"percent": "100%", "duration": "1s"}}}}
        config["listeners"][0]["routes"][0]["policy"] = "slow"
        self.deferd.write_config(config)
        self.reload_and_wait("success")

        results = {}
        waiting = threading.Thread(
            target=lambda: results.update(resp=harness.http_get(self.port, "/a/held")))
        waiting.start()
        time.sleep(0.2)
        config["clusters"] = [harness.cluster_config("app", [h2_app.port], protocol="http2")]
        self.deferd.write_config(config)
        self.reload_and_wait("success")
        waiting.join(harness.IO_TIMEOUT)

        self.assertIn("resp", results)
        self.assertStatus(results["resp"], 200, "the request held across the reload")
        self.assertEqual(results["resp"].body, b"served")

    def test_sighup_keeps_old_config_when_invalid(self):
        client = RawClient(self.port)
        self.addCleanup(client.close)
        self.assertKeepAliveWorks(client, "/a/before")
        successes_before = self.reloads("success")

        invalid = {
            "syntax error": "listeners: [ { name: inbound\n",
            "unknown cluster": None,
        }
        broken = copy.deepcopy(self.deferd.config)
        broken["listeners"][0]["routes"][0]["cluster"] = "no-such-cluster"
        for name, text in invalid.items():
            with self.subTest(name):
                if text is None:
                    self.deferd.write_config(broken)
                else:
                    self.deferd.write_config(text=text)
                self.reload_and_wait("failure")
                self.assertTrue(self.deferd.alive(), f"deferd exited after an invalid reload ({name})")
                self.assertStatus(self.deferd.admin_get("/ready"), 200, f"/ready after {name}")
                self.assertStatus(harness.http_get(self.port, "/a/new-connection"), 200,
                                  f"new connection after {name}")
                self.assertKeepAliveWorks(client, f"/a/after-{name.replace(' ', '-')}")
        self.assertEqual(self.reloads("success"), successes_before, "successful reloads")


GOOD_CONFIG = """\
node: { service: demo }
admin: { address: 127.0.0.1:9901 }
workers: 1
drain_timeout: 5s
access_log: false
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    direction: inbound
    limits: { header_timeout: 2s, idle_timeout: 10s, max_header_bytes: 8192, max_header_count: 50 }
    routes:
      - match: { prefix: /slow }
        cluster: app
        timeout: 500ms
      - match: { prefix: /, headers: [ { name: x-canary, exact: "1" } ] }
        cluster: canary
      - match: { prefix: / }
        cluster: app
        request_headers: { add: { x-added: "yes" }, remove: [ x-drop ] }
        response_headers: { add: { x-resp: "yes" }, remove: [ server ] }
clusters:
  - { name: app, endpoints: [127.0.0.1:8080], connect_timeout: 500ms, max_connections: 64 }
  - { name: canary, endpoints: [127.0.0.1:8081] }
"""

# An unknown key: line 9, column 9 is where "clustr" starts.
UNKNOWN_KEY_CONFIG = """\
node: { service: demo }
admin: { address: 127.0.0.1:9901 }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    direction: inbound
    routes:
      - match: { prefix: / }
        clustr: app
clusters:
  - { name: app, endpoints: [127.0.0.1:8080] }
"""

# A value of the wrong type on line 3.
WRONG_TYPE_CONFIG = """\
node: { service: demo }
admin: { address: 127.0.0.1:9901 }
workers: many
listeners: []
clusters: []
"""

SYNTAX_ERROR_CONFIG = """\
node: { service: demo }
listeners: [ { name: inbound
"""


class ValidateTest(harness.DeferdTestCase):
    def setUp(self):
        self.dir = harness.make_dir("validate")
        self.binary = harness.deferd_binary()

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def validate(self, *paths):
        result = subprocess.run(
            [self.binary, "validate", *paths],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20,
        )
        return result.returncode, result.stdout.decode("utf-8", "replace")

    def diagnostics(self, output, path):
        pattern = re.compile(re.escape(path) + r":(\d+):(\d+): (.+)")
        return [(int(m[1]), int(m[2]), m[3]) for m in map(pattern.match, output.splitlines()) if m]

    def test_valid_file(self):
        path = self.write("good.yaml", GOOD_CONFIG)
        status, output = self.validate(path)
        self.assertEqual(status, 0, f"validate on a valid file printed:\n{output}")

    def test_unknown_key(self):
        path = self.write("unknown-key.yaml", UNKNOWN_KEY_CONFIG)
        status, output = self.validate(path)
        self.assertEqual(status, 1, f"exit status; output:\n{output}")
        found = self.diagnostics(output, path)
        self.assertIn((9, 9), [(line, col) for line, col, _ in found],
                      f"expected a diagnostic at {path}:9:9 (the key 'clustr'), got:\n{output}")

    def test_wrong_type(self):
        path = self.write("wrong-type.yaml", WRONG_TYPE_CONFIG)
        status, output = self.validate(path)
        self.assertEqual(status, 1, f"exit status; output:\n{output}")
        lines = [line for line, _, _ in self.diagnostics(output, path)]
        self.assertIn(3, lines, f"expected a diagnostic on line 3 (workers: many), got:\n{output}")

    def test_syntax_error(self):
        path = self.write("syntax.yaml", SYNTAX_ERROR_CONFIG)
        status, output = self.validate(path)
        self.assertEqual(status, 1, f"exit status; output:\n{output}")
        self.assertTrue(self.diagnostics(output, path), f"no file:line:column diagnostic:\n{output}")

    def test_several_files(self):
        good = self.write("good.yaml", GOOD_CONFIG)
        unknown = self.write("unknown-key.yaml", UNKNOWN_KEY_CONFIG)
        wrong = self.write("wrong-type.yaml", WRONG_TYPE_CONFIG)
        status, output = self.validate(good, unknown, wrong)
        self.assertEqual(status, 1, f"exit status; output:\n{output}")
        self.assertEqual(self.diagnostics(output, good), [], f"diagnostics for the valid file:\n{output}")
        self.assertTrue(self.diagnostics(output, unknown), f"nothing reported for {unknown}:\n{output}")
        self.assertTrue(self.diagnostics(output, wrong), f"nothing reported for {wrong}:\n{output}")

    def test_missing_file(self):
        path = os.path.join(self.dir, "does-not-exist.yaml")
        status, output = self.validate(path)
        self.assertEqual(status, 1, f"exit status; output:\n{output}")
        self.assertIn(path, output, "the message names the missing file")

    def test_version(self):
        result = subprocess.run([self.binary, "--version"], capture_output=True, timeout=10)
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 0, f"--version exit status; output {output!r}")
        self.assertRegex(output, r"\d+\.\d+\.\d+", "--version prints a version number")

    def test_daemon_refuses_invalid_config(self):
        path = self.write("unknown-key.yaml", UNKNOWN_KEY_CONFIG)
        log_path = os.path.join(self.dir, "deferd.log")
        proc = harness.start_process([self.binary, "--config", path], "deferd", log_path=log_path)
        try:
            status = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            harness.stop_process(proc)
            self.fail(f"deferd kept running with an invalid config; log:\n{harness.log_tail(log_path)}")
        self.assertNotEqual(status, 0, "exit status with an invalid config")
        self.assertIn(f"{path}:9:9:", harness.log_tail(log_path), "the startup error names the key")


if __name__ == "__main__":
    harness.main()
