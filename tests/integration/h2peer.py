"""A scripted HTTP/2 client for the integration tests, built on Debian's python3-h2.

It speaks h2c with prior knowledge over one loopback socket and records what arrives per
stream: response headers, body, trailers and resets. Flow control is in the test's hands:
with `auto_ack=False` received DATA is not acknowledged until ack() is called, which makes a
slow reader. Every wait has a deadline.
"""

import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from harness import IO_TIMEOUT, LOOPBACK


class StreamResult:
    def __init__(self, stream_id):
        self.stream_id = stream_id
        self.headers = None  # list of (name, value) str pairs, pseudo-headers included
        self.body = bytearray()
        self.body_length = 0
        self.trailers = None
        self.reset_code = None  # error code of an RST_STREAM received
        self.ended = False

    @property
    def done(self):
        return self.ended or self.reset_code is not None

    def header(self, name):
        for key, value in self.headers or []:
            if key == name:
                return value
        return None

    @property
    def status(self):
        value = self.header(":status")
        return int(value) if value is not None else None

    def trailer(self, name):
        for key, value in self.trailers or []:
            if key == name:
                return value
        return None

    def __repr__(self):
        return (
            f"<stream {self.stream_id} headers={self.headers} trailers={self.trailers} "
            f"body_length={self.body_length} reset={self.reset_code}>"
        )


class H2Client:
    """One HTTP/2 connection to a loopback port."""

    def __init__(self, port, keep_body=True, auto_ack=True, settings=None, validate=True):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.keep_body = keep_body
        self.auto_ack = auto_ack
        self.streams = {}
        self.goaway = None  # (error_code, last_stream_id) of a GOAWAY received
        self.closed = False
        self.unacked = {}  # stream id -> bytes received and not acknowledged
        self.flush()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method, path, headers=None, body=None, end_stream=True, authority=None):
        """Open a stream; send `body` (bytes) if given. Return the stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        authority = authority or f"{LOOPBACK}:{self.sock.getpeername()[1]}"
        all_headers = [
            (":method", method),
            (":path", path),
            (":scheme", "http"),
            (":authority", authority),
        ] + list(headers or [])
        self.streams[stream_id] = StreamResult(stream_id)
        self.conn.send_headers(stream_id, all_headers, end_stream=end_stream and body is None)
        self.flush()
        if body is not None:
            self.send_data(stream_id, body, end_stream=end_stream)
        return stream_id

    def send_data(self, stream_id, data, end_stream=False, deadline_seconds=IO_TIMEOUT):
        """Send `data` as the peer's flow-control windows allow, reading meanwhile."""
        deadline = time.monotonic() + deadline_seconds
        view = memoryview(data)
        while len(view) > 0:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                if time.monotonic() > deadline:
                    raise AssertionError(f"stream {stream_id}: no flow-control window in time")
                self.read_once(timeout=0.2)
                continue
            piece = view[:window]
            view = view[window:]
            self.conn.send_data(stream_id, piece.tobytes(), end_stream=end_stream and not view)
            self.flush()
        if end_stream and len(data) == 0:
            self.conn.end_stream(stream_id)
            self.flush()

    def send_trailers(self, stream_id, trailers):
        self.conn.send_headers(stream_id, trailers, end_stream=True)
        self.flush()

    def reset(self, stream_id, code=8):
        self.conn.reset_stream(stream_id, error_code=code)
        self.flush()

    def ack(self, stream_id, size):
        """Acknowledge `size` received bytes of a stream (WINDOW_UPDATE)."""
        self.conn.acknowledge_received_data(size, stream_id)
        self.unacked[stream_id] = self.unacked.get(stream_id, 0) - size
        self.flush()

    def read_once(self, timeout=IO_TIMEOUT):
        """Read one batch of bytes and handle its events. Return False at end of stream."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return True
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        for event in events:
            self._handle(event)
        self.flush()
        return True

    def _stream(self, stream_id):
        return self.streams.setdefault(stream_id, StreamResult(stream_id))

    def _handle(self, event):
        if isinstance(event, h2.events.ResponseReceived):
            self._stream(event.stream_id).headers = event.headers
        elif isinstance(event, h2.events.TrailersReceived):
            self._stream(event.stream_id).trailers = event.headers
        elif isinstance(event, h2.events.DataReceived):
            stream = self._stream(event.stream_id)
            stream.body_length += len(event.data)
            if self.keep_body:
                stream.body += event.data
            size = event.flow_controlled_length
            if self.auto_ack:
                self.conn.acknowledge_received_data(size, event.stream_id)
            else:
                self.unacked[event.stream_id] = self.unacked.get(event.stream_id, 0) + size
        elif isinstance(event, h2.events.StreamEnded):
            self._stream(event.stream_id).ended = True
        elif isinstance(event, h2.events.StreamReset):
            self._stream(event.stream_id).reset_code = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = (event.error_code, event.last_stream_id)

    def wait(self, stream_id, timeout=IO_TIMEOUT):
        """Read until the stream ends or is reset; return its StreamResult."""
        deadline = time.monotonic() + timeout
        stream = self._stream(stream_id)
        while not stream.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"stream {stream_id} did not end within {timeout} s: {stream}")
            if not self.read_once(timeout=min(left, 0.5)):
                break
        return stream

    def wait_closed(self, timeout=IO_TIMEOUT):
        """Read until the server closes the connection; return the GOAWAY seen, if any."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the connection was not closed within {timeout} s")
            self.read_once(timeout=min(left, 0.5))
        return self.goaway

    def get(self, path, headers=None, timeout=IO_TIMEOUT):
        return self.wait(self.request("GET", path, headers=headers), timeout=timeout)


