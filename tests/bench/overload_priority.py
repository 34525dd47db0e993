#!/usr/bin/python3
"""Priority overload benchmark: a backend of fixed capacity offered 4x that capacity.

The backend (`backend` subcommand, started by this script) has SLOTS worker slots of DELAY_MS
each, 8 x 20 ms = 400 req/s by default. A request that finds every slot busy waits in an
unbounded FIFO inside the backend, which never notices a client that gave up, like a thread
pool app server.

The load is open loop: request i is scheduled at t0 + i / rate whatever happened to earlier
requests, and its latency is counted from that scheduled time, so a slow target cannot slow
the load down. Each request carries `deferd-priority: u=N`, with urgency 0, 3 and 7 for 10,
30 and 60 % of the requests, interleaved in a fixed pattern. A request without a response
TIMEOUT seconds after its scheduled time is a timeout. The first WARMUP seconds are offered
but not counted, so adaptive limits have settled before the measurement.

The generator is Python and can fall behind its schedule. Each request records its lag (the
write of its bytes minus its scheduled time), and latencies are given both from the scheduled
time and from the send, so the target's own response time is separated from the generator's
delay. Connections are kept alive and reused, requests are built once, and the event loop is
uvloop (Debian's python3-uvloop) unless --no-uvloop is given.

Targets, one at a time, rounds in rotating order, backend and proxy restarted for every run:

  direct          the backend itself
  haproxy         HAProxy, maxconn 8 + a FIFO queue (haproxy-priority.cfg), told the capacity
  deferd          deferd, priority + backpressure with the gradient limiter (deferd-priority.yaml)
  deferd-fixed    deferd with a fixed limit of 8 (deferd-priority-fixed.yaml)
  deferd-tuned    gradient with tolerance 1.1 and a queue of 16 x 50 ms (deferd-priority-tuned.yaml)

A short run at BASE_FACTOR x capacity per target first measures the unloaded latency.

Everything listens on and connects to 127.0.0.1. Processes started here are stopped by PID.

usage: overload_priority.py [--duration 20] [--warmup 5] [--rounds 1] [--targets ...]
       overload_priority.py backend --port P [--slots 8] [--delay-ms 20]
"""

import argparse
import asyncio
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

LOOPBACK = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

BACKEND_PORT = 18120
TARGETS = {
    # name: port; "direct" is the backend itself
    "direct": BACKEND_PORT,
    "haproxy": 18121,
    "deferd": 18122,
    "deferd-fixed": 18123,
    "deferd-tuned": 18126,
}
ADMIN_PORTS = {"deferd": 18124, "deferd-fixed": 18125, "deferd-tuned": 18127}
CONFIGS = {
    "haproxy": "haproxy-priority.cfg",
    "deferd": "deferd-priority.yaml",
    "deferd-fixed": "deferd-priority-fixed.yaml",
    "deferd-tuned": "deferd-priority-tuned.yaml",
}

# Urgency of request i: one in ten is 0, three in ten are 3, six in ten are 7.
PATTERN = [7, 3, 7, 0, 7, 3, 7, 7, 3, 7]
URGENCIES = sorted(set(PATTERN))


# --- the backend ------------------------------------------------------------------------------


async def serve_backend(port, slots, delay_ms):
    """HTTP/1.1 keep-alive server with `slots` workers of `delay_ms` each and a FIFO queue."""
    body = b"ok\n"
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    workers = asyncio.Semaphore(slots)
    stats = {"served": 0}

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip() or 0)
                if length:
                    await reader.readexactly(length)
                async with workers:
                    await asyncio.sleep(delay_ms / 1000.0)
                writer.write(reply)
                await writer.drain()
                stats["served"] += 1
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(json.dumps({"served": stats["served"]}), flush=True)
    os._exit(0)


# --- the open-loop client ---------------------------------------------------------------------


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[max(0, min(len(values) - 1, math.ceil(q / 100.0 * len(values)) - 1))]


