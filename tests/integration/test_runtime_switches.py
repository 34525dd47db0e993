"""Runtime policy switches on the admin listener: POST /policies/NAME/mode.

The policy under test has a backpressure section with a fixed limit of one slot and no queue,
so while a slow request has the slot, the next one is shed when the policy is enforced and
forwarded when it is off. That makes the effective mode visible in one request.
"""

import copy
import os
import threading

import harness
from harness import Reply

HOLD_SECONDS = 3.0
TOKEN = "switch-token-7f3a"


def hold_or_quick(request):
    delay = HOLD_SECONDS if request.target.startswith("/hold") else 0.0
    return Reply(200, [], b"done", delay=delay)


class Holder:
    """A request that takes the policy's one slot in the background."""

    def __init__(self, port, upstream):
        self.thread = threading.Thread(
            target=lambda: harness.http_get(port, "/hold", timeout=HOLD_SECONDS + 5), daemon=True
        )
        before = len(upstream.requests)
        self.thread.start()
        harness.wait_until(lambda: len(upstream.requests) > before, 5.0, "the holding request")

    def join(self):
        self.thread.join(HOLD_SECONDS + 10)


class RuntimeSwitchTest(harness.DeferdTestCase):
    admin_extra = {}

    def setUp(self):
        self.upstream = harness.RawUpstream(handler=hold_or_quick)
        self.addCleanup(self.upstream.close)
        self.port = harness.free_port()
        backpressure = {"limiter": "fixed", "initial_limit": 1, "min_limit": 1, "max_limit": 1,
                        "queue": {"max_length": 0}}
        self.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", self.port,
                                               [{"cluster": "app", "policy": "protect"}])],
            clusters=[harness.cluster_config("app", [self.upstream.port])],
            extra={"policies": {"protect": {"mode": "enforce", "backpressure": backpressure}}},
        )
        self.deferd.config["admin"].update(self.admin_extra)
        self.deferd.start()
        self.addCleanup(self.deferd.stop)

    def switch(self, policy, body, token=None, method="POST"):
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return harness.http_request(self.deferd.admin_port, method, f"/policies/{policy}/mode",
                                    headers, body.encode() if body is not None else None)

    def assertSwitched(self, resp, mode):
        self.assertStatus(resp, 200, "the switch")
        self.assertIn(f"now {mode}".encode(), resp.body)

    def status_while_held(self):
        """Return the status of a request sent while another one has the only slot."""
        holder = Holder(self.port, self.upstream)
        resp = harness.http_get(self.port, "/quick")
        holder.join()
        return resp

    def admin_config(self):
        resp = self.deferd.admin_get("/config")
        self.assertStatus(resp, 200)
        return resp.body.decode()


class LoopbackSwitchTest(RuntimeSwitchTest):
    def test_switch_applies_on_next_request(self):
        self.assertLocalReply(self.status_while_held(), 503, "load-shed", "enforce")

        self.assertSwitched(self.switch("protect", "off\n"), "off")
        self.assertStatus(self.status_while_held(), 200, "off")
        self.assertIn("#   protect: off (config file: enforce)", self.admin_config())

        self.assertSwitched(self.switch("protect", "shadow"), "shadow")
        self.assertStatus(self.status_while_held(), 200, "shadow")

        self.assertSwitched(self.switch("protect", "enforce"), "enforce")
        self.assertLocalReply(self.status_while_held(), 503, "load-shed", "enforce again")
        self.assertNotIn("runtime_overrides", self.admin_config())

    def test_keep_alive_connection_sees_switch(self):
        client = harness.RawClient(self.port)
        self.addCleanup(client.close)
        for body, expected in (("off", 200), ("enforce", 503)):
            self.assertStatus(self.switch("protect", body), 200, f"switch to {body}")
            holder = Holder(self.port, self.upstream)
            client.send(b"GET /quick HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertStatus(client.read_response(), expected, f"keep-alive after {body}")
            holder.join()

    def test_reload_resets_switches(self):
        self.assertSwitched(self.switch("protect", "off"), "off")
        self.assertIn("runtime_overrides", self.admin_config())

        before = self.deferd.metrics().value("deferd_config_reloads_total", result="success")
        config = copy.deepcopy(self.deferd.config)
        config["drain_timeout"] = "4s"
        self.deferd.write_config(config)
        harness.wait_until(
            lambda: self.deferd.metrics().value("deferd_config_reloads_total",
                                                result="success") == before + 1,
            10, "the reload")

        self.assertNotIn("runtime_overrides", self.admin_config())
        self.assertLocalReply(self.status_while_held(), 503, "load-shed", "after the reload")

    def test_invalid_requests_rejected(self):
        resp = self.switch("protect", None, method="GET")
        self.assertStatus(resp, 405, "GET")
        self.assertEqual(resp.header("allow"), "POST")

        resp = self.switch("nosuch", "off")
        self.assertStatus(resp, 404, "unknown policy")
        self.assertIn(b"policy nosuch not found", resp.body)

        resp = self.switch("protect", "disable")
        self.assertStatus(resp, 400, "invalid mode")
        self.assertIn(b"enforce, shadow or off", resp.body)

        self.assertLocalReply(self.status_while_held(), 503, "load-shed", "unchanged policy")


class TokenSwitchTest(RuntimeSwitchTest):
    def setUp(self):
        token_dir = harness.make_dir("token")
        self.token_path = os.path.join(token_dir, "token")
        with open(self.token_path, "w") as f:
            f.write(TOKEN + "\n")
        self.admin_extra = {"token_file": self.token_path}
        super().setUp()

    def unauthorized(self):
        return self.deferd.metrics().value("deferd_admin_unauthorized_total")

    def test_token_required_when_configured(self):
        self.assertEqual(self.unauthorized(), 0)
        for token in (None, "wrong", TOKEN + "x"):
            resp = self.switch("protect", "off", token=token)
            self.assertStatus(resp, 401, f"token {token!r}")
            self.assertEqual(resp.header("www-authenticate"), 'Bearer realm="deferd-admin"')
        self.assertEqual(self.unauthorized(), 3)
        self.assertLocalReply(self.status_while_held(), 503, "load-shed", "after rejected switches")

        self.assertSwitched(self.switch("protect", "off", token=TOKEN), "off")
        self.assertStatus(self.status_while_held(), 200, "after the authorized switch")
        self.assertEqual(self.unauthorized(), 3)
        self.assertNotIn(TOKEN, self.deferd.log(), "the token must never be logged")

    def test_token_file_reread_on_reload(self):
        with open(self.token_path, "w") as f:
            f.write("rotated-token\n")
        config = copy.deepcopy(self.deferd.config)
        config["drain_timeout"] = "4s"
        self.deferd.write_config(config)
        harness.wait_until(
            lambda: self.deferd.metrics().value("deferd_config_reloads_total",
                                                result="success") == 1,
            10, "the reload")

        self.assertStatus(self.switch("protect", "off", token=TOKEN), 401, "the old token")
        self.assertSwitched(self.switch("protect", "off", token="rotated-token"), "off")


if __name__ == "__main__":
    harness.main()