class H2Upstream:
    """A scripted h2c server. It sends GOAWAY (last stream id 0) on the first request of each of
    its first `refuse_connections` connections, and 200 "served" for every other request, with
    no content-length and, when the path ends in "/trailers", the trailer x-upstream-trailer.
    Two paths end their response without DATA bytes in the last frame: "/no-content" is a 204
    whose HEADERS carry END_STREAM, and "/split-end" sends "hello" with a content-length and
    then END_STREAM on an empty DATA frame, as many servers do.
    A request whose path contains "/after-trailers" gets its response once its trailers arrive,
    and every request's trailers are recorded in `request_trailers`. A path ending in
    "/window" is answered with the connection's send window, the bytes the client lets this
    server send on the connection, in decimal. A path ending in "/malformed" gets a response
    with a connection-specific field, which RFC 9113 section 8.2.2 forbids. A path ending in
    "/after-body" is answered once the request has ended; one ending in "/early-head" gets its
    response head at once and its body once the request has ended. A path ending in
    "/reset-after-head" gets a response head and 5 body bytes, then RST_STREAM INTERNAL_ERROR.

    With `initial_window` set, the server announces it as SETTINGS_INITIAL_WINDOW_SIZE and
    never raises a stream's window, so a client may send that many body bytes per stream.
    Each connection is closed after `lifetime` seconds.

    deferd must retry a request refused that way on a new connection, since the server did
    not process it.
    """

    def __init__(self, refuse_connections=1, initial_window=None, lifetime=IO_TIMEOUT):
        self.refuse_connections = refuse_connections
        self.initial_window = initial_window
        self.lifetime = lifetime
        self.connections = 0
        self.requests = 0  # requests that got 200
        self.request_trailers = []  # the trailer fields of each request that had them
        self.lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def close(self):
        self._closed = True
        self._sock.close()

    def _accept_loop(self):
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                refuse = self.connections <= self.refuse_connections
            threading.Thread(target=self._serve, args=(conn, refuse), daemon=True).start()

    def _serve(self, conn, refuse):
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        h2conn = h2.connection.H2Connection(config=config)
        h2conn.initiate_connection()
        if self.initial_window is not None:
            h2conn.update_settings(
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.initial_window})
        conn.settimeout(IO_TIMEOUT)
        try:
            conn.sendall(h2conn.data_to_send())
            deadline = time.monotonic() + self.lifetime
            waiting = {}  # stream id -> path, for responses sent when the request ends
            while time.monotonic() < deadline:
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                for event in h2conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived) and self.initial_window is None:
                        h2conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id)
                    if isinstance(event, h2.events.StreamEnded) and event.stream_id in waiting:
                        path = waiting.pop(event.stream_id)
                        if path.endswith("/early-head"):
                            h2conn.send_data(event.stream_id, b"served", end_stream=True)
                        else:
                            self._answer(h2conn, event.stream_id, path)
                    if isinstance(event, h2.events.TrailersReceived):
                        with self.lock:
                            self.request_trailers.append(list(event.headers))
                        if event.stream_id in waiting:
                            self._answer(h2conn, event.stream_id, waiting.pop(event.stream_id))
                    if isinstance(event, h2.events.RequestReceived):
                        if refuse:
                            h2conn.close_connection(last_stream_id=0)
                            conn.sendall(h2conn.data_to_send())
                            return
                        path = dict(event.headers).get(":path", "")
                        if path.endswith("/no-content"):
                            h2conn.send_headers(event.stream_id, [(":status", "204")],
                                                end_stream=True)
                            conn.sendall(h2conn.data_to_send())
                            continue
                        if path.endswith("/split-end"):
                            h2conn.send_headers(event.stream_id,
                                                [(":status", "200"), ("content-length", "5")])
                            h2conn.send_data(event.stream_id, b"hello")
                            conn.sendall(h2conn.data_to_send())
                            h2conn.send_data(event.stream_id, b"", end_stream=True)
                            conn.sendall(h2conn.data_to_send())
                            continue
                        if path.endswith("/malformed"):
                            h2conn.send_headers(event.stream_id,
                                                [(":status", "200"), ("connection", "close")],
                                                end_stream=True)
                            conn.sendall(h2conn.data_to_send())
                            continue
                        if path.endswith("/window"):
                            window = str(h2conn.outbound_flow_control_window).encode()
                            h2conn.send_headers(event.stream_id, [(":status", "200")])
                            h2conn.send_data(event.stream_id, window, end_stream=True)
                            conn.sendall(h2conn.data_to_send())
                            continue
                        if path.endswith("/reset-after-head"):
                            h2conn.send_headers(event.stream_id, [(":status", "200")])
                            h2conn.send_data(event.stream_id, b"hello")
                            h2conn.reset_stream(event.stream_id, error_code=2)
                            conn.sendall(h2conn.data_to_send())
                            continue
                        if path.endswith("/early-head"):
                            h2conn.send_headers(event.stream_id, [(":status", "200")])
                            waiting[event.stream_id] = path
                        elif "/after-trailers" in path or path.endswith("/after-body"):
                            waiting[event.stream_id] = path
                        else:
                            self._answer(h2conn, event.stream_id, path)
                conn.sendall(h2conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            conn.close()

    def _answer(self, h2conn, stream_id, path):
        with_trailers = path.endswith("/trailers")
        h2conn.send_headers(stream_id, [(":status", "200")])
        h2conn.send_data(stream_id, b"served", end_stream=not with_trailers)
        if with_trailers:
            h2conn.send_headers(stream_id, [("x-upstream-trailer", "yes")], end_stream=True)
        with self.lock:
            self.requests += 1
