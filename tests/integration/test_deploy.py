"""Shipping sluice: the Dockerfile, the docker-compose demo, the Kubernetes manifests, cmake
--install with the systemd unit, --version, --probe and the service manager protocol. There is no
Docker engine here: what can be checked without one is checked (docker-compose config, every file
the compose file, Dockerfile and manifests use exists, the configs they carry pass
`sluice --check-config`, the runtime stage's packages are exactly the libraries the binary links,
the compose demo's PostgreSQL replication scripts build a streaming replica when run natively)."""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import yaml

from harness import ROOT, SLUICE, free_port, skip_or_fail

sys.path.insert(0, os.path.dirname(__file__))
import cluster  # noqa: E402  (the unprivileged server user and PostgreSQL's binaries)

COMPOSE = os.path.join(ROOT, "deploy", "compose", "docker-compose.yml")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
K8S = [os.path.join(ROOT, "deploy", "k8s", f) for f in ("sidecar.yaml", "standalone.yaml")]


def check_config(text, env, name="sluice.yaml"):
    """sluice --check-config on a config text with this environment: (returncode, output)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([SLUICE, "--check-config", path], capture_output=True, text=True,
                           env=dict(os.environ, **env), timeout=30)
        return r.returncode, r.stdout + r.stderr


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(text))
    n, unit = int(m.group(1)), m.group(2) or "ms"
    return n / 1000 if unit == "ms" else n * (60 if unit == "m" else 1)


# --- Dockerfile ---------------------------------------------------------------------------------

def dockerfile_stages():
    """[(from, name, [(instruction, argument text)])] with continuation lines joined."""
    lines, cur = [], ""
    with open(DOCKERFILE) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            lines.append(cur + line)
            cur = ""
    stages = []
    for line in lines:
        instr, _, arg = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            parts = arg.split()
            stages.append((parts[0], parts[2] if len(parts) > 2 else None, []))
        else:
            stages[-1][2].append((instr, arg.strip()))
    return stages


def stage_args(stage):
    out = {}
    for instr, arg in stage[2]:
        if instr == "ARG" and "=" in arg:
            k, v = arg.split("=", 1)
            out[k] = shlex.split(v)[0] if v else ""
    return out


def linked_packages(binary):
    """The Debian packages of the shared libraries binary names in DT_NEEDED (ldd for paths)."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run(["readelf", "-d", binary], capture_output=True, text=True,
                                       check=True).stdout)
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
    for path in re.findall(r"^\s*(/\S+) \(", ldd, re.M):  # the dynamic loader
        paths[os.path.basename(path)] = path
    packages = {}
    for soname in needed:
        if re.match(r"lib(asan|ubsan|tsan)\.", soname):
            continue  # sanitizer runtimes of the ASan build; the image builds release
        path = paths[soname]
        candidates = {path, os.path.realpath(path)}
        candidates |= {p.replace("/lib/", "/usr/lib/", 1) for p in list(candidates)
                       if p.startswith("/lib/")}
        candidates |= {p.replace("/usr/lib/", "/lib/", 1) for p in list(candidates)
                       if p.startswith("/usr/lib/")}
        owner = None
        for c in sorted(candidates):
            r = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
            if r.returncode == 0:
                owner = r.stdout.split(":")[0].strip()
                break
        assert owner, f"no Debian package owns {soname} ({path})"
        packages[soname] = owner
    return packages


