"""hubctl: start, stop and drive the local Aliyun-compatible hub (mosquitto + aligw_hub.so).

Used three ways: by the `aligw-hub` command (start/stop/run/gen-devices), by tests and benchmarks
that `import hubctl` and use `Hub` as a context manager, and as the HTTPS registration server
(`hubctl.py https --dir DIR`), which the launcher starts as a separate process. Python 3 stdlib
only, except the cloud-side helpers of `Hub`, which use Debian's python3-paho-mqtt.

Hub state (device secrets, products, tokens, "activated" flags) lives in DIR/hub.db (SQLite),
filled from the device table at start and shared by the plugin and the HTTPS endpoint.

Firmware upgrades (OTA): `ota_push` stores a job (ota_jobs) and the package files (ota_files,
copied to DIR/ota-files/) and publishes the upgrade notice; the HTTPS server serves the files at
/ota/<token> with Range support, refuses expired tokens with 403 like an expired OSS URL, and
applies faults (ota_faults: cut the connection at a byte offset); the mosquitto plugin answers
thing.ota.firmware.get with freshly signed URLs and records informs and progress reports
(ota_reports). Every download request is logged in ota_requests for tests.
"""
import argparse
import csv
import hashlib
import hmac
import io
import json
import os
import pwd
import random
import re
import shutil
import resource
import secrets
import signal
import socket
import sqlite3
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "127.0.0.1"
# The address the hub's MQTT listeners bind: HOST, unless a test in a network namespace of its own
# widens it to reach the hub at another local address too.
LISTEN = HOST

KNOWN_COLUMNS = ("product_key", "device_name", "device_secret", "product_secret", "register",
                 "client_id")
HUB_COLUMNS = ("hub_dynreg", "hub_topics", "hub_active")
DEFAULT_TOPICS = "update:pub;update/error:pub;get:sub"


class DeviceTableError(ValueError):
    pass


# ---- device table -------------------------------------------------------------------------

