#!/usr/bin/python3
"""Flash-sale scenario: does an order's analytics sub-call survive a spike of other traffic?

Three services on loopback, each behind its own deferd, call each other in a line:

  client -> [deferd order] -> order app -> [deferd order, outbound]
         -> [deferd inventory] -> inventory app -> [deferd inventory, outbound]
         -> [deferd analytics] -> analytics app

Each app forwards `traceparent` on its sub-call, never the priority header. Every inbound
listener is untrusted except for 127.0.0.1. The analytics app has a small fixed capacity
(SLOTS x DELAY_MS, 4 x 20 ms = 200 req/s by default) and its sidecar's inbound route has a
backpressure policy (gradient limiter, priority queue) and the default urgency 7
(`sheddable`). The outbound routes that call analytics are `sheddable` too.

Load, open loop, the same for both configurations:
- orders at urgency 0 (`deferd-priority: u=0`, a fresh traceparent each) into the order
  service, at ORDER_RATE req/s;
- a spike of unrelated requests without a priority header straight into analytics' sidecar,
  at SPIKE_FACTOR x analytics' capacity.

Configurations, run one after the other in the same run, every process restarted between them:
- static:    `inherit: false` on every sidecar; an order's analytics sub-call carries the
             outbound route's default, 7, like the spike, and is shed with it;
- inherited: `inherit: { from: [traceparent] }`; the sub-call inherits u=0 from the order
             and passes the spike in analytics' queue.

An order succeeds when the whole chain returned 200 within the client deadline.

usage: flash_sale.py [--duration 20] [--warmup 5] [--rounds 1] [--json FILE] [--plot FILE]
"""

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

LOOPBACK = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Ports: apps, sidecar inbound listeners, sidecar outbound listeners, admin.
PORTS = {
    "order": {"app": 18130, "in": 18131, "out": 18132, "admin": 18133},
    "inventory": {"app": 18140, "in": 18141, "out": 18142, "admin": 18143},
    "analytics": {"app": 18150, "in": 18151, "admin": 18153},
}
NEXT = {"order": "inventory", "inventory": "analytics"}
CONFIGURATIONS = ["static", "inherited"]


# --- the apps ---------------------------------------------------------------------------------


