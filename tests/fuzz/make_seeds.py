#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target: small valid messages in each harness's format.

    python3 tests/fuzz/make_seeds.py OUT_DIR      # OUT_DIR/<target>/<name>

The checked-in corpus (tests/fuzz/corpus/<target>/) is these seeds plus what a fuzzing run found,
minimized with libFuzzer's -merge=1; see tests/fuzz/README.md.
"""
import base64
import os
import struct
import sys

# ---- PostgreSQL ---------------------------------------------------------------------------


def msg(t, body=b""):
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def startup(**params):
    body = struct.pack("!I", 196608)
    for k, v in params.items():
        body += cstr(k) + cstr(v)
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def untyped(code, rest=b""):
    return struct.pack("!II", 8 + len(rest), code) + rest


def parse(name, sql, types=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", len(types)) +
               b"".join(struct.pack("!I", t) for t in types))


def bind(portal, stmt, params=()):
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return msg(b"B", body + struct.pack("!H", 0))


def describe(kind, name):
    return msg(b"D", kind + cstr(name))


def close(kind, name):
    return msg(b"C", kind + cstr(name))


def execute(portal="", rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", rows))


SYNC, FLUSH, TERMINATE = msg(b"S"), msg(b"H"), msg(b"X")


def query(sql):
    return msg(b"Q", cstr(sql))


def auth(code, data=b""):
    return msg(b"R", struct.pack("!I", code) + data)


def param_status(k, v):
    return msg(b"S", cstr(k) + cstr(v))


def ready(s=b"I"):
    return msg(b"Z", s)


def row_description(*names):
    body = struct.pack("!H", len(names))
    for n in names:
        body += cstr(n) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return msg(b"T", body)


def data_row(*values):
    body = struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return msg(b"D", body)


def complete(tag):
    return msg(b"C", cstr(tag))


def error(sqlstate, message, t=b"E"):
    return msg(t, b"SERROR\0VERROR\0C" + cstr(sqlstate) + b"M" + cstr(message) + b"\0")


CLIENT_FIRST = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=16")
CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

BACKEND_LOGIN = (auth(0) + param_status("server_version", "15.5") +
                 param_status("client_encoding", "UTF8") + param_status("DateStyle", "ISO, MDY") +
                 msg(b"K", struct.pack("!II", 4242, 0x12345678)) + ready())


def pg_frontend():
    s = startup(user="app", database="app", application_name="psql")
    return {
        "startup_query": s + query("SELECT 1") + TERMINATE,
        "ssl_request": untyped(80877103),
        "gss_request": untyped(80877104),
        "cancel": untyped(80877102, struct.pack("!II", 4242, 0x12345678)),
        "startup_options": startup(user="u", database="d", options="-c search_path=a\\ b"),
        "scram": s + msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(CLIENT_FIRST)) +
                         CLIENT_FIRST) + msg(b"p", CLIENT_FINAL),
        "md5_password": s + msg(b"p", cstr("md5" + "0" * 32)),
        "extended": s + parse("s1", "SELECT $1::int", [23]) + bind("", "s1", [b"42"]) +
        describe(b"P", "") + execute() + SYNC,
        "extended_unnamed": s + parse("", "INSERT INTO t VALUES ($1, $2)") +
        bind("p1", "", [b"x", None]) + execute("p1", 10) + FLUSH + close(b"P", "p1") +
        close(b"S", "s1") + describe(b"S", "s1") + SYNC,
        "copy_in": s + query("COPY t FROM STDIN") + msg(b"d", b"1\tone\n") + msg(b"c") +
        query("COPY t FROM STDIN") + msg(b"f", cstr("cancelled")),
        "scram_text": b"c" + CLIENT_FIRST + b"\n" + CLIENT_FINAL,
    }


def pg_backend():
    mechanisms = cstr("SCRAM-SHA-256") + cstr("SCRAM-SHA-256-PLUS") + b"\0"
    return {
        "login_ok": BACKEND_LOGIN,
        "sasl": auth(10, mechanisms) + auth(11, SERVER_FIRST) + auth(12, SERVER_FINAL),
        "md5": auth(5, b"\x01\x02\x03\x04") + auth(3),
        "select": row_description("a", "b") + data_row(b"1", None) + data_row(b"", b"xyz") +
        complete("SELECT 2") + ready(b"T"),
        "error": error("42P01", 'relation "t" does not exist') + ready(b"E") +
        error("01000", "notice", b"N"),
        "extended": msg(b"1") + msg(b"2") + msg(b"n") + complete("INSERT 0 1") + msg(b"3") +
        ready(),
        "copy_out": msg(b"H", b"\0\0\1\0\0") + msg(b"d", b"1\n") + msg(b"c") +
        complete("COPY 1") + ready(),
        "copy_in": msg(b"G", b"\0\0\1\0\0") + complete("COPY 0") + ready(),
        "scram_raw": b"s" + b"r=clientnonceXYZ,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=16\n" + SERVER_FINAL,
        "scram_genuine": b"xpw\nv=AAAA",
        "scram_wrong_password": b"xsecret\n",
        "error_fields": b"eFATAL\x0028P01\x00password authentication failed\x00d\x00h",
    }


SQL = [
    "SELECT 1",
    "SET search_path = app, public",
    "SET application_name = 'x'",
    "SET LOCAL statement_timeout = 1000",
    "SET TIME ZONE 'UTC'",
    "SET NAMES 'UTF8'",
    "RESET work_mem",
    "RESET ALL",
    "SET standard_conforming_strings = off",
    "SELECT set_config('a.b', 'v', false)",
    "PREPARE q(int) AS SELECT $1",
    "EXECUTE q(1)",
    "DEALLOCATE q",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "BEGIN; UPDATE t SET a = 1 WHERE id = 2; COMMIT",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; ROLLBACK",
    "LISTEN chan",
    "SELECT pg_advisory_lock(1)",
    "CREATE TEMP TABLE tt (a int)",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "SET ROLE admin",
    "SET SESSION AUTHORIZATION bob",
    "INSERT INTO t (a, b) VALUES (1, 'x') RETURNING id",
    "WITH w AS (DELETE FROM t RETURNING *) SELECT * FROM w",
    "SELECT $$dollar ; quoted$$, E'esc\\'', /* c */ 2 -- end",
    "SELECT a, count(*) FROM t JOIN u USING (id) GROUP BY a ORDER BY 2 DESC LIMIT 10",
    "SELECT * FROM t FOR UPDATE",
    "COPY t FROM STDIN",
    "SET TRANSACTION READ ONLY",
    "SELECT nextval('s')",
    "/* sluice: primary */ SELECT 1",
]


def sql_classifier():
    return {f"sql_{i:02d}": s.encode() for i, s in enumerate(SQL)}


def exchange(*steps):
    """Pooling/insights format: one selector byte (even: client, odd: server) before a frame."""
    return b"".join(bytes([sel]) + m for sel, m in steps)


def pg_pooling():
    ext = [(0, parse("s1", "SELECT $1")), (0, bind("", "s1", [b"1"])), (0, execute()),
           (0, SYNC), (1, msg(b"1")), (1, msg(b"2")), (1, data_row(b"1")),
           (1, complete("SELECT 1")), (1, ready())]
    return {
        "simple": exchange((0, query("SELECT 1")), (1, row_description("a")),
                           (1, data_row(b"1")), (1, complete("SELECT 1")), (1, ready())),
        "extended": exchange(*ext),
        "transaction": exchange((0, query("BEGIN")), (1, complete("BEGIN")), (1, ready(b"T")),
                                (0, query("SET LOCAL a.b = 1")), (1, complete("SET")),
                                (1, ready(b"T")), (0, query("COMMIT")), (1, complete("COMMIT")),
                                (1, ready())),
        "settings": exchange((0, query("SET search_path = x")), (1, complete("SET")),
                             (1, param_status("search_path", "x")), (1, ready()),
                             (0xf0, query("SELECT 1")), (2, query("PREPARE p AS SELECT 1")),
                             (3, complete("PREPARE")), (3, ready())),
        "error": exchange((0, query("SELEC")), (1, error("42601", "syntax error")),
                          (1, ready()), (2, parse("", "SELECT 1")), (2, SYNC),
                          (3, error("42601", "x")), (3, ready())),
        "copy": exchange((0, query("COPY t FROM STDIN")), (1, msg(b"G", b"\0\0\0")),
                         (0, msg(b"d", b"1\n")), (0, msg(b"c")), (1, complete("COPY 1")),
                         (1, ready())),
    }


def insights():
    seeds = {k: v for k, v in pg_pooling().items()}
    seeds["read_sql"] = b"RSELECT a FROM t WHERE id = 1"
    seeds["write_sql"] = b"RWITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x"
    seeds["route_hint"] = b"RSET sluice.route = 'primary'"
    seeds["explain"] = (b'J[{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t", '
                        b'"Total Cost": 35.5, "Plan Rows": 2550, "Plans": []}}]')
    return seeds


def cache():
    cached = row_description("a") + data_row(b"1") + complete("SELECT 1")
    return {
        "sql_select": b"SSELECT a FROM t WHERE id = 1",
        "sql_write": b"SUPDATE t SET a = 2",
        "sql_function": b"SSELECT now(), f(x) FROM s.t",
        "redis_replies": b"R+OK\r\n$5\r\nhello\r\n*2\r\n:1\r\n$-1\r\n-ERR no\r\n%1\r\n+k\r\n+v\r\n",
        "cached_value": b"V" + cached,
        "empty_query": b"V" + msg(b"I"),
        "redis_url": b"Uredis://:secret@127.0.0.1:6379/2",
        "search_path": b'p"$user", public, "Weird ""name"""',
    }