def parse_devices(text, name="devices"):
    """Parses the shared devices CSV; returns a list of dicts (every known column present)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    kept = []  # (line number, line)
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        kept.append((no, line))
    if not kept:
        raise DeviceTableError("%s: no header line" % name)
    rows = list(csv.reader([l for _, l in kept], strict=True))
    header = [h.strip() for h in rows[0]]
    errors = []
    for h in header:
        if h not in KNOWN_COLUMNS and h not in HUB_COLUMNS:
            errors.append("%s:%d: unknown column '%s' (known: %s; hub-only columns start with hub_: %s)"
                          % (name, kept[0][0], h, ", ".join(KNOWN_COLUMNS), ", ".join(HUB_COLUMNS)))
    for req in ("product_key", "device_name"):
        if req not in header:
            errors.append("%s:%d: missing required column '%s'" % (name, kept[0][0], req))
    if len(set(header)) != len(header):
        errors.append("%s:%d: a column is named twice" % (name, kept[0][0]))
    if errors:
        raise DeviceTableError("\n".join(errors))
    out = []
    seen = set()
    for (no, _), fields in zip(kept[1:], rows[1:]):
        if len(fields) != len(header):
            errors.append("%s:%d: %d fields, header has %d" % (name, no, len(fields), len(header)))
            continue
        row = {c: "" for c in KNOWN_COLUMNS + HUB_COLUMNS}
        row.update({h: f.strip() for h, f in zip(header, fields)})
        row["line"] = no
        if not row["product_key"] or not row["device_name"]:
            errors.append("%s:%d: product_key and device_name must not be empty" % (name, no))
        if row["register"] not in ("", "https", "mqtt", "mqtt-nwl"):
            errors.append("%s:%d: register: '%s' is not one of empty, https, mqtt, mqtt-nwl"
                          % (name, no, row["register"]))
        if row["hub_dynreg"] not in ("", "no", "register", "regnwl", "both"):
            errors.append("%s:%d: hub_dynreg: '%s' is not one of empty, no, register, regnwl, both"
                          % (name, no, row["hub_dynreg"]))
        if row["hub_active"] not in ("", "0", "1"):
            errors.append("%s:%d: hub_active: '%s' is not 0 or 1" % (name, no, row["hub_active"]))
        key = (row["product_key"], row["device_name"])
        if key in seen:
            errors.append("%s:%d: device %s/%s listed twice" % (name, no, key[0], key[1]))
        seen.add(key)
        out.append(row)
    if errors:
        raise DeviceTableError("\n".join(errors))
    return out


def load_devices(path):
    with open(path, "rb") as f:
        return parse_devices(f.read().decode("utf-8"), path)


def write_devices(path, rows):
    cols = list(KNOWN_COLUMNS + HUB_COLUMNS)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c, "") for c in cols])


def init_db(dbpath, rows):
    """Creates DIR/hub.db from the device table (replacing any earlier one)."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(dbpath + suffix):
            os.unlink(dbpath + suffix)
    db = sqlite3.connect(dbpath)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE products(pk TEXT PRIMARY KEY, secret TEXT, dynreg TEXT);
        CREATE TABLE devices(pk TEXT NOT NULL, dn TEXT NOT NULL, secret TEXT,
            active INTEGER NOT NULL DEFAULT 0, token TEXT, token_client_id TEXT, topics TEXT,
            PRIMARY KEY(pk, dn));
        CREATE TABLE ota_files(name TEXT PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL);
        CREATE TABLE ota_tokens(token TEXT PRIMARY KEY, name TEXT NOT NULL, expires_at REAL);
        CREATE TABLE ota_jobs(pk TEXT NOT NULL, dn TEXT NOT NULL, module TEXT NOT NULL,
            data TEXT NOT NULL, ttl INTEGER NOT NULL, PRIMARY KEY(pk, dn, module));
        CREATE TABLE ota_faults(name TEXT PRIMARY KEY, cut_at INTEGER NOT NULL,
            count INTEGER NOT NULL);
        CREATE TABLE ota_reports(ts REAL, pk TEXT, dn TEXT, kind TEXT, payload TEXT);
        CREATE TABLE ota_requests(ts REAL, name TEXT, range_start INTEGER, status INTEGER,
            sent INTEGER);
        CREATE TABLE configs(pk TEXT PRIMARY KEY, data TEXT NOT NULL);
    """)
    products = {}
    for r in rows:
        pk = r["product_key"]
        if r["product_secret"]:
            p = products.setdefault(pk, {"secret": r["product_secret"], "modes": set(), "no": False})
            if p["secret"] != r["product_secret"]:
                raise DeviceTableError("line %d: product %s has two different product_secrets"
                                       % (r["line"], pk))
            # Empty hub_dynreg: infer from the daemon's `register` column; "no" disables.
            d = r["hub_dynreg"]
            if d == "no":
                p["no"] = True
            elif d in ("register", "regnwl"):
                p["modes"].add(d)
            elif d == "both":
                p["modes"].update(("register", "regnwl"))
            elif r["register"] in ("https", "mqtt"):
                p["modes"].add("register")
            elif r["register"] == "mqtt-nwl":
                p["modes"].add("regnwl")
    for pk, p in products.items():
        modes = set() if p["no"] else p["modes"]
        dynreg = "both" if len(modes) == 2 else (modes.pop() if modes else "no")
        db.execute("INSERT INTO products VALUES(?,?,?)", (pk, p["secret"], dynreg))
    db.executemany("INSERT INTO devices(pk, dn, secret, active, topics) VALUES(?,?,?,?,?)",
                   [(r["product_key"], r["device_name"], r["device_secret"] or None,
                     int(r["hub_active"] or 0), r["hub_topics"] or DEFAULT_TOPICS) for r in rows])
    db.commit()
    db.close()


def gen_devices(count, product, dynreg="", register="", prefix="dev", topics=""):
    """Rows for `count` devices of one product; with dynreg, a product secret and no device secrets."""
    ps = random_secret(16) if dynreg else ""
    rows = []
    for i in range(count):
        rows.append({
            "product_key": product, "device_name": "%s%05d" % (prefix, i),
            "device_secret": "" if dynreg else random_secret(32), "product_secret": ps,
            "register": register, "client_id": "", "hub_dynreg": dynreg, "hub_topics": topics,
            "hub_active": ""})
    return rows


def random_secret(n):
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


# ---- signing (device side, for tests) -------------------------------------------------------

_DIGESTS = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1, "hmacmd5": hashlib.md5}


def hmac_hex(method, key, msg):
    return hmac.new(key.encode(), msg.encode(), _DIGESTS[method.lower()]).hexdigest().upper()


def login_creds(pk, dn, ds, method="hmacsha256", timestamp="2524608000000", securemode=3,
                client_id=None, ext=""):
    """(mqtt client id, username, password) for a one-device-one-secret login."""
    cid = client_id if client_id is not None else "%s.%s" % (pk, dn)
    kv = "securemode=%s,signmethod=%s" % (securemode, method)
    msg = "clientId%sdeviceName%sproductKey%s" % (cid, dn, pk)
    if timestamp:
        kv += ",timestamp=%s" % timestamp
        msg += "timestamp%s" % timestamp
    if ext:
        kv += "," + ext
    return "%s|%s|" % (cid, kv), "%s&%s" % (dn, pk), hmac_hex(method, ds, msg)


def register_sign(method, ps, pk, dn, rnd):
    return hmac_hex(method, ps, "deviceName%sproductKey%srandom%s" % (dn, pk, rnd))


def register_creds(pk, dn, ps, auth_type="register", method="hmacsha256", rnd=None):
    rnd = rnd or str(random.randint(1, 2**32 - 1))
    cid = "%s.%s|random=%s,authType=%s,securemode=2,signmethod=%s|" % (dn, pk, rnd, auth_type,
                                                                        method)
    return cid, "%s&%s" % (dn, pk), register_sign(method, ps, pk, dn, rnd)


# ---- HTTPS registration endpoint --------------------------------------------------------------

def serve_https(dirpath, port):
    import http.server
    import urllib.parse

    dbpath = os.path.join(dirpath, "hub.db")

    def register(form):
        get = lambda k: (form.get(k) or [""])[0]
        pk, dn, rnd, sign = get("productKey"), get("deviceName"), get("random"), get("sign")
        method = (get("signMethod") or "hmacsha256").lower()
        if not (pk and dn and rnd and sign):
            return 460, "request parameter error", None
        if method not in _DIGESTS:
            return 6292, "sign method not supported", None
        db = sqlite3.connect(dbpath, timeout=10)
        try:
            p = db.execute("SELECT secret, dynreg FROM products WHERE pk=?", (pk,)).fetchone()
            if not p or not p[0]:
                return 6250, "product not found", None
            if p[1] not in ("register", "both"):
                return 6288, "dynamic register not enabled for this product", None
            if not hmac.compare_digest(register_sign(method, p[0], pk, dn, rnd), sign.upper()):
                return 6600, "sign check failed", None
            d = db.execute("SELECT active FROM devices WHERE pk=? AND dn=?", (pk, dn)).fetchone()
            if not d:
                return 6100, "device not found", None
            if d[0]:
                return 6289, "device is already active", None
            secret = random_secret(32)
            db.execute("UPDATE devices SET secret=? WHERE pk=? AND dn=?", (secret, pk, dn))
            db.commit()
            return 200, "success", {"productKey": pk, "deviceName": dn, "deviceSecret": secret}
        finally:
            db.close()

    def log_request(name, start, status, sent):
        db = sqlite3.connect(dbpath, timeout=10)
        try:
            db.execute("INSERT INTO ota_requests VALUES(?,?,?,?,?)",
                       (time.time(), name, start, status, sent))
            db.commit()
        finally:
            db.close()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            if os.environ.get("ALIGW_HUB_HTTPS_LOG"):
                sys.stderr.write("https: " + (fmt % args) + "\n")

        def _plain(self, code, text, extra=()):
            raw = text.encode()
            self.send_response(code)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            if path == "/ota-loop":  # a redirect loop, for tests
                self.send_response(302)
                self.send_header("Location", "/ota-loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if not path.startswith("/ota/"):
                return self._plain(404, "<Error><Code>NoSuchKey</Code></Error>")
            db = sqlite3.connect(dbpath, timeout=10)
            try:
                row = db.execute("SELECT t.name, t.expires_at, f.path, f.size FROM ota_tokens t "
                                 "JOIN ota_files f ON f.name = t.name WHERE t.token = ?",
                                 (path[5:],)).fetchone()
                if row and row[1] >= time.time():
                    fault = db.execute("SELECT cut_at, count FROM ota_faults WHERE name = ?",
                                       (row[0],)).fetchone()
                else:
                    fault = None
            finally:
                db.close()
            if not row:
                return self._plain(403, "<Error><Code>AccessDenied</Code></Error>")
            name, expires, fpath, size = row
            if expires < time.time():
                log_request(name, 0, 403, 0)
                return self._plain(403, "<Error><Code>AccessDenied</Code>"
                                        "<Message>Request has expired.</Message></Error>")
            start, end, status = 0, size - 1, 200
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if not m:
                    return self._plain(400, "<Error><Code>InvalidArgument</Code></Error>")
                start = int(m.group(1))
                if m.group(2):
                    end = min(int(m.group(2)), size - 1)
                if start >= size:
                    log_request(name, start, 416, 0)
                    return self._plain(416, "<Error><Code>InvalidRange</Code></Error>",
                                       [("Content-Range", "bytes */%d" % size)])
                status = 206
            cut = None
            if fault and fault[1] > 0 and start < fault[0] <= end:
                cut = fault[0]
                db = sqlite3.connect(dbpath, timeout=10)
                try:
                    db.execute("UPDATE ota_faults SET count = count - 1 WHERE name = ?", (name,))
                    db.commit()
                finally:
                    db.close()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            self.end_headers()
            sent = 0
            stop = (cut if cut is not None else end + 1)
            with open(fpath, "rb") as f:
                f.seek(start)
                pos = start
                while pos < stop:
                    chunk = f.read(min(256 * 1024, stop - pos))
                    if not chunk:
                        break
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        break
                    pos += len(chunk)
                    sent += len(chunk)
            log_request(name, start, status, sent)
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True

        def do_POST(self):
            path = urllib.parse.urlsplit(self.path).path
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace")
            if path != "/auth/register/device":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code, message, data = register(urllib.parse.parse_qs(body))
            out = {"code": code, "message": message}
            if data:
                out["data"] = data
            raw = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512  # listen() backlog: benchmarks open 100 downloads at once

    httpd = Server((HOST, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # OpenSSL's DEFAULT, not Python's ECDHE-only list: stock LinkSDK builds offer only RSA key
    # exchange (AES128-GCM-SHA256 and friends), as the platform accepts.
    ctx.set_ciphers("DEFAULT")
    ctx.load_cert_chain(os.path.join(dirpath, "server.crt"), os.path.join(dirpath, "server.key"))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=httpd.shutdown).start())
    httpd.serve_forever()



# ---- OTA: firmware jobs ----------------------------------------------------------------------

def _digest(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _db(dbpath):
    db = sqlite3.connect(dbpath, timeout=10)
    return db


def _sign_urls(dbpath, data, ttl, port):
    db = _db(dbpath)
    try:
        def walk(v):
            if isinstance(v, dict):
                for k, x in list(v.items()):
                    if isinstance(x, str) and x.startswith("hub:"):
                        token = random_secret(24)
                        db.execute("INSERT INTO ota_tokens VALUES(?,?,?)",
                                   (token, x[4:], time.time() + ttl))
                        v[k] = "https://%s:%d/ota/%s" % (HOST, port, token)
                    else:
                        walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
        walk(data)
        db.commit()
    finally:
        db.close()
    return data


def ota_job(dbpath, pk, dn, files, version, module="", sign_method="Md5", bad_sign=False,
            size_delta=0, ttl=3600, md5_field=False, ext_data=None, is_diff=False, names=None):
    """Stores an upgrade job for pk/dn (and its files) in the hub; returns (data, file names).

    files: paths of the package's files (several = a multi-file package). sign_method: MD5, Md5,
    SHA256 or Sha256 (anything else is sent as given). bad_sign: the digest sent is wrong.
    size_delta: added to the announced size. md5_field: the digest goes in "md5" (iotkit 3's
    field) instead of "sign". The stored data holds "hub:<file>" URLs, signed when sent."""
    store = os.path.join(os.path.dirname(dbpath), "ota-files")
    os.makedirs(store, exist_ok=True)
    algo = "sha256" if sign_method.lower() == "sha256" else "md5"
    entries = []
    db = _db(dbpath)
    try:
        for i, fp in enumerate(files):
            size = os.path.getsize(fp)
            dg = _digest(fp, algo)
            name = _digest(fp, "sha256")[:32]
            dst = os.path.join(store, name)
            if not os.path.exists(dst):
                shutil.copyfile(fp, dst + ".tmp")
                os.replace(dst + ".tmp", dst)
            db.execute("INSERT OR REPLACE INTO ota_files VALUES(?,?,?)", (name, dst, size))
            if bad_sign:
                dg = ("0" if dg[0] != "0" else "1") + dg[1:]
            fname = (names[i] if names else os.path.basename(fp))
            entries.append({"name": name, "size": size + size_delta, "digest": dg, "fname": fname})
        data = {"version": version, "signMethod": sign_method, "isDiff": 1 if is_diff else 0}
        if module:
            data["module"] = module
        if ext_data is not None:
            data["extData"] = ext_data
        if len(entries) == 1:
            e = entries[0]
            data.update({"size": e["size"], "url": "hub:" + e["name"]})
            if md5_field:
                data["md5"] = e["digest"]
            else:
                data["sign"] = e["digest"]
                if algo == "md5":
                    data["md5"] = e["digest"]
        else:
            data["files"] = [{"fileName": e["fname"], "fileSize": e["size"],
                              "fileUrl": "hub:" + e["name"],
                              ("fileMd5" if md5_field else "fileSign"): e["digest"]}
                             for e in entries]
        db.execute("INSERT OR REPLACE INTO ota_jobs VALUES(?,?,?,?,?)",
                   (pk, dn, module or "", json.dumps(data), ttl))
        db.commit()
    finally:
        db.close()
    return data, [e["name"] for e in entries]


def config_job(dbpath, pk, content, config_id=None, sign_method="Sha256", bad_sign=False,
               size_delta=0):
    """Stores pk's remote configuration file (bytes or text) in the hub: thing.config.get answers
    it and config_push announces it. Returns the notice's fields, with a "hub:<file>" URL."""
    data = content.encode() if isinstance(content, str) else content
    store = os.path.join(os.path.dirname(dbpath), "ota-files")
    os.makedirs(store, exist_ok=True)
    name = hashlib.sha256(data).hexdigest()[:32]
    path = os.path.join(store, name)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    algo = "sha256" if sign_method.lower() == "sha256" else "md5"
    sign = hashlib.new(algo, data).hexdigest()
    if bad_sign:
        sign = ("0" if sign[0] != "0" else "1") + sign[1:]
    fields = {"configId": config_id or name[:16], "configSize": len(data) + size_delta,
              "sign": sign, "signMethod": sign_method, "url": "hub:" + name, "getType": "file"}
    db = _db(dbpath)
    try:
        db.execute("INSERT OR REPLACE INTO ota_files VALUES(?,?,?)", (name, path, len(data)))
        db.execute("INSERT OR REPLACE INTO configs VALUES(?,?)", (pk, json.dumps(fields)))
        db.commit()
    finally:
        db.close()
    return fields


