"""Policies split across files, `extends:` templates, and their hot reload.

The main config names a policy directory in `policy_files`. The directory contains a template
and the policies that routes use. These tests change the directory the ways operators and the
kubelet do (a file added, a `..data` swap, a broken file, a slow in-place write) and check what
requests observe, the reload counters, and `deferd validate DIR`.
"""

import json
import os
import subprocess
import threading
import time

import harness

# The watch's debounce is 200 ms, and a second read one debounce later confirms a change. The
# backstop period is 5 s, so a change must be applied well within this many seconds.
RELOAD_TIMEOUT = 10.0

TEMPLATE = """templates:
  base:
    response_headers:
      add: { x-tier: base, x-team: platform }
"""

ALPHA = """policies:
  alpha:
    extends: base
    response_headers:
      add: { x-team: alpha }
"""

BETA = """policies:
  beta:
    extends: base
    response_headers:
      add: { x-tier: gold }
"""


def write_file(path, text):
    """Replace `path` with `text` atomically, as the docs advise."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def routes(*extra):
    """Return the routes: /a to policy alpha, /b to beta, then `extra`, then / with none."""
    return [
        {"match": {"prefix": "/a"}, "cluster": "app", "policy": "alpha"},
        {"match": {"prefix": "/b"}, "cluster": "app", "policy": "beta"},
        *extra,
        {"match": {"prefix": "/"}, "cluster": "app"},
    ]


class PolicyFilesTest(harness.DeferdTestCase):
    def setUp(self):
        self.upstream = harness.RawUpstream()
        self.addCleanup(self.upstream.close)
        self.port = harness.free_port()
        self.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", self.port, routes())],
            clusters=[harness.cluster_config("app", [self.upstream.port])],
            extra={"policy_files": ["policies.d"]},
        )
        self.policy_dir = os.path.join(self.deferd.dir, "policies.d")

    def write_policies(self, directory):
        os.makedirs(directory, exist_ok=True)
        write_file(os.path.join(directory, "00-base.yaml"), TEMPLATE)
        write_file(os.path.join(directory, "alpha.yaml"), ALPHA)
        write_file(os.path.join(directory, "beta.yaml"), BETA)

    def start(self):
        self.deferd.start()
        self.addCleanup(self.deferd.stop)

    def reloads(self, result):
        return self.deferd.metrics().value("deferd_config_reloads_total", result=result)

    def get(self, path):
        return harness.http_get(self.port, path)

    def wait_for_status(self, path, status, what):
        harness.wait_until(lambda: self.get(path).status == status, RELOAD_TIMEOUT, what)

    def assert_template_headers(self):
        alpha = self.get("/a")
        self.assertStatus(alpha, 200)
        self.assertEqual(alpha.header("x-tier"), "base", "alpha inherits x-tier")
        self.assertEqual(alpha.header("x-team"), "alpha", "alpha replaces x-team")
        beta = self.get("/b")
        self.assertStatus(beta, 200)
        self.assertEqual(beta.header("x-tier"), "gold", "beta replaces x-tier")
        self.assertEqual(beta.header("x-team"), "platform", "beta inherits x-team")

    def test_template_and_policies_from_directory(self):
        self.write_policies(self.policy_dir)
        self.start()
        self.assert_template_headers()
        self.assertIsNone(self.get("/other").header("x-tier"))

        # GET /config shows the merged policies, without the template or the file list.
        config = self.deferd.admin_get("/config").body.decode("utf-8")
        self.assertNotIn("extends", config)
        self.assertNotIn("policy_files", config)
        self.assertIn("x-tier: gold", config)

    def test_added_file_is_picked_up(self):
        self.write_policies(self.policy_dir)
        self.start()
        successes = self.reloads("success")
        first_hash = self.deferd.metrics().value("deferd_config_hash")

        # A new file defines policy gamma, and then the main file routes /c to it. A GitOps
        # change that writes the two files one after the other takes this order.
        write_file(os.path.join(self.policy_dir, "gamma.yaml"),
                   "policies:\n  gamma: { fault: { abort: { percent: 100%, status: 418 } } }\n")
        harness.wait_until(lambda: "gamma:" in self.deferd.admin_get("/config").body.decode(),
                           RELOAD_TIMEOUT, "policy gamma in GET /config")
        self.assertEqual(self.reloads("success"), successes + 1)
        self.assertNotEqual(self.deferd.metrics().value("deferd_config_hash"), first_hash,
                            "deferd_config_hash must cover the policy files")
        self.assertStatus(self.get("/c"), 200, "no route uses gamma yet")

        config = json.loads(json.dumps(self.deferd.config))
        config["listeners"][0]["routes"] = routes(
            {"match": {"prefix": "/c"}, "cluster": "app", "policy": "gamma"})
        self.deferd.write_config(config)
        self.wait_for_status("/c", 418, "the fault abort of policy gamma on /c")
        self.assertLocalReply(self.get("/c"), 418, "fault-injected")

        # Removing the file while a route names the policy is rejected; traffic flows.
        failures = self.reloads("failure")
        os.remove(os.path.join(self.policy_dir, "gamma.yaml"))
        harness.wait_until(lambda: self.reloads("failure") == failures + 1, RELOAD_TIMEOUT,
                           "the removal of gamma.yaml to be rejected")
        self.assertLocalReply(self.get("/c"), 418, "fault-injected")
        self.assert_template_headers()

    def test_configmap_swap_of_policy_directory(self):
        # The kubelet's layout: every key is a symlink through ..data to a versioned directory.
        os.makedirs(self.policy_dir)
        self.publish_version(1, {"00-base.yaml": TEMPLATE, "alpha.yaml": ALPHA,
                                 "beta.yaml": BETA})
        self.start()
        self.assert_template_headers()

        abort_beta = BETA.replace("add: { x-tier: gold }",
                                  "add: { x-tier: gold }\n    fault:\n"
                                  "      abort: { percent: 100%, status: 429 }")
        self.publish_version(2, {"00-base.yaml": TEMPLATE, "alpha.yaml": ALPHA,
                                 "beta.yaml": abort_beta})
        self.wait_for_status("/b", 429, "beta's abort after the ..data swap")
        self.assertStatus(self.get("/a"), 200)

        # A version with one more key: the new symlink appears after the swap.
        extra = "policies:\n  unused: { mode: shadow }\n"
        self.publish_version(3, {"00-base.yaml": TEMPLATE, "alpha.yaml": ALPHA,
                                 "beta.yaml": BETA, "unused.yaml": extra})
        self.wait_for_status("/b", 200, "beta without abort after the third swap")
        harness.wait_until(lambda: "unused:" in self.deferd.admin_get("/config").body.decode(),
                           RELOAD_TIMEOUT, "the new key's policy in GET /config")
        self.assertEqual(self.reloads("failure"), 0)

    def publish_version(self, version, files):
        """Write `files` as version `version` and swap ..data to it, as the kubelet does."""
        version_dir = f"..v{version}"
        os.makedirs(os.path.join(self.policy_dir, version_dir))
        for name, text in files.items():
            with open(os.path.join(self.policy_dir, version_dir, name), "w") as f:
                f.write(text)
        data = os.path.join(self.policy_dir, "..data")
        staging = os.path.join(self.policy_dir, "..data_tmp")
        os.symlink(version_dir, staging)
        os.rename(staging, data)
        for name in files:
            link = os.path.join(self.policy_dir, name)
            if not os.path.islink(link):
                os.symlink(os.path.join("..data", name), link)

    def test_broken_file_keeps_running_config(self):
        self.write_policies(self.policy_dir)
        self.start()
        failures = self.reloads("failure")

        beta = os.path.join(self.policy_dir, "beta.yaml")
        write_file(beta, BETA.replace("extends: base", "extends: bsae"))
        harness.wait_until(lambda: self.reloads("failure") == failures + 1, RELOAD_TIMEOUT,
                           "the broken beta.yaml to be rejected")
        self.assertTrue(self.deferd.alive())
        self.assert_template_headers()
        self.assertIn(f"{beta}:3:5: policies.beta.extends: template 'bsae' not found",
                      self.deferd.log())

        write_file(beta, BETA.replace("gold", "silver"))
        harness.wait_until(lambda: self.get("/b").header("x-tier") == "silver", RELOAD_TIMEOUT,
                           "the fixed beta.yaml")

    def test_slow_writer_never_applied_half_written(self):
        self.write_policies(self.policy_dir)
        self.start()
        successes = self.reloads("success")

        # The first half alone is a valid file whose abort uses the default status, 503.
        first = ("policies:\n  alpha:\n    extends: base\n    fault:\n"
                 "      abort:\n        percent: 100%\n")
        rest = "        status: 418\n"
        statuses = []
        done = threading.Event()

        def poll():
            deadline = time.monotonic() + 30
            while not done.is_set() and time.monotonic() < deadline:
                statuses.append(self.get("/a").status)
                time.sleep(0.02)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            with open(os.path.join(self.policy_dir, "alpha.yaml"), "w") as f:
                f.write(first)
                f.flush()
                time.sleep(0.5)
                f.write(rest)
            self.wait_for_status("/a", 418, "the complete alpha.yaml")
            time.sleep(0.5)  # more polls after the reload
        finally:
            done.set()
            poller.join(timeout=30)

        self.assertNotIn(503, statuses, "the half-written alpha.yaml was applied")
        self.assertIn(418, statuses)
        self.assertEqual(self.reloads("success"), successes + 1)


class ValidateDirectoryTest(harness.DeferdTestCase):
    def setUp(self):
        self.dir = harness.make_dir("validate")
        deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", harness.free_port(), routes())],
            clusters=[harness.cluster_config("app", [harness.free_port()])],
            extra={"policy_files": ["policies.d"]},
        )
        with open(os.path.join(self.dir, "deferd.yaml"), "w") as f:
            f.write(json.dumps(deferd.config, indent=2))
        self.policy_dir = os.path.join(self.dir, "policies.d")
        os.makedirs(self.policy_dir)
        write_file(os.path.join(self.policy_dir, "00-base.yaml"), TEMPLATE)
        write_file(os.path.join(self.policy_dir, "alpha.yaml"), ALPHA)
        write_file(os.path.join(self.policy_dir, "beta.yaml"), BETA)

    def validate(self, path):
        return subprocess.run([harness.deferd_binary(), "validate", path], capture_output=True,
                              text=True, timeout=30)

    def test_good_directory(self):
        result = self.validate(self.dir)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout, os.path.join(self.dir, "deferd.yaml") + ": valid\n")

    def test_bad_directory_names_file_line_column(self):
        template = os.path.join(self.policy_dir, "00-base.yaml")
        write_file(template, TEMPLATE + "    fault: { delay: { percent: 5%, duration: 2 } }\n")
        write_file(os.path.join(self.policy_dir, "zeta.yaml"), "policies:\n  alpha: {}\n")

        result = self.validate(self.dir)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 2, result.stdout)
        self.assertTrue(lines[0].startswith(
            f"{template}:5:46: templates.base.fault.delay.duration: invalid duration '2'"),
            lines[0])
        self.assertEqual(lines[1], f"{self.policy_dir}/zeta.yaml:2:3: duplicate policy name "
                                   f"'alpha'; first defined at {self.policy_dir}/alpha.yaml:2:3")

    def test_missing_main_file(self):
        os.remove(os.path.join(self.dir, "deferd.yaml"))
        result = self.validate(self.dir)
        self.assertEqual(result.returncode, 1)
        self.assertIn("deferd.yaml: failed to open file", result.stdout)

    def test_validate_file_follows_policy_files(self):
        write_file(os.path.join(self.policy_dir, "beta.yaml"), "policies: {}\n")
        result = self.validate(os.path.join(self.dir, "deferd.yaml"))
        self.assertEqual(result.returncode, 1)
        self.assertIn("policy 'beta' not found in 'policies'", result.stdout)


if __name__ == "__main__":
    harness.main()
