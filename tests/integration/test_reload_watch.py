"""Hot reload when the config file changes, without SIGHUP.

deferd watches the config file's directory with inotify, reads the file 200 ms after the last
event, and checks the file's bytes every few seconds as a backstop. These tests change the file
the ways operators and the kubelet do (a `..data` symlink swap, an in-place write in two steps,
an atomic rename) and check what deferd serves, its reload counters and deferd_config_hash.
"""

import copy
import json
import os
import signal
import threading
import time

import harness
from test_configmap_reload import ConfigMapVolume

# The watch's debounce is 200 ms and its backstop period 5 s; a change must be applied well
# within this many seconds.
RELOAD_TIMEOUT = 10.0

# Longer than one backstop period, so a check after it has seen at least one backstop tick.
BACKSTOP_WAIT = 6.0


def config_hash(text):
    """Return deferd_config_hash for these bytes: the top 52 bits of their 64-bit FNV-1a."""
    value = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        value ^= byte
        value = (value * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return float(value >> 12)


class ReloadWatchTest(harness.DeferdTestCase):
    def setUp(self):
        self.upstream = harness.RawUpstream()
        self.addCleanup(self.upstream.close)
        self.port = harness.free_port()
        self.deferd = harness.Deferd(
            listeners=[
                harness.listener_config("inbound", self.port, [{"match": {"prefix": "/"},
                                                                "cluster": "app"}])
            ],
            clusters=[harness.cluster_config("app", [self.upstream.port])],
        )

    def start_with_file(self):
        self.deferd.start()
        self.addCleanup(self.deferd.stop)

    def config_text(self, version):
        """Return the config as JSON text with a response header naming `version`."""
        config = copy.deepcopy(self.deferd.config)
        route = config["listeners"][0]["routes"][0]
        route["response_headers"] = {"add": {"x-config-version": str(version)}}
        return json.dumps(config, indent=2)

    def replace_file(self, text):
        """Replace the config file with exactly `text`, atomically."""
        tmp = self.deferd.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.deferd.config_path)

    def reloads(self, result):
        return self.deferd.metrics().value("deferd_config_reloads_total", result=result)

    def hash_metric(self):
        return self.deferd.metrics().value("deferd_config_hash")

    def version_served(self):
        resp = harness.http_get(self.port, "/v")
        self.assertStatus(resp, 200)
        return resp.header("x-config-version")

    def wait_for_version(self, version, what):
        harness.wait_until(lambda: self.version_served() == version, RELOAD_TIMEOUT, what)

    def read_config_file(self):
        with open(self.deferd.config_path) as f:
            return f.read()

    def test_configmap_symlink_swap_reloads(self):
        volume = ConfigMapVolume(harness.make_dir("configmap"))
        volume.publish(self.config_text(1))
        self.deferd.config_path = volume.config_path
        self.deferd.proc = harness.start_process(
            [harness.deferd_binary(), "--config", volume.config_path], "deferd",
            log_path=self.deferd.log_path,
        )
        self.addCleanup(self.deferd.stop)
        self.deferd.wait_ready()
        self.assertEqual(self.version_served(), "1")

        for version in (2, 3):
            before = self.reloads("success")
            volume.publish(self.config_text(version))
            self.wait_for_version(str(version), f"version {version} after the ..data swap")
            self.assertEqual(self.reloads("success"), before + 1, f"reloads for version {version}")
        self.assertEqual(self.reloads("failure"), 0)
        self.assertEqual(self.hash_metric(), config_hash(self.config_text(3)))

    def test_half_written_file_never_loaded(self):
        self.start_with_file()
        for version in range(1, 6):
            text = self.config_text(version)
            # In place, as `cat > file` or a non-atomic editor would: a truncated document,
            # then the rest of it 50 ms later, well within the 200 ms debounce.
            with open(self.deferd.config_path, "w") as f:
                f.write(text[: len(text) // 2])
                f.flush()
                time.sleep(0.05)
                f.write(text[len(text) // 2:])
            self.wait_for_version(str(version), f"version {version} after a two-step write")
        self.assertEqual(self.reloads("failure"), 0, "a half-written file was loaded")
        self.assertEqual(self.reloads("success"), 5)

    def test_invalid_file_keeps_running_config(self):
        self.start_with_file()
        self.replace_file(self.config_text(1))
        self.wait_for_version("1", "the first valid version")
        good_hash = self.hash_metric()
        successes = self.reloads("success")

        # Line 2, column 12 is the unknown key.
        self.replace_file('{\n  "node": {"service": "x"},\n  "lisners": []\n}')
        harness.wait_until(lambda: self.reloads("failure") == 1, RELOAD_TIMEOUT,
                           "the invalid file to be rejected")
        self.assertTrue(self.deferd.alive())
        self.assertEqual(self.version_served(), "1")
        self.assertEqual(self.hash_metric(), good_hash)
        self.assertIn(f"{self.deferd.config_path}:3:", self.deferd.log(),
                      "the log must point at the invalid line")

        # The backstop reads the same invalid bytes again and neither retries nor counts them.
        time.sleep(BACKSTOP_WAIT)
        self.assertEqual(self.reloads("failure"), 1, "an unchanged invalid file was recounted")
        self.assertEqual(self.reloads("success"), successes)
        self.assertEqual(self.version_served(), "1")

    def test_hash_metric_follows_file(self):
        self.start_with_file()
        original = self.read_config_file()
        self.assertEqual(self.hash_metric(), config_hash(original))

        self.replace_file(self.config_text(7))
        self.wait_for_version("7", "version 7")
        self.assertEqual(self.hash_metric(), config_hash(self.config_text(7)))
        self.assertNotEqual(self.hash_metric(), config_hash(original))

        self.replace_file(original)
        harness.wait_until(lambda: self.hash_metric() == config_hash(original), RELOAD_TIMEOUT,
                           "the hash of the original file")
        self.assertIsNone(self.version_served())

    def test_keep_alive_connection_takes_new_config(self):
        self.start_with_file()
        client = harness.RawClient(self.port)
        self.addCleanup(client.close)
        for version in (1, 2):
            self.replace_file(self.config_text(version))
            self.wait_for_version(str(version), f"version {version} on new connections")
            client.send(b"GET /ka HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = client.read_response()
            self.assertStatus(resp, 200)
            self.assertEqual(resp.header("x-config-version"), str(version),
                             "the keep-alive connection kept the old config")

    def test_unchanged_bytes_not_counted(self):
        self.start_with_file()
        before = self.reloads("success")
        original = self.read_config_file()

        # Rewriting the same bytes, touching the file and a SIGHUP all change nothing.
        self.replace_file(original)
        os.utime(self.deferd.config_path)
        self.deferd.signal(signal.SIGHUP)
        time.sleep(1.0)
        self.assertEqual(self.reloads("success"), before)
        self.assertEqual(self.reloads("failure"), 0)
        harness.wait_until(lambda: "nothing to reload" in self.deferd.log(), RELOAD_TIMEOUT,
                           "the SIGHUP to be handled")
        self.assertEqual(self.reloads("success"), before)

    def test_reloads_under_load_lose_nothing(self):
        self.start_with_file()
        failures = []
        counts = {"ok": 0}
        stop = threading.Event()

        # A bounded client: at most 20000 requests or 120 s, alternating new connections and a
        # keep-alive connection, so both kinds live through the reloads.
        def client():
            deadline = time.monotonic() + 120
            keep_alive = None
            for i in range(20000):
                if stop.is_set() or time.monotonic() > deadline:
                    break
                try:
                    if i % 2 == 0:
                        resp = harness.http_get(self.port, f"/load/{i}")
                        status = resp.status
                    else:
                        if keep_alive is None:
                            keep_alive = harness.RawClient(self.port)
                        keep_alive.send(f"GET /ka/{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                        status = keep_alive.read_response().status
                except (OSError, AssertionError) as e:
                    failures.append(f"request {i}: {e!r}")
                    continue
                if status != 200:
                    failures.append(f"request {i}: status {status}")
                else:
                    counts["ok"] += 1
            if keep_alive is not None:
                keep_alive.close()

        thread = threading.Thread(target=client)
        thread.start()
        try:
            # Even versions by SIGHUP, odd ones by the watch alone.
            for version in range(1, 101):
                before = self.reloads("success")
                self.replace_file(self.config_text(version))
                if version % 2 == 0:
                    self.deferd.signal(signal.SIGHUP)
                harness.wait_until(lambda: self.reloads("success") == before + 1, RELOAD_TIMEOUT,
                                   f"reload to version {version}")
        finally:
            stop.set()
            thread.join(timeout=30)
        self.assertFalse(thread.is_alive(), "the client loop did not stop")
        self.assertEqual(failures[:5], [], f"{len(failures)} requests failed")
        self.assertGreater(counts["ok"], 100, "too few requests ran during the reloads")
        self.assertEqual(self.reloads("failure"), 0)
        self.assertEqual(self.version_served(), "100")


if __name__ == "__main__":
    harness.main()