def ota_notice(dbpath, port, data, ttl, code="1000", msg_id=None):
    d = _sign_urls(dbpath, json.loads(json.dumps(data)), ttl, port)
    code_v = int(code) if str(code) == "200" else str(code)
    return {"code": code_v, "data": d, "id": msg_id or int(time.time() * 1000) % 10**12,
            "message": "success"}


def ota_fault(dbpath, name, cut_at, count=1):
    """The next `count` downloads of file `name` crossing byte cut_at are cut there."""
    db = _db(dbpath)
    try:
        db.execute("INSERT OR REPLACE INTO ota_faults VALUES(?,?,?)", (name, cut_at, count))
        db.commit()
    finally:
        db.close()


def ota_expire(dbpath):
    """Every download URL handed out so far expires now (as a pre-signed OSS URL would)."""
    db = _db(dbpath)
    try:
        db.execute("UPDATE ota_tokens SET expires_at = 0")
        db.commit()
    finally:
        db.close()


def ota_reports(dbpath, pk=None, dn=None, kind=None):
    """Recorded informs and progress reports: [(ts, pk, dn, kind, params dict)], oldest first."""
    db = _db(dbpath)
    try:
        rows = db.execute("SELECT ts, pk, dn, kind, payload FROM ota_reports ORDER BY rowid").fetchall()
    finally:
        db.close()
    out = []
    for ts, p, d, k, payload in rows:
        if (pk and p != pk) or (dn and d != dn) or (kind and k != kind):
            continue
        try:
            params = json.loads(payload).get("params", {})
        except ValueError:
            params = {"_raw": payload}
        out.append((ts, p, d, k, params))
    return out