# ---- MongoDB ------------------------------------------------------------------------------


def bson(doc):
    out = b""
    for k, v in doc.items():
        key = cstr(k)
        if isinstance(v, bool):
            out += b"\x08" + key + (b"\1" if v else b"\0")
        elif isinstance(v, int):
            out += (b"\x10" + key + struct.pack("<i", v) if -2**31 <= v < 2**31
                    else b"\x12" + key + struct.pack("<q", v))
        elif isinstance(v, float):
            out += b"\x01" + key + struct.pack("<d", v)
        elif isinstance(v, str):
            out += b"\x02" + key + struct.pack("<i", len(v) + 1) + cstr(v)
        elif isinstance(v, dict):
            out += b"\x03" + key + bson(v)
        elif isinstance(v, list):
            out += b"\x04" + key + bson({str(i): x for i, x in enumerate(v)})
        elif v is None:
            out += b"\x0a" + key
    return struct.pack("<i", len(out) + 5) + out + b"\0"


def mongo_msg(body, sequences=(), flags=0, request_id=1):
    sections = b"\0" + bson(body)
    for ident, docs in sequences:
        payload = cstr(ident) + b"".join(bson(d) for d in docs)
        sections += b"\1" + struct.pack("<i", len(payload) + 4) + payload
    n = 16 + 4 + len(sections)
    return struct.pack("<iiiiI", n, request_id, 0, 2013, flags) + sections


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def with_checksum(m):
    m = struct.pack("<i", len(m) + 4) + m[4:16] + struct.pack("<I", struct.unpack(
        "<I", m[16:20])[0] | 1) + m[20:]
    return m + struct.pack("<I", crc32c(m))


