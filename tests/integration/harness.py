"""Shared fixtures for deferd's integration tests.

Everything here uses the Python standard library only, so the tests run with Debian's
/usr/bin/python3. The pieces:

- free_port(), wait_until(), wait_for_port(): loopback ports and polling with deadlines.
- start_process() / stop_process(): every child is tracked by PID and stopped at exit, also
  when a test fails or the runner is interrupted.
- Deferd: writes a config, starts build/proxy/deferd, waits for /ready, scrapes /metrics.
- Nginx: a real upstream from a generated config in a temporary prefix directory.
- RawUpstream: a scripted upstream that records the exact bytes it received and replies as
  the test specifies (status, headers, delay, reset, half-written response, garbage).
- RawClient: a client socket that sends exact bytes and parses what comes back.

Network traffic stays on 127.0.0.1.
"""

import atexit
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

LOOPBACK = "127.0.0.1"

# Time allowed for a process to start listening or a condition to become true.
STARTUP_TIMEOUT = 10.0
# Socket timeout for test clients; a proxy that stalls fails the test instead of hanging it.
IO_TIMEOUT = 5.0


# --- temporary files --------------------------------------------------------------------------

_tmp_root = None


def tmp_root():
    """Return the directory that contains this run's configs and logs, creating it once."""
    global _tmp_root
    if _tmp_root is None:
        base = os.environ.get("DEFERD_TEST_TMPDIR")
        if base:
            os.makedirs(base, exist_ok=True)
        _tmp_root = tempfile.mkdtemp(prefix="deferd-it-", dir=base)
    return _tmp_root


def make_dir(name):
    """Create a fresh, uniquely named directory under the run's temporary root."""
    return tempfile.mkdtemp(prefix=name + "-", dir=tmp_root())


# --- processes --------------------------------------------------------------------------------

_processes = {}  # pid -> (Popen, name, log_path)
_processes_lock = threading.Lock()

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # Runs in the child between fork and exec. If the test runner is killed (a ctest timeout
    # sends SIGKILL, which no cleanup handler can catch), the kernel kills the child too.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def require_tool(name):
    """Return the path of an executable, or fail loudly when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"required tool '{name}' is not installed; run deploy/install-deps.sh as root"
        )
    return path


def start_process(args, name, log_path=None, stdin=subprocess.DEVNULL, stdout=None):
    """Start a child process, record it by PID and return its Popen.

    stderr (and stdout unless `stdout` is given) go to `log_path`, so a failing test can show
    what the process wrote.
    """
    if log_path is None:
        log_path = os.path.join(make_dir(name), name + ".log")
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=log if stdout is None else stdout,
            stderr=log,
            preexec_fn=_die_with_parent,
        )
    finally:
        log.close()
    with _processes_lock:
        _processes[proc.pid] = (proc, name, log_path)
    return proc


def stop_process(proc, sig=signal.SIGTERM, timeout=10.0):
    """Signal a tracked process by PID, wait up to `timeout`, then SIGKILL it.

    Returns the exit status. Safe to call twice.
    """
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    with _processes_lock:
        _processes.pop(proc.pid, None)
    return proc.returncode


def log_tail(path, lines=40):
    """Return the last `lines` lines of a log file, or a note when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


def _stop_all_processes():
    with _processes_lock:
        tracked = list(_processes.values())
    for proc, _, _ in tracked:
        stop_process(proc, timeout=5.0)


atexit.register(_stop_all_processes)


def _exit_on_sigterm(signum, frame):
    # Turn SIGTERM into a normal exit, so atexit stops the children.
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _exit_on_sigterm)


# --- ports and polling ------------------------------------------------------------------------


_handed_out_ports = set()