def ota_requests(dbpath, name=None):
    """Download requests served: [(name, range_start, status, bytes sent)]."""
    db = _db(dbpath)
    try:
        rows = db.execute("SELECT name, range_start, status, sent FROM ota_requests "
                          "ORDER BY rowid").fetchall()
    finally:
        db.close()
    return [r for r in rows if name is None or r[0] == name]


def _cloud_publish(info, topic, payload):
    """Publishes one message as the cloud user (for the command line)."""
    import paho.mqtt.client as mqtt
    c = mqtt.Client(client_id="aligw-hub-ctl-" + random_secret(6), clean_session=True,
                    protocol=mqtt.MQTTv311)
    c.username_pw_set(info["cloud_username"], info["cloud_password"])
    c.connect(HOST, info["mqtt_port"], keepalive=30)
    c.loop_start()
    try:
        c.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()

# ---- launcher ---------------------------------------------------------------------------------

def find_plugin():
    env = os.environ.get("ALIGW_HUB_PLUGIN")
    if env:
        return env
    # CMake puts every plugin, this one included, in <build>/plugins-out; older trees had it in
    # <build>/tests/hub. The newest of any build*/ directory of the source tree wins.
    root = os.path.dirname(os.path.dirname(HERE))
    cands = [os.path.join(root, d, sub, "aligw_hub.so")
             for d in sorted(os.listdir(root)) if d.startswith("build")
             for sub in ("plugins-out", os.path.join("tests", "hub"))]
    cands = [c for c in cands if os.path.exists(c)]
    if not cands:
        raise FileNotFoundError("aligw_hub.so not found: set ALIGW_HUB_PLUGIN or build it "
                                "(make aligw_hub) in a build*/ directory of the source tree")
    return max(cands, key=os.path.getmtime)


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


