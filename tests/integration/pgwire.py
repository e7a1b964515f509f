"""A tiny raw PostgreSQL v3 client for tests that need what libpq hides: SQLSTATEs of login
errors, malformed packets, and connections cut mid-message. Implements SCRAM-SHA-256 and md5."""
import base64
import hashlib
import hmac
import os
import socket
import struct


class Wire:
    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.key = None  # (pid, secret) from BackendKeyData

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def send_msg(self, typ, body=b""):
        self.send(typ + struct.pack("!I", len(body) + 4) + body)

    def startup(self, user, db, **params):
        body = struct.pack("!I", 196608)
        for k, v in {"user": user, "database": db, **params}.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.send(struct.pack("!I", len(body) + 4) + body)

    def _recv(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read(self):
        typ = self._recv(1)
        (length,) = struct.unpack("!I", self._recv(4))
        return typ, self._recv(length - 4)

    def closed_by_peer(self, timeout=5):
        """True when the server closes the connection (EOF) within the timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    @staticmethod
    def fields(body):
        out = {}
        for part in body.split(b"\0"):
            if part:
                out[chr(part[0])] = part[1:].decode(errors="replace")
        return out

    def login(self, user, password, db, **params):
        """Returns ('ok', parameter dict) or ('error', error fields)."""
        self.startup(user, db, **params)
        status = {}
        while True:
            typ, body = self.read()
            if typ == b"E":
                return "error", self.fields(body)
            if typ == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == 10:
                    err = self._scram(password)
                    if err:
                        return "error", err
                elif code == 5:
                    inner = hashlib.md5((password + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                    self.send_msg(b"p", b"md5" + outer.encode() + b"\0")
                elif code == 3:
                    self.send_msg(b"p", password.encode() + b"\0")
            elif typ == b"S":
                k, v = body.split(b"\0")[:2]
                status[k.decode()] = v.decode()
            elif typ == b"K":
                self.key = struct.unpack("!II", body)
            elif typ == b"Z":
                return "ok", status

    def _scram(self, password):
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        payload = ("n,," + first_bare).encode()
        self.send_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(payload)) + payload)
        typ, body = self.read()
        if typ == b"E":
            return self.fields(body)
        server_first = body[4:].decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth = f"{first_bare},{server_first},{without_proof}".encode()
        sig = hmac.new(stored, auth, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        self.send_msg(b"p", (without_proof + ",p=" + base64.b64encode(proof).decode()).encode())
        typ, body = self.read()
        if typ == b"E":
            return self.fields(body)
        return None

    def query(self, sql):
        """Simple query; returns (rows as lists of str/None, error fields or None)."""
        rows, err = self.query_bytes(sql.encode())
        return [[None if v is None else v.decode() for v in row] for row in rows], err

    def query_bytes(self, sql):
        """Simple query with raw bytes: (rows of bytes/None, error fields or None)."""
        self.send_msg(b"Q", sql + b"\0")
        rows, err = [], None
        while True:
            typ, body = self.read()
            if typ == b"D":
                (n,) = struct.unpack("!H", body[:2])
                pos, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", body[pos:pos + 4])
                    pos += 4
                    row.append(None if ln < 0 else body[pos:pos + ln])
                    pos += max(ln, 0)
                rows.append(row)
            elif typ == b"E":
                err = self.fields(body)
            elif typ == b"Z":
                return rows, err