def mongo_wire():
    hello = {"hello": 1, "$db": "admin", "client": {"driver": {"name": "pymongo"}}}
    find = {"find": "users", "filter": {"age": {"$gt": 21}}, "limit": 10, "$db": "app",
            "lsid": {"id": "x"}, "$readPreference": {"mode": "secondaryPreferred"}}
    get_more = {"getMore": 1234567890123, "collection": "users", "batchSize": 100, "$db": "app"}
    insert = {"insert": "users", "ordered": True, "$db": "app"}
    reply = {"cursor": {"firstBatch": [{"_id": 1, "name": "a"}], "id": 0, "ns": "app.users"},
             "ok": 1.0}
    query_body = bson({"isMaster": 1, "helloOk": True})
    op_query = struct.pack("<i", 0) + cstr("admin.$cmd") + struct.pack("<ii", 0, -1) + query_body
    op_query = struct.pack("<iiii", 16 + len(op_query), 5, 0, 2004) + op_query
    op_reply = struct.pack("<iqii", 8, 0, 0, 1) + bson({"ismaster": True, "ok": 1.0})
    op_reply = struct.pack("<iiii", 16 + len(op_reply), 6, 5, 1) + op_reply
    inner = mongo_msg(hello)
    compressed = struct.pack("<iiB", 2013, len(inner) - 16, 0) + inner[16:]
    compressed = struct.pack("<iiii", 16 + len(compressed), 7, 0, 2012) + compressed
    return {
        "hello": mongo_msg(hello),
        "find_getmore": mongo_msg(find) + mongo_msg(get_more, request_id=2),
        "insert_sequence": mongo_msg(insert, [("documents", [{"_id": 1}, {"_id": 2, "n": None}])]),
        "checksum": with_checksum(mongo_msg({"ping": 1, "$db": "admin"})),
        "more_to_come": mongo_msg({"insert": "t", "$db": "a", "writeConcern": {"w": 0}},
                                  flags=2),
        "reply": mongo_msg(reply),
        "exhaust": mongo_msg({"hello": 1, "$db": "admin", "maxAwaitTimeMS": 1000},
                             flags=1 << 16),
        "op_query": op_query,
        "op_reply": op_reply,
        "compressed": compressed,
        "sections_plain": b"B\0" + bson(find),
        "sections_checksum": b"C\0" + bson(get_more),
        "sections_sequence": b"B\0" + bson({"update": "t", "$db": "a"}) + b"\1" +
        struct.pack("<i", 4 + 8 + len(bson({"q": {}, "u": {"$set": {"a": 1}}}))) +
        cstr("updates") + bson({"q": {}, "u": {"$set": {"a": 1}}}),
    }