KEY_TYPES = {"rsa": ["-newkey", "rsa:2048"],
             "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]}


def make_certs(d, key_type="rsa"):
    """A test CA and a server certificate for localhost/127.0.0.1 in d; returns the CA's path.

    RSA-2048 by default, as the platform serves: stock LinkSDK 4.1.0 (mbedtls with RSA key
    exchange only) cannot use an ECDSA server key. key_type "ec" gives P-256 keys instead."""
    newkey = KEY_TYPES[key_type]
    ca_key, ca_crt = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    key, csr, crt = (os.path.join(d, n) for n in ("server.key", "server.csr", "server.crt"))
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(["openssl"] + list(a), check=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
    run("req", "-x509", *newkey, "-nodes", "-keyout", ca_key, "-out", ca_crt, "-days", "3650",
        "-subj", "/CN=aligw-hub test CA")
    run("req", *newkey, "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "3650", "-extfile", ext)
    return ca_crt


def wait_port(port, proc, logpath, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = open(logpath, errors="replace").read()[-2000:] if os.path.exists(logpath) else ""
            raise RuntimeError("process %s exited with %s:\n%s" % (proc.args[0], proc.returncode, tail))
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d not ready after %ds" % (port, timeout))


def start(devices, dirpath, rate=30, rate_mode="reply", reply_delivery="subscribed",
          dynreg_plain=False, plugin=None, min_keepalive=30, key_type="rsa"):
    """Starts the hub; returns (info dict, [Popen]). Raises DeviceTableError on a bad table."""
    os.makedirs(dirpath, exist_ok=True)
    dirpath = os.path.abspath(dirpath)
    rows = load_devices(devices) if isinstance(devices, str) else devices
    if not isinstance(devices, str):
        write_devices(os.path.join(dirpath, "devices.csv"), rows)
        for i, r in enumerate(rows):
            r.setdefault("line", i + 2)
            for c in KNOWN_COLUMNS + HUB_COLUMNS:
                r.setdefault(c, "")
    plugin = os.path.abspath(plugin or find_plugin())
    dbpath = os.path.join(dirpath, "hub.db")
    init_db(dbpath, rows)
    ca = make_certs(dirpath, key_type)
    nofile = raise_nofile()
    cloud_user, cloud_pass = "cloud-" + random_secret(8), random_secret(24)
    ports = {"mqtt_port": free_port(), "mqtts_port": free_port(), "https_port": free_port()}
    opts = ["plugin_opt_hub_db %s" % dbpath, "plugin_opt_cloud_username %s" % cloud_user,
            "plugin_opt_cloud_password %s" % cloud_pass, "plugin_opt_rate %d" % rate,
            "plugin_opt_rate_mode %s" % rate_mode, "plugin_opt_reply_delivery %s" % reply_delivery,
            "plugin_opt_dynreg_plain %d" % (1 if dynreg_plain else 0),
            "plugin_opt_min_keepalive %d" % min_keepalive,
            "plugin_opt_https_port %d" % ports["https_port"]]
    conf = ["# written by aligw-hub", "per_listener_settings true", "persistence false",
            "user %s" % pwd.getpwuid(os.getuid()).pw_name, "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice", "connection_messages false",
            "max_queued_messages 1000000", "set_tcp_nodelay true", "",
            "listener %d %s" % (ports["mqtt_port"], LISTEN), "allow_anonymous false",
            "plugin %s" % plugin, "plugin_opt_tls 0"] + opts + [
            "", "listener %d %s" % (ports["mqtts_port"], LISTEN), "allow_anonymous false",
            "cafile %s" % ca, "certfile %s" % os.path.join(dirpath, "server.crt"),
            "keyfile %s" % os.path.join(dirpath, "server.key"),
            "plugin %s" % plugin, "plugin_opt_tls 1"] + opts
    conf_path = os.path.join(dirpath, "mosquitto.conf")
    with open(conf_path, "w") as f:
        f.write("\n".join(conf) + "\n")
    os.chmod(conf_path, 0o600)
    mlog = os.path.join(dirpath, "mosquitto.log")
    hlog = os.path.join(dirpath, "https.log")
    procs = []
    try:
        with open(mlog, "ab") as lf:
            procs.append(subprocess.Popen(["mosquitto", "-c", conf_path], stdout=lf, stderr=lf,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
        with open(hlog, "ab") as lf:
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "hubctl.py"), "https", "--dir", dirpath,
                 "--port", str(ports["https_port"])], stdout=lf, stderr=lf,
                stdin=subprocess.DEVNULL, start_new_session=True))
        wait_port(ports["mqtt_port"], procs[0], mlog)
        wait_port(ports["mqtts_port"], procs[0], mlog)
        wait_port(ports["https_port"], procs[1], hlog)
    except BaseException:
        stop_procs(procs)
        raise
    info = dict(ports, host=HOST, ca_file=ca, cloud_username=cloud_user, cloud_password=cloud_pass,
                mosquitto_pid=procs[0].pid, https_pid=procs[1].pid, dir=dirpath, db=dbpath,
                plugin=plugin, nofile=nofile, rate=rate, rate_mode=rate_mode,
                reply_delivery=reply_delivery, key_type=key_type)
    tmp = os.path.join(dirpath, "hub.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, os.path.join(dirpath, "hub.json"))
    return info, procs


def stop_procs(procs, timeout=5):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_dir(dirpath, timeout=5):
    """Stops a hub started by `aligw-hub start` (from its DIR/hub.json). True if it was running."""
    path = os.path.join(dirpath, "hub.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        info = json.load(f)
    pids = [info["mosquitto_pid"], info["https_pid"]]
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    os.unlink(path)
    return True


# ---- Hub: the test-side handle ----------------------------------------------------------------

class Message:
    __slots__ = ("topic", "payload", "qos", "time")

    def __init__(self, topic, payload, qos, t):
        self.topic, self.payload, self.qos, self.time = topic, payload, qos, t

    def json(self):
        return json.loads(self.payload)

    def __repr__(self):
        return "Message(%r, %r)" % (self.topic, self.payload[:200])


def topic_matches(flt, topic):
    f, t = flt.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


class Hub:
    """A running hub plus a cloud-side MQTT client that records everything it sees.

    with Hub(devices="devices.csv") as hub:   # or a list of row dicts (see gen_devices)
        hub.mqtt_port, hub.mqtts_port, hub.https_port, hub.ca_file
        hub.property_set(pk, dn, {"Power": 1}); hub.wait_message("/sys/+/+/thing/event/#")
        hub.counters()
    """

    def __init__(self, devices, dir=None, rate=30, rate_mode="reply", reply_delivery="subscribed",
                 dynreg_plain=False, plugin=None, cloud=True, key_type="rsa"):
        self._devices = devices
        self._dir = dir
        self._opts = dict(rate=rate, rate_mode=rate_mode, reply_delivery=reply_delivery,
                          dynreg_plain=dynreg_plain, plugin=plugin, key_type=key_type)
        self._want_cloud = cloud
        self._tmp = None
        self._procs = []
        self.info = None
        self.cloud = None
        self._msgs = []
        self._cond = threading.Condition()
        self._next_id = int(time.time()) % 100000 * 1000

    # lifecycle
    def start(self):
        if self._dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aligw-hub-")
            self._dir = self._tmp.name
        self.info, self._procs = start(self._devices, self._dir, **self._opts)
        try:
            if self._want_cloud:
                self._connect_cloud()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.cloud is not None:
            self.cloud.disconnect()
            self.cloud.loop_stop()
            self.cloud = None
        stop_procs(self._procs)
        self._procs = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __getattr__(self, name):
        info = self.__dict__.get("info")
        if info and name in info:
            return info[name]
        raise AttributeError(name)

    @property
    def dir(self):
        return self._dir

    # cloud side
    def _connect_cloud(self):
        import paho.mqtt.client as mqtt
        c = mqtt.Client(client_id="aligw-hub-cloud-" + random_secret(6), clean_session=True,
                        protocol=mqtt.MQTTv311)
        c.username_pw_set(self.info["cloud_username"], self.info["cloud_password"])
        ready = threading.Event()

        def on_connect(cl, ud, flags, rc):
            if rc == 0:
                cl.subscribe("#", qos=1)

        def on_subscribe(cl, ud, mid, granted):
            ready.set()

        def on_message(cl, ud, m):
            with self._cond:
                self._msgs.append(Message(m.topic, m.payload, m.qos, time.time()))
                self._cond.notify_all()

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        c.connect(HOST, self.info["mqtt_port"], keepalive=60)
        c.loop_start()
        self.cloud = c
        if not ready.wait(10):
            raise RuntimeError("cloud client did not connect/subscribe")

    def mark(self):
        """An index into the recording; pass as since= to see only later messages."""
        with self._cond:
            return len(self._msgs)

    def messages(self, topic_filter="#", since=0):
        with self._cond:
            return [m for m in self._msgs[since:] if topic_matches(topic_filter, m.topic)]

    def wait_message(self, topic_filter="#", timeout=5.0, since=0, predicate=None):
        """First recorded message (index >= since) matching filter and predicate, or None."""
        deadline = time.time() + timeout
        with self._cond:
            i = since
            while True:
                while i < len(self._msgs):
                    m = self._msgs[i]
                    i += 1
                    if topic_matches(topic_filter, m.topic) and (predicate is None or predicate(m)):
                        return m
                left = deadline - time.time()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def _id(self):
        self._next_id += 1
        return str(self._next_id)

    def publish(self, topic, payload, qos=1):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.cloud.publish(topic, payload, qos=qos)
        info.wait_for_publish()
        return info

    def property_set(self, pk, dn, params, msg_id=None):
        mid = msg_id or self._id()
        self.publish("/sys/%s/%s/thing/service/property/set" % (pk, dn),
                     {"id": mid, "version": "1.0", "params": params,
                      "method": "thing.service.property.set"})
        return mid

    def service_call(self, pk, dn, service, params, msg_id=None):
        mid = msg_id or self._id()
        self.publish("/sys/%s/%s/thing/service/%s" % (pk, dn, service),
                     {"id": mid, "version": "1.0", "params": params,
                      "method": "thing.service.%s" % service})
        return mid

    def ota_notice(self, pk, dn, version, url, size, sign, sign_method="Md5", module=None,
                   msg_id=None):
        data = {"size": size, "version": version, "url": url, "sign": sign,
                "signMethod": sign_method, "md5": sign if sign_method.lower() == "md5" else ""}
        if module:
            data["module"] = module
        mid = msg_id or int(self._id())
        self.publish("/ota/device/upgrade/%s/%s" % (pk, dn),
                     {"code": "1000", "data": data, "id": mid, "message": "success"})
        return mid

    def ota_push(self, pk, dn, files, version, code="1000", ttl=3600, send=True, **kw):
        """Stores a job (see ota_job) and publishes its upgrade notice. Returns (notice, names)."""
        data, names = ota_job(self.info["db"], pk, dn, files, version, ttl=ttl, **kw)
        notice = ota_notice(self.info["db"], self.info["https_port"], data, ttl, code)
        if send:
            self.publish("/ota/device/upgrade/%s/%s" % (pk, dn), notice)
        return notice, names

    def ota_fault(self, name, cut_at, count=1):
        ota_fault(self.info["db"], name, cut_at, count)

    def ota_expire(self):
        ota_expire(self.info["db"])

    def ota_reports(self, pk=None, dn=None, kind=None):
        return ota_reports(self.info["db"], pk, dn, kind)

    def ota_requests(self, name=None):
        return ota_requests(self.info["db"], name)

    def config_set(self, pk, content, **kw):
        """pk's remote configuration from now on (see config_job); returns its fields."""
        return config_job(self.info["db"], pk, content, **kw)

    def config_push(self, pk, dn, fields=None, msg_id=None, ttl=3600):
        """thing/config/push of pk's configuration (or of the fields given, URL "hub:" names
        signed) to one device; returns the message id (its push_reply carries it)."""
        if fields is None:
            db = _db(self.info["db"])
            try:
                row = db.execute("SELECT data FROM configs WHERE pk=?", (pk,)).fetchone()
            finally:
                db.close()
            fields = json.loads(row[0])
        mid = msg_id or self._id()
        params = _sign_urls(self.info["db"], json.loads(json.dumps(fields)), ttl,
                            self.info["https_port"])
        self.publish("/sys/%s/%s/thing/config/push" % (pk, dn),
                     {"id": mid, "version": "1.0", "params": params,
                      "method": "thing.config.push"})
        return mid

    def rrpc(self, pk, dn, payload, timeout=8.0, msg_id=None):
        """Sends an RRPC request and waits for the response; returns its payload bytes or None."""
        mid = msg_id or self._id()
        since = self.mark()
        self.publish("/sys/%s/%s/rrpc/request/%s" % (pk, dn, mid), payload, qos=0)
        m = self.wait_message("/sys/%s/%s/rrpc/response/%s" % (pk, dn, mid), timeout, since)
        return m.payload if m else None

    def rrpc_custom(self, pk, dn, topic_class, payload, timeout=8.0, msg_id=None):
        """The custom RRPC form: the request on /ext/rrpc/<id>//pk/dn/user/<class>, the answer
        on the same topic (the cloud client sees its own request there first). Returns the
        answer's bytes or None after timeout."""
        mid = msg_id or self._id()
        topic = "/ext/rrpc/%s//%s/%s/user/%s" % (mid, pk, dn, topic_class)
        data = payload.encode() if isinstance(payload, str) else payload
        since = self.mark()
        self.publish(topic, data, qos=0)
        seen_own = [False]

        def answer(m):
            if not seen_own[0] and m.payload == data:
                seen_own[0] = True
                return False
            return True
        m = self.wait_message(topic, timeout, since, answer)
        return m.payload if m else None

    def rrpc_service(self, pk, dn, service, params, timeout=8.0, msg_id=None):
        """A synchronous service call as the platform sends it to a device that announced ext=3
        in its client id: /ext/rrpc/<id>/sys/pk/dn/thing/service/<service>, answered on the same
        topic. Raises ValueError for a device that did not announce it (the platform would use
        /sys/pk/dn/rrpc/request/<id> instead). Returns the answer's JSON or None."""
        lc = self.last_connect(pk, dn) or {}
        if "ext=3" not in lc.get("client_id", ""):
            raise ValueError("%s/%s did not announce ext=3 (client id %r)"
                             % (pk, dn, lc.get("client_id")))
        mid = msg_id or self._id()
        topic = "/ext/rrpc/%s/sys/%s/%s/thing/service/%s" % (mid, pk, dn, service)
        since = self.mark()
        self.publish(topic, {"id": mid, "version": "1.0", "params": params,
                             "method": "thing.service.%s" % service}, qos=0)
        m = self.wait_message(topic, timeout, since, lambda m: b'"code"' in m.payload)
        return m.json() if m else None

    def publish_custom(self, pk, dn, topic_class, payload, qos=0):
        self.publish("/%s/%s/user/%s" % (pk, dn, topic_class), payload, qos=qos)

    def counters(self, devices=True, timeout=5.0):
        rid = self._id()
        since = self.mark()
        self.publish("hub/ctl/counters", {"id": rid, "devices": devices}, qos=0)
        m = self.wait_message("hub/counters", timeout, since,
                              lambda m: json.loads(m.payload).get("id") == rid)
        if m is None:
            raise TimeoutError("no counters reply from the hub")
        return m.json()

    def last_connect(self, pk, dn):
        """What the device's last accepted CONNECT carried, as the broker saw it: a dict with
        client_id (the full MQTT client id), keepalive, clean_session, protocol_version and tls;
        None if the device never logged in since the broker started."""
        d = self.counters().get("devices", {}).get("%s/%s" % (pk, dn))
        return d.get("last_connect") if d else None

    def shadow_set_desired(self, pk, dn, desired):
        """The cloud sets desired shadow values: the shadow's version goes up by one and the
        device gets a "control" push on /shadow/get/pk/dn."""
        self.publish("hub/ctl/shadow_desired", {"productKey": pk, "deviceName": dn,
                                                "desired": desired}, qos=0)

    def desired_set(self, pk, dn, properties):
        """Desired property values set in the cloud (each one's version goes up by one)."""
        self.publish("hub/ctl/desired_set", {"productKey": pk, "deviceName": dn,
                                             "properties": properties}, qos=0)

    def services(self, pk, dn, timeout=5.0):
        """The hub's documents for a device: {"shadow": {version, reported, desired},
        "desired_properties": {...}, "tags": {...}}."""
        rid = self._id()
        since = self.mark()
        self.publish("hub/ctl/services", {"id": rid, "productKey": pk, "deviceName": dn}, qos=0)
        m = self.wait_message("hub/services", timeout, since,
                              lambda m: json.loads(m.payload).get("id") == rid)
        if m is None:
            raise TimeoutError("no services reply from the hub")
        return m.json()

    def kick(self, pk, dn):
        """Disconnects a device's session as the platform would (counted as a kick)."""
        self.publish("hub/ctl/kick", {"productKey": pk, "deviceName": dn}, qos=0)

    def reset_counters(self):
        self.publish("hub/ctl/reset", {}, qos=0)


# ---- command line -----------------------------------------------------------------------------

def _add_start_args(p):
    p.add_argument("--devices", required=True, help="device table (CSV, shared with aligwd)")
    p.add_argument("--dir", required=True, help="run directory (certs, hub.db, logs, hub.json)")
    p.add_argument("--rate", type=int, default=30, help="upstream messages/s per device (0: off)")
    p.add_argument("--rate-mode", choices=("reply", "drop"), default="reply")
    p.add_argument("--reply-delivery", choices=("subscribed", "direct"), default="subscribed",
                   help="alink replies/NTP responses to subscribers, or straight to the session")
    p.add_argument("--dynreg-plain", action="store_true",
                   help="allow MQTT dynamic registration on the plain listener too")
    p.add_argument("--min-keepalive", type=int, default=30)
    p.add_argument("--plugin", help="path of aligw_hub.so (default: $ALIGW_HUB_PLUGIN or build*/)")
    p.add_argument("--key-type", choices=sorted(KEY_TYPES), default="rsa",
                   help="TLS keys of the test CA and server certificate (default rsa: RSA-2048)")


def _start_from_args(a):
    return start(a.devices, a.dir, rate=a.rate, rate_mode=a.rate_mode,
                 reply_delivery=a.reply_delivery, dynreg_plain=a.dynreg_plain, plugin=a.plugin,
                 min_keepalive=a.min_keepalive, key_type=a.key_type)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="aligw-hub",
                                 description="Local Aliyun-IoT-compatible hub for aligw tests")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_start_args(sub.add_parser("start", help="start in the background, print hub.json"))
    _add_start_args(sub.add_parser("run", help="run in the foreground until Ctrl-C/SIGTERM"))
    p = sub.add_parser("stop", help="stop a hub started with start")
    p.add_argument("--dir", required=True)
    p = sub.add_parser("gen-devices", help="print a device table with random secrets")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--product", required=True)
    p.add_argument("--prefix", default="dev")
    p.add_argument("--dynreg", choices=("register", "regnwl", "both"), default="",
                   help="rows get a product secret and no device secret")
    p.add_argument("--register", choices=("https", "mqtt", "mqtt-nwl"), default="",
                   help="value of the daemon's register column")
    p.add_argument("--topics", default="", help="hub_topics for every row")
    p = sub.add_parser("ota-push", help="push a firmware upgrade job to a device")
    p.add_argument("--dir", required=True, help="the hub's run directory")
    p.add_argument("--device", required=True, action="append",
                   help="pk/dn (repeat, or 'all' for every device of the table)")
    p.add_argument("--file", required=True, action="append", help="package file (repeat: multi-file)")
    p.add_argument("--version", required=True)
    p.add_argument("--module", default="")
    p.add_argument("--sign-method", default="Md5", help="MD5, Md5, SHA256 or Sha256")
    p.add_argument("--code", default="1000", choices=("1000", "200"))
    p.add_argument("--ttl", type=int, default=3600, help="seconds the download URLs stay valid")
    p.add_argument("--bad-sign", action="store_true", help="announce a wrong digest")
    p.add_argument("--md5-field", action="store_true", help="the digest in \"md5\", not \"sign\"")
    p.add_argument("--cut-at", type=int, help="cut the first download of the file at this byte")
    p.add_argument("--no-send", action="store_true",
                   help="store the job only (devices get it with thing.ota.firmware.get)")
    p = sub.add_parser("ota-expire", help="expire every firmware URL handed out so far")
    p.add_argument("--dir", required=True)
    p = sub.add_parser("ota-status", help="print recorded informs and progress reports")
    p.add_argument("--dir", required=True)
    p.add_argument("--device", help="pk/dn")
    p = sub.add_parser("https", help=argparse.SUPPRESS)
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)

    try:
        if a.cmd == "gen-devices":
            buf = io.StringIO()
            cols = list(KNOWN_COLUMNS + HUB_COLUMNS)
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(cols)
            for r in gen_devices(a.count, a.product, a.dynreg, a.register, a.prefix, a.topics):
                w.writerow([r[c] for c in cols])
            sys.stdout.write(buf.getvalue())
        elif a.cmd == "start":
            info, _ = _start_from_args(a)
            print(json.dumps(info, indent=2))
        elif a.cmd == "stop":
            if not stop_dir(a.dir):
                print("aligw-hub: no hub running in %s" % a.dir, file=sys.stderr)
                return 1
        elif a.cmd == "run":
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *x: stop.set())
            signal.signal(signal.SIGINT, lambda *x: stop.set())
            info, procs = _start_from_args(a)
            print(json.dumps(info, indent=2), flush=True)
            try:
                while not stop.wait(0.5):
                    if any(p.poll() is not None for p in procs):
                        print("aligw-hub: a hub process exited; see %s" % a.dir, file=sys.stderr)
                        break
            finally:
                stop_procs(procs)
                try:
                    os.unlink(os.path.join(a.dir, "hub.json"))
                except OSError:
                    pass
        elif a.cmd == "ota-push":
            info = json.load(open(os.path.join(a.dir, "hub.json")))
            devs = []
            for d in a.device:
                if d == "all":
                    db = _db(info["db"])
                    devs += db.execute("SELECT pk, dn FROM devices ORDER BY rowid").fetchall()
                    db.close()
                elif "/" in d:
                    devs.append(tuple(d.split("/", 1)))
                else:
                    print("aligw-hub: --device: expected pk/dn or all, got %r" % d, file=sys.stderr)
                    return 2
            for pk, dn in devs:
                data, names = ota_job(info["db"], pk, dn, a.file, a.version, module=a.module,
                                      sign_method=a.sign_method, bad_sign=a.bad_sign,
                                      ttl=a.ttl, md5_field=a.md5_field)
                if a.cut_at is not None:
                    ota_fault(info["db"], names[0], a.cut_at, 1)
                if not a.no_send:
                    _cloud_publish(info, "/ota/device/upgrade/%s/%s" % (pk, dn),
                                   ota_notice(info["db"], info["https_port"], data, a.ttl, a.code))
                print("%s/%s: version %s%s %s" % (pk, dn, a.version,
                                                  " (module %s)" % a.module if a.module else "",
                                                  "stored" if a.no_send else "pushed"))
        elif a.cmd == "ota-expire":
            info = json.load(open(os.path.join(a.dir, "hub.json")))
            ota_expire(info["db"])
        elif a.cmd == "ota-status":
            info = json.load(open(os.path.join(a.dir, "hub.json")))
            pk, dn = (a.device.split("/", 1) if a.device else (None, None))
            for ts, p, d, k, params in ota_reports(info["db"], pk, dn):
                print(json.dumps({"time": round(ts, 3), "device": "%s/%s" % (p, d), "kind": k,
                                  "params": params}))
        elif a.cmd == "https":
            serve_https(a.dir, a.port)
    except DeviceTableError as e:
        print("aligw-hub: bad device table:\n%s" % e, file=sys.stderr)
        return 2
    except (RuntimeError, FileNotFoundError, subprocess.CalledProcessError) as e:
        print("aligw-hub: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