class Dockerfile(unittest.TestCase):
    def test_stages_user_ports_health_signal_labels(self):
        stages = dockerfile_stages()
        self.assertEqual([(s[0], s[1]) for s in stages],
                         [("debian:12", "build"), ("debian:12-slim", "runtime")])
        build, runtime = stages
        runs = " ".join(a for i, a in build[2] if i == "RUN")
        # The build stage installs exactly what scripts/setup.sh installs for a build.
        self.assertIn("bash /tmp/setup.sh --build-only", runs)
        self.assertIn(("COPY", "scripts/setup.sh /tmp/setup.sh"), build[2])
        self.assertIn("cmake --install", runs)
        instr = dict((i, a) for i, a in runtime[2] if i != "RUN" and i != "ARG" and i != "COPY")
        user = instr["USER"].split(":")[0]
        self.assertNotIn(user, ("root", "0"), "the image must not run as root")
        self.assertEqual(instr["EXPOSE"].split(), ["6432", "9930"])
        self.assertEqual(instr["STOPSIGNAL"], "SIGTERM")
        self.assertRegex(instr["HEALTHCHECK"],
                         r'CMD \["/usr/local/bin/sluice", "--probe", "http://127.0.0.1:9930/healthz"\]')
        self.assertIn('ENTRYPOINT', instr)
        for label in ("title", "description", "version"):
            self.assertIn(f"org.opencontainers.image.{label}=", instr["LABEL"])
        env = dict(re.findall(r"(\w+)=(\S+)", instr["ENV"]))
        self.assertEqual(env["SLUICE_CONFIG"], "/etc/sluice/sluice.yaml")
        # The packaged config the image ships, with only the password given, is valid and listens
        # where EXPOSE and HEALTHCHECK say.
        with open(os.path.join(ROOT, "deploy", "sluice.yaml")) as f:
            text = f.read()
        rc, out = check_config(text, dict(env, SLUICE_PASSWORD="x"))
        self.assertEqual(rc, 0, out)
        rc, out = check_config(text, env)
        self.assertNotEqual(rc, 0)
        self.assertIn("SLUICE_PASSWORD is not set", out)
        self.assertEqual(env["SLUICE_LISTEN"], "0.0.0.0:6432")
        self.assertEqual(env["SLUICE_HTTP_LISTEN"], "0.0.0.0:9930")

    def test_copied_files_exist_and_dockerignore(self):
        for stage in dockerfile_stages():
            for instr, arg in stage[2]:
                if instr == "COPY" and not arg.startswith("--from"):
                    for src in arg.split()[:-1]:
                        if src != ".":
                            self.assertTrue(os.path.exists(os.path.join(ROOT, src)), src)
        with open(os.path.join(ROOT, ".dockerignore")) as f:
            ignored = {l.strip().rstrip("/") for l in f if l.strip() and not l.startswith("#")}
        for must in ("build", ".git"):
            self.assertIn(must, ignored)
        # What the build needs is not ignored.
        for needed in ("CMakeLists.txt", "CMakePresets.json", "scripts", "server", "protocol",
                       "routing", "cache", "config", "cmake", "deploy"):
            self.assertNotIn(needed, ignored)

    def test_runtime_stage_installs_exactly_the_linked_libraries(self):
        runtime = dockerfile_stages()[1]
        args = stage_args(runtime)
        listed = set(args["RUNTIME_LIBRARIES"].split())
        base = set(args["BASE_LIBRARIES"].split())
        runs = " ".join(a for i, a in runtime[2] if i == "RUN")
        self.assertIn("${RUNTIME_LIBRARIES}", runs)
        self.assertIn("dpkg-query -W ${BASE_LIBRARIES}", runs)
        self.assertEqual(args["RUNTIME_DATA"], "ca-certificates")
        linked = linked_packages(SLUICE)
        print("linked:", ", ".join(f"{k} ({v})" for k, v in sorted(linked.items())))
        self.assertEqual(listed | base, set(linked.values()),
                         "RUNTIME_LIBRARIES + BASE_LIBRARIES must be exactly the packages of the "
                         "libraries the binary links")
        self.assertFalse(listed & base, "a base-image library listed as a runtime library")
        # Nothing that exists only for building (headers, compilers) reaches the runtime stage.
        for pkg in listed:
            self.assertFalse(pkg.endswith("-dev"), pkg)


# --- docker-compose ----------------------------------------------------------------------------

