"""Connection limits: the listener's max_connections, and running out of file descriptors.

Both are hostile-client cases: a flood of idle connections must not take deferd down, and once
the flood ends, deferd must serve again without a restart.
"""

import os
import socket
import time

import harness

MAX_CONNECTIONS = 8
# Descriptors for deferd started under prlimit: enough for its own files, the admin
# listener and a few connections, so a flood of a few dozen exhausts it.
FILE_LIMIT = 40


def open_idle_connections(port, count):
    """Open `count` connections that send nothing; return the sockets still open."""
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection((harness.LOOPBACK, port), timeout=2))
        except OSError:
            break
    return sockets


def closed_by_peer(sock, timeout=2.0):
    """Return True when the peer closed `sock` (EOF or reset) within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def cpu_seconds_over(pid, seconds):
    """Return the CPU seconds (user plus system) that process `pid` used in `seconds`."""
    ticks = os.sysconf("SC_CLK_TCK")

    def used():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before = used()
    time.sleep(seconds)
    return used() - before


class MaxConnectionsTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = harness.RawUpstream()
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.deferd = harness.Deferd(
            listeners=[
                harness.listener_config(
                    "inbound",
                    cls.port,
                    [{"cluster": "app"}],
                    limits={"max_connections": MAX_CONNECTIONS},
                )
            ],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_connections_over_limit_closed_and_counted(self):
        held = open_idle_connections(self.port, MAX_CONNECTIONS)
        self.addCleanup(lambda: [s.close() for s in held])
        self.assertEqual(len(held), MAX_CONNECTIONS, "connections within the limit")
        harness.wait_until(
            lambda: self.deferd.metrics().value(
                "deferd_downstream_connections_active", listener="inbound"
            )
            == MAX_CONNECTIONS,
            5,
            f"{MAX_CONNECTIONS} active downstream connections",
        )

        extra = socket.create_connection((harness.LOOPBACK, self.port), timeout=2)
        self.addCleanup(extra.close)
        self.assertTrue(closed_by_peer(extra), "deferd kept a connection over max_connections")

        rejected = self.deferd.metrics().value(
            "deferd_downstream_connections_rejected_total", listener="inbound"
        )
        self.assertGreaterEqual(rejected, 1, "rejected connections counter")

        # Once the idle connections go, new ones are served again.
        for s in held:
            s.close()
        harness.wait_until(
            lambda: harness.http_get(self.port, "/after").status == 200,
            5,
            "a request after the idle connections closed",
        )


class FileDescriptorExhaustionTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        harness.require_tool("prlimit")
        cls.upstream = harness.RawUpstream()
        cls.addClassCleanup(cls.upstream.close)
        cls.port = harness.free_port()
        cls.deferd = LimitedDeferd(
            listeners=[harness.listener_config("inbound", cls.port, [{"cluster": "app"}])],
            clusters=[harness.cluster_config("app", [cls.upstream.port])],
        ).start()
        cls.addClassCleanup(cls.deferd.stop)

    def test_recovers_after_descriptor_flood(self):
        if harness.sanitized_build():
            # The sanitizers' runtime needs descriptors of its own to check memory, and
            # reports false errors when none are left.
            self.skipTest("descriptor exhaustion cannot be tested under ASan and UBSan")
        flood = open_idle_connections(self.port, FILE_LIMIT * 2)
        self.addCleanup(lambda: [s.close() for s in flood])
        # Let deferd hit the limit: some of the flood stays in the kernel's accept queue.
        harness.wait_until(
            lambda: "accept on" in self.deferd.log(), 5, "deferd to log the failed accept"
        )
        self.assertTrue(self.deferd.alive(), "deferd exited when it ran out of descriptors")

        # While the flood lasts, the kernel keeps offering connections deferd cannot accept.
        # Retrying at once would burn a whole core; deferd pauses between attempts instead.
        cpu_seconds = cpu_seconds_over(self.deferd.proc.pid, 1.0)
        self.assertLess(cpu_seconds, 0.1, "deferd spun on failed accepts during the flood")

        for s in flood:
            s.close()
        resp = harness.wait_until(
            lambda: self.try_get("/after-flood"), 10, "a request after the flood ended"
        )
        self.assertStatus(resp, 200, "request after the descriptor flood")

    def try_get(self, path):
        try:
            resp = harness.http_get(self.port, path, timeout=2)
        except OSError:
            return None
        return resp if resp.status == 200 else None


def read_until_closed(sock, timeout):
    """Return what arrived on `sock` before the peer closed it, or None if it stayed open."""
    sock.settimeout(timeout)
    received = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return received
            received += chunk
    except ConnectionResetError:
        return received
    except socket.timeout:
        return None


class IdleTimeoutTest(harness.DeferdTestCase):
    """Idle and stalled connections are closed at every stage of their life, and deferd lives."""

    def setUp(self):
        self.upstream = harness.RawUpstream()
        self.addCleanup(self.upstream.close)
        self.port = harness.free_port()
        self.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", self.port, [{"cluster": "app"}],
                                               limits={"idle_timeout": "1s",
                                                       "header_timeout": "1s"})],
            clusters=[harness.cluster_config("app", [self.upstream.port])],
        ).start()
        self.addCleanup(self.deferd.stop)

    def test_idle_connections_closed_deferd_keeps_serving(self):
        # Silent from the start (still detecting the protocol), a partial HTTP/2 preface, a
        # partial request line, and a keep-alive connection after one whole request.
        silent = open_idle_connections(self.port, 2)
        preface = socket.create_connection((harness.LOOPBACK, self.port), timeout=2)
        preface.sendall(b"PRI * HTTP/2.0\r\n")
        partial = socket.create_connection((harness.LOOPBACK, self.port), timeout=2)
        partial.sendall(b"GET / HT")
        kept = socket.create_connection((harness.LOOPBACK, self.port), timeout=2)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertIn(b"200", kept.recv(4096))

        # Idle connections are closed silently, and a stalled request gets 408 first.
        expected = [("silent", silent[0], b""), ("silent", silent[1], b""),
                    ("partial preface", preface, b""),
                    ("partial request", partial, b"HTTP/1.1 408"), ("kept alive", kept, b"")]
        for name, sock, start in expected:
            with self.subTest(connection=name):
                received = read_until_closed(sock, timeout=5.0)
                self.assertIsNotNone(received, f"{name} stayed open")
                self.assertTrue(received.startswith(start), f"{name} got {received[:40]!r}")
            sock.close()

        self.assertTrue(self.deferd.alive(), "deferd exited after closing idle connections")
        self.assertStatus(harness.http_get(self.port, "/"), 200, "after the idle closes")


class LimitedDeferd(harness.Deferd):
    """deferd started under `prlimit --nofile`, so a small flood exhausts its descriptors."""

    def start(self):
        self.write_config()
        self.proc = harness.start_process(
            [
                "prlimit",
                f"--nofile={FILE_LIMIT}:{FILE_LIMIT}",
                harness.deferd_binary(),
                "--config",
                self.config_path,
            ],
            "deferd",
            log_path=self.log_path,
        )
        self.wait_ready()
        return self


if __name__ == "__main__":
    harness.main()
