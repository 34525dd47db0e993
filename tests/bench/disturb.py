#!/usr/bin/env python3
"""Stall one process of a benchmark for a bounded time, and sample deferd's /metrics meanwhile.

Run it beside tests/bench/overload_priority.py. It waits until deferd's admin port responds
(that moment is t = 0), then stops the process listening on --listen-port with SIGSTOP at each
time of --pause-at, for --pause-ms, and continues it with SIGCONT. With --run-ms the process
runs that long in every --period-ms of the pause instead of standing still: a CPU quota
(cgroup cpu.max, Kubernetes' limits.cpu) that lets it use run-ms per period. Without it the
pause is one stop, like a garbage collection pause of the application.

    disturb.py --admin 18124 --listen-port 18122 --pause-at 6 --pause-ms 2000 \\
        --run-ms 20 --period-ms 100 --out /tmp/throttle.csv

It writes one CSV row per sample of /metrics (every --interval, except while deferd itself
is stopped) and one per stop and continue. deferd refreshes its gauges once a second, so finer
sampling only repeats values. The process is continued before this script exits, unless the
script is killed with SIGKILL.
"""

import argparse
import http.client
import os
import re
import signal
import subprocess
import sys
import time

LOOPBACK = "127.0.0.1"
GAUGES = ("deferd_backpressure_limit", "deferd_backpressure_in_flight",
          "deferd_backpressure_queue_depth")
DECISIONS = "deferd_backpressure_decisions_total"


def scrape(admin_port):
    """Return the backpressure gauges and decision counters from /metrics, summed over labels."""
    conn = http.client.HTTPConnection(LOOPBACK, admin_port, timeout=0.5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        if name in GAUGES:
            values[name] = values.get(name, 0.0) + value
        elif name == DECISIONS:
            match = re.search(r'decision="([a-z_]+)"', line)
            if match:
                key = "decisions_" + match.group(1)
                values[key] = values.get(key, 0.0) + value
    return values


def listener_pid(port):
    """Return the PID of the process listening on LOOPBACK:port, from ss, or None."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                         text=True, check=False).stdout
    match = re.search(r"pid=(\d+)", out)
    return int(match.group(1)) if match else None


def wait_for_admin(admin_port, seconds=30.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            scrape(admin_port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"deferd's admin port {admin_port} did not respond "
                                 f"within {seconds} s") from None
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--admin", type=int, default=18124, help="deferd's admin port")
    ap.add_argument("--listen-port", type=int, default=18120,
                    help="port of the process to stop: 18120 the backend, 18122 deferd")
    ap.add_argument("--pause-at", type=float, nargs="+", required=True,
                    help="seconds after the admin port first responded")
    ap.add_argument("--pause-ms", type=float, default=300.0, help="length of each pause")
    ap.add_argument("--run-ms", type=float, default=0.0,
                    help="run time per period during a pause (a CPU quota); 0 stops it")
    ap.add_argument("--period-ms", type=float, default=100.0, help="quota period")
    ap.add_argument("--duration", type=float, default=22.0, help="seconds to run, at most 60")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    ap.add_argument("--out", required=True, help="CSV file to write")
    a = ap.parse_args()
    if not 0 < a.duration <= 60:
        raise SystemExit(f"--duration {a.duration} is outside (0, 60] s")
    if not 0 <= a.run_ms < a.period_ms:
        raise SystemExit(f"--run-ms {a.run_ms} is outside [0, --period-ms)")

    wait_for_admin(a.admin)
    t0 = time.monotonic()
    pid = listener_pid(a.listen_port)
    if pid is None:
        raise SystemExit(f"nothing listens on {LOOPBACK}:{a.listen_port}")
    stopping_deferd = pid == listener_pid(a.admin)
    print(f"disturb.py: pausing PID {pid} (port {a.listen_port})", file=sys.stderr)

    pauses = sorted(a.pause_at)
    rows, keys = [], set()
    pause_start, pause_end, stopped = None, None, False
    next_sample = t0
    end = t0 + a.duration
    try:
        while time.monotonic() < end:
            now = time.monotonic()

            if pause_end is not None and now >= pause_end:
                os.kill(pid, signal.SIGCONT)
                pause_start, pause_end, stopped = None, None, False
                rows.append((now - t0, {"event": "cont"}))
            elif pause_end is not None and a.run_ms > 0:
                # Within each period the process is stopped first, then runs for run_ms.
                phase_ms = ((now - pause_start) * 1000.0) % a.period_ms
                stop = phase_ms < a.period_ms - a.run_ms
                if stop != stopped:
                    os.kill(pid, signal.SIGSTOP if stop else signal.SIGCONT)
                    stopped = stop

            if pause_end is None and pauses and now - t0 >= pauses[0]:
                pauses.pop(0)
                os.kill(pid, signal.SIGSTOP)
                pause_start, pause_end, stopped = now, now + a.pause_ms / 1000.0, True
                rows.append((now - t0, {"event": "stop"}))

            if now >= next_sample and not (pause_end is not None and stopping_deferd):
                try:
                    values = scrape(a.admin)
                    keys |= set(values)
                    rows.append((now - t0, values))
                except OSError:
                    pass
                next_sample += a.interval
            time.sleep(0.002)
    finally:
        if pause_end is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # the benchmark ended the process already

    columns = sorted(keys)
    with open(a.out, "w", encoding="utf-8") as out:
        out.write(",".join(["t", "event"] + columns) + "\n")
        for t, values in rows:
            cells = [f"{t:.3f}", values.get("event", "")]
            cells += [str(values.get(column, "")) for column in columns]
            out.write(",".join(cells) + "\n")


if __name__ == "__main__":
    main()
