"""The deployment artefacts in deploy/: the kustomize base, the Dockerfile, the Grafana dashboard
and the Prometheus rules, checked against the sidecar config that the ConfigMap carries, against
a running deferd, against promtool and against the docs.
"""

import os
import re
import shlex
import subprocess

import yaml

import harness

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
SERVICEMONITOR_COMPONENT = os.path.join(K8S, "components", "servicemonitor")
DASHBOARD = os.path.join(DEPLOY, "grafana", "deferd-dashboard.json")
ALERTS = os.path.join(DEPLOY, "prometheus", "alerts.yaml")
ALERTS_TEST = os.path.join(DEPLOY, "prometheus", "alerts_test.yaml")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
OPERATIONS_DOC = os.path.join(REPO, "docs", "operations.md")
METRICS_DOC = os.path.join(REPO, "docs", "metrics.md")
LOCAL_REPLY_HEADER = os.path.join(REPO, "proxy", "local_reply.h")
GRPC_HEADER = os.path.join(REPO, "proxy", "grpc.h")
ARCHITECTURE_DOC = os.path.join(REPO, "docs", "architecture.md")

# Metrics that the dashboard and the alert rules use before deferd exports them: the contract
# with the priority, backpressure and breaker filters. Each entry maps the
# family name to its type and label names. This list shrinks as the filters land: once deferd
# exports a family, test_planned_metrics_not_yet_exported fails until it is removed from here.
PLANNED_METRICS = {
}

# Labels that Prometheus attaches to every scraped series (job, instance) or that the
# ServiceMonitor's Kubernetes service discovery adds (namespace, service, pod, container).
TARGET_LABELS = {"job", "instance", "namespace", "service", "pod", "container"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Local replies made before a route matched, which deferd_requests_total does not count. The
# recording rule in alerts.yaml and the dashboard's ratio add them to the request count.
PRE_ROUTE_REASONS = {
    "bad-request", "header-too-large", "too-many-headers", "header-timeout",
    "expectation-failed", "no-route",
}

# Packages of the libraries that debian:bookworm-slim already has.
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6"}

# Runtime packages of an ASan+UBSan test build, which the image does not need.
SANITIZER_PACKAGES = ("libasan", "libubsan")


# --- loading ----------------------------------------------------------------------------------


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_yaml_documents(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def build_kustomization(directory, kind="Kustomization"):
    """Return the objects a kustomization (or component) lists: resources and generated
    ConfigMaps. Supports the subset deploy/ uses and fails on anything else, so a new feature
    there gets a matching check here."""
    path = os.path.join(directory, "kustomization.yaml")
    spec = load_yaml_documents(path)[0]
    if spec.get("kind") != kind:
        raise AssertionError(f"{path}: kind is {spec.get('kind')!r}, expected {kind}")
    supported = {
        "apiVersion", "kind", "labels", "resources", "configMapGenerator", "generatorOptions",
        "images",
    }
    unsupported = set(spec) - supported
    if unsupported:
        raise AssertionError(f"{path}: keys this test does not model: {sorted(unsupported)}")

    objects = []
    for resource in spec.get("resources", []):
        objects.extend(load_yaml_documents(os.path.join(directory, resource)))
    for generator in spec.get("configMapGenerator", []):
        data = {}
        for entry in generator["files"]:
            key, _, source = entry.partition("=")
            data[key] = read_text(os.path.join(directory, source or key))
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
             "data": data}
        )
    return spec, objects