async def read_response(reader):
    """Read one response; return (status, deferd-reason or None, whether the server closes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, close, reason = 0, False, None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip() or 0)
        elif name == b"connection" and b"close" in value.lower():
            close = True
        elif name == b"deferd-reason":
            reason = value.strip().decode()
    if length:
        await reader.readexactly(length)
    return status, reason, close


async def offer_load(port, rate, warmup, duration, timeout, max_conns=3000):
    """Offer `rate` req/s for warmup + duration seconds; return the measured records.

    A record is (urgency, outcome, reason, latency ms from the scheduled time, latency ms from
    the send, generator lag ms) for each request scheduled after the warm-up. The outcome is
    'ok' (2xx), 'queue-timeout' (deferd's reply after max_wait in its queue), 'shed' (any
    other status), 'timeout' (no response by the deadline) or 'error'. The send is the moment
    the request's bytes are written, so the lag (send minus scheduled time) contains the
    generator's own delay and, for a new connection, the connect.
    """
    loop = asyncio.get_running_loop()
    idle = []
    state = {"open": 0, "connects": 0, "overflow": 0}
    records = []
    requests = {
        u: f"GET / HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\ndeferd-priority: u={u}\r\n\r\n".encode()
        for u in URGENCIES
    }

    # Times are taken with time.monotonic(): uvloop's loop.time() has a resolution of 1 ms,
    # too coarse for a local reply. `offset` maps a loop time to the monotonic clock.
    offset = time.monotonic() - loop.time()

    async def one(index, scheduled, measured):
        urgency = PATTERN[index % len(PATTERN)]
        conn = None
        outcome, reason = "error", None
        sent = None
        try:
            async with asyncio.timeout_at(scheduled + timeout):
                if idle:
                    conn = idle.pop()
                else:
                    if state["open"] >= max_conns:
                        state["overflow"] += 1
                        return
                    state["open"] += 1
                    state["connects"] += 1
                    conn = await asyncio.open_connection(LOOPBACK, port)
                reader, writer = conn
                sent = time.monotonic()
                writer.write(requests[urgency])
                status, reason, close = await read_response(reader)
            if 200 <= status < 300:
                outcome = "ok"
            else:
                outcome = "queue-timeout" if reason == "queue-timeout" else "shed"
            if close:
                writer.close()
                state["open"] -= 1
            else:
                idle.append(conn)
        except TimeoutError:
            outcome = "timeout"
            drop(conn)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            drop(conn)
        if measured:
            done = time.monotonic()
            if sent is None:
                sent = done
            scheduled_mono = scheduled + offset
            latency = min((done - scheduled_mono) * 1000.0, timeout * 1000.0)
            records.append((urgency, outcome, reason, latency, (done - sent) * 1000.0,
                            (sent - scheduled_mono) * 1000.0))

    def drop(conn):
        state["open"] -= 1
        if conn is not None:
            conn[1].close()

    total = int(rate * (warmup + duration))
    first_measured = int(rate * warmup)
    t0 = loop.time() + 0.05
    tasks = []
    i = 0
    while i < total:
        # Start every request that is due, then sleep until the next one. A sleep shorter than
        # the event loop's clock resolution would only cost a wake-up.
        now = loop.time()
        while i < total and t0 + i / rate <= now + 0.0005:
            tasks.append(loop.create_task(one(i, t0 + i / rate, i >= first_measured)))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return records, state


def summarize(records, duration, capacity):
    """Per-urgency success rate and latencies, shed latency, generator lag and goodput.

    Latencies count from the scheduled time unless named `_send`: those count from the moment
    the request was written, so they leave out the generator's own lag.
    """
    out = {"per_urgency": {}}
    for u in URGENCIES:
        mine = [r for r in records if r[0] == u]
        ok = [r[3] for r in mine if r[1] == "ok"]
        ok_send = [r[4] for r in mine if r[1] == "ok"]
        reasons = {}
        for r in mine:
            if r[1] != "ok":
                key = r[2] or r[1]
                reasons[key] = reasons.get(key, 0) + 1
        out["per_urgency"][u] = {
            "sent": len(mine),
            "not_ok": reasons,
            "ok": len(ok),
            "success_pct": 100.0 * len(ok) / len(mine) if mine else None,
            "ok_p50_ms": percentile(ok, 50),
            "ok_p99_ms": percentile(ok, 99),
            "ok_p50_send_ms": percentile(ok_send, 50),
            "ok_p99_send_ms": percentile(ok_send, 99),
        }
    shed = [r for r in records if r[1] == "shed"]
    waited = [r[3] for r in records if r[1] == "queue-timeout"]
    lag = [r[5] for r in records]
    reasons = {}
    for r in records:
        if r[1] in ("shed", "queue-timeout"):
            reasons[r[2] or "-"] = reasons.get(r[2] or "-", 0) + 1
    ok_total = sum(1 for r in records if r[1] == "ok")
    out.update(
        {
            "sent": len(records),
            "ok": ok_total,
            "shed": len(shed),
            "shed_reasons": reasons,
            "timeouts": sum(1 for r in records if r[1] == "timeout"),
            "errors": sum(1 for r in records if r[1] == "error"),
            "shed_p50_ms": percentile([r[3] for r in shed], 50),
            "shed_p99_ms": percentile([r[3] for r in shed], 99),
            "shed_p50_send_ms": percentile([r[4] for r in shed], 50),
            "shed_p99_send_ms": percentile([r[4] for r in shed], 99),
            "queue_timeouts": len(waited),
            "queue_timeout_p50_ms": percentile(waited, 50),
            "lag_p50_ms": percentile(lag, 50),
            "lag_p99_ms": percentile(lag, 99),
            "lag_max_ms": max(lag) if lag else None,
            "goodput_rps": ok_total / duration,
            "goodput_pct": 100.0 * ok_total / duration / capacity,
        }
    )
    return out


# --- processes --------------------------------------------------------------------------------


class LimitSampler(threading.Thread):
    """Reads deferd's concurrency limit and in-flight count from its admin /metrics."""

    GAUGES = ("deferd_backpressure_limit", "deferd_backpressure_in_flight")

    def __init__(self, admin_port, interval=0.5):
        super().__init__(daemon=True)
        self.admin_port, self.interval = admin_port, interval
        self.samples = []  # (monotonic time, limit, in flight)
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            try:
                conn = http.client.HTTPConnection(LOOPBACK, self.admin_port, timeout=1.0)
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
                conn.close()
            except OSError:
                continue
            values = {}
            for line in text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in self.GAUGES:
                    values[name] = float(line.rsplit(" ", 1)[1])
            if len(values) == len(self.GAUGES):
                self.samples.append((time.monotonic(), *(values[g] for g in self.GAUGES)))

    def summary(self, since):
        limits = sorted(s[1] for s in self.samples if s[0] >= since)
        if not limits:
            return None
        return {"min": limits[0], "median": limits[len(limits) // 2], "max": limits[-1]}


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
            return True
        except OSError:
            return False


def wait_port(port, proc, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args[0]} exited with {proc.returncode} while starting")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {LOOPBACK}:{port} after {seconds} s")


def start(args, cpus, log_path, stdout=None):
    if cpus is not None:
        args = ["taskset", "-c", cpus] + args
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=stdout or log, stderr=log, start_new_session=True
    )
    log.close()
    return proc


