#!/usr/bin/python3
"""Chaos run of the breaker filter: backends die, slow down and come back while load runs.

One deferd routes to a primary cluster of two endpoints, with a breaker policy that falls
back to a cache cluster of declared capacity and ejects outlier endpoints. Client threads
send requests while a chaos thread kills, slows, heals and restarts the three backends at
random. Every request must end with either a success or a local reply that names its
reason (deferd-reason); a request without a response within the client timeout, a dropped
connection or an unexplained error counts as lost, and any loss fails the run.

The run is bounded by --duration seconds and --max-requests requests. All traffic stays on
127.0.0.1, and every process started here is stopped by its PID at exit.

    DEFERD_BIN=build/proxy/deferd tests/chaos_breaker.py --duration 30 --max-requests 5000
"""

import argparse
import collections
import http.client
import os
import random
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))

import harness  # noqa: E402
from harness import Reply  # noqa: E402

ROUTE_TIMEOUT = 1.0
# A request without a response by then is lost: deferd responds by the route timeout plus the
# connect timeout at the latest.
CLIENT_TIMEOUT = 8.0


class Backend:
    """A scripted upstream on a fixed port that can be killed, slowed and restarted."""

    def __init__(self, name):
        self.name = name
        self.delay = 0.0
        self.upstream = harness.RawUpstream(handler=self.handle)
        self.port = self.upstream.port
        self.lock = threading.Lock()

    def handle(self, _request):
        return Reply(200, [("content-type", "text/plain")], self.name.encode(), delay=self.delay)

    def kill(self):
        with self.lock:
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None

    def restart(self):
        with self.lock:
            if self.upstream is None:
                self.upstream = harness.RawUpstream(handler=self.handle, port=self.port)

    def close(self):
        self.kill()


def start_deferd(primary, cache):
    port = harness.free_port()
    listener = harness.listener_config(
        "outbound",
        port,
        [{"cluster": "primary", "policy": "guard", "timeout": f"{int(ROUTE_TIMEOUT * 1000)}ms"}],
        direction="outbound",
    )
    clusters = [
        harness.cluster_config("primary", [b.port for b in primary], connect_timeout="500ms"),
        harness.cluster_config(
            "cache",
            [cache.port],
            connect_timeout="500ms",
            capacity={"max_concurrent": 4, "max_rps": 200},
        ),
    ]
    policy = {
        "window": {"type": "time", "size": "5s", "min_requests": 10},
        "open_when": {"failure_rate": "50%", "slow_call": "400ms", "consecutive_failures": 4},
        "cooldown": "500ms",
        "max_cooldown": "2s",
        "half_open": {"probes": 2, "timeout": "600ms"},
        "fallback": {"cluster": "cache"},
        "outlier": {
            "consecutive_failures": 3,
            "base_ejection": "1s",
            "max_ejection_percent": "50%",
        },
    }
    deferd = harness.Deferd(
        [listener],
        clusters,
        access_log=False,
        extra={"node": {"service": "chaos"}, "policies": {"guard": {"breaker": policy}}},
    )
    deferd.start()
    return deferd, port


class Tally:
    def __init__(self, max_requests):
        self.lock = threading.Lock()
        self.max_requests = max_requests
        self.started = 0
        self.outcomes = collections.Counter()
        self.lost = []

    def take_ticket(self):
        with self.lock:
            if self.started >= self.max_requests:
                return False
            self.started += 1
            return True

    def record(self, outcome, lost_detail=None):
        with self.lock:
            self.outcomes[outcome] += 1
            if lost_detail is not None:
                self.lost.append(lost_detail)


def one_request(port):
    """Return (outcome, detail of a loss or None)."""
    conn = http.client.HTTPConnection(harness.LOOPBACK, port, timeout=CLIENT_TIMEOUT)
    started = time.monotonic()
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
    except Exception as e:  # every failure to get a response is a loss
        return "lost", f"{type(e).__name__}: {e} after {time.monotonic() - started:.2f}s"
    finally:
        conn.close()
    reason = resp.getheader("deferd-reason")
    if resp.status == 200:
        return "ok", None
    if reason:
        return reason, None
    return "lost", f"status {resp.status} without deferd-reason"


def load(port, deadline, tally, interval):
    """Send requests paced `interval` apart, so the budget lasts the whole run."""
    next_start = time.monotonic()
    while time.monotonic() < deadline and tally.take_ticket():
        outcome, detail = one_request(port)
        tally.record(outcome, detail)
        next_start += interval
        pause = next_start - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def chaos(backends, deadline, rng, log):
    actions = ["kill", "restart", "slow", "heal"]
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 0.6))
        backend = rng.choice(backends)
        action = rng.choice(actions)
        if action == "kill":
            backend.kill()
        elif action == "restart":
            backend.restart()
        elif action == "slow":
            backend.delay = rng.choice([0.5, 1.5])
        else:
            backend.delay = 0.0
        log.append(f"{time.monotonic():.2f} {action} {backend.name}")


def run(duration, max_requests, threads, seed):
    rng = random.Random(seed)
    primary = [Backend("primary-0"), Backend("primary-1")]
    cache = Backend("cache")
    backends = primary + [cache]
    deferd = None
    try:
        deferd, port = start_deferd(primary, cache)
        tally = Tally(max_requests)
        deadline = time.monotonic() + duration
        log = []
        interval = duration * threads / max_requests
        workers = [
            threading.Thread(target=load, args=(port, deadline, tally, interval), daemon=True)
            for _ in range(threads)
        ]
        workers.append(
            threading.Thread(target=chaos, args=(backends, deadline, rng, log), daemon=True)
        )
        for worker in workers:
            worker.start()
        # Each loader finishes its last request within CLIENT_TIMEOUT of the deadline.
        for worker in workers:
            worker.join(timeout=duration + CLIENT_TIMEOUT + 5)
        stuck = sum(worker.is_alive() for worker in workers)

        metrics = deferd.metrics()
        transitions = metrics.value(
            "deferd_breaker_transitions_total", policy="guard", cluster="primary"
        )
        fallbacks = metrics.value(
            "deferd_breaker_fallback_requests_total", policy="guard", cluster="primary"
        )
        alive = deferd.alive()
    finally:
        if deferd is not None:
            deferd.stop()
        for backend in backends:
            backend.close()

    total = sum(tally.outcomes.values())
    summary = ", ".join(f"{name} {count}" for name, count in sorted(tally.outcomes.items()))
    print(f"chaos actions: {len(log)}; breaker transitions: {int(transitions)}; "
          f"redirected to the fallback: {int(fallbacks)}")
    for detail in tally.lost[:10]:
        print(f"lost: {detail}")
    ok = total > 0 and not tally.lost and stuck == 0 and alive
    print(f"chaos: {total} requests ({summary}); lost {len(tally.lost)}; stuck threads "
          f"{stuck}; deferd {'alive' if alive else 'DIED'}; {'PASS' if ok else 'FAIL'}")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=5000, help="requests in all")
    parser.add_argument("--threads", type=int, default=6, help="client threads")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the chaos")
    args = parser.parse_args()
    if args.duration <= 0 or args.duration > 600:
        parser.error("--duration must be within (0, 600]")
    if args.max_requests <= 0 or args.max_requests > 100000:
        parser.error("--max-requests must be within [1, 100000]")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}")
    ok = run(args.duration, args.max_requests, min(max(args.threads, 1), 32), seed)
    if ok and os.environ.get("DEFERD_KEEP_TMP") != "1":
        shutil.rmtree(harness.tmp_root(), ignore_errors=True)
    else:
        print(f"logs and configs kept in {harness.tmp_root()}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
