"""The MongoDB proxy (issue 8) against real MongoDB-wire servers (npm @jongodb/memory-server,
in-memory, started here): the Node driver and a libmongoc program through sluice, read-preference
routing between a static primary and secondary holding different data, the cache under mixed load
(with a control run that shows what stale reads look like), libmongoc discovery from mongo.uri,
unreachable servers, /readyz, metrics, and malformed input on raw sockets."""
import json
import os
import signal
import socket
import struct
import subprocess
import time
import unittest

import cluster
from harness import ROOT, Sluice, default_config, free_port, psql, state, wait_for

NODE_DIR = os.path.join(ROOT, "tests", "integration", "node")
JONGODB = os.path.join(NODE_DIR, "node_modules", "@jongodb", "memory-server-bin-linux-x64-gnu",
                       "bin", "jongodb")
C_CLIENT = os.environ.get("MONGO_C_CLIENT",
                          os.path.join(ROOT, "build", "release", "tests", "integration",
                                       "mongo_c_client"))
SERVERS = {}  # name -> (port, Popen)


def start_server(name, *extra, port=None):
    port = port or free_port()
    with open(f"/tmp/sluice-jongodb-{name}-{port}.log", "w") as log:
        proc = subprocess.Popen([JONGODB, "--host=127.0.0.1", f"--port={port}", *extra],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster.wait_port(port, proc, f"jongodb {name}", timeout=30)
    SERVERS[name] = (port, proc)
    return port


def setUpModule():
    if not os.path.exists(JONGODB):
        raise RuntimeError(f"{JONGODB} missing: run scripts/setup.sh (npm ci in tests/integration/node)")
    start_server("primary")
    start_server("secondary")
    start_server("rs", "--topology-profile=singleNodeReplicaSet", "--replica-set-name=rs0")


def tearDownModule():
    for port, proc in SERVERS.values():
        cluster.stop_process(proc, timeout=10)


def mongo_config(port, servers=None, cache_rules=None, invalidation=True, uri=None):
    cfg = default_config(port)
    mongo_port = free_port()
    cfg["listen"]["mongo"] = f"127.0.0.1:{mongo_port}"
    m = {"heartbeat_interval": "200ms", "connect_timeout": "2s"}
    if uri:
        m["uri"] = uri
    else:
        m["servers"] = servers or [
            {"host": "127.0.0.1", "port": SERVERS["primary"][0], "role": "primary"},
            {"host": "127.0.0.1", "port": SERVERS["secondary"][0], "role": "secondary",
             "tags": {"dc": "east"}}]
    if cache_rules:
        cfg["cache"] = {"redis": f"redis://127.0.0.1:{state()['redis_port']}",
                        "invalidation": invalidation}
        m["cache"] = cache_rules
    cfg["mongo"] = m
    return cfg


class MongoSluice(Sluice):
    def __init__(self, **kw):
        port = free_port()
        super().__init__(config=mongo_config(port, **kw))
        self.port = port

    def mongo_uri(self):
        return f"mongodb://{self.config['listen']['mongo']}/"

    def __exit__(self, *exc):
        code = self.stop()
        if exc[0] is None:
            assert code == 0, f"sluice exited {code}:\n{self.log()[-3000:]}"

    def wait_ready(self, timeout=15):
        wait_for(lambda: self.http("/readyz")[0] == 200, timeout=timeout, interval=0.1,
                 what="/readyz to answer 200")


def node(*args, timeout=300):
    r = subprocess.run(["node", "--no-deprecation", *args], cwd=NODE_DIR, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"node {args[0]} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def counter(metrics, name, **labels):
    total = 0.0
    for key, value in metrics.items():
        if key.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


# --- raw wire helpers ----------------------------------------------------------------------

class SharedMongoSluice(unittest.TestCase):
    """A test class whose cases share one sluice with the default Mongo config (`s`, and `addr`
    of its Mongo listener); it must exit 0."""

    @classmethod
    def setUpClass(cls):
        cls.s = MongoSluice().start()
        cls.s.wait_ready()
        cls.addr = ("127.0.0.1", int(cls.s.config["listen"]["mongo"].rsplit(":", 1)[1]))

    @classmethod
    def tearDownClass(cls):
        code = cls.s.stop()
        assert code == 0, cls.s.log()


class Int64(int):
    """A BSON int64 (cursor ids, txnNumber)."""


def bson(doc):
    out = b""
    for k, v in doc.items():
        key = k.encode() + b"\0"
        if isinstance(v, bool):
            out += b"\x08" + key + (b"\x01" if v else b"\x00")
        elif isinstance(v, Int64):
            out += b"\x12" + key + struct.pack("<q", v)
        elif isinstance(v, int):
            out += b"\x10" + key + struct.pack("<i", v)
        elif isinstance(v, str):
            s = v.encode() + b"\0"
            out += b"\x02" + key + struct.pack("<i", len(s)) + s
        elif isinstance(v, bytes):  # a UUID (lsid ids)
            out += b"\x05" + key + struct.pack("<i", len(v)) + b"\x04" + v
        elif isinstance(v, dict):
            out += b"\x03" + key + bson(v)
        elif isinstance(v, list):
            out += b"\x04" + key + bson({str(i): x for i, x in enumerate(v)})
        else:
            raise TypeError(v)
    return struct.pack("<i", len(out) + 5) + out + b"\0"


def unbson(data):
    """The document at the start of `data` (the types replies use), as a dict."""
    out, pos, end = {}, 4, struct.unpack("<i", data[:4])[0] - 1
    while pos < end:
        kind = data[pos]
        nul = data.index(b"\0", pos + 1)
        key, pos = data[pos + 1:nul].decode(), nul + 1
        if kind == 0x01:
            out[key], pos = struct.unpack("<d", data[pos:pos + 8])[0], pos + 8
        elif kind == 0x02:
            n = struct.unpack("<i", data[pos:pos + 4])[0]
            out[key], pos = data[pos + 4:pos + 3 + n].decode(), pos + 4 + n
        elif kind in (0x03, 0x04):
            n = struct.unpack("<i", data[pos:pos + 4])[0]
            sub = unbson(data[pos:pos + n])
            out[key] = sub if kind == 0x03 else list(sub.values())
            pos += n
        elif kind == 0x05:
            n = struct.unpack("<i", data[pos:pos + 4])[0]
            out[key], pos = data[pos + 5:pos + 5 + n], pos + 5 + n
        elif kind == 0x07:
            out[key], pos = data[pos:pos + 12], pos + 12
        elif kind == 0x08:
            out[key], pos = data[pos] == 1, pos + 1
        elif kind in (0x09, 0x11, 0x12):
            out[key], pos = struct.unpack("<q", data[pos:pos + 8])[0], pos + 8
        elif kind == 0x0A:
            out[key] = None
        elif kind == 0x10:
            out[key], pos = struct.unpack("<i", data[pos:pos + 4])[0], pos + 4
        else:
            raise ValueError(f"BSON type {kind:#x} at {key}")
    return out


def command(sock, doc, request_id=1):
    """Sends one OP_MSG command and returns its reply's body as a dict."""
    sock.sendall(op_msg(doc, request_id=request_id))
    header, body = read_reply(sock)
    assert header[2] == request_id, header
    return unbson(body[5:])  # flags, section kind 0


def op_msg(doc, request_id=7, flags=0):
    body = struct.pack("<I", flags) + b"\0" + bson(doc)
    return struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body


def read_reply(sock, timeout=5):
    """(header tuple, body bytes) of one message, or None at EOF."""
    sock.settimeout(timeout)
    data = b""
    while len(data) < 16:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    length = struct.unpack("<i", data[:4])[0]
    while len(data) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return struct.unpack("<iiii", data[:16]), data[16:length]


def closed(sock, timeout=5):
    """True when the peer closes (after any error reply)."""
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


class Drivers(SharedMongoSluice):
    """The Node driver and libmongoc through a plain mongodb://127.0.0.1:PORT/ URI."""

    def test_node_driver(self):
        out = node("mongo_driver.js", self.s.mongo_uri(), "nodeshop")
        self.assertEqual(out, {"inserted": 1001, "iterated": 20000, "transactions": "commit+abort",
                               "credentialsRefused": True})
        m = self.s.metrics()
        self.assertGreater(counter(m, "sluice_mongo_commands_total", command="insert", route="primary",
                                   outcome="ok"), 0)
        self.assertGreaterEqual(counter(m, "sluice_mongo_commands_total", command="getMore"), 19)
        self.assertGreater(counter(m, "sluice_mongo_commands_total", command="commitTransaction"), 0)
        self.assertGreater(counter(m, "sluice_mongo_commands_total", command="abortTransaction"), 0)
        self.assertEqual(counter(m, "sluice_mongo_transactions_open"), 0)
        self.assertEqual(counter(m, "sluice_mongo_cursors_open"), 0)

    def test_libmongoc_program(self):
        r = subprocess.run([C_CLIENT, self.s.mongo_uri(), "cshop"], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), {"inserted": 1001, "iterated": 20000,
                                                "transactions": "commit+abort"})

    def test_metrics_are_valid(self):
        status, body = self.s.http("/metrics")
        self.assertEqual(status, 200)
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        m = self.s.metrics()
        primary = SERVERS["primary"][0]
        self.assertEqual(m[f'sluice_mongo_server_up{{server="127.0.0.1:{primary}",role="primary"}}'],
                         1)
        self.assertEqual(m[f'sluice_mongo_server_lag_seconds{{server="127.0.0.1:{primary}"}}'], 0)
        self.assertIn("sluice_mongo_command_duration_seconds_count", "".join(m))
        status = json.loads(self.s.http("/status")[1])
        self.assertEqual([(x["address"], x["role"], x["up"]) for x in status["mongo"]["servers"]],
                         [(f"127.0.0.1:{primary}", "primary", True),
                          (f"127.0.0.1:{SERVERS['secondary'][0]}", "secondary", True)])
        self.assertEqual(status["mongo"]["cursors_open"], 0)


class Routing(unittest.TestCase):
    def test_read_preferences_against_two_servers(self):
        with MongoSluice() as s:
            s.wait_ready()
            out = node("mongo_scenarios.js", "routing", s.mongo_uri(),
                       f"mongodb://127.0.0.1:{SERVERS['primary'][0]}/",
                       f"mongodb://127.0.0.1:{SERVERS['secondary'][0]}/")
            self.assertEqual(out["secondaryPreferred"], "secondary")
            self.assertEqual(out["primary"], "primary")
            self.assertEqual(out["writeLandedOn"], "primary")
            m = s.metrics()
            self.assertGreater(counter(m, "sluice_mongo_commands_total", command="find",
                                       route="secondary"), 0)
            self.assertGreater(counter(m, "sluice_mongo_commands_total", command="getMore",
                                       route="secondary"), 0)

    def test_discovery_from_uri_with_libmongoc(self):
        port = SERVERS["rs"][0]
        with MongoSluice(uri=f"mongodb://127.0.0.1:{port}/?replicaSet=rs0") as s:
            s.wait_ready()
            m = s.metrics()
            self.assertEqual(m[f'sluice_mongo_server_up{{server="127.0.0.1:{port}",role="primary"}}'],
                             1)
            out = node("mongo_driver.js", s.mongo_uri(), "rsshop")
            self.assertEqual(out["iterated"], 20000)

    def test_secondary_going_down_and_coming_back(self):
        # A secondary of its own (the shared ones stay up for the other tests).
        port = start_server("flaky")
        servers = [{"host": "127.0.0.1", "port": SERVERS["primary"][0], "role": "primary"},
                   {"host": "127.0.0.1", "port": port, "role": "secondary"}]
        with MongoSluice(servers=servers) as s:
            s.wait_ready()
            addr = ("127.0.0.1", int(s.config["listen"]["mongo"].rsplit(":", 1)[1]))
            def route_of_next_find():
                before = s.metrics()
                with socket.create_connection(addr) as c:
                    body = bson({"find": "where", "$db": "routing"})[:-1]
                    # {$readPreference: {mode: secondaryPreferred}} appended by hand
                    pref = bson({"mode": "secondaryPreferred"})
                    body += b"\x03$readPreference\0" + pref + b"\0"
                    body = struct.pack("<i", len(body)) + body[4:]
                    msg = struct.pack("<I", 0) + b"\0" + body
                    c.sendall(struct.pack("<iiii", 16 + len(msg), 1, 0, 2013) + msg)
                    header, reply = read_reply(c)
                    self.assertIn(b"cursor", reply)
                after = s.metrics()
                for route in ("primary", "secondary"):
                    key = f'sluice_mongo_commands_total{{command="find",route="{route}",outcome="ok"}}'
                    if after.get(key, 0) > before.get(key, 0):
                        return route
                return None

            self.assertEqual(route_of_next_find(), "secondary")
            _, proc = SERVERS.pop("flaky")
            cluster.stop_process(proc, timeout=10)
            up_key = f'sluice_mongo_server_up{{server="127.0.0.1:{port}",role="secondary"}}'
            wait_for(lambda: s.metrics().get(up_key) == 0, timeout=5, what="the secondary down")
            self.assertEqual(route_of_next_find(), "primary")  # secondaryPreferred falls back
            self.assertEqual(s.http("/readyz")[0], 200)  # the primary is what readiness needs
            self.assertIn("secondary 127.0.0.1:%d is down" % port, s.log())
            # Back on the same port: checked up again, and reads return to it.
            start_server("flaky", port=port)
            wait_for(lambda: s.metrics().get(up_key) == 1, timeout=5, what="the secondary up")
            self.assertEqual(route_of_next_find(), "secondary")
            # Up at the first check and again now.
            self.assertEqual(s.log().count("secondary 127.0.0.1:%d is up" % port), 2)

    def test_unreachable_primary(self):
        dead = free_port()
        servers = [{"host": "127.0.0.1", "port": dead, "role": "primary"}]
        with MongoSluice(servers=servers) as s:
            def checked():  # the first check of the dead primary has failed
                status, body = s.http("/readyz")
                return (status, body) if "unreachable" in body else None
            status, body = wait_for(checked, timeout=10, what="/readyz to name the primary")
            self.assertEqual(status, 503)
            self.assertIn(f"mongo primary 127.0.0.1:{dead} unreachable", body)
            port = int(s.config["listen"]["mongo"].rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(op_msg({"insert": "x", "$db": "shop"}))
                header, body = read_reply(c)
                self.assertIn(b"FailedToSatisfyReadPreference", body)
                self.assertIn(b"the primary is unreachable", body)
                # The connection stays usable: a ping is answered by sluice itself.
                c.sendall(op_msg({"ping": 1, "$db": "admin"}, request_id=8))
                header, body = read_reply(c)
                self.assertEqual(header[2], 8)
                self.assertIn(b"ok", body)
            self.assertTrue(s.alive())


class Relay:
    """A TCP relay to a real server on its own asyncio thread; subclasses say what each
    direction does with the bytes (`pipe`)."""

    def __init__(self, target_port):
        import asyncio
        import threading
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def handle(client_r, client_w):
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
            await asyncio.gather(self.pipe(client_r, server_w, False),
                                 self.pipe(server_r, client_w, True), return_exceptions=True)

        async def serve():
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(serve()),
                                                       self.loop.run_forever()), daemon=True)
        self.thread.start()
        ready.wait(10)

    async def pipe(self, reader, writer, from_server):
        raise NotImplementedError

    def close(self):
        import asyncio

        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class SlowLink(Relay):
    """A relay that delays every server-to-client chunk: a slow network, so requests hold their
    pooled connection long enough to make others wait. `sent` records what reached the server."""

    def __init__(self, target_port, delay):
        self.delay = delay
        self.sent = bytearray()
        super().__init__(target_port)

    async def pipe(self, reader, writer, slow):
        import asyncio
        try:
            while data := await reader.read(65536):
                if slow:
                    await asyncio.sleep(self.delay)
                else:
                    self.sent += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