def stop(proc, seconds=5.0):
    """SIGTERM the process by PID, SIGKILL after `seconds`; return its stdout, if piped."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.stdout.read().decode() if proc.stdout else ""


def proxy_command(target, deferd, override=None):
    config = override or os.path.join(HERE, CONFIGS[target])
    if target == "haproxy":
        return ["haproxy", "-db", "-f", config]
    return [deferd, "--config", config]


def run_one(a, target, factor, seconds, warmup):
    port = TARGETS[target]
    logs = a.work
    backend = start(
        [sys.executable, os.path.abspath(__file__), "backend", "--port", str(BACKEND_PORT),
         "--slots", str(a.slots), "--delay-ms", str(a.delay_ms)],
        a.server_cpus, os.path.join(logs, "backend.log"), stdout=subprocess.PIPE,
    )
    proxy = None
    try:
        wait_port(BACKEND_PORT, backend)
        if target != "direct":
            override = a.deferd_config if target == "deferd" else None
            proxy = start(proxy_command(target, a.deferd, override), a.server_cpus,
                          os.path.join(logs, target + ".log"))
            wait_port(port, proxy)
        capacity = a.slots * 1000.0 / a.delay_ms
        loadavg = open("/proc/loadavg").read().split()[0]
        sampler = None
        if target in ADMIN_PORTS:
            sampler = LimitSampler(ADMIN_PORTS[target])
            sampler.start()
        measured_from = time.monotonic() + warmup
        records, client = run_loop(
            offer_load(port, capacity * factor, warmup, seconds, a.timeout), a.uvloop
        )
        result = summarize(records, seconds, capacity)
        if sampler is not None:
            sampler.done.set()
            sampler.join()
            result["limit"] = sampler.summary(measured_from)
    finally:
        if proxy is not None:
            stop(proxy)
        served = stop(backend)
    result.update({"target": target, "factor": factor, "duration_s": seconds,
                   "loadavg": loadavg, "client": client, "uvloop": a.uvloop})
    try:
        result["backend_served"] = json.loads(served.strip().splitlines()[-1])["served"]
    except (ValueError, IndexError):
        result["backend_served"] = None
    return result


def run_loop(coroutine, use_uvloop):
    """Run the load generator, on uvloop (Debian's python3-uvloop) when asked and installed."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            raise SystemExit("uvloop is not installed (Debian package python3-uvloop); "
                             "install it or pass --no-uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    return asyncio.run(coroutine)


# --- report -----------------------------------------------------------------------------------


def fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def report(runs, capacity):
    lines = []
    base = [r for r in runs if r["phase"] == "base"]
    if base:
        lines += ["Unloaded latency (all urgencies):", "",
                  "| target | offered req/s | ok % | p50 ms | p99 ms | load avg |",
                  "|---|---|---|---|---|---|"]
        for r in base:
            ok = [r["per_urgency"][u] for u in URGENCIES]
            lines.append(
                f"| {r['target']} | {capacity * r['factor']:.0f} "
                f"| {fmt(100.0 * r['ok'] / max(1, r['sent']))} "
                f"| {fmt(median([o['ok_p50_ms'] for o in ok]))} "
                f"| {fmt(max(o['ok_p99_ms'] or 0 for o in ok))} | {r['loadavg']} |"
            )
        lines.append("")
    head = ["target", "round"]
    for u in URGENCIES:
        head += [f"u={u} ok %", f"u={u} p50 ms", f"u={u} p99 ms"]
    head += ["shed p50 ms", "shed p99 ms", "shed p50 ms from send", "shed p99 ms from send",
             "lag p50 / p99 / max ms", "queue timeouts (p50 ms)", "client timeouts",
             "goodput req/s", "goodput % of capacity", "limit median (min-max)", "load avg"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in (r for r in runs if r["phase"] == "overload"):
        cells = [r["target"], str(r["round"])]
        for u in URGENCIES:
            p = r["per_urgency"][u]
            cells += [fmt(p["success_pct"], 2), fmt(p["ok_p50_ms"]), fmt(p["ok_p99_ms"])]
        waited = "0"
        if r["queue_timeouts"]:
            waited = f"{r['queue_timeouts']} ({fmt(r['queue_timeout_p50_ms'])})"
        limit = r.get("limit")
        limit = "-" if not limit else f"{limit['median']:g} ({limit['min']:g}-{limit['max']:g})"
        lag = f"{fmt(r['lag_p50_ms'])} / {fmt(r['lag_p99_ms'])} / {fmt(r['lag_max_ms'])}"
        cells += [fmt(r["shed_p50_ms"], 2), fmt(r["shed_p99_ms"], 2),
                  fmt(r["shed_p50_send_ms"], 2), fmt(r["shed_p99_send_ms"], 2), lag, waited,
                  str(r["timeouts"]), fmt(r["goodput_rps"]), fmt(r["goodput_pct"]), limit,
                  r["loadavg"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "backend":
        ap = argparse.ArgumentParser(prog="overload_priority.py backend")
        ap.add_argument("--port", type=int, default=BACKEND_PORT)
        ap.add_argument("--slots", type=int, default=8)
        ap.add_argument("--delay-ms", type=float, default=20.0)
        a = ap.parse_args(sys.argv[2:])
        asyncio.run(serve_backend(a.port, a.slots, a.delay_ms))
        return

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deferd", default=os.path.join(REPO, "build", "proxy", "deferd"))
    ap.add_argument("--deferd-config", help="config for target deferd, instead of "
                    "deferd-priority.yaml (same listener and admin ports)")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per run")
    ap.add_argument("--timeout", type=float, default=2.0, help="client deadline, seconds")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--base-factor", type=float, default=0.25)
    ap.add_argument("--base-duration", type=float, default=5.0)
    ap.add_argument("--server-cpus", default="0", help="taskset list for backend and proxy")
    ap.add_argument("--client-cpus", default="1", help="taskset list for this load generator")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--work", default="/tmp/deferd-bench-priority")
    ap.add_argument("--json", help="append one JSON line per run to this file")
    ap.add_argument("--no-uvloop", dest="uvloop", action="store_false",
                    help="run the load generator on asyncio's own event loop")
    a = ap.parse_args()

    if a.no_pin:
        a.server_cpus = None
    else:
        os.sched_setaffinity(0, {int(c) for c in a.client_cpus.split(",")})
    if "haproxy" in a.targets and shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed (Debian package haproxy)")
    if any(t.startswith("deferd") for t in a.targets) and not os.access(a.deferd, os.X_OK):
        raise SystemExit(f"{a.deferd} is not executable; build the deferd target first")
    busy = [p for p in [BACKEND_PORT] + [TARGETS[t] for t in a.targets] if not port_free(p)]
    if busy:
        raise SystemExit(f"ports already in use: {busy}")
    os.makedirs(a.work, exist_ok=True)

    capacity = a.slots * 1000.0 / a.delay_ms
    runs = []

    def record(result, phase, rnd):
        result.update({"phase": phase, "round": rnd})
        runs.append(result)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(result) + "\n")
        p0 = result["per_urgency"][0]
        print(f"[{phase} {rnd}] {result['target']}: u=0 ok {fmt(p0['success_pct'], 2)} % "
              f"p99 {fmt(p0['ok_p99_ms'])} ms, goodput {fmt(result['goodput_pct'])} %, "
              f"shed p99 {fmt(result['shed_p99_ms'], 2)} ms "
              f"({fmt(result['shed_p99_send_ms'], 2)} from send), "
              f"timeouts {result['timeouts']}, lag p99 {fmt(result['lag_p99_ms'])} ms, "
              f"reasons {result['shed_reasons']}", file=sys.stderr, flush=True)

    if a.base_factor > 0:
        for target in a.targets:
            record(run_one(a, target, a.base_factor, a.base_duration, 1.0), "base", 0)
    for rnd in range(1, a.rounds + 1):
        shift = (rnd - 1) % len(a.targets)
        for target in a.targets[shift:] + a.targets[:shift]:
            record(run_one(a, target, a.factor, a.duration, a.warmup), "overload", rnd)
            time.sleep(1.0)

    print(f"Capacity {capacity:.0f} req/s ({a.slots} slots x {a.delay_ms:g} ms), offered "
          f"{a.factor:g}x = {capacity * a.factor:.0f} req/s for {a.warmup:g} s warm-up + "
          f"{a.duration:g} s measured, client deadline {a.timeout:g} s.\n")
    print(report(runs, capacity))


if __name__ == "__main__":
    main()