class Compose(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        dc = shutil.which("docker-compose")
        assert dc, "docker-compose (Debian package) is missing: run scripts/setup.sh"
        r = subprocess.run([dc, "-f", COMPOSE, "config"], capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stdout + r.stderr
        cls.resolved = yaml.safe_load(r.stdout)
        with open(COMPOSE) as f:
            cls.raw = yaml.safe_load(f)

    def test_services_and_ports(self):
        services = self.resolved["services"]
        self.assertEqual(set(services),
                         {"primary", "replica", "redis", "sluice", "prometheus", "grafana",
                          "loadgen"})
        for name, svc in services.items():
            self.assertTrue(svc.get("image") or svc.get("build"), name)
        published = {(p["published"], p["target"]) for p in services["sluice"]["ports"]}
        self.assertEqual(published, {(6432, 6432), (9930, 9930)})
        self.assertEqual(services["replica"]["depends_on"]["primary"]["condition"],
                         "service_healthy")
        for dep in ("primary", "replica", "redis"):
            self.assertEqual(services["sluice"]["depends_on"][dep]["condition"], "service_healthy")
        self.assertEqual(services["primary"]["image"], "postgres:15")
        with open(os.path.join(ROOT, "deploy/compose/loadgen.sh")) as f:
            self.assertIn("pgbench", f.read())

    def test_referenced_files_exist(self):
        checked = 0
        for name, svc in self.resolved["services"].items():
            build = svc.get("build")
            if build:
                ctx = build["context"]
                self.assertTrue(os.path.isdir(ctx), ctx)
                self.assertTrue(os.path.isfile(os.path.join(ctx, build["dockerfile"])))
                self.assertEqual(os.path.realpath(ctx), os.path.realpath(ROOT))
                checked += 1
            for v in svc.get("volumes", []):
                src = v.split(":")[0] if isinstance(v, str) else v.get("source")
                if src.startswith("/"):
                    self.assertTrue(os.path.exists(src), f"{name}: {src} does not exist")
                    self.assertTrue(os.path.realpath(src).startswith(os.path.realpath(ROOT)),
                                    f"{name}: {src} is outside the repository")
                    checked += 1
                else:
                    self.assertIn(src, self.resolved.get("volumes", {}), f"{name}: volume {src}")
        self.assertGreaterEqual(checked, 9)

    def test_sluice_prometheus_and_grafana_configs_agree(self):
        services = self.resolved["services"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services["sluice"]["volumes"]}
        conf_path = mounts[services["sluice"]["environment"]["SLUICE_CONFIG"]]
        with open(conf_path) as f:
            text = f.read()
        rc, out = check_config(text, services["sluice"]["environment"])
        self.assertEqual(rc, 0, out)
        conf = yaml.safe_load(text)
        db = conf["databases"]["appdb"]
        self.assertEqual(db["primary"]["host"], "primary")
        self.assertEqual([r["host"] for r in db["replicas"]], ["replica"])
        self.assertTrue(conf["cache"]["redis"].startswith("redis://redis:"))
        self.assertEqual(conf["listen"]["postgres"], "0.0.0.0:6432")
        # The README's `psql postgres://app:secret@localhost:6432/appdb`: the same password on
        # the primary (its init script) and in sluice.
        self.assertEqual(services["sluice"]["environment"]["APP_PASSWORD"], "secret")
        self.assertEqual(services["primary"]["environment"]["APP_PASSWORD"], "secret")
        # Prometheus scrapes the sluice service where it listens, with the alert rules mounted
        # next to its config.
        prom_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
        with open(prom_mounts["/etc/prometheus/prometheus.yml"]) as f:
            prom = yaml.safe_load(f)
        targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        self.assertEqual(targets, ["sluice:" + conf["listen"]["http"].split(":")[1]])
        for rule_file in prom["rule_files"]:
            self.assertIn(os.path.join("/etc/prometheus", rule_file), prom_mounts)
        r = subprocess.run(["promtool", "check", "config",
                            os.path.join(ROOT, "deploy/prometheus/prometheus.yml")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # Grafana: the data source is the prometheus service, the dashboard is in the folder the
        # provider reads.
        gmounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
        prov = gmounts["/etc/grafana/provisioning"]
        with open(os.path.join(prov, "datasources", "prometheus.yml")) as f:
            ds = yaml.safe_load(f)["datasources"][0]
        self.assertEqual(ds["url"], "http://prometheus:9090")
        with open(os.path.join(prov, "dashboards", "sluice.yml")) as f:
            folder = yaml.safe_load(f)["providers"][0]["options"]["path"]
        dash = [m for m in gmounts if m.startswith(folder + "/")]
        self.assertEqual(len(dash), 1)
        self.assertTrue(gmounts[dash[0]].endswith("grafana-dashboard.json"))

    def test_replication_scripts_build_a_streaming_replica(self):
        """The primary's init script and the replica's entrypoint, run as the official postgres
        image runs them (the init script against a fresh cluster whose pg_hba.conf lets every role
        in with a password, then a restart; the entrypoint as the postgres user), outside Docker."""
        env = self.resolved["services"]["primary"]["environment"]
        base = tempfile.mkdtemp(prefix="sluice-compose-pg-")
        os.chmod(base, 0o755)
        pport, rport = free_port(), free_port()
        pdata, rdata, sock = f"{base}/primary", f"{base}/replica", f"{base}/sock"
        os.makedirs(sock)
        os.makedirs(rdata)
        cluster.chown_tree(base)
        path = cluster.PG_BIN + ":" + os.environ["PATH"]
        script_env = ["env", f"PATH={path}", "POSTGRES_USER=postgres", f"PGDATA={pdata}",
                      f"APP_PASSWORD={env['APP_PASSWORD']}",
                      f"REPLICATION_PASSWORD={env['REPLICATION_PASSWORD']}", f"PGHOST={sock}",
                      f"PGPORT={pport}"]
        opts = f"-c port={pport} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sock}"
        replica = None
        try:
            cluster.as_server_user([f"{cluster.PG_BIN}/initdb", "-D", pdata, "-U", "postgres",
                                    "--auth-local=trust", "--auth-host=scram-sha-256"],
                                   capture_output=True)
            with open(f"{pdata}/pg_hba.conf", "a") as f:  # what the official image appends
                f.write("host all all all scram-sha-256\n")
            cluster.as_server_user([f"{cluster.PG_BIN}/pg_ctl", "-D", pdata, "-l",
                                    f"{base}/primary.log", "-o",
                                    opts + " -c shared_preload_libraries=pg_stat_statements",
                                    "-w", "start"], capture_output=True)
            cluster.as_server_user(script_env + ["bash", os.path.join(
                ROOT, "deploy/compose/postgres/primary-init.sh")], capture_output=True)
            cluster.as_server_user([f"{cluster.PG_BIN}/pg_ctl", "-D", pdata, "-l",
                                    f"{base}/primary.log", "-w", "restart"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            renv = ["env", f"PATH={path}", f"PGDATA={rdata}", "PRIMARY_HOST=127.0.0.1",
                    f"PGPORT={pport}", f"REPLICATION_PASSWORD={env['REPLICATION_PASSWORD']}"]
            cmd = renv + ["bash", os.path.join(ROOT, "deploy/compose/postgres/replica-entrypoint.sh"),
                          "-c", f"port={rport}", "-c", "listen_addresses=127.0.0.1",
                          "-c", f"unix_socket_directories={sock}"]
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", cluster.OS_USER, "--"] + cmd
            replica = subprocess.Popen(cmd, stdout=open(f"{base}/replica.log", "w"),
                                       stderr=subprocess.STDOUT)

            def q(port, sql, user="app", db="appdb"):
                return subprocess.run(
                    ["psql", "-X", "-At", f"postgres://{user}:{env['APP_PASSWORD']}@127.0.0.1:"
                     f"{port}/{db}?sslmode=disable", "-c", sql],
                    capture_output=True, text=True, timeout=30)

            deadline = time.time() + 120
            while q(rport, "SELECT pg_is_in_recovery()").stdout.strip() != "t":
                self.assertIsNone(replica.poll(), open(f"{base}/replica.log").read())
                self.assertLess(time.time(), deadline, open(f"{base}/replica.log").read())
                time.sleep(0.5)
            # The app role logs in with its password over TCP, owns appdb, and what it writes on
            # the primary streams to the replica through the slot the init script made.
            self.assertEqual(q(pport, "CREATE TABLE t AS SELECT 42 AS v").returncode, 0)
            deadline = time.time() + 30
            while q(rport, "SELECT v FROM t").stdout.strip() != "42":
                self.assertLess(time.time(), deadline, "the write did not reach the replica")
                time.sleep(0.2)
            slots = subprocess.run(
                ["psql", "-X", "-At", "-h", sock, "-p", str(pport), "-U", "postgres", "-d",
                 "postgres", "-c", "SELECT slot_name, active FROM pg_replication_slots"],
                capture_output=True, text=True).stdout.strip()
            self.assertEqual(slots, "replica1|t")
            self.assertEqual(q(pport, "SELECT count(*) FROM pg_extension WHERE extname = "
                                      "'pg_stat_statements'").stdout.strip(), "1")
        finally:
            stop = lambda data: cluster.as_server_user(
                [f"{cluster.PG_BIN}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                capture_output=True) if os.path.exists(f"{data}/postmaster.pid") else None
            for data in (rdata, pdata):
                try:
                    stop(data)
                except subprocess.CalledProcessError:
                    pass
            if replica is not None and replica.poll() is None:
                replica.kill()
                replica.wait()
            shutil.rmtree(base, ignore_errors=True)


# --- Kubernetes ---------------------------------------------------------------------------------

REQUIRED = {
    "Secret": ["stringData"], "ConfigMap": ["data"], "Deployment": ["spec.selector",
                                                                     "spec.template.spec"],
    "Service": ["spec.selector", "spec.ports"], "PodDisruptionBudget": ["spec.selector"],
    "PodMonitor": ["spec.selector", "spec.podMetricsEndpoints"],
    "ServiceMonitor": ["spec.selector", "spec.endpoints"],
}
API = {"Secret": "v1", "ConfigMap": "v1", "Service": "v1", "Deployment": "apps/v1",
       "PodDisruptionBudget": "policy/v1", "PodMonitor": "monitoring.coreos.com/v1",
       "ServiceMonitor": "monitoring.coreos.com/v1"}


def dig(obj, dotted):
    for part in dotted.split("."):
        obj = obj[part]
    return obj


def http_port_of(container, name_or_number):
    if isinstance(name_or_number, int):
        return name_or_number
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name_or_number)


class Kubernetes(unittest.TestCase):
    def load(self, path):
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for d in docs:
            self.assertEqual(d["apiVersion"], API[d["kind"]], d["kind"])
            self.assertTrue(d["metadata"]["name"])
            for field in REQUIRED[d["kind"]]:
                dig(d, field)
        return docs

    def check_sluice_pod(self, docs, pod, sluice, labels):
        objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        self.assertTrue(sluice["image"].split("/")[-1].startswith("sluice:"))
        # Probes: liveness /healthz, readiness /readyz, on the port sluice's http listens on.
        conf_volume = next(m for m in sluice["volumeMounts"] if m["mountPath"] == "/etc/sluice")
        vol = next(v for v in pod["volumes"] if v["name"] == conf_volume["name"])
        cm = objects[("ConfigMap", vol["configMap"]["name"])]
        text = cm["data"]["sluice.yaml"]
        conf = yaml.safe_load(text)
        http_port = int(conf["listen"]["http"].rsplit(":", 1)[1])
        self.assertTrue(conf["listen"]["http"].startswith("0.0.0.0:"),
                        "the kubelet probes the pod IP")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            get = sluice[probe]["httpGet"]
            self.assertEqual(get["path"], path)
            self.assertEqual(http_port_of(sluice, get["port"]), http_port)
        # Resources: requests and limits, memory in both.
        res = sluice["resources"]
        for kind in ("requests", "limits"):
            self.assertIn("memory", res[kind])
            self.assertIn("cpu", res[kind])
        mi = lambda v: int(v.rstrip("Mi"))
        self.assertLessEqual(mi(res["requests"]["memory"]), mi(res["limits"]["memory"]))
        # The limit holds sluice's start (~24 MiB in bench/RESULTS.md) plus its L1 cache.
        l1 = int(conf.get("cache", {}).get("l1_bytes", 64 << 20))
        self.assertGreaterEqual(mi(res["limits"]["memory"]) << 20, 24 * (1 << 20) + l1)
        # The drain: a preStop hook, then SIGTERM with enough grace for shutdown_timeout.
        stop = sluice["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(stop[0], "sleep")
        shutdown = duration_seconds(conf["shutdown_timeout"])
        self.assertGreaterEqual(pod["terminationGracePeriodSeconds"], int(stop[1]) + shutdown + 5)
        # Secrets as env: every ${VAR} in the config comes from a secretKeyRef to a Secret in
        # this file that has that key.
        env = {e["name"]: e for e in sluice["env"]}
        wanted = set(re.findall(r"\$\{(\w+)\}", text))
        self.assertTrue(wanted)
        values = {}
        for var in wanted:
            ref = env[var]["valueFrom"]["secretKeyRef"]
            secret = objects[("Secret", ref["name"])]
            self.assertIn(ref["key"], secret["stringData"])
            values[var] = secret["stringData"][ref["key"]]
        self.assertNotIn("password: ", re.sub(r"password: \$\{\w+\}", "", text),
                         "a literal password in the ConfigMap")
        rc, out = check_config(text, values)
        self.assertEqual(rc, 0, out)
        sec = sluice["securityContext"]
        self.assertTrue(sec["runAsNonRoot"])
        self.assertFalse(sec["allowPrivilegeEscalation"])
        # The monitor selects these pods and scrapes the http port.
        return conf, http_port

    def test_sidecar(self):
        docs = self.load(K8S[0])
        kinds = sorted(d["kind"] for d in docs)
        self.assertEqual(kinds, ["ConfigMap", "Deployment", "PodMonitor", "Secret"])
        dep = next(d for d in docs if d["kind"] == "Deployment")
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(dep["spec"]["selector"]["matchLabels"], labels)
        sluice = next(c for c in pod["initContainers"] if c["name"] == "sluice")
        self.assertEqual(sluice["restartPolicy"], "Always", "a native sidecar")
        app = next(c for c in pod["containers"] if c["name"] == "app")
        conf, http_port = self.check_sluice_pod(docs, pod, sluice, labels)
        self.assertEqual(conf["listen"]["postgres"], "127.0.0.1:6432")
        url = next(e["value"] for e in app["env"] if e["name"] == "DATABASE_URL")
        self.assertIn("@127.0.0.1:6432/appdb", url)
        self.assertIn("appdb", conf["databases"])
        mon = next(d for d in docs if d["kind"] == "PodMonitor")
        self.assertEqual(mon["spec"]["selector"]["matchLabels"], labels)
        self.assertEqual(http_port_of(sluice, mon["spec"]["podMetricsEndpoints"][0]["port"]),
                         http_port)

    def test_schemas(self):
        """Every object against the Kubernetes API's OpenAPI schema (and the Prometheus
        Operator's CRDs), from npm's kubernetes-models: kubeconform is in neither Debian nor npm."""
        node_dir = os.path.join(os.path.dirname(__file__), "node")
        if not shutil.which("node"):
            skip_or_fail("node not found: the schema check needs npm's kubernetes-models")
        self.assertTrue(os.path.isdir(os.path.join(node_dir, "node_modules", "kubernetes-models")),
                        "npm packages missing: run scripts/setup.sh")
        docs = [d for path in K8S for d in self.load(path)]
        r = subprocess.run(["node", os.path.join(node_dir, "validate_k8s.mjs")],
                           input=json.dumps(docs), capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.count("valid "), len(docs), r.stdout)
        # The check can fail: a wrong type and a missing required field are caught.
        broken = json.loads(json.dumps(docs))
        dep = next(d for d in broken if d["kind"] == "Deployment")
        dep["spec"]["replicas"] = "two"
        del dep["spec"]["template"]["spec"]["containers"][0]["name"]
        r = subprocess.run(["node", os.path.join(node_dir, "validate_k8s.mjs")],
                           input=json.dumps(broken), capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("spec/replicas must be integer", r.stdout)
        self.assertIn("must have required property name", r.stdout)

    def test_standalone(self):
        docs = self.load(K8S[1])
        kinds = sorted(d["kind"] for d in docs)
        self.assertEqual(kinds, ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret",
                                 "Service", "ServiceMonitor"])
        dep = next(d for d in docs if d["kind"] == "Deployment")
        self.assertEqual(dep["spec"]["replicas"], 2)
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        sluice = next(c for c in pod["containers"] if c["name"] == "sluice")
        conf, http_port = self.check_sluice_pod(docs, pod, sluice, labels)
        svc = next(d for d in docs if d["kind"] == "Service")
        self.assertEqual(svc["spec"]["selector"], labels)
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        self.assertEqual(http_port_of(sluice, ports["postgres"]["targetPort"]),
                         int(conf["listen"]["postgres"].rsplit(":", 1)[1]))
        self.assertEqual(http_port_of(sluice, ports["http"]["targetPort"]), http_port)
        mon = next(d for d in docs if d["kind"] == "ServiceMonitor")
        self.assertEqual(mon["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        self.assertIn(mon["spec"]["endpoints"][0]["port"], ports)
        pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], labels)
        self.assertLess(pdb["spec"]["minAvailable"], dep["spec"]["replicas"])


# --- cmake --install, systemd, --version, --probe ---------------------------------------------

class Install(unittest.TestCase):
    def test_cmake_install_puts_binary_config_and_unit_in_place(self):
        build_dir = os.path.dirname(SLUICE)
        with tempfile.TemporaryDirectory() as prefix:
            r = subprocess.run(["cmake", "--install", build_dir, "--prefix", prefix],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            binary = f"{prefix}/bin/sluice"
            unit = f"{prefix}/lib/systemd/system/sluice.service"
            conf = f"{prefix}/etc/sluice/sluice.yaml"
            for f in (binary, unit, conf, f"{prefix}/share/sluice/sluice.yaml",
                      f"{prefix}/share/doc/sluice/README.md"):
                self.assertTrue(os.path.isfile(f), f)
            self.assertTrue(os.access(binary, os.X_OK))
            with open(unit) as f:
                text = f.read()
            self.assertRegex(text, r"(?m)^Type=notify$")
            self.assertIn(f"ExecStart={binary} --config ${{SLUICE_CONFIG}}", text)
            self.assertIn(f"Environment=SLUICE_CONFIG={conf}", text)
            self.assertIn(f"ExecStartPre={binary} --check-config", text)
            self.assertRegex(text, r"(?m)^ExecReload=/bin/kill -HUP \$MAINPID$")
            for hardening in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                              "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=",
                              "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
                self.assertRegex(text, rf"(?m)^{re.escape(hardening)}$")
            self.assertNotIn("@", text.replace("@system-service", "").replace("@privileged", "")
                             .replace("@resources", ""), "an unfilled @VAR@")
            analyze = shutil.which("systemd-analyze")
            if not analyze:
                skip_or_fail("systemd-analyze not found: the unit's syntax cannot be verified")
            v = subprocess.run([analyze, "verify", unit], capture_output=True, text=True)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
            self.assertNotIn("sluice.service", v.stderr, v.stderr)
            # An edited config survives a reinstall; the packaged one stays in share/.
            with open(conf, "a") as f:
                f.write("# edited\n")
            r = subprocess.run(["cmake", "--install", build_dir, "--prefix", prefix],
                               capture_output=True, text=True, timeout=120)
            self.assertIn("Kept: ", r.stdout)
            with open(conf) as f:
                self.assertTrue(f.read().endswith("# edited\n"))
            v = subprocess.run([binary, "--version"], capture_output=True, text=True)
            self.assertEqual(v.stdout, subprocess.run([SLUICE, "--version"], capture_output=True,
                                                      text=True).stdout)

    def test_staged_install_with_destdir(self):
        """Packagers and the Dockerfile: DESTDIR=stage, --prefix /usr/local; every file lands
        under the stage, and the unit names the final paths."""
        with tempfile.TemporaryDirectory() as stage:
            r = subprocess.run(["cmake", "--install", os.path.dirname(SLUICE), "--prefix",
                                "/usr/local"], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, DESTDIR=stage))
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            files = sorted(os.path.relpath(os.path.join(d, f), stage)
                           for d, _, fs in os.walk(stage) for f in fs)
            self.assertEqual(files, [
                "usr/local/bin/sluice", "usr/local/etc/sluice/sluice.yaml",
                "usr/local/lib/systemd/system/sluice.service",
                "usr/local/share/doc/sluice/ARCHITECTURE.md", "usr/local/share/doc/sluice/README.md",
                "usr/local/share/sluice/sluice.example.yaml", "usr/local/share/sluice/sluice.yaml"])
            with open(f"{stage}/usr/local/lib/systemd/system/sluice.service") as f:
                text = f.read()
            self.assertIn("ExecStart=/usr/local/bin/sluice --config", text)
            self.assertNotIn(stage, text)

    def test_version_is_the_git_version(self):
        if not os.path.isdir(os.path.join(ROOT, ".git")):
            skip_or_fail("not a git checkout")
        sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=10", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        out = subprocess.run([SLUICE, "--version"], capture_output=True, text=True).stdout
        self.assertRegex(out, r"^sluice \S+\n$")
        # Built from this checkout: the version names HEAD's commit (or the tag on it).
        described = subprocess.run(["git", "-C", ROOT, "describe", "--tags", "--match", "v[0-9]*"],
                                   capture_output=True, text=True)
        if described.returncode == 0:
            self.assertIn(described.stdout.strip().lstrip("v"), out)
        else:
            self.assertIn(f"+g{sha}", out)

    def test_notify_socket_and_probe(self):
        """Under a Type=notify unit: READY=1 once the port accepts, RELOADING=1 then READY=1 on
        SIGHUP, WATCHDOG=1 at half of WatchdogSec, STOPPING=1 on SIGTERM. --probe: 0 for /healthz, 1 for a 503 /readyz (the primary
        is down) and for a closed port."""
        port, http_port, dead = free_port(), free_port(), free_port()
        with tempfile.TemporaryDirectory() as d:
            sock_path = f"{d}/notify"
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            srv.bind(sock_path)
            srv.settimeout(20)
            env = dict(os.environ, NOTIFY_SOCKET=sock_path, SLUICE_PASSWORD="x",
                       WATCHDOG_USEC="1000000",
                       SLUICE_LISTEN=f"127.0.0.1:{port}", SLUICE_HTTP_LISTEN=f"127.0.0.1:{http_port}",
                       SLUICE_PRIMARY_PORT=str(dead), SLUICE_CONFIG=os.path.join(ROOT, "deploy",
                                                                                  "sluice.yaml"))
            proc = subprocess.Popen([SLUICE], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                def next_state():  # the next message that is not a watchdog ping
                    while (m := srv.recv(4096).decode()) == "WATCHDOG=1":
                        pass
                    return m

                msg = next_state()
                self.assertIn("READY=1", msg)
                self.assertIn(f"MAINPID={proc.pid}", msg)
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    pass  # accepting when READY=1 arrived
                probe = lambda path: subprocess.run(
                    [SLUICE, "--probe", f"http://127.0.0.1:{http_port}{path}"],
                    capture_output=True, text=True, timeout=10)
                h = probe("/healthz")
                self.assertEqual(h.returncode, 0, h.stderr)
                self.assertIn('"alive":true', h.stdout)
                r = probe("/readyz")
                self.assertEqual(r.returncode, 1)
                self.assertIn("HTTP 503", r.stderr)
                c = subprocess.run([SLUICE, "--probe", f"http://127.0.0.1:{dead}/healthz"],
                                   capture_output=True, text=True, timeout=10)
                self.assertEqual(c.returncode, 1)
                self.assertIn("cannot connect", c.stderr)
                proc.send_signal(signal.SIGHUP)
                self.assertIn("RELOADING=1", next_state())
                self.assertEqual(next_state(), "READY=1")
                # WatchdogSec=1s: WATCHDOG=1 at least every 0.5 s while the loops turn.
                started = time.time()
                pings = 0
                while time.time() - started < 2:
                    if srv.recv(4096).decode() == "WATCHDOG=1":
                        pings += 1
                self.assertGreaterEqual(pings, 3)
                proc.send_signal(signal.SIGTERM)
                self.assertIn("STOPPING=1", next_state())
                self.assertEqual(proc.wait(timeout=30), 0)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                srv.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
