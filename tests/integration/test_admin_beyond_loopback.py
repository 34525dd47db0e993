"""The admin listener bound beyond loopback: changes need a configured bearer token.

deferd binds its admin listener to 0.0.0.0 here, which is not a loopback address, so POST
requests need `admin.token_file`. Without one, every change is rejected with 401 and counted,
while reads (/metrics, /config) still work. To keep that address off every real interface,
the tests run inside a network namespace of their own that has only `lo`: the outer test
starts this file again under `unshare --net` and reads the inner run's result.
"""

import os
import shutil
import subprocess
import sys
import unittest

import harness
from harness import Reply

INNER_FLAG = "--in-namespace"
TOKEN = "beyond-loopback-token-51c2"
INNER_TIMEOUT = 120


def quick(_request):
    return Reply(200, [], b"ok")


class BeyondLoopbackInner(harness.DeferdTestCase):
    """Runs only inside the namespace, where 0.0.0.0 reaches nothing but `lo`."""

    def start(self, admin_extra):
        self.upstream = harness.RawUpstream(handler=quick)
        self.addCleanup(self.upstream.close)
        self.port = harness.free_port()
        self.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", self.port,
                                               [{"cluster": "app", "policy": "protect"}])],
            clusters=[harness.cluster_config("app", [self.upstream.port])],
            extra={"policies": {"protect": {"mode": "enforce",
                                            "fault": {"abort": {"status": 503,
                                                                "percent": "100%"}}}}},
        )
        self.deferd.config["admin"]["address"] = f"0.0.0.0:{self.deferd.admin_port}"
        self.deferd.config["admin"].update(admin_extra)
        self.deferd.start()
        self.addCleanup(self.deferd.stop)

    def switch(self, body, token=None):
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return harness.http_request(self.deferd.admin_port, "POST", "/policies/protect/mode",
                                    body=body.encode(), headers=headers)

    def unauthorized(self):
        return self.deferd.metrics().value("deferd_admin_unauthorized_total")

    def test_no_token_file_refuses_every_change(self):
        self.start({})
        self.assertIn("not on loopback", self.deferd.log())

        for token in (None, "anything"):
            resp = self.switch("off", token=token)
            self.assertStatus(resp, 401, f"token {token!r}")
            self.assertIn(b"admin.token_file", resp.body)
        self.assertEqual(self.unauthorized(), 2)

        # The refused switch changed nothing: the policy still aborts every request.
        self.assertStatus(harness.http_get(self.port, "/"), 503, "after the refused switches")

        # Reads need no token.
        self.assertStatus(self.deferd.admin_get("/config"), 200, "GET /config")
        self.assertStatus(self.deferd.admin_get("/ready"), 200, "GET /ready")

    def test_token_file_allows_the_right_token(self):
        token_dir = harness.make_dir("token")
        token_path = os.path.join(token_dir, "token")
        with open(token_path, "w") as f:
            f.write(TOKEN + "\n")
        self.start({"token_file": token_path})

        self.assertStatus(self.switch("off"), 401, "no token")
        self.assertStatus(self.switch("off", token="wrong"), 401, "wrong token")
        self.assertEqual(self.unauthorized(), 2)

        self.assertStatus(self.switch("off", token=TOKEN), 200, "the right token")
        self.assertStatus(harness.http_get(self.port, "/"), 200, "with the policy off")
        self.assertEqual(self.unauthorized(), 2)


class BeyondLoopbackTest(unittest.TestCase):
    """Starts the inner tests in a new network namespace and checks that they passed."""

    def test_in_own_network_namespace(self):
        unshare = shutil.which("unshare")
        self.assertIsNotNone(unshare, "unshare (util-linux) is needed to make a namespace")
        script = (
            "ip link set lo up && exec /usr/bin/python3 "
            f"{os.path.abspath(__file__)} {INNER_FLAG} -v"
        )
        inner = subprocess.run(
            [unshare, "--net", "--", "sh", "-c", script],
            capture_output=True, text=True, timeout=INNER_TIMEOUT, env=os.environ.copy(),
        )
        report = f"inner run exited {inner.returncode}\n{inner.stdout}\n{inner.stderr}"
        self.assertEqual(inner.returncode, 0, report)
        self.assertIn("Ran 2 tests", inner.stderr, report)


if __name__ == "__main__":
    if INNER_FLAG in sys.argv:
        sys.argv.remove(INNER_FLAG)
        del BeyondLoopbackTest
    else:
        del BeyondLoopbackInner
    harness.main()