async def read_message(reader):
    """Read one HTTP/1.1 message head and body; return (first line, headers dict, close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            headers[name.strip().lower().decode()] = value.strip().decode()
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)
    return lines[0], headers, "close" in headers.get("connection", "").lower()


async def serve_app(port, slots, delay_ms, next_port):
    """An app with `slots` workers of `delay_ms`; with `next_port`, one sub-call per request.

    The sub-call goes to the app's own sidecar (outbound listener) and carries only the
    request's traceparent. The app returns 200 when the sub-call did, else 502.
    """
    workers = asyncio.Semaphore(slots)
    idle = []

    async def sub_call(traceparent):
        conn = idle.pop() if idle else await asyncio.open_connection(LOOPBACK, next_port)
        reader, writer = conn
        trace = f"traceparent: {traceparent}\r\n" if traceparent else ""
        writer.write(f"GET / HTTP/1.1\r\nHost: {LOOPBACK}:{next_port}\r\n{trace}\r\n".encode())
        try:
            first, _, close = await read_message(reader)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            idle.append(conn)
        return int(first.split()[1])

    def reply(status):
        body = b"ok\n" if status == 200 else b"sub-call failed\n"
        reason = b"OK" if status == 200 else b"Bad Gateway"
        return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s" % (status, reason, len(body), body)

    async def handle(reader, writer):
        try:
            while True:
                _, headers, _ = await read_message(reader)
                async with workers:
                    if delay_ms:
                        await asyncio.sleep(delay_ms / 1000.0)
                    status = 200
                    if next_port:
                        try:
                            sub_status = await sub_call(headers.get("traceparent"))
                        except (OSError, asyncio.IncompleteReadError, ValueError):
                            sub_status = 0
                        status = 200 if sub_status == 200 else 502
                writer.write(reply(status))
                await writer.drain()
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
    os._exit(0)


# --- the sidecars -----------------------------------------------------------------------------


def sidecar_config(service, configuration, analytics_limiter):
    """deferd's config for `service`, as JSON (which deferd's YAML loader reads)."""
    ports = PORTS[service]
    inherit = {"from": ["traceparent"]} if configuration == "inherited" else False
    inbound_route = {"match": {"prefix": "/"}, "cluster": "app", "policy": "serve"}
    serve = {"priority": {"inherit": inherit}}
    if service == "analytics":
        inbound_route["priority"] = "sheddable"
        serve["backpressure"] = analytics_limiter
    listeners = [
        {
            "name": "inbound",
            "address": f"{LOOPBACK}:{ports['in']}",
            "direction": "inbound",
            "trust": "untrusted",
            "trusted_cidrs": [f"{LOOPBACK}/32"],
            "routes": [inbound_route],
        }
    ]
    clusters = [{"name": "app", "endpoints": [f"{LOOPBACK}:{ports['app']}"], "protocol": "http1"}]
    policies = {"serve": serve}
    if service in NEXT:
        listeners.append(
            {
                "name": "outbound",
                "address": f"{LOOPBACK}:{ports['out']}",
                "direction": "outbound",
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "cluster": "next",
                        "policy": "call",
                        "priority": "sheddable" if NEXT[service] == "analytics" else "normal",
                    }
                ],
            }
        )
        next_in = PORTS[NEXT[service]]["in"]
        clusters.append(
            {"name": "next", "endpoints": [f"{LOOPBACK}:{next_in}"], "protocol": "http1"}
        )
        policies["call"] = {"priority": {"inherit": inherit}}
    return {
        "node": {"service": service},
        "admin": {"address": f"{LOOPBACK}:{ports['admin']}"},
        "workers": 1,
        "access_log": False,
        "listeners": listeners,
        "clusters": clusters,
        "policies": policies,
    }


# --- load -------------------------------------------------------------------------------------


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[max(0, min(len(values) - 1, math.ceil(q / 100.0 * len(values)) - 1))]


async def stream(port, rate, warmup, duration, timeout, header, records, label):
    """Open-loop requests at `rate` req/s; append (label, ok, latency ms) after the warm-up."""
    loop = asyncio.get_running_loop()
    idle = []
    lag = [0.0]

    async def one(scheduled, measured):
        conn = None
        ok = False
        try:
            async with asyncio.timeout_at(scheduled + timeout):
                conn = idle.pop() if idle else await asyncio.open_connection(LOOPBACK, port)
                reader, writer = conn
                trace = f"traceparent: 00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01\r\n"
                writer.write(
                    f"GET / HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n{header}{trace}\r\n".encode()
                )
                first, _, close = await read_message(reader)
            ok = first.split()[1] == b"200"
            if close:
                writer.close()
            else:
                idle.append(conn)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            if conn is not None:
                conn[1].close()
        if measured:
            latency = min((loop.time() - scheduled) * 1000.0, timeout * 1000.0)
            records.append((label, ok, latency))

    total = int(rate * (warmup + duration))
    t0 = loop.time() + 0.05
    tasks = []
    for i in range(total):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag[0] = max(lag[0], -delay)
        tasks.append(asyncio.ensure_future(one(scheduled, i >= rate * warmup)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return lag[0] * 1000.0


async def offer(a):
    records = []
    lags = await asyncio.gather(
        stream(PORTS["order"]["in"], a.order_rate, a.warmup, a.duration, a.timeout,
               "deferd-priority: u=0\r\n", records, "order"),
        stream(PORTS["analytics"]["in"], a.spike_factor * a.slots * 1000.0 / a.delay_ms,
               a.warmup, a.duration, a.timeout, "", records, "spike"),
    )
    return records, max(lags)


# --- processes --------------------------------------------------------------------------------


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
            raise SystemExit(f"{proc.args} exited with {proc.returncode} while starting")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {LOOPBACK}:{port} after {seconds} s")


def start(args, log_path):
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def stop(proc, seconds=5.0):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def run_one(a, configuration):
    limiter = json.loads(a.analytics_backpressure)
    procs = []
    try:
        for service in ["analytics", "inventory", "order"]:
            ports = PORTS[service]
            app = [sys.executable, os.path.abspath(__file__), "app", "--port", str(ports["app"])]
            if service == "analytics":
                app += ["--slots", str(a.slots), "--delay-ms", str(a.delay_ms)]
            else:
                app += ["--next-port", str(ports["out"])]
            procs.append(start(app, os.path.join(a.work, f"{service}-app.log")))
            wait_port(ports["app"], procs[-1])
            path = os.path.join(a.work, f"{service}-{configuration}.json")
            with open(path, "w") as f:
                json.dump(sidecar_config(service, configuration, limiter), f, indent=2)
            procs.append(start([a.deferd, "--config", path],
                               os.path.join(a.work, f"{service}-deferd.log")))
            wait_port(ports["in"], procs[-1])
        loadavg = open("/proc/loadavg").read().split()[0]
        records, lag = asyncio.run(offer(a))
    finally:
        for proc in reversed(procs):
            stop(proc)
    result = {"configuration": configuration, "loadavg": loadavg, "client_lag_ms": round(lag, 1)}
    for label in ["order", "spike"]:
        mine = [r for r in records if r[0] == label]
        ok = [r[2] for r in mine if r[1]]
        result[label] = {
            "sent": len(mine),
            "ok": len(ok),
            "success_pct": 100.0 * len(ok) / len(mine) if mine else None,
            "ok_p50_ms": percentile(ok, 50),
            "ok_p99_ms": percentile(ok, 99),
            "all_p99_ms": percentile([r[2] for r in mine], 99),
        }
    return result


# --- report -----------------------------------------------------------------------------------


def fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def report(runs):
    lines = [
        "| configuration | round | order ok % | order p50 ms | order p99 ms | orders sent "
        "| spike ok % | spike ok req/s | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        o, s = r["order"], r["spike"]
        lines.append(
            f"| {r['configuration']} | {r['round']} | {fmt(o['success_pct'], 2)} "
            f"| {fmt(o['ok_p50_ms'])} | {fmt(o['ok_p99_ms'])} | {o['sent']} "
            f"| {fmt(s['success_pct'], 1)} | {fmt(s['ok'] / r['duration_s'])} | {r['loadavg']} |"
        )
    return "\n".join(lines)


def plot(runs, path):
    """Bar chart of the order success rate and p99 per configuration and round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['configuration']}\nround {r['round']}" for r in runs]
    colors = ["#c0504d" if r["configuration"] == "static" else "#4f81bd" for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.bar(labels, [r["order"]["success_pct"] or 0 for r in runs], color=colors)
    left.set_ylabel("orders with status 200 (%)")
    left.set_ylim(0, 105)
    left.axhline(99, color="gray", linestyle="--", linewidth=1)
    right.bar(labels, [r["order"]["ok_p99_ms"] or 0 for r in runs], color=colors)
    right.set_ylabel("p99 of successful orders (ms)")
    fig.suptitle("Flash sale: orders (u=0) while analytics takes a spike of sheddable traffic")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "app":
        ap = argparse.ArgumentParser(prog="flash_sale.py app")
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--slots", type=int, default=1000)
        ap.add_argument("--delay-ms", type=float, default=0.0)
        ap.add_argument("--next-port", type=int)
        a = ap.parse_args(sys.argv[2:])
        asyncio.run(serve_app(a.port, a.slots, a.delay_ms, a.next_port))
        return

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deferd", default=os.path.join(REPO, "build", "proxy", "deferd"))
    ap.add_argument("--slots", type=int, default=4, help="analytics worker slots")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="analytics time per request")
    ap.add_argument("--order-rate", type=float, default=40.0)
    ap.add_argument("--spike-factor", type=float, default=4.0,
                    help="unrelated analytics traffic, times analytics' capacity")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--analytics-backpressure",
        default=json.dumps({"limiter": "gradient", "min_limit": 1, "max_limit": 64,
                            "queue": {"max_length": 32, "max_wait": "100ms"}}),
        help="backpressure section of analytics' inbound policy, as JSON",
    )
    ap.add_argument("--work", default="/tmp/deferd-bench-flash-sale")
    ap.add_argument("--json", help="append one JSON line per run to this file")
    ap.add_argument("--plot", help="write a PNG chart here (needs python3-matplotlib)")
    a = ap.parse_args()

    if not os.access(a.deferd, os.X_OK):
        raise SystemExit(f"{a.deferd} is not executable; build the deferd target first")
    busy = [p for ports in PORTS.values() for p in ports.values() if not port_free(p)]
    if busy:
        raise SystemExit(f"ports already in use: {busy}")
    os.makedirs(a.work, exist_ok=True)

    runs = []
    for rnd in range(1, a.rounds + 1):
        order = CONFIGURATIONS if rnd % 2 else list(reversed(CONFIGURATIONS))
        for configuration in order:
            result = run_one(a, configuration)
            result.update({"round": rnd, "duration_s": a.duration})
            runs.append(result)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(result) + "\n")
            o = result["order"]
            print(f"[{rnd}] {configuration}: orders ok {fmt(o['success_pct'], 2)} % "
                  f"p99 {fmt(o['ok_p99_ms'])} ms, client lag {result['client_lag_ms']} ms",
                  file=sys.stderr, flush=True)
            time.sleep(1.0)

    capacity = a.slots * 1000.0 / a.delay_ms
    print(f"Analytics capacity {capacity:.0f} req/s ({a.slots} x {a.delay_ms:g} ms); orders "
          f"at {a.order_rate:g} req/s (u=0), spike {a.spike_factor:g}x = "
          f"{a.spike_factor * capacity:.0f} req/s (no header); {a.warmup:g} s warm-up + "
          f"{a.duration:g} s measured; client deadline {a.timeout:g} s.\n")
    runs.sort(key=lambda r: (r["configuration"] != "static", r["round"]))
    print(report(runs))
    if a.plot:
        plot(runs, a.plot)


if __name__ == "__main__":
    main()