def parse_duration_seconds(text):
    """Convert a deferd duration (250ms, 20s, 2m, 1h) to seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if m is None:
        raise AssertionError(f"cannot parse duration {text!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


def split_address(address):
    """Split 'host:port' or '[v6]:port' into (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def sleep_seconds(hook):
    """Return N of a preStop hook `exec: command: [sleep, N]`."""
    command = hook["exec"]["command"]
    if len(command) != 2 or command[0] != "sleep":
        raise AssertionError(f"preStop is not a plain sleep: {command!r}")
    return float(command[1])


def expressions_of_dashboard(dashboard):
    """Return (panel title, PromQL expression) for every query of the dashboard."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def expressions_of_rules(rules):
    """Return (rule name, PromQL expression) for every recording and alerting rule."""
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            out.append((rule.get("alert") or rule.get("record"), rule["expr"]))
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"')


def metric_names(expr):
    """Return the deferd_* names an expression refers to (string literals excluded)."""
    without_strings = _STRING.sub('""', expr)
    return {name for name in _IDENTIFIER.findall(without_strings) if name.startswith("deferd_")}


def selector_labels(expr):
    """Return (metric name, label name) for every label matcher of a deferd_* selector."""
    out = []
    for name, body in _SELECTOR.findall(expr):
        if name.startswith("deferd_"):
            out.extend((name, label) for label, _ in _MATCHER.findall(body))
    return out


def github_anchor(heading):
    """Return the anchor GitHub gives a Markdown heading."""
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^a-z0-9 _-]", "", anchor)
    return anchor.replace(" ", "-")


def local_reply_reasons():
    """Return every deferd-reason token in proxy/local_reply.h's table."""
    reasons = re.findall(r'\{\s*\d{3},\s*"([a-z0-9-]+)",', read_text(LOCAL_REPLY_HEADER))
    if not reasons:
        raise AssertionError(f"no reasons found in {LOCAL_REPLY_HEADER}")
    return reasons


def local_reply_table():
    """Return {reason: (HTTP status, closes the connection, gRPC code, gRPC name)} from
    proxy/local_reply.h's table and the grpcStatusFor() switch of proxy/grpc.h."""
    local_reply = read_text(LOCAL_REPLY_HEADER)
    enum = re.search(r"enum class LocalReplyReason[^{]*\{(.*?)\};", local_reply, re.S).group(1)
    enumerators = re.findall(r"^\s*(k\w+),", enum, re.M)
    entries = re.findall(r'\{\s*(\d{3}),\s*"([a-z0-9-]+)",\s*(true|false)\s*\}', local_reply)
    if enumerators[-1] == "kCount":
        enumerators.pop()
    if not entries or len(entries) != len(enumerators):
        raise AssertionError(f"{len(enumerators)} reasons but {len(entries)} table entries in "
                             f"{LOCAL_REPLY_HEADER}")

    grpc = read_text(GRPC_HEADER)
    codes = {name: int(code) for name, code in re.findall(r"^\s*k(\w+) = (\d+),", grpc, re.M)}
    switch = re.search(r"grpcStatusFor\(LocalReplyReason reason\) \{(.*?)\n\}", grpc, re.S).group(1)
    status_of = {}
    pending = []
    for line in switch.splitlines():
        case = re.search(r"case LocalReplyReason::(k\w+):", line)
        if case:
            pending.append(case.group(1))
        returned = re.search(r"return GrpcStatus::k(\w+);", line)
        if returned and pending:
            for enumerator in pending:
                status_of[enumerator] = returned.group(1)
            pending = []

    table = {}
    for enumerator, (status, reason, closes) in zip(enumerators, entries):
        name = status_of.get(enumerator)
        if name is None:
            raise AssertionError(f"grpcStatusFor() in {GRPC_HEADER} has no case for {enumerator}")
        upper = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()
        table[reason] = (int(status), closes == "true", codes[name], upper)
    return table


# --- the kustomize base -----------------------------------------------------------------------


class ManifestTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.kustomization, cls.objects = build_kustomization(K8S)
        _, cls.component_objects = build_kustomization(SERVICEMONITOR_COMPONENT, "Component")

        deployments = [o for o in cls.objects if o["kind"] == "Deployment"]
        if len(deployments) != 1:
            raise AssertionError(f"expected one Deployment in deploy/k8s, got {len(deployments)}")
        cls.deployment = deployments[0]
        cls.pod = cls.deployment["spec"]["template"]["spec"]
        cls.containers = {c["name"]: c for c in cls.pod["containers"]}
        cls.sidecar = cls.containers["deferd"]
        cls.app = cls.containers["app"]

        cls.config_path = cls.sidecar["args"][cls.sidecar["args"].index("--config") + 1]
        cls.config_map, cls.config_key = cls.mounted_config_map(cls.config_path)
        cls.config_text = cls.config_map["data"][cls.config_key]
        cls.config = yaml.safe_load(cls.config_text)

        cls.listener_ports = {
            listener["name"]: split_address(listener["address"])[1]
            for listener in cls.config["listeners"]
        }
        cls.admin_host, cls.admin_port = split_address(cls.config["admin"]["address"])

    @classmethod
    def mounted_config_map(cls, config_path):
        """Return (ConfigMap, key) that the volume mounted at the --config file's directory
        provides the file from."""
        directory, key = os.path.split(config_path)
        mounts = [m for m in cls.sidecar["volumeMounts"] if m["mountPath"] == directory]
        if len(mounts) != 1:
            raise AssertionError(f"no single volume mounted at {directory}, the --config directory")
        volume = next(v for v in cls.pod["volumes"] if v["name"] == mounts[0]["name"])
        name = volume["configMap"]["name"]
        config_map = next(
            o for o in cls.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name
        )
        return config_map, key

    def container_port(self, container, port):
        """Resolve a port given by name or number to the container port number."""
        if isinstance(port, int):
            return port
        for entry in container["ports"]:
            if entry["name"] == port:
                return entry["containerPort"]
        self.fail(f"container {container['name']} has no port named {port!r}")

    def test_config_is_the_example(self):
        example = os.path.join(REPO, "config", "examples", "k8s.yaml")
        self.assertEqual(read_text(example), self.config_text,
                         "config/examples/k8s.yaml differs from the ConfigMap's config")

    def test_config_validates(self):
        result = subprocess.run(
            [harness.deferd_binary(), "validate", os.path.join(K8S, self.config_key)],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(result.returncode, 0,
                         f"deferd validate rejected the config:\n{result.stdout}{result.stderr}")

    def test_config_mount_is_directory(self):
        mount = next(
            m for m in self.sidecar["volumeMounts"]
            if m["mountPath"] == os.path.dirname(self.config_path)
        )
        # A subPath mount never sees ConfigMap updates, which replace the ..data symlink.
        self.assertNotIn("subPath", mount, "the config volume must be mounted as a directory")
        self.assertTrue(mount.get("readOnly"), "the config volume should be mounted read-only")

    def test_generated_config_map_keeps_name(self):
        # deferd reloads the mounted file in place; a hash suffix would replace the volume and
        # restart the pods on every edit instead.
        options = self.kustomization.get("generatorOptions", {})
        self.assertTrue(options.get("disableNameSuffixHash"),
                        "generatorOptions.disableNameSuffixHash should be true")

    def test_container_ports_match_listeners(self):
        ports = {p["containerPort"] for p in self.sidecar["ports"]}
        expected = set(self.listener_ports.values()) | {self.admin_port}
        self.assertEqual(ports, expected, "deferd container ports vs listener and admin ports")
        names = [p["name"] for p in self.sidecar["ports"]]
        self.assertEqual(len(names), len(set(names)), f"duplicate port names: {names}")

    def test_admin_port_named_admin(self):
        self.assertEqual(self.container_port(self.sidecar, "admin"), self.admin_port)

    def test_admin_reachable_from_kubelet(self):
        # The kubelet probes and Prometheus scrapes from outside the pod's loopback.
        self.assertFalse(self.admin_host.startswith("127."),
                         f"admin address {self.config['admin']['address']} is loopback-only")

    def test_probes_use_admin_listener(self):
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/ready"),
                            ("startupProbe", "/ready")]:
            with self.subTest(probe=probe):
                get = self.sidecar[probe]["httpGet"]
                self.assertEqual(get["path"], path, f"{probe} path")
                self.assertEqual(self.container_port(self.sidecar, get["port"]), self.admin_port,
                                 f"{probe} port")

    def test_grace_period_covers_drain(self):
        drain = parse_duration_seconds(self.config.get("drain_timeout", "20s"))
        sidecar_sleep = sleep_seconds(self.sidecar["lifecycle"]["preStop"])
        grace = self.pod["terminationGracePeriodSeconds"]
        self.assertLess(sidecar_sleep + drain, grace,
                        f"preStop sleep {sidecar_sleep}s + drain_timeout {drain}s must be below "
                        f"terminationGracePeriodSeconds {grace}")

    def test_app_outlives_drain(self):
        drain = parse_duration_seconds(self.config.get("drain_timeout", "20s"))
        sidecar_sleep = sleep_seconds(self.sidecar["lifecycle"]["preStop"])
        app_sleep = sleep_seconds(self.app["lifecycle"]["preStop"])
        self.assertGreaterEqual(app_sleep, sidecar_sleep + drain,
                                "the app must keep serving while deferd drains requests to it")
        self.assertLess(app_sleep, self.pod["terminationGracePeriodSeconds"])

    def test_scrape_annotations_point_at_admin(self):
        annotations = self.deployment["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(annotations.get("prometheus.io/scrape"), "true")
        self.assertEqual(annotations.get("prometheus.io/port"), str(self.admin_port))
        self.assertEqual(annotations.get("prometheus.io/path"), "/metrics")

    def test_service_targets_inbound_listener(self):
        services = [o for o in self.objects if o["kind"] == "Service"]
        self.assertEqual(len(services), 1, "the base has one Service")
        service = services[0]
        labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        for key, value in service["spec"]["selector"].items():
            self.assertEqual(labels.get(key), value, f"Service selector {key}")

        inbound = [entry for entry in self.config["listeners"]
                   if entry.get("direction", "inbound") == "inbound"]
        inbound_ports = {split_address(entry["address"])[1] for entry in inbound}
        for port in service["spec"]["ports"]:
            target = self.container_port(self.sidecar, port["targetPort"])
            self.assertIn(target, inbound_ports, f"Service port {port['name']}")

    def test_app_bound_to_loopback(self):
        # The Service reaches the app only through deferd; its own port is loopback-only.
        nginx_conf = read_text(os.path.join(K8S, "nginx-default.conf"))
        self.assertRegex(nginx_conf, r"listen 127\.0\.0\.1:8080;")
        endpoints = next(c for c in self.config["clusters"] if c["name"] == "local-app")
        self.assertEqual(endpoints["endpoints"], ["127.0.0.1:8080"])

    def test_servicemonitor_scrapes_admin(self):
        monitors = [o for o in self.component_objects if o["kind"] == "ServiceMonitor"]
        self.assertEqual(len(monitors), 1)
        monitor = monitors[0]
        self.assertEqual(monitor["apiVersion"], "monitoring.coreos.com/v1")
        services = [o for o in self.component_objects if o["kind"] == "Service"]
        self.assertEqual(len(services), 1)
        service = services[0]

        service_labels = service["metadata"]["labels"]
        for key, value in monitor["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(service_labels.get(key), value, f"ServiceMonitor selector {key}")
        self.assertEqual(service_labels.get(monitor["spec"]["jobLabel"]), "deferd",
                         "the alert rules select job=\"deferd\"")

        pod_labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        for key, value in service["spec"]["selector"].items():
            self.assertEqual(pod_labels.get(key), value, f"metrics Service selector {key}")

        ports = {p["name"]: p for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            self.assertEqual(endpoint["path"], "/metrics")
            target = ports[endpoint["port"]]["targetPort"]
            self.assertEqual(self.container_port(self.sidecar, target), self.admin_port)

    def test_containers_locked_down(self):
        self.assertTrue(self.pod["securityContext"]["runAsNonRoot"])
        for name, container in self.containers.items():
            with self.subTest(container=name):
                context = container["securityContext"]
                self.assertTrue(context["readOnlyRootFilesystem"])
                self.assertFalse(context["allowPrivilegeEscalation"])
                self.assertEqual(context["capabilities"]["drop"], ["ALL"])
                self.assertNotIn("add", context["capabilities"])
                self.assertGreater(context["runAsUser"], 0)
                self.assertIn("memory", container["resources"]["requests"])
                self.assertIn("memory", container["resources"]["limits"])
                self.assertIn("cpu", container["resources"]["requests"])

    def test_workers_fit_cpu_limit(self):
        # `workers: auto` counts the node's cores and ignores the container's CPU limit.
        workers = self.config.get("workers", "auto")
        self.assertIsInstance(workers, int, "set workers explicitly in a container")
        limit = str(self.sidecar["resources"]["limits"]["cpu"])
        cores = float(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
        self.assertLessEqual(workers, max(1, cores), f"workers {workers} vs CPU limit {limit}")

    def test_image_matches_kustomize_images(self):
        names = {entry["name"] for entry in self.kustomization.get("images", [])}
        self.assertIn(self.sidecar["image"].split(":")[0], names,
                      "the deferd image should be overridable through kustomize images")


# --- the Dockerfile ---------------------------------------------------------------------------


class DockerfileTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        text = read_text(DOCKERFILE).replace("\\\n", " ")
        cls.instructions = []  # (stage index, keyword, arguments)
        stage = -1
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            keyword = keyword.upper()
            if keyword == "FROM":
                stage += 1
            cls.instructions.append((stage, keyword, rest.strip()))
        cls.final_stage = stage
        _, objects = build_kustomization(K8S)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        cls.sidecar = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                           if c["name"] == "deferd")
        cls.config = yaml.safe_load(read_text(os.path.join(K8S, "deferd.yaml")))

    def final(self, keyword):
        return [args for stage, kw, args in self.instructions
                if stage == self.final_stage and kw == keyword]

    def test_bases_are_debian_12(self):
        bases = [args.split()[0] for _, kw, args in self.instructions if kw == "FROM"]
        self.assertEqual(bases, ["debian:bookworm", "debian:bookworm-slim"])

    def test_expose_matches_config(self):
        exposed = {int(port) for args in self.final("EXPOSE") for port in args.split()}
        expected = {split_address(entry["address"])[1] for entry in self.config["listeners"]}
        expected.add(split_address(self.config["admin"]["address"])[1])
        self.assertEqual(exposed, expected)

    def test_runs_as_manifest_user(self):
        users = self.final("USER")
        self.assertEqual(len(users), 1)
        uid = users[0].split(":")[0]
        self.assertTrue(uid.isdigit(), "USER should be numeric so runAsNonRoot can check it")
        self.assertNotEqual(uid, "0")
        self.assertEqual(int(uid), self.sidecar["securityContext"]["runAsUser"])

    def test_default_config_path_matches_manifest(self):
        cmd = self.final("CMD")
        self.assertEqual(len(cmd), 1)
        args = yaml.safe_load(cmd[0])  # the JSON form of CMD
        self.assertEqual(args, self.sidecar["args"])

    def healthcheck_command(self, port):
        """Return the HEALTHCHECK command with the admin port replaced by `port`."""
        checks = self.final("HEALTHCHECK")
        self.assertEqual(len(checks), 1)
        command = yaml.safe_load(checks[0].partition("CMD")[2].strip())  # the JSON form
        admin_port = str(split_address(self.config["admin"]["address"])[1])
        self.assertIn(admin_port, command[-1], "HEALTHCHECK should probe the admin port")
        return [part.replace(admin_port, str(port)) for part in command]

    def test_healthcheck_passes_on_running_deferd(self):
        nginx = harness.Nginx().start()
        self.addCleanup(nginx.stop)
        routes = [{"match": {"prefix": "/"}, "cluster": "web"}]
        deferd = harness.Deferd(
            listeners=[harness.listener_config("inbound", harness.free_port(), routes)],
            clusters=[harness.cluster_config("web", [nginx.port])],
        ).start()
        self.addCleanup(deferd.stop)
        result = subprocess.run(self.healthcheck_command(deferd.admin_port),
                                capture_output=True, text=True, timeout=10)
        self.assertEqual(result.returncode, 0, f"HEALTHCHECK failed: {result.stderr}")

    def test_healthcheck_fails_without_deferd(self):
        result = subprocess.run(self.healthcheck_command(harness.free_port()),
                                capture_output=True, text=True, timeout=10)
        self.assertNotEqual(result.returncode, 0, "HEALTHCHECK passed with nothing listening")

    def test_runtime_has_linked_libraries(self):
        # Every shared library the built binary links must come from a package the final stage
        # installs, or from the base image.
        installed = set()
        for args in self.final("RUN"):
            for command in args.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["apt-get", "install"]:
                    installed.update(w for w in words[2:] if not w.startswith("-"))
        ldd = subprocess.run(["ldd", harness.deferd_binary()], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        libraries = re.findall(r"=>\s+(\S+)", ldd)
        self.assertTrue(libraries, f"no libraries in ldd output:\n{ldd}")
        for library in libraries:
            real = os.path.realpath(library)
            owner = subprocess.run(["dpkg", "-S", real], capture_output=True, text=True,
                                   timeout=30)
            if owner.returncode != 0:
                # usrmerge: dpkg may know the file by its /lib path rather than /usr/lib.
                owner = subprocess.run(["dpkg", "-S", real.replace("/usr/lib/", "/lib/", 1)],
                                       capture_output=True, text=True, timeout=30)
            self.assertEqual(owner.returncode, 0, f"dpkg -S {real}: {owner.stderr}")
            package = owner.stdout.split(":")[0]
            if harness.sanitized_build() and package.startswith(SANITIZER_PACKAGES):
                continue  # the image is built without sanitizers
            with self.subTest(library=library):
                self.assertIn(package, installed | BASE_IMAGE_PACKAGES,
                              f"{library} comes from {package}, which the image lacks")


# --- dashboard and rules against a running deferd ---------------------------------------------


def example_config_on_loopback(config, upstream_port):
    """Return the example config with every address moved to a free loopback port and every
    endpoint pointed at `upstream_port`, so it runs here without DNS or fixed ports."""
    listeners = []
    for listener in config["listeners"]:
        moved = dict(listener)
        moved["address"] = f"{harness.LOOPBACK}:{harness.free_port()}"
        listeners.append(moved)
    clusters = []
    for cluster in config["clusters"]:
        moved = dict(cluster)
        moved["endpoints"] = [f"{harness.LOOPBACK}:{upstream_port}"]
        clusters.append(moved)
    extra = {key: value for key, value in config.items()
             if key not in ("listeners", "clusters", "admin", "access_log", "drain_timeout")}
    return listeners, clusters, extra


class MetricNamesTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        with open(DASHBOARD, encoding="utf-8") as f:
            cls.dashboard = yaml.safe_load(f)  # JSON is YAML
        cls.rules = load_yaml_documents(ALERTS)[0]
        cls.expressions = (
            [(f"dashboard panel {title!r}", e)
             for title, e in expressions_of_dashboard(cls.dashboard)]
            + [(f"rule {name}", e) for name, e in expressions_of_rules(cls.rules)]
        )

        config = yaml.safe_load(read_text(os.path.join(K8S, "deferd.yaml")))
        cls.nginx = harness.Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)
        listeners, clusters, extra = example_config_on_loopback(config, cls.nginx.port)
        cls.deferd = harness.Deferd(listeners=listeners, clusters=clusters, extra=extra).start()
        cls.addClassCleanup(cls.deferd.stop)

        # Traffic on every route, so every labelled family has samples.
        ports = {entry["name"]: split_address(entry["address"])[1] for entry in listeners}
        for _ in range(3):
            resp = harness.http_get(ports["inbound"], "/static/index.html")
            if resp.status != 200:
                raise AssertionError(f"inbound request: {resp!r}")
            resp = harness.http_get(ports["outbound"], "/static/index.html",
                                    headers={"Host": "inventory"})
            if resp.status != 200:
                raise AssertionError(f"outbound request: {resp!r}")

        cls.scrape = cls.deferd.metrics()
        cls.exported = {}  # family -> type
        for line in cls.scrape.text.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
                cls.exported[parts[2]] = parts[3]
        cls.exported_labels = {}
        for name, labels, _ in cls.scrape.samples:
            cls.exported_labels.setdefault(name, set()).update(labels)

    def family_of(self, name):
        """Return (family, type, label names) for a sample name, or None when unknown."""
        candidates = [name] + [name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)]
        for family in candidates:
            suffixed = family != name
            if family in self.exported:
                kind = self.exported[family]
                if suffixed and kind != "histogram":
                    continue
                labels = set(self.exported_labels.get(name, set()))
                labels |= self.exported_labels.get(family + "_bucket", set())
                return family, kind, labels
            if family in PLANNED_METRICS:
                kind, labels = PLANNED_METRICS[family]
                if suffixed and kind != "histogram":
                    continue
                if name.endswith("_bucket"):
                    labels = labels | {"le"}
                return family, kind, labels
        return None

    def test_every_referenced_metric_known(self):
        for where, expr in self.expressions:
            for name in metric_names(expr):
                with self.subTest(where=where, metric=name):
                    self.assertIsNotNone(
                        self.family_of(name),
                        f"{where} uses {name}, which deferd does not export and which is not in "
                        "PLANNED_METRICS",
                    )

    def test_recorded_names_defined(self):
        recorded = {rule["record"] for group in self.rules["groups"] for rule in group["rules"]
                    if "record" in rule}
        for where, expr in self.expressions:
            for name in _IDENTIFIER.findall(_STRING.sub('""', expr)):
                if ":" in name:
                    with self.subTest(where=where, name=name):
                        self.assertIn(name, recorded, f"{where} uses an undefined recorded name")

    def test_selector_labels_exist(self):
        for where, expr in self.expressions:
            for name, label in selector_labels(expr):
                family = self.family_of(name)
                if family is None:
                    continue  # reported by test_every_referenced_metric_known
                with self.subTest(where=where, metric=name, label=label):
                    self.assertIn(label, family[2] | TARGET_LABELS,
                                  f"{where} filters {name} on label {label!r}, which it lacks")

    def test_counters_used_with_rate(self):
        # A counter is only meaningful through rate() or increase(); a histogram through its
        # buckets.
        for where, expr in self.expressions:
            for name in metric_names(expr):
                family = self.family_of(name)
                if family is None or family[1] != "counter":
                    continue
                with self.subTest(where=where, metric=name):
                    self.assertRegex(expr, r"(rate|increase)\(\s*" + re.escape(name),
                                     f"{where} uses counter {name} without rate() or increase()")

    def test_planned_metrics_not_yet_exported(self):
        for family in PLANNED_METRICS:
            with self.subTest(metric=family):
                self.assertNotIn(family, self.exported,
                                 f"deferd now exports {family}: remove it from PLANNED_METRICS")

    def test_exported_label_sets_documented(self):
        # Every family of the scrape appears in docs/metrics.md with each of its labels.
        doc = read_text(METRICS_DOC)
        for family, kind in self.exported.items():
            with self.subTest(metric=family):
                self.assertIn(f"`{family}`", doc, f"{family} is missing from docs/metrics.md")
                row = next((line for line in doc.splitlines() if f"`{family}`" in line
                            and line.startswith("|")), "")
                self.assertIn(kind, row, f"type of {family} in docs/metrics.md")
                labels = set(self.exported_labels.get(family, set()))
                labels |= self.exported_labels.get(family + "_bucket", set())
                labels.discard("le")
                for label in labels:
                    self.assertIn(f"`{label}`", row, f"label {label} of {family} in the doc")

    def test_pre_route_reasons_match_table(self):
        # The rules and the dashboard list the pre-route reasons by name; a renamed reason would
        # silently drop out of the ratio.
        self.assertLessEqual(PRE_ROUTE_REASONS, set(local_reply_reasons()))
        pattern = "|".join(sorted(PRE_ROUTE_REASONS))
        for where, expr in self.expressions:
            for found in re.findall(r'reason=~"([^"]*)"', expr):
                with self.subTest(where=where):
                    self.assertEqual(set(found.split("|")), PRE_ROUTE_REASONS,
                                     f"{where} lists {found!r}, expected {pattern!r}")


# --- dashboard structure ----------------------------------------------------------------------


class DashboardTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        with open(DASHBOARD, encoding="utf-8") as f:
            cls.dashboard = yaml.safe_load(f)

    def test_template_variables(self):
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        for name in ("job", "instance", "cluster"):
            with self.subTest(variable=name):
                self.assertIn(name, variables)
                self.assertEqual(variables[name]["datasource"]["uid"], "${datasource}")

    def test_panels_use_datasource_variable(self):
        for panel in self.dashboard["panels"]:
            if panel["type"] == "row":
                continue
            with self.subTest(panel=panel["title"]):
                self.assertEqual(panel["datasource"]["uid"], "${datasource}")
                self.assertTrue(panel["targets"], "panel without queries")
                for target in panel["targets"]:
                    self.assertIn('job=~"$job"', target["expr"])
                    self.assertIn('instance=~"$instance"', target["expr"])

    def test_panel_ids_unique(self):
        ids = [panel["id"] for panel in self.dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))

    def test_panels_inside_grid(self):
        for panel in self.dashboard["panels"]:
            grid = panel["gridPos"]
            with self.subTest(panel=panel["title"]):
                self.assertLessEqual(grid["x"] + grid["w"], 24)

    def test_required_sections(self):
        titles = {panel["title"] for panel in self.dashboard["panels"]}
        needed = {
            "Requests by status class", "Latency quantiles", "Local replies by reason",
            "Downstream connections", "Upstream connections", "Concurrency limit and in-flight",
            "Queue depth by urgency", "Breaker state", "Shed and expired (enforce)",
            "Requests by priority source", "Boosts", "Reloads by result",
        }
        self.assertLessEqual(needed, titles)


# --- alert rules ------------------------------------------------------------------------------


class AlertRulesTest(harness.DeferdTestCase):
    @classmethod
    def setUpClass(cls):
        cls.rules = load_yaml_documents(ALERTS)[0]
        cls.alerts = [rule for group in cls.rules["groups"] for rule in group["rules"]
                      if "alert" in rule]

    def run_promtool(self, *args):
        promtool = harness.require_tool("promtool")
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                                cwd=os.path.dirname(ALERTS))
        self.assertEqual(result.returncode, 0,
                         f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}")

    def test_promtool_check_rules(self):
        self.run_promtool("check", "rules", ALERTS)

    def test_promtool_unit_tests(self):
        self.run_promtool("test", "rules", ALERTS_TEST)

    def test_every_alert_has_a_unit_test(self):
        tested = set()
        for test in load_yaml_documents(ALERTS_TEST)[0]["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    tested.add(case["alertname"])
        names = {alert["alert"] for alert in self.alerts}
        self.assertEqual(names - tested, set(), "alerts that no promtool test fires")

    def test_required_alerts_present(self):
        names = {alert["alert"] for alert in self.alerts}
        for needed in ("DeferdDown", "DeferdConfigReloadFailed", "DeferdLocalReplyRatioHigh",
                       "DeferdBreakerOpenTooLong", "DeferdShedCriticalRequests"):
            self.assertIn(needed, names)

    def test_annotations_and_severity(self):
        for alert in self.alerts:
            with self.subTest(alert=alert["alert"]):
                annotations = alert.get("annotations", {})
                self.assertTrue(annotations.get("summary"), "summary")
                self.assertTrue(annotations.get("description"), "description")
                self.assertIn(alert["labels"]["severity"], ("critical", "warning", "info"))

    def test_runbooks_point_into_operations_doc(self):
        doc = read_text(OPERATIONS_DOC)
        anchors = {github_anchor(line.lstrip("#")) for line in doc.splitlines()
                   if line.startswith("#")}
        for alert in self.alerts:
            with self.subTest(alert=alert["alert"]):
                url = alert["annotations"].get("runbook_url", "")
                path, _, anchor = url.partition("#")
                self.assertEqual(path, "docs/operations.md")
                self.assertIn(anchor, anchors, f"no heading for #{anchor} in docs/operations.md")


# --- operations doc ---------------------------------------------------------------------------


class OperationsDocTest(harness.DeferdTestCase):
    def test_troubleshooting_covers_every_reason(self):
        doc = read_text(OPERATIONS_DOC)
        rows = [line for line in doc.splitlines() if line.startswith("| `")]
        listed = {re.match(r"\| `([a-z0-9-]+)`", row).group(1) for row in rows}
        for reason in local_reply_reasons():
            with self.subTest(reason=reason):
                self.assertIn(reason, listed, f"no troubleshooting row for {reason}")

    def test_troubleshooting_statuses_match_tables(self):
        # The HTTP and gRPC columns repeat proxy/local_reply.h and proxy/grpc.h.
        rows = {}
        for line in read_text(OPERATIONS_DOC).splitlines():
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            match = re.fullmatch(r"`([a-z0-9-]+)`", cells[0]) if line.startswith("| `") else None
            if match:
                rows[match.group(1)] = cells
        for reason, (status, closes, code, name) in local_reply_table().items():
            with self.subTest(reason=reason):
                http_cell, grpc_cell = rows[reason][1], rows[reason][2]
                connection = "closed" if closes else "kept"
                if reason == "fault-injected":
                    # The policy or the request header chooses the status; 503 is the default.
                    self.assertIn(f"({status} by default)", http_cell)
                    self.assertTrue(http_cell.endswith(connection), http_cell)
                    self.assertIn(f"{code} {name} for {status}", grpc_cell)
                else:
                    self.assertEqual(http_cell, f"{status}, {connection}")
                    self.assertEqual(grpc_cell, f"{code} {name}")

    def test_architecture_grpc_table_matches_switch(self):
        doc = read_text(ARCHITECTURE_DOC)
        table = doc[doc.index("| reasons | gRPC status |"):]
        table = table[: table.index("\n\n")]
        status_of = {}
        for line in table.splitlines()[2:]:
            reasons_cell, status_cell = [c.strip() for c in line.strip("|").split("|")][:2]
            for reason in re.findall(r"`([a-z0-9-]+)`", reasons_cell):
                self.assertNotIn(reason, status_of, f"{reason} is in two rows")
                status_of[reason] = status_cell
        for reason, (_, _, code, name) in local_reply_table().items():
            with self.subTest(reason=reason):
                self.assertIn(reason, status_of, "missing from the gRPC table of architecture.md")
                if reason == "fault-injected":
                    self.assertIn(f"{code} {name} for the default", status_of[reason])
                else:
                    self.assertEqual(status_of[reason], f"{code} {name}")

    def test_grace_arithmetic_matches_manifests(self):
        # The doc's worked example uses the manifests' numbers.
        doc = read_text(OPERATIONS_DOC)
        _, objects = build_kustomization(K8S)
        pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
        self.assertIn(f"terminationGracePeriodSeconds: {pod['terminationGracePeriodSeconds']}",
                      doc)


if __name__ == "__main__":
    harness.main()
