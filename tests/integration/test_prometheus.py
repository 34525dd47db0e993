"""A real Prometheus server scraping deferd's admin listener: the scraped counters equal the
traffic sent, the alert rules in deploy/prometheus/alerts.yaml evaluate and fire, and every
query of the Grafana dashboard is valid PromQL that returns data where deferd exports it.
"""

import json
import os
import re
import signal
import urllib.parse

import yaml

import harness
import test_deploy_manifests as manifests

# Seconds between scrapes and between rule evaluations.
SCRAPE_INTERVAL_SECONDS = 1
# Time allowed for a value to travel from deferd through a scrape into a query result.
SCRAPE_TIMEOUT = 20.0
# Time allowed for Prometheus to open its empty database and report ready. Prometheus 2.42 took
# 0.1 s on an idle 2-core machine; the margin is for machines busy with parallel tests.
PROMETHEUS_STARTUP_TIMEOUT = 30.0

# Values for the dashboard's template variables when its queries run here.
DASHBOARD_VARIABLES = {
    "$__rate_interval": "1m",
    "$job": ".*",
    "$instance": ".*",
    "$cluster": ".*",
}


class Prometheus:
    """A Prometheus server on a free loopback port with a temporary data directory."""

    def __init__(self, scrape_port, rule_files):
        self.dir = harness.make_dir("prometheus")
        self.port = harness.free_port()
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL_SECONDS}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
            },
            "rule_files": rule_files,
            "scrape_configs": [
                {
                    "job_name": "deferd",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [f"{harness.LOOPBACK}:{scrape_port}"]}],
                }
            ],
        }
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)
        self.proc = None

    def start(self):
        binary = harness.require_tool("prometheus")
        self.proc = harness.start_process(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                f"--web.listen-address={harness.LOOPBACK}:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            "prometheus",
            log_path=os.path.join(self.dir, "prometheus.log"),
        )

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited with status {self.proc.returncode}; log:\n"
                    f"{harness.log_tail(os.path.join(self.dir, 'prometheus.log'))}"
                )
            return harness.http_get(self.port, "/-/ready", timeout=1.0).status == 200

        harness.wait_until(ready, PROMETHEUS_STARTUP_TIMEOUT,
                           "prometheus /-/ready to return 200")
        return self

    def stop(self):
        if self.proc is not None:
            harness.stop_process(self.proc, signal.SIGTERM, timeout=15.0)

    def api(self, path, **params):
        """GET an HTTP API path and return (HTTP status, decoded JSON body)."""
        query = urllib.parse.urlencode(params, doseq=True)
        resp = harness.http_get(self.port, f"{path}?{query}" if query else path)
        return resp.status, json.loads(resp.body)

    def query(self, expr):
        """Run an instant query and return its result list. Fails the test on an API error."""
        status, body = self.api("/api/v1/query", query=expr)
        if status != 200 or body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed with HTTP {status}: {body}")
        return body["data"]["result"]

    def scalar(self, expr):
        """Return the value of a query with exactly one result, or None when it has none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise AssertionError(f"query {expr!r} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def log(self):
        return harness.log_tail(os.path.join(self.dir, "prometheus.log"))


class PrometheusTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = harness.Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.port = harness.free_port()
        # The route's policy turns on the priority and breaker filters, whose families the
        # dashboard uses. The breaker's fallback and outlier ejection create the rest.
        routes = [{"match": {"prefix": "/static/"}, "cluster": "web", "policy": "serve"}]
        breaker = {"fallback": {"cluster": "cache"}, "outlier": None}
        cls.deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", cls.port, routes)],
            clusters=[
                harness.cluster_config("web", [cls.nginx.port]),
                harness.cluster_config("cache", [cls.nginx.port], capacity={"max_rps": 10}),
            ],
            extra={"policies": {"serve": {"priority": None, "backpressure": None,
                                          "breaker": breaker}}},
        ).start()
        cls.addClassCleanup(cls.deferd.stop)
        cls.prometheus = Prometheus(cls.deferd.admin_port, [manifests.ALERTS]).start()
        cls.addClassCleanup(cls.prometheus.stop)

        # Three scrapes before any test, so every series exists and rate() over the dashboard's
        # window has at least two samples.
        cls.wait_for_value('up{job="deferd"}', 1)

        def scraped_three_times():
            count = cls.prometheus.scalar('count_over_time(up{job="deferd"}[1m])')
            return count is not None and count >= 3

        harness.wait_until(scraped_three_times, SCRAPE_TIMEOUT, "three scrapes of deferd",
                           interval=0.2)

    @classmethod
    def wait_for_value(cls, expr, expected):
        """Wait until `expr` has the single value `expected`, and return it."""

        def reached():
            return cls.prometheus.scalar(expr) == expected

        try:
            harness.wait_until(reached, SCRAPE_TIMEOUT, f"{expr} to be {expected} in Prometheus",
                               interval=0.2)
        except AssertionError as e:
            raise AssertionError(
                f"{e}\nlast value: {cls.prometheus.scalar(expr)}\n"
                f"--- prometheus log ---\n{cls.prometheus.log()}"
            ) from None
        return expected

    def test_up_is_one(self):
        self.assertEqual(self.prometheus.scalar('up{job="deferd"}'), 1.0)
        targets = self.prometheus.api("/api/v1/targets")[1]["data"]["activeTargets"]
        self.assertEqual(len(targets), 1, f"targets: {targets}")
        self.assertEqual(targets[0]["health"], "up", f"target: {targets[0]}")
        self.assertEqual(targets[0]["lastError"], "")

    def test_requests_total_matches_traffic(self):
        expr = ('sum(deferd_requests_total{job="deferd", listener="inbound", cluster="web", '
                'status_class="2xx"})')
        before = self.deferd.metrics().value("deferd_requests_total", listener="inbound",
                                             cluster="web", status_class="2xx")
        self.wait_for_value(expr, before)

        sent = 37
        for _ in range(sent):
            self.assertStatus(harness.http_get(self.port, "/static/index.html"), 200)

        self.wait_for_value(expr, before + sent)
        direct = self.deferd.metrics().value("deferd_requests_total", listener="inbound",
                                             cluster="web", status_class="2xx")
        self.assertEqual(direct, before + sent, "deferd's own /metrics")

        count_expr = ('sum(deferd_request_duration_seconds_count{job="deferd", '
                      'listener="inbound", cluster="web"})')
        self.assertGreaterEqual(self.prometheus.scalar(count_expr), before + sent,
                                "histogram count in Prometheus")

    def test_local_replies_scraped_by_reason(self):
        expr = ('sum(deferd_local_replies_total{job="deferd", listener="inbound", '
                'reason="no-route"})')
        before = self.deferd.metrics().value("deferd_local_replies_total", listener="inbound",
                                             reason="no-route")
        self.wait_for_value(expr, before)
        for _ in range(4):
            self.assertLocalReply(harness.http_get(self.port, "/elsewhere"), 404, "no-route")
        self.wait_for_value(expr, before + 4)

    def test_reload_failure_fires_alert(self):
        failures = 'sum(deferd_config_reloads_total{job="deferd", result="failure"})'
        before = self.deferd.metrics().value("deferd_config_reloads_total", result="failure")
        self.wait_for_value(failures, before)

        self.deferd.write_config(text="listeners: [ this is not valid")
        try:
            self.deferd.signal(signal.SIGHUP)
            self.wait_for_value(failures, before + 1)
        finally:
            self.deferd.write_config()
        self.assertTrue(self.deferd.alive(), "deferd must keep running after an invalid reload")

        def firing():
            alerts = self.prometheus.api("/api/v1/alerts")[1]["data"]["alerts"]
            return [a for a in alerts
                    if a["labels"]["alertname"] == "DeferdConfigReloadFailed"
                    and a["state"] == "firing"]

        alerts = harness.wait_until(firing, SCRAPE_TIMEOUT,
                                    "DeferdConfigReloadFailed to fire", interval=0.2)
        self.assertEqual(alerts[0]["labels"]["result"], "failure")
        self.assertEqual(alerts[0]["labels"]["job"], "deferd")
        self.assertEqual(alerts[0]["annotations"]["runbook_url"],
                         "docs/operations.md#deferdconfigreloadfailed")

    def test_no_other_alert_fires(self):
        # On a healthy deferd under light traffic no alert fires or is even pending, except
        # DeferdConfigReloadFailed, which test_reload_failure_fires_alert sets off.
        self.wait_for_value('count(up{job="deferd"} == 1)', 1)
        alerts = self.prometheus.api("/api/v1/alerts")[1]["data"]["alerts"]
        unexpected = [a for a in alerts
                      if a["labels"]["alertname"] != "DeferdConfigReloadFailed"]
        self.assertEqual(unexpected, [], "alerts on a healthy deferd")

    def test_rules_evaluate_without_errors(self):
        rules = manifests.load_yaml_documents(manifests.ALERTS)[0]
        expected = sum(len(group["rules"]) for group in rules["groups"])

        def evaluated():
            groups = self.prometheus.api("/api/v1/rules")[1]["data"]["groups"]
            loaded = [rule for group in groups for rule in group["rules"]]
            done = [rule for rule in loaded if not rule["lastEvaluation"].startswith("0001-")]
            return loaded if len(loaded) == expected and len(done) == expected else None

        loaded = harness.wait_until(evaluated, SCRAPE_TIMEOUT,
                                    f"all {expected} rules to be loaded and evaluated",
                                    interval=0.2)
        for rule in loaded:
            with self.subTest(rule=rule["name"]):
                self.assertEqual(rule["health"], "ok", f"rule {rule['name']}: {rule}")

    def test_recording_rule_counts_requests(self):
        # listener:deferd_requests_received:rate5m includes the no-route replies, which
        # deferd_requests_total leaves out.
        for _ in range(3):
            self.assertLocalReply(harness.http_get(self.port, "/elsewhere"), 404, "no-route")
            self.assertStatus(harness.http_get(self.port, "/static/index.html"), 200)

        def positive():
            value = self.prometheus.scalar(
                'listener:deferd_requests_received:rate5m{job="deferd", listener="inbound"}')
            return value is not None and value > 0

        harness.wait_until(positive, SCRAPE_TIMEOUT, "the recording rule to report traffic",
                           interval=0.2)
        received = self.prometheus.scalar(
            'listener:deferd_requests_received:rate5m{job="deferd", listener="inbound"}')
        routed = self.prometheus.scalar(
            'sum(rate(deferd_requests_total{job="deferd", listener="inbound"}[5m]))')
        self.assertGreater(received, routed, "received requests include the no-route replies")

    def test_dashboard_queries_run(self):
        with open(manifests.DASHBOARD, encoding="utf-8") as f:
            dashboard = yaml.safe_load(f)

        # Traffic within the last rate window, so rate() over exported counters has data.
        for _ in range(3):
            self.assertStatus(harness.http_get(self.port, "/static/index.html"), 200)
        self.wait_for_value('count(up{job="deferd"} == 1)', 1)

        planned = set(manifests.PLANNED_METRICS)
        for title, expr in manifests.expressions_of_dashboard(dashboard):
            query = expr
            for variable, value in DASHBOARD_VARIABLES.items():
                query = query.replace(variable, value)
            with self.subTest(panel=title, expr=expr):
                self.assertNotIn("$", query, "a template variable without a test value")
                result = self.prometheus.query(query)
                families = {re.sub(r"_(bucket|sum|count)$", "", name)
                            for name in manifests.metric_names(expr)}
                # Queries ending in "> 0" hide idle series; the rest must have data once deferd
                # exports every family they use.
                if not (families & planned) and not expr.rstrip().endswith("> 0"):
                    self.assertTrue(result, f"no data for {query}")

    def test_dashboard_variables_have_values(self):
        with open(manifests.DASHBOARD, encoding="utf-8") as f:
            dashboard = yaml.safe_load(f)
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            definition = variable["query"]["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
            self.assertIsNotNone(m, f"unexpected variable query {definition!r}")
            selector = m.group(1)
            for name, value in DASHBOARD_VARIABLES.items():
                selector = selector.replace(name, value)
            with self.subTest(variable=variable["name"]):
                status, body = self.prometheus.api(f"/api/v1/label/{m.group(2)}/values",
                                                   **{"match[]": selector})
                self.assertEqual(status, 200, f"{selector}: {body}")
                self.assertTrue(body["data"], f"no values of {m.group(2)} for {selector}")


if __name__ == "__main__":
    harness.main()