class LastWriteRelay(Relay):
    """A relay to a real jongodb server that adds `lastWrite.lastWriteDate` to its hello replies,
    `lag` seconds behind the wall clock. jongodb has no replication and its hello carries no
    lastWrite (a standalone mongod's does not either), and Debian has no mongod: without this a
    secondary's lag is unknown to sluice, and a secondary of unknown lag is never eligible under
    a bound. The lag sluice computes is still its own measurement (primary's lastWriteDate minus
    the secondary's, from hellos every heartbeat_interval); only the dates come from here.
    Every other message passes through unchanged."""

    def __init__(self, target_port, lag=0.0):
        self.lag = lag
        self.hellos = 0
        super().__init__(target_port)

    async def pipe(self, reader, writer, annotate):
        import asyncio
        try:
            while True:
                header = await reader.readexactly(16)
                msg = header + await reader.readexactly(struct.unpack("<i", header[:4])[0] - 16)
                writer.write(self._annotate(msg) if annotate else msg)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _annotate(self, msg):
        """An OP_MSG hello reply (one kind-0 section, no checksum) with lastWrite appended."""
        length, request_id, response_to, op_code = struct.unpack("<iiii", msg[:16])
        flags = struct.unpack("<I", msg[16:20])[0]
        if op_code != 2013 or flags & 1 or msg[20] != 0:
            return msg
        doc = msg[21:]
        if struct.unpack("<i", doc[:4])[0] != len(doc) or b"\x08isWritablePrimary\0" not in doc:
            return msg
        date = int((time.time() - self.lag) * 1000)
        inner = b"\x09lastWriteDate\0" + struct.pack("<q", date)
        inner = struct.pack("<i", len(inner) + 5) + inner + b"\0"
        doc = doc[:-1] + b"\x03lastWrite\0" + inner + b"\0"
        doc = struct.pack("<i", len(doc)) + doc[4:]
        self.hellos += 1
        body = msg[16:21] + doc
        return struct.pack("<iiii", 16 + len(body), request_id, response_to, op_code) + body