# pgoutput v1 messages captured from PostgreSQL 15.18 (pg_logical_slot_peek_binary_changes with
# proto_version 1; see tests/unit/protocol/pgoutput_test.cpp for the statements behind them).
PGOUTPUT = {
    "begin": "420000000003027300000304db5eae1c1a000002ed",
    "commit": "430000000000030273000000000003027330000304db5eae1c1a",
    "type": "590000402b7075626c6963006d6f6f6400",
    "relation": "52000040317075626c6963006974656d73006400050169640000000017ffffffff006e616d6500"
                "00000019ffffffff007174790000000017ffffffff006665656c000000402bffffffff00626967"
                "0000000019ffffffff",
    "relation_full": "52000040387075626c6963006175646974006600020169640000000014ffffffff016e6f74"
                     "650000000019ffffffff",
    "insert": "49000040314e00057400000001326e74000000013574000000026f6b6e",
    "insert_binary": "49000040314e00056200000004000000026e62000000040000000562000000026f6b6e",
    "update_key": "55000040314b00057400000001326e6e6e6e4e0005740000000231306e7400000001357400"
                  "0000026f6b6e",
    "update_old": "55000040384f00027400000001377400000005736576656e4e0002740000000137740000000553"
                  "4556454e",
    "update_toast": "55000040314e0005740000000133740000000470656172740000000132740000000373616475",
    "delete_key": "44000040314b0005740000000231306e6e6e6e",
    "delete_old": "44000040384f00027400000001377400000005534556454e",
    "truncate": "5400000002030000403100004038",
    "message": "4d010000000003028d50736c75696365000000000568656c6c6f",
    "origin": "4f0000000012345678757073747265616d00",
}


def pgoutput():
    """Bare pgoutput messages, the same inside XLogData payloads, and keepalives."""
    seeds = {}
    for name, hex_data in PGOUTPUT.items():
        data = bytes.fromhex(hex_data)
        seeds["msg_" + name] = data
        header = struct.pack("!QQq", 0x3027110, 0x3029080, 0x304db5eae1c1a)
        seeds["xlog_" + name] = b"w" + header + data
    seeds["keepalive"] = b"k" + struct.pack("!Qq", 0x3029080, 0x304db5eae1c1a) + b"\0"
    seeds["keepalive_reply"] = b"k" + struct.pack("!Qq", 0x3029080, 0x304db5eae1c1a) + b"\1"
    return seeds


TARGETS = {
    "fuzz_pg_frontend": pg_frontend,
    "fuzz_pg_backend": pg_backend,
    "fuzz_sql_classifier": sql_classifier,
    "fuzz_pg_pooling": pg_pooling,
    "fuzz_insights": insights,
    "fuzz_cache": cache,
    "fuzz_mongo_wire": mongo_wire,
    "fuzz_pgoutput": pgoutput,
}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for target, make in TARGETS.items():
        d = os.path.join(sys.argv[1], target)
        os.makedirs(d, exist_ok=True)
        for name, data in make().items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