def free_port():
    """Return a loopback TCP port that nothing listens on at the moment of the call.

    The kernel may offer a port again once its probe socket is closed, so two calls made before
    either port is bound (a listener and the admin address, say) could get the same one. Ports
    already returned by this process are skipped.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise AssertionError("no unused loopback port after 100 tries")


def wait_until(condition, timeout, what, interval=0.02):
    """Poll `condition()` until it returns a truthy value, and return that value.

    Fails the test with `what` and the last value or exception when `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = condition()
            if last:
                return last
        except (OSError, http.client.HTTPException) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def port_accepts(port, host=LOOPBACK):
    """Return True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port, timeout=STARTUP_TIMEOUT, proc=None, what=None):
    """Wait until 127.0.0.1:port accepts connections; fail early if `proc` exits."""

    def ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what or 'process'} exited with status {proc.returncode}")
        return port_accepts(port)

    wait_until(ready, timeout, what or f"port {port}")


# --- HTTP helpers -----------------------------------------------------------------------------


class Response:
    """A complete HTTP response as seen by a client."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value) pairs, names as received
        self.body = body

    def header(self, name):
        """Return the first value of header `name` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_values(self, name):
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def __repr__(self):
        return f"<Response {self.status} headers={self.headers!r} body={self.body[:200]!r}>"


def http_request(port, method="GET", path="/", headers=None, body=None, timeout=IO_TIMEOUT):
    """Send one request on a new connection with http.client and return a Response."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.getheaders(), data)
    except socket.timeout:
        raise AssertionError(
            f"{method} {path} to port {port}: no complete response within {timeout}s"
        ) from None
    finally:
        conn.close()


def http_get(port, path="/", headers=None, timeout=IO_TIMEOUT):
    return http_request(port, "GET", path, headers=headers, timeout=timeout)


# --- Prometheus text format ------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class Metrics:
    """Samples of one /metrics scrape, looked up by name and labels."""

    def __init__(self, text):
        self.text = text
        self.samples = []  # (name, labels dict, value)
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if m is None:
                raise AssertionError(f"cannot parse metrics line: {line!r}")
            labels = dict(_LABEL.findall(m.group(3) or ""))
            self.samples.append((m.group(1), labels, float(m.group(4))))

    def find(self, name, **labels):
        """Return the samples named `name` whose labels include `labels`."""
        return [
            (sample_labels, value)
            for sample_name, sample_labels, value in self.samples
            if sample_name == name
            and all(sample_labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name, **labels):
        """Return the sum of the matching samples, 0.0 when none match."""
        return sum(value for _, value in self.find(name, **labels))

    def names(self):
        return sorted({name for name, _, _ in self.samples})


# --- deferd -----------------------------------------------------------------------------------


def deferd_binary():
    """Return the deferd executable named by DEFERD_BIN, or fail loudly."""
    path = os.environ.get("DEFERD_BIN")
    if not path:
        raise AssertionError("DEFERD_BIN is not set; run the tests through ctest or set it")
    if not os.access(path, os.X_OK):
        raise AssertionError(f"DEFERD_BIN={path} is not an executable file; build target deferd")
    return path


def sanitized_build():
    """Return True when DEFERD_BIN was built with ASan/UBSan (set by tests/CMakeLists.txt)."""
    return os.environ.get("DEFERD_SANITIZED") == "1"


def listener_config(name, port, routes, limits=None, direction="inbound"):
    listener = {
        "name": name,
        "address": f"{LOOPBACK}:{port}",
        "direction": direction,
        "routes": routes,
    }
    if limits:
        listener["limits"] = limits
    return listener


def cluster_config(name, ports, **extra):
    cluster = {"name": name, "endpoints": [f"{LOOPBACK}:{p}" for p in ports]}
    cluster.update(extra)
    return cluster


class Deferd:
    """One deferd process with a generated config.

    The config is written as JSON, which YAML 1.2 parsers (yaml-cpp included) read as a flow
    mapping, so tests build it from Python dicts. `listeners` and `clusters` use the YAML
    schema's field names.
    """

    def __init__(self, listeners, clusters, drain_timeout="5s", access_log=True, extra=None):
        self.dir = make_dir("deferd")
        self.config_path = os.path.join(self.dir, "deferd.yaml")
        self.log_path = os.path.join(self.dir, "deferd.log")
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.admin_port = free_port()
        self.config = {
            "node": {"service": "integration"},
            "admin": {"address": f"{LOOPBACK}:{self.admin_port}"},
            "workers": 1,
            "drain_timeout": drain_timeout,
            "access_log": {"path": self.access_log_path} if access_log else False,
            "listeners": listeners,
            "clusters": clusters,
        }
        if extra:
            self.config.update(extra)
        self.proc = None

    def write_config(self, config=None, text=None):
        """Write `config` (a dict) or raw `text` to the config file, atomically."""
        if text is None:
            text = json.dumps(config if config is not None else self.config, indent=2)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, self.config_path)

    def start(self):
        self.write_config()
        self.proc = start_process(
            [deferd_binary(), "--config", self.config_path], "deferd", log_path=self.log_path
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout=STARTUP_TIMEOUT):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"deferd exited with status {self.proc.returncode} while starting; "
                    f"log:\n{log_tail(self.log_path)}"
                )
            try:
                return self.admin_get("/ready", timeout=1.0).status == 200
            except OSError:
                return False

        wait_until(ready, timeout, "deferd /ready to return 200")

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.proc is None:
            return None
        return stop_process(self.proc, sig, timeout)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        return log_tail(self.log_path)

    def admin_get(self, path, timeout=IO_TIMEOUT):
        return http_get(self.admin_port, path, timeout=timeout)

    def metrics(self):
        resp = self.admin_get("/metrics")
        if resp.status != 200:
            raise AssertionError(f"GET /metrics returned {resp.status}, expected 200: {resp!r}")
        return Metrics(resp.body.decode("utf-8"))

    def vm_rss_bytes(self):
        """Return the resident set size of the deferd process from /proc/PID/status."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS in /proc/{self.proc.pid}/status")

    def access_log_entries(self):
        """Return the parsed JSON lines of the access log written so far."""
        try:
            with open(self.access_log_path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


class DeferdTestCase(unittest.TestCase):
    """A TestCase that adds deferd's log to every failure message of its assertions."""

    deferd = None

    def fail_with_log(self, message):
        log = self.deferd.log() if self.deferd is not None else "(no deferd)"
        self.fail(f"{message}\n--- deferd log (tail) ---\n{log}")

    def assertStatus(self, resp, expected, context=""):
        if resp.status != expected:
            self.fail_with_log(
                f"{context} expected status {expected}, got {resp.status}: {resp!r}".strip()
            )

    def assertLocalReply(self, resp, status, reason, context=""):
        """Check a local reply: the status and the deferd-reason header."""
        self.assertStatus(resp, status, context)
        got = resp.header("deferd-reason")
        self.assertEqual(
            got, reason, f"{context} expected deferd-reason: {reason}, got {got!r}: {resp!r}"
        )


# --- nginx ------------------------------------------------------------------------------------

NGINX_BIG_SIZE = 1 << 30  # bytes of /static/big, a sparse file


class Nginx:
    """An nginx server on a free loopback port, configured from a temporary prefix directory.

    Paths served:
      /static/index.html   a small file, with Last-Modified for conditional requests
      /static/big          NGINX_BIG_SIZE bytes of zeros (sparse, so no disk is used)
      /static/no-content   204 without a body
      anything else under /static/ from the document root
    """

    INDEX_BODY = b"<html><body>deferd integration test</body></html>\n"

    def __init__(self, big=False):
        self.dir = make_dir("nginx")
        self.port = free_port()
        self.root = os.path.join(self.dir, "www")
        static = os.path.join(self.root, "static")
        os.makedirs(static)
        os.makedirs(os.path.join(self.dir, "tmp"))
        with open(os.path.join(static, "index.html"), "wb") as f:
            f.write(self.INDEX_BODY)
        if big:
            with open(os.path.join(static, "big"), "wb") as f:
                f.truncate(NGINX_BIG_SIZE)
        self.proc = None

    def _config(self):
        d = self.dir
        # As root, nginx would switch its worker to "nobody", which cannot read the 0700 temp
        # directory, so the worker keeps running as the current user.
        user = "user root root;" if os.geteuid() == 0 else ""
        return f"""
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    server {{
        listen {LOOPBACK}:{self.port};
        root {self.root};
        location = /static/no-content {{ return 204; }}
        location /static/ {{ }}
    }}
}}
"""

    def start(self):
        require_tool("nginx")
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self._config())
        self.proc = start_process(
            [
                "nginx",
                "-p", self.dir,
                "-e", os.path.join(self.dir, "error.log"),
                "-c", conf,
                "-g", "daemon off;",
            ],
            "nginx",
            log_path=os.path.join(self.dir, "stderr.log"),
        )
        wait_for_port(self.port, proc=self.proc, what="nginx")
        return self

    def stop(self):
        # SIGQUIT is nginx's graceful stop; the master then stops its worker.
        if self.proc is not None:
            stop_process(self.proc, signal.SIGQUIT, timeout=10.0)


# --- scripted upstream ------------------------------------------------------------------------


class RecordedRequest:
    """One request as the scripted upstream parsed it."""

    def __init__(self, method, target, version, headers, head_bytes):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list of (name, value) in arrival order
        self.head_bytes = head_bytes  # request line and header block, exactly as received
        self.body = b""  # kept up to RawUpstream.BODY_KEEP bytes
        self.body_length = 0  # decoded body bytes received
        self.chunked = False

    def header(self, name):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_values(self, name):
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def header_names(self):
        return [key.lower() for key, _ in self.headers]

    def to_json(self):
        return {
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": self.headers,
            "body_length": self.body_length,
            "chunked": self.chunked,
        }

    def __repr__(self):
        return f"<RecordedRequest {self.head_bytes[:400]!r} body_length={self.body_length}>"


class Reply:
    """What the scripted upstream does with one request.

    action:
      "respond"  send status, headers and body (chunked when `chunks` is given)
      "reset"    close with an RST before sending anything
      "close"    close cleanly before sending anything
      "raw"      send `raw` bytes verbatim, then close
      "partial"  send the head with Content-Length len(body) and `partial_bytes` of the body,
                 then close
    `delay` seconds pass before the action starts.
    """

    def __init__(self, status=200, headers=None, body=b"", chunks=None, delay=0.0,
                 action="respond", raw=b"", partial_bytes=0, reason="OK"):
        self.status = status
        self.reason = reason
        self.headers = headers or []
        self.body = body
        self.chunks = chunks
        self.delay = delay
        self.action = action
        self.raw = raw
        self.partial_bytes = partial_bytes


def echo_reply(request):
    """Default handler: 200 with a JSON description of the request the upstream received."""
    body = json.dumps(request.to_json()).encode()
    return Reply(200, [("Content-Type", "application/json")], body)


class UpstreamProtocolError(Exception):
    pass


class RawUpstream:
    """A scripted HTTP/1.1 upstream on a free loopback port.

    It records every byte received per connection and every parsed request, and answers
    through `handler(request) -> Reply`, which tests may replace at any time. Connections are
    kept alive until the peer closes them or a Reply ends them. Bodies (Content-Length or
    chunked) are read fully before the handler runs, counted, and kept up to BODY_KEEP bytes.
    """

    MAX_HEAD = 1 << 20
    BODY_KEEP = 1 << 20
    RAW_KEEP = 1 << 20  # bytes of raw traffic kept per connection

    def __init__(self, handler=echo_reply, port=0):
        """`port` 0 picks a free port; another value restarts an upstream on a known port."""
        self.handler = handler
        self.lock = threading.Lock()
        self.requests = []
        self.connection_bytes = []  # one bytearray per accepted connection, capped at RAW_KEEP
        self.total_bytes = 0
        self.connections_accepted = 0
        self.errors = []  # protocol errors seen while parsing what deferd sent
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, port))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self._clients = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    # Recording

    def reset(self):
        """Forget everything recorded so far."""
        with self.lock:
            self.requests = []
            # deferd keeps upstream connections alive across tests: empty their records in place
            # so bytes arriving later on an old connection are still seen.
            for record in self.connection_bytes:
                del record[:]
            self.total_bytes = 0
            self.connections_accepted = 0
            self.errors = []

    def snapshot(self):
        """Return (requests, total_bytes, connections_accepted) under the lock."""
        with self.lock:
            return list(self.requests), self.total_bytes, self.connections_accepted

    def all_bytes(self):
        """Return the bytes received since the last reset(), connection after connection."""
        with self.lock:
            return b"".join(bytes(b) for b in self.connection_bytes)

    def wait_for_requests(self, count, timeout=STARTUP_TIMEOUT):
        """Wait until at least `count` requests were received; return the recorded list."""

        def enough():
            with self.lock:
                return list(self.requests) if len(self.requests) >= count else None

        return wait_until(enough, timeout, f"{count} request(s) at the scripted upstream")

    def close(self):
        self._closed = True
        # On Linux, close() alone does not wake a thread blocked in accept(): the socket would
        # keep listening for one more connection. shutdown() wakes it.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass
        with self.lock:
            clients = list(self._clients)
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # Serving

    def _accept_loop(self):
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self._closed:
                conn.close()
                return
            with self.lock:
                self.connections_accepted += 1
                record = bytearray()
                self.connection_bytes.append(record)
                self._clients.add(conn)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn, record):
        reader = _Reader(conn, self, record)
        try:
            while True:
                request = self._read_request(reader)
                if request is None:
                    return
                reply = self.handler(request)
                if not self._send_reply(conn, reply, request):
                    return
        except UpstreamProtocolError as e:
            with self.lock:
                self.errors.append(str(e))
        except OSError:
            pass
        finally:
            with self.lock:
                self._clients.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _read_request(self, reader):
        head = reader.read_until(b"\r\n\r\n", self.MAX_HEAD)
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise UpstreamProtocolError(f"bad request line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise UpstreamProtocolError(f"bad header line {line!r}")
            headers.append((name, value.strip()))
        request = RecordedRequest(parts[0], parts[1], parts[2], headers, head)

        te = request.header("transfer-encoding")
        if te is not None and te.lower() == "chunked":
            request.chunked = True
            self._read_chunked(reader, request)
        else:
            length = request.header("content-length")
            if length is not None:
                self._read_body(reader, request, int(length))
        with self.lock:
            self.requests.append(request)
        return request

    def _keep_body(self, request, data):
        request.body_length += len(data)
        room = self.BODY_KEEP - len(request.body)
        if room > 0:
            request.body += bytes(data[:room])

    def _read_body(self, reader, request, length):
        remaining = length
        while remaining > 0:
            data = reader.read_some(min(remaining, 1 << 20))
            if not data:
                raise UpstreamProtocolError(
                    f"connection closed with {remaining} of {length} body bytes missing"
                )
            self._keep_body(request, data)
            remaining -= len(data)

    def _read_chunked(self, reader, request):
        while True:
            line = reader.read_until(b"\r\n", 4096)
            if line is None:
                raise UpstreamProtocolError("connection closed inside a chunked body")
            size_text = line[:-2].split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise UpstreamProtocolError(f"bad chunk size {line!r}") from None
            if size == 0:
                # Trailer section: lines until an empty one.
                while True:
                    trailer = reader.read_until(b"\r\n", 65536)
                    if trailer is None or trailer == b"\r\n":
                        return
            self._read_body(reader, request, size)
            if reader.read_exact(2) != b"\r\n":
                raise UpstreamProtocolError("chunk data not followed by CRLF")

    def _send_reply(self, conn, reply, request):
        """Send `reply`; return True when the connection stays open for another request."""
        if reply.delay:
            time.sleep(reply.delay)
        if reply.action == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False
        if reply.action == "close":
            return False
        if reply.action == "raw":
            conn.sendall(reply.raw)
            return False

        head = [f"HTTP/1.1 {reply.status} {reply.reason}"]
        head += [f"{k}: {v}" for k, v in reply.headers]
        no_body = request.method == "HEAD" or reply.status in (204, 304) or reply.status < 200
        if reply.chunks is not None:
            head.append("Transfer-Encoding: chunked")
        elif reply.status >= 200 and reply.status not in (204, 304):
            # A HEAD response carries the Content-Length the GET body would have.
            if not any(k.lower() == "content-length" for k, _ in reply.headers):
                head.append(f"Content-Length: {len(reply.body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")

        if reply.action == "partial":
            conn.sendall(data + reply.body[: reply.partial_bytes])
            return False
        if no_body:
            conn.sendall(data)
        elif reply.chunks is not None:
            for chunk in reply.chunks:
                data += b"%x\r\n%s\r\n" % (len(chunk), chunk)
            conn.sendall(data + b"0\r\n\r\n")
        else:
            conn.sendall(data + reply.body)
        closing = any(k.lower() == "connection" and v.lower() == "close" for k, v in reply.headers)
        return not closing


class _Reader:
    """Buffered reads from a socket that also record the raw bytes for RawUpstream."""

    def __init__(self, conn, upstream, record):
        self.conn = conn
        self.upstream = upstream
        self.record = record
        self.buf = bytearray()

    def _fill(self):
        data = self.conn.recv(1 << 20)
        if data:
            with self.upstream.lock:
                self.upstream.total_bytes += len(data)
                room = RawUpstream.RAW_KEEP - len(self.record)
                if room > 0:
                    self.record += data[:room]
            self.buf += data
        return bool(data)

    def read_until(self, delimiter, limit):
        """Return bytes up to and including `delimiter`, or None at a clean end of stream."""
        start = 0
        while True:
            i = self.buf.find(delimiter, start)
            if i >= 0:
                end = i + len(delimiter)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise UpstreamProtocolError(f"no {delimiter!r} within {limit} bytes")
            start = max(0, len(self.buf) - len(delimiter) + 1)
            if not self._fill():
                if self.buf:
                    raise UpstreamProtocolError(f"connection closed mid-message: {bytes(self.buf[:200])!r}")
                return None

    def read_some(self, limit):
        if not self.buf and not self._fill():
            return b""
        out = self.buf[:limit]
        del self.buf[:limit]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise UpstreamProtocolError("connection closed early")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


# --- raw client -------------------------------------------------------------------------------


class RawClient:
    """A client socket that sends exact bytes and parses the responses it gets back."""

    def __init__(self, port, timeout=IO_TIMEOUT):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.buf = bytearray()
        self.eof = False
        self.status_line = None  # of the last head read, without its CRLF

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        """Read more bytes into the buffer; return False at the end of the stream.

        Raises socket.timeout when nothing arrives within the socket's timeout.
        """
        if self.eof:
            return False
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _fill_or_fail(self, what):
        """Read more bytes; fail the test when the peer closes or stays silent."""
        try:
            if not self._fill():
                raise AssertionError(
                    f"connection closed while waiting for {what}; buffered {bytes(self.buf[:300])!r}"
                )
        except socket.timeout:
            raise AssertionError(
                f"nothing arrived within {self.sock.gettimeout()}s while waiting for {what}; "
                f"buffered {bytes(self.buf[:300])!r}"
            ) from None

    def read_head(self):
        """Read one response head and return (status, headers)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill_or_fail("a response head")
        end = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end]
        lines = head.split("\r\n")
        self.status_line = lines[0]
        status_parts = lines[0].split(" ", 2)
        if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/"):
            raise AssertionError(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name, value.strip()))
        return int(status_parts[1]), headers

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill_or_fail(f"{n - len(self.buf)} more body bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_line(self):
        while b"\r\n" not in self.buf:
            self._fill_or_fail("a chunk-size line")
        end = self.buf.index(b"\r\n") + 2
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    def read_response(self, request_method="GET"):
        """Read one final response (skipping 1xx) and its body; return a Response."""
        while True:
            status, headers = self.read_head()
            if status >= 200:
                break
        resp = Response(status, headers, b"")
        if request_method == "HEAD" or status in (204, 304):
            return resp
        te = resp.header("transfer-encoding")
        length = resp.header("content-length")
        if te is not None and te.lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self._read_line()[:-2].split(b";")[0], 16)
                if size == 0:
                    while self._read_line() != b"\r\n":
                        pass
                    break
                body += self.read_exact(size)
                self.read_exact(2)
            resp.body = bytes(body)
        elif length is not None:
            resp.body = self.read_exact(int(length))
        else:
            body, closed = self.read_to_close()
            if not closed:
                raise AssertionError(f"a response without framing was not ended by a close: {resp!r}")
            resp.body = body
            self.buf.clear()
        return resp

    def read_to_close(self, timeout=IO_TIMEOUT):
        """Read until the peer closes; return (bytes, closed). closed is False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(self.buf), False
            self.sock.settimeout(remaining)
            try:
                self._fill()
            except socket.timeout:
                return bytes(self.buf), False
        return bytes(self.buf), True

    def wait_closed(self, timeout=IO_TIMEOUT):
        """Return True when the peer closes the connection within `timeout`."""
        return self.read_to_close(timeout)[1]


def parse_responses(data):
    """Split raw bytes into (status, headers, body) tuples for Content-Length framed responses.

    Used on what a client read up to the close of a connection.
    """
    out = []
    rest = data
    while rest:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            break
        head = rest[:end].decode("latin-1").split("\r\n")
        rest = rest[end + 4:]
        status = int(head[0].split(" ")[1])
        headers = []
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        length = 0
        for name, value in headers:
            if name.lower() == "content-length":
                length = int(value)
        out.append(Response(status, headers, rest[:length]))
        rest = rest[length:]
    return out


# --- running ----------------------------------------------------------------------------------


def main():
    """Run the calling module's tests; keep the temporary directory only when a test fails."""
    program = unittest.main(module="__main__", exit=False, verbosity=2)
    ok = program.result.wasSuccessful()
    _stop_all_processes()
    if _tmp_root is not None:
        if ok and os.environ.get("DEFERD_KEEP_TMP") != "1":
            shutil.rmtree(_tmp_root, ignore_errors=True)
        else:
            print(f"logs and configs kept in {_tmp_root}", file=sys.stderr)
    sys.exit(0 if ok else 1)