class Staleness(unittest.TestCase):
    LAG = 20.0

    def test_max_staleness_against_the_lag_sluice_measures(self):
        # The two servers hold different documents, so a read's answer says where it ran.
        for name in ("primary", "secondary"):
            with socket.create_connection(("127.0.0.1", SERVERS[name][0])) as c:
                command(c, {"delete": "who", "deletes": [{"q": {}, "limit": 0}],
                            "$db": "staleness"})
                reply = command(c, {"insert": "who", "documents": [{"_id": 1, "on": name}],
                                    "$db": "staleness"}, request_id=2)
                self.assertEqual(reply["n"], 1, reply)
        primary = LastWriteRelay(SERVERS["primary"][0])
        self.addCleanup(primary.close)
        secondary = LastWriteRelay(SERVERS["secondary"][0], lag=self.LAG)
        self.addCleanup(secondary.close)
        servers = [{"host": "127.0.0.1", "port": primary.port, "role": "primary"},
                   {"host": "127.0.0.1", "port": secondary.port, "role": "secondary"}]
        with MongoSluice(servers=servers) as s:
            s.wait_ready()
            addr = ("127.0.0.1", int(s.config["listen"]["mongo"].rsplit(":", 1)[1]))
            lag_key = f'sluice_mongo_server_lag_seconds{{server="127.0.0.1:{secondary.port}"}}'

            def measured_lag():
                return s.metrics().get(lag_key)

            def read(mode, max_staleness=None):
                pref = {"mode": mode}
                if max_staleness is not None:
                    pref["maxStalenessSeconds"] = max_staleness
                with socket.create_connection(addr) as c:
                    r = command(c, {"find": "who", "$db": "staleness", "$readPreference": pref})
                if r.get("ok") != 1.0:
                    return r.get("code"), r.get("errmsg")
                return r["cursor"]["firstBatch"][0]["on"]

            # Control: sluice measures the lag (about LAG; the two hellos are up to one
            # heartbeat_interval apart).
            lag = wait_for(lambda: (v := measured_lag()) is not None and abs(v - self.LAG) < 1
                           and v, timeout=10, what=f"a measured lag near {self.LAG} s")
            self.assertGreater(primary.hellos, 0)
            self.assertEqual(read("secondaryPreferred"), "secondary")  # no bound: the secondary
            below, above = int(self.LAG) - 2, int(self.LAG) + 2
            self.assertEqual(read("secondaryPreferred", below), "primary")
            self.assertEqual(read("secondaryPreferred", above), "secondary")
            self.assertEqual(read("nearest", below), "primary")
            code, why = read("secondary", below)
            self.assertEqual(code, 133, why)  # FailedToSatisfyReadPreference
            self.assertIn("staleness bound", why)
            self.assertEqual(read("secondary", above), "secondary")
            # The secondary catches up: the same bound now lets reads go to it.
            secondary.lag = 0
            wait_for(lambda: (v := measured_lag()) is not None and v < 1, timeout=10,
                     what="the measured lag to drop under 1 s")
            self.assertEqual(read("secondaryPreferred", below), "secondary")
            print(f"measured lag {lag:.2f}s: maxStalenessSeconds {below:.0f} -> primary, "
                  f"{above:.0f} -> secondary; after catching up {below:.0f} -> secondary")


