"""Reloading a config mounted the way the kubelet mounts a ConfigMap volume.

The kubelet writes each version of a ConfigMap into a new hidden directory, points the `..data`
symlink at it by renaming a new symlink over the old one, and exposes every key as a symlink
through `..data`. deferd watches the directory of the path given to --config and opens that path
on every reload, so a swap is applied without a signal, and a SIGHUP after a swap reads the new
version at once. This file builds that layout in a temporary directory, runs the
sidecar config of deploy/k8s on loopback ports, and swaps versions as the kubelet would.
"""

import json
import os
import signal

import yaml

import harness
import test_deploy_manifests as manifests

CONFIG_KEY = "deferd.yaml"

# Seconds allowed for the watch to apply a swap: 200 ms of debounce, or one 5 s backstop period
# if an event were missed, plus the reload itself.
WATCH_TIMEOUT = 10.0


class ConfigMapVolume:
    """A directory laid out like a ConfigMap volume, with atomic version swaps."""

    def __init__(self, directory):
        self.directory = directory
        self.version = 0

    @property
    def config_path(self):
        return os.path.join(self.directory, CONFIG_KEY)

    def publish(self, text):
        """Write `text` as a new version and swap `..data` to it, as the kubelet does."""
        self.version += 1
        version_dir = f"..version_{self.version}"
        os.makedirs(os.path.join(self.directory, version_dir))
        with open(os.path.join(self.directory, version_dir, CONFIG_KEY), "w") as f:
            f.write(text)

        data_link = os.path.join(self.directory, "..data")
        previous = os.readlink(data_link) if os.path.islink(data_link) else None
        staging = os.path.join(self.directory, "..data_tmp")
        os.symlink(version_dir, staging)
        os.rename(staging, data_link)

        if not os.path.islink(self.config_path):
            os.symlink(os.path.join("..data", CONFIG_KEY), self.config_path)
        if previous is not None:
            old = os.path.join(self.directory, previous)
            os.remove(os.path.join(old, CONFIG_KEY))
            os.rmdir(old)


class ConfigMapReloadTest(harness.DeferdTestCase):
    def setUp(self):
        self.nginx = harness.Nginx().start()
        self.addCleanup(self.nginx.stop)

        example = yaml.safe_load(manifests.read_text(os.path.join(manifests.K8S, CONFIG_KEY)))
        listeners, clusters, extra = manifests.example_config_on_loopback(example, self.nginx.port)
        self.inbound_port = next(manifests.split_address(entry["address"])[1]
                                 for entry in listeners if entry["name"] == "inbound")
        self.deferd = harness.Deferd(listeners=listeners, clusters=clusters, extra=extra)

        self.volume = ConfigMapVolume(harness.make_dir("configmap"))
        self.volume.publish(json.dumps(self.deferd.config, indent=2))
        self.deferd.proc = harness.start_process(
            [harness.deferd_binary(), "--config", self.volume.config_path], "deferd",
            log_path=self.deferd.log_path,
        )
        self.addCleanup(self.deferd.stop)
        self.deferd.wait_ready()

    def config_with_version_header(self, version):
        """Return the running config with a response header naming `version`."""
        config = json.loads(json.dumps(self.deferd.config))
        inbound = next(entry for entry in config["listeners"] if entry["name"] == "inbound")
        route = inbound["routes"][0]
        route.setdefault("response_headers", {}).setdefault("add", {})["x-config-version"] = (
            str(version)
        )
        return json.dumps(config, indent=2)

    def version_served(self):
        resp = harness.http_get(self.inbound_port, "/static/index.html")
        self.assertStatus(resp, 200)
        return resp.header("x-config-version")

    def reloads(self, result):
        return self.deferd.metrics().value("deferd_config_reloads_total", result=result)

    def test_sighup_reads_swapped_version(self):
        self.assertIsNone(self.version_served())
        before = self.reloads("success")

        self.volume.publish(self.config_with_version_header(2))
        self.deferd.signal(signal.SIGHUP)
        harness.wait_until(lambda: self.reloads("success") == before + 1, 10,
                           "a successful reload after SIGHUP")
        self.assertEqual(self.version_served(), "2")

        self.volume.publish(self.config_with_version_header(3))
        self.deferd.signal(signal.SIGHUP)
        harness.wait_until(lambda: self.reloads("success") == before + 2, 10,
                           "a second successful reload after SIGHUP")
        self.assertEqual(self.version_served(), "3")
        self.assertEqual(self.reloads("failure"), 0)

    def test_swap_without_sighup_reloads(self):
        before = self.reloads("success")
        self.volume.publish(self.config_with_version_header(2))

        harness.wait_until(lambda: self.reloads("success") == before + 1, WATCH_TIMEOUT,
                           "the watch to apply the swapped version")
        self.assertEqual(self.version_served(), "2")
        self.assertEqual(self.reloads("failure"), 0)

    def test_invalid_version_keeps_running_config(self):
        self.volume.publish(self.config_with_version_header(2))
        self.deferd.signal(signal.SIGHUP)
        harness.wait_until(lambda: self.reloads("success") == 1, 10, "the first reload")

        self.volume.publish("listeners: [ this is not valid")
        self.deferd.signal(signal.SIGHUP)
        harness.wait_until(lambda: self.reloads("failure") == 1, 10, "the rejected reload")
        self.assertTrue(self.deferd.alive())
        self.assertEqual(self.version_served(), "2")


if __name__ == "__main__":
    harness.main()