class Pool(unittest.TestCase):
    def exchange_concurrently(self, addr, n):
        import threading
        replies = [None] * n

        def one(i):
            with socket.create_connection(addr) as c:
                c.sendall(op_msg({"find": "pooled", "$db": "shop"}, request_id=100 + i))
                replies[i] = read_reply(c, timeout=20)[1]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return replies

    def test_requests_wait_for_a_pooled_connection_then_time_out(self):
        link = SlowLink(SERVERS["primary"][0], delay=0.4)
        try:
            servers = [{"host": "127.0.0.1", "port": link.port, "role": "primary"}]
            with MongoSluice(servers=servers) as s:
                s.config["mongo"].update({"pool_size": 1, "wait_timeout": "3s"})
                s.write_config()
                s.signal(signal.SIGHUP)  # pool_size and wait_timeout apply on reload
                wait_for(lambda: s.log().count("reloaded") == 1, what="the first reload")
                s.wait_ready()
                addr = ("127.0.0.1", int(s.config["listen"]["mongo"].rsplit(":", 1)[1]))
                # One connection, three requests of ~0.4 s: they queue and all succeed.
                started = time.time()
                replies = self.exchange_concurrently(addr, 3)
                self.assertTrue(all(r and b"cursor" in r for r in replies), replies)
                self.assertGreater(time.time() - started, 1.1)  # served one after the other
                m = s.metrics()
                self.assertEqual(m[f'sluice_mongo_pool_connections{{server="127.0.0.1:{link.port}",'
                                   'state="idle"}'], 1)
                # A wait shorter than a request: the one that cannot get the connection in time
                # is answered 202 and its client goes on.
                s.config["mongo"]["wait_timeout"] = "100ms"
                s.write_config()
                s.signal(signal.SIGHUP)
                wait_for(lambda: s.log().count("reloaded") == 2, what="the second reload")
                replies = self.exchange_concurrently(addr, 2)
                self.assertEqual(sorted(b"NetworkInterfaceExceededTimeLimit" in r for r in replies),
                                 [False, True], replies)
                self.assertTrue(any(b"raise mongo.pool_size" in r for r in replies))
        finally:
            link.close()


class Access(SharedMongoSluice):
    """Issue 17 item 3: the listener authenticates nobody, so it opens only what drivers need,
    and a cursor or session belongs to the client that opened it."""

    def test_administration_from_a_driver_is_refused_with_13(self):
        out = node("mongo_scenarios.js", "refused", self.s.mongo_uri())
        for name, allow_as in (("shutdown", "shutdown"), ("createUser", "createUser"),
                               ("currentOp", "$currentOp"), ("currentOpCommand", "currentOp"),
                               ("fsync", "fsync"), ("replSetStepDown", "replSetStepDown")):
            self.assertEqual((out[name]["code"], out[name]["codeName"]), (13, "Unauthorized"),
                             (name, out[name]))
            self.assertIn(f"set mongo.allow_commands: [{allow_as}] to allow it",
                          out[name]["message"])
        # The servers' session collections (other clients' session ids): nothing allows them.
        self.assertEqual(out["configSessions"]["code"], 13)
        self.assertIn("connect to the server directly", out["configSessions"]["message"])
        self.assertEqual(out["driverWorkStillWorks"], True)
        m = self.s.metrics()
        self.assertGreaterEqual(counter(m, "sluice_mongo_commands_total", route="local",
                                        outcome="error"), 7)

    def test_allow_commands_opens_a_refused_command_on_reload(self):
        with MongoSluice() as s:
            s.wait_ready()
            port = int(s.config["listen"]["mongo"].rsplit(":", 1)[1])
            pipeline = {"aggregate": 1, "pipeline": [{"$currentOp": {}}], "cursor": {},
                        "$db": "admin"}
            with socket.create_connection(("127.0.0.1", port)) as c:
                self.assertEqual(command(c, pipeline)["code"], 13)
                s.config["mongo"]["allow_commands"] = ["$currentOp"]
                s.write_config()
                s.signal(signal.SIGHUP)
                wait_for(lambda: command(c, pipeline).get("code") != 13, timeout=5,
                         what="the reload to open $currentOp")
                # Forwarded now: what the server says of it (this test server has no $currentOp).
                self.assertNotEqual(command(c, pipeline).get("code"), 13)
                self.assertEqual(command(c, {"shutdown": 1, "$db": "admin"})["code"], 13)

    def open_cursor(self, c, collection, lsid=None):
        docs = [{"_id": i} for i in range(10)]
        self.assertEqual(command(c, {"delete": collection, "deletes": [{"q": {}, "limit": 0}],
                                     "$db": "access"})["ok"], 1)
        self.assertEqual(command(c, {"insert": collection, "documents": docs,
                                     "$db": "access"})["n"], 10)
        find = {"find": collection, "batchSize": 2, "$db": "access"}
        if lsid:
            find["lsid"] = {"id": lsid}
        reply = command(c, find)
        self.assertNotEqual(reply["cursor"]["id"], 0)
        return reply["cursor"]["id"]

    def test_another_connections_getmore_is_refused(self):
        with socket.create_connection(self.addr) as a, socket.create_connection(self.addr) as b:
            cursor = self.open_cursor(a, "owned")
            get_more = {"getMore": Int64(cursor), "collection": "owned", "batchSize": 2,
                        "$db": "access"}
            refused = command(b, get_more)
            self.assertEqual((refused["ok"], refused.get("code"), refused.get("codeName")),
                             (0, 13, "Unauthorized"), refused)
            self.assertIn(f"cursor id {cursor} was not created by this client", refused["errmsg"])
            # Another session id than the cursor's does not help.
            other = dict(get_more, lsid={"id": os.urandom(16)})
            self.assertEqual(command(b, other)["code"], 13)
            kill = {"killCursors": "owned", "cursors": [Int64(cursor)], "$db": "access"}
            self.assertEqual(command(b, kill)["code"], 13)
            # Its own connection goes on reading it, from where it was.
            batch = command(a, get_more)["cursor"]["nextBatch"]
            self.assertEqual([d["_id"] for d in batch], [2, 3])
            self.assertEqual(command(a, kill)["cursorsKilled"], [cursor])
        self.assertIn(f"getMore of cursor {cursor} refused: another client's", self.s.log())

    def test_a_cursors_session_carries_it_to_another_connection(self):
        # What drivers do: a getMore on another pooled connection, with the cursor's lsid.
        lsid = os.urandom(16)
        with socket.create_connection(self.addr) as a, socket.create_connection(self.addr) as b:
            cursor = self.open_cursor(a, "shared", lsid=lsid)
            reply = command(b, {"getMore": Int64(cursor), "collection": "shared", "batchSize": 2,
                                "lsid": {"id": lsid}, "$db": "access"})
            self.assertEqual([d["_id"] for d in reply["cursor"]["nextBatch"]], [2, 3])
            self.assertEqual(command(b, {"killCursors": "shared", "cursors": [Int64(cursor)],
                                         "lsid": {"id": lsid}, "$db": "access"})["cursorsKilled"],
                             [cursor])

    def test_endsessions_of_another_connections_session_does_not_end_it(self):
        tap = SlowLink(SERVERS["primary"][0], delay=0)
        try:
            servers = [{"host": "127.0.0.1", "port": tap.port, "role": "primary"}]
            with MongoSluice(servers=servers) as s:
                s.wait_ready()
                addr = ("127.0.0.1", int(s.config["listen"]["mongo"].rsplit(":", 1)[1]))
                lsid = os.urandom(16)
                txn = {"lsid": {"id": lsid}, "txnNumber": Int64(1), "autocommit": False}
                with socket.create_connection(addr) as a, socket.create_connection(addr) as b:
                    clear = {"delete": "txn", "deletes": [{"q": {}, "limit": 0}], "$db": "access"}
                    self.assertEqual(command(a, clear)["ok"], 1)
                    self.assertEqual(command(a, {"insert": "txn", "documents": [{"_id": 1}],
                                                 "startTransaction": True, **txn,
                                                 "$db": "access"})["n"], 1)
                    self.assertEqual(s.metrics()["sluice_mongo_transactions_open"], 1)
                    before = len(tap.sent)
                    reply = command(b, {"endSessions": [{"id": lsid}], "$db": "admin"})
                    self.assertEqual(reply["ok"], 1)  # as a server answers unknown sessions
                    # Nothing to wait for: this checks that nothing reaches the server in
                    # the time sluice would take to pass it on.
                    time.sleep(0.2)
                    self.assertNotIn(b"endSessions", bytes(tap.sent[before:]))  # not told
                    self.assertEqual(s.metrics()["sluice_mongo_transactions_open"], 1)
                    self.assertEqual(command(a, {"commitTransaction": 1, **txn,
                                                 "$db": "admin"})["ok"], 1)
                    found = command(a, {"find": "txn", "$db": "access"})
                    self.assertEqual(found["cursor"]["firstBatch"], [{"_id": 1}])
                    # Its own connection ends it: told to the server (the tap sees it).
                    before = len(tap.sent)
                    self.assertEqual(command(a, {"endSessions": [{"id": lsid}],
                                                 "$db": "admin"})["ok"], 1)
                    wait_for(lambda: b"endSessions" in bytes(tap.sent[before:]), timeout=5,
                             what="endSessions to reach the server")
        finally:
            tap.close()

    def test_drivers_spreading_cursors_and_transactions_over_their_pool(self):
        before = self.s.metrics()
        out = node("mongo_scenarios.js", "pooled", self.s.mongo_uri(), "pooled")
        self.assertEqual(out["cursors"], 8)
        self.assertGreaterEqual(out["transactions"], 8)  # more when one was retried
        # The driver did send getMores (and transactions) on other connections than the one that
        # opened them: the case a binding to the connection alone would break.
        self.assertGreater(out["cursorsAcrossConnections"] + out["transactionsAcrossConnections"],
                           0, out)
        m = self.s.metrics()
        for gauge in ("sluice_mongo_cursors_open", "sluice_mongo_transactions_open"):
            self.assertEqual(counter(m, gauge), counter(before, gauge), gauge)


class Lifecycle(unittest.TestCase):
    def test_admin_console_and_drain_with_an_idle_mongo_client(self):
        s = MongoSluice().start()
        try:
            s.wait_ready()
            port = int(s.config["listen"]["mongo"].rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(op_msg({"ping": 1, "$db": "admin"}))
                self.assertIsNotNone(read_reply(c))
                r = psql(s.admin_dsn(), "SHOW CLIENTS")
                self.assertIn(b"(mongo)", r.stdout)
                started = time.time()
                s.signal(signal.SIGTERM)
                self.assertTrue(closed(c, timeout=10))  # an idle client goes at once
                self.assertEqual(s.proc.wait(timeout=20), 0, s.log()[-3000:])
                self.assertLess(time.time() - started, 5)
        finally:
            s.stop()


class Cache(unittest.TestCase):
    RULES = [{"name": "counters", "collections": ["shop.counters"], "ttl": "60s"}]

    def test_no_stale_reads_under_mixed_load(self):
        with MongoSluice(cache_rules=self.RULES) as s:
            s.wait_ready()
            out = node("mongo_scenarios.js", "cache", s.mongo_uri(), "4", "2000")
            self.assertEqual(out["operations"], 2000)
            self.assertEqual(out["stale"], 0, out["staleExamples"])
            m = s.metrics()
            hits = counter(m, "sluice_mongo_cache_requests_total", result="hit")
            self.assertGreater(hits, 100)
            self.assertGreater(counter(m, "sluice_mongo_cache_fills_total"), 0)
            self.assertGreaterEqual(counter(m, "sluice_mongo_cache_invalidations_total", result="ok"),
                                    500)
            self.assertEqual(m['sluice_cache_hits_total{rule="mongo:counters"}'], hits)

    def test_control_without_invalidation_reads_stale(self):
        # The same load with writes not bumping versions: the check above can fail.
        with MongoSluice(cache_rules=self.RULES, invalidation=False) as s:
            s.wait_ready()
            out = node("mongo_scenarios.js", "cache", s.mongo_uri(), "4", "400")
            self.assertGreater(out["stale"], 0)


class Malformed(SharedMongoSluice):
    def assert_others_unaffected(self, bystander):
        bystander.sendall(op_msg({"ping": 1, "$db": "admin"}, request_id=99))
        header, body = read_reply(bystander)
        self.assertEqual(header[2], 99)
        self.assertTrue(self.s.alive())

    def test_garbage(self):
        with socket.create_connection(self.addr) as other, socket.create_connection(self.addr) as c:
            c.sendall(os.urandom(64) + b"\x00" * 4096)
            self.assertTrue(closed(c))
            self.assert_others_unaffected(other)

    def test_header_claiming_2_gb(self):
        with socket.create_connection(self.addr) as other, socket.create_connection(self.addr) as c:
            c.sendall(struct.pack("<iiii", 0x7fffffff, 5, 0, 2013))
            header, body = read_reply(c)
            self.assertEqual(header[2], 5)
            self.assertIn(b"BSONObjectTooLarge", body)
            self.assertTrue(closed(c))
            self.assert_others_unaffected(other)

    def test_truncated_op_msg(self):
        with socket.create_connection(self.addr) as other, socket.create_connection(self.addr) as c:
            whole = op_msg({"find": "x", "filter": 1, "$db": "shop"}, request_id=6)
            # The declared length ends inside the body document.
            cut = struct.pack("<i", 30) + whole[4:30]
            c.sendall(cut)
            header, body = read_reply(c)
            self.assertEqual(header[2], 6)
            self.assertIn(b"BadValue", body)
            self.assertTrue(closed(c))
            self.assert_others_unaffected(other)

    def test_connection_cut_mid_message(self):
        with socket.create_connection(self.addr) as other:
            c = socket.create_connection(self.addr)
            c.sendall(op_msg({"ping": 1, "$db": "admin"})[:20])
            c.close()
            self.assert_others_unaffected(other)

    def test_legacy_op_query_other_than_hello(self):
        with socket.create_connection(self.addr) as c:
            q = struct.pack("<i", 0) + b"shop.$cmd\0" + struct.pack("<ii", 0, -1) + bson(
                {"find": "x"})
            c.sendall(struct.pack("<iiii", 16 + len(q), 3, 0, 2004) + q)
            header, body = read_reply(c)
            self.assertEqual(header[3], 1)  # OP_REPLY
            self.assertIn(b"UnsupportedOpQueryCommand", body)
            self.assert_others_unaffected(c)  # and the connection goes on


if __name__ == "__main__":
    unittest.main(verbosity=2)
