"""Helpers for aligw's integration tests: run the real aligwd binary with a generated config,
listen on a NOTIFY_SOCKET the way systemd does, and speak the real Unix-socket API.

The binaries come from the environment CTest sets: ALIGWD, ALIGWCTL (paths) and, through
tests/hub/hubctl.py, ALIGW_HUB_PLUGIN.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "hub"))

ALIGWD = os.environ.get("ALIGWD", os.path.join(HERE, "..", "..", "build", "daemon", "aligwd"))
ALIGWCTL = os.environ.get("ALIGWCTL", os.path.join(os.path.dirname(ALIGWD), "aligwctl"))


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    """Polls pred() until it returns something true; returns it or raises AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


class Notify:
    """A NOTIFY_SOCKET: collects every sd_notify datagram the daemon sends."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            for line in data.decode(errors="replace").split("\n"):
                if line:
                    self.messages.append(line)

    def has(self, prefix):
        return [m for m in self.messages if m.startswith(prefix)]

    def close(self):
        self._stop = True
        self._t.join(2)
        self.sock.setblocking(False)
        while True:  # what the daemon sent just before it exited is still in the buffer
            try:
                data = self.sock.recv(4096)
            except OSError:
                break
            self.messages += [l for l in data.decode(errors="replace").split("\n") if l]
        self.sock.close()


class Api:
    """One connection to the daemon's API socket (newline-delimited JSON)."""

    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 1
        self.pending = {}  # responses that arrived for another id
        self.events = []

    def send(self, obj):
        if "id" not in obj:
            obj = dict(obj, id=self.next_id)
            self.next_id += 1
        self.sock.sendall(json.dumps(obj).encode() + b"\n")
        return obj["id"]

    def send_raw(self, data):
        self.sock.sendall(data)

    def read_line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("daemon closed the API connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def response(self, rid):
        if rid in self.pending:
            return self.pending.pop(rid)
        while True:
            msg = self.read_line()
            if "event" in msg:
                self.events.append(msg)
                continue
            if msg.get("id") == rid:
                return msg
            self.pending[msg.get("id")] = msg

    def call(self, op, **fields):
        rid = self.send(dict(fields, op=op))
        return self.response(rid)

    def next_event(self, timeout=10.0):
        if self.events:
            return self.events.pop(0)
        self.sock.settimeout(timeout)
        while True:
            msg = self.read_line()
            if "event" in msg:
                return msg
            self.pending[msg.get("id")] = msg

    def close(self):
        self.sock.close()


class Daemon:
    """aligwd with a generated config in a temp dir."""

    def __init__(self, workdir, config, name="aligw.json"):
        self.dir = workdir
        self.config = config
        self.config_path = os.path.join(workdir, name)
        self.socket_path = os.path.join(workdir, "run", "aligw.sock")
        config.setdefault("state_dir", os.path.join(workdir, "state"))
        config.setdefault("runtime_dir", os.path.join(workdir, "run"))
        config.setdefault("api", {}).setdefault("socket", self.socket_path)
        self.socket_path = config["api"]["socket"]
        self.proc = None
        self.notify = None
        self.log_path = os.path.join(workdir, "aligwd.log")
        self.write_config()

    def write_config(self, config=None):
        if config is not None:
            self.config = config
        with open(self.config_path, "w") as f:
            json.dump(self.config, f, indent=2)
        os.chmod(self.config_path, 0o600)

    def start(self, wait_ready=True, watchdog_usec=None, extra_args=(), env=None):
        npath = os.path.join(self.dir, "notify-%d.sock" % time.monotonic_ns())
        self.notify = Notify(npath)
        e = dict(os.environ)
        e["NOTIFY_SOCKET"] = npath
        if watchdog_usec:
            e["WATCHDOG_USEC"] = str(watchdog_usec)
        e.update(env or {})
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([ALIGWD, "-c", self.config_path, "-v", *extra_args],
                                     stdout=self.logf, stderr=self.logf, env=e)
        if wait_ready:
            wait_for(lambda: self.notify.has("READY=1") or self.proc.poll() is not None,
                     15, what="READY=1")
            if self.proc.poll() is not None:
                raise AssertionError("aligwd exited with %s:\n%s" % (self.proc.returncode,
                                                                     self.log()))
        return self

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def api(self):
        return Api(self.socket_path)

    def call(self, op, **fields):
        a = self.api()
        try:
            return a.call(op, **fields)
        finally:
            a.close()

    def device(self, key):
        r = self.call("device", device=key)
        assert r.get("ok"), r
        return r["result"]

    def wait_state(self, key, state, timeout=20):
        """Waits until device key is in state (it may not exist yet, e.g. before a reload)."""
        def check():
            r = self.call("device", device=key)
            return r.get("ok") and r["result"]["state"] == state and r["result"]
        try:
            return wait_for(check, timeout, what="%s to be %s" % (key, state))
        except AssertionError as e:
            raise AssertionError("%s (log:\n%s)" % (e, self.log()[-3000:]))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("aligwd did not stop on SIGTERM within %ss" % timeout)
        rc = self.proc.returncode if self.proc else None
        if self.notify:
            self.notify.close()
            self.notify = None
        if getattr(self, "logf", None):
            self.logf.close()
        return rc

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None
        if self.notify:
            self.notify.close()
            self.notify = None


def stop_broker(hub):
    """Stops the hub's mosquitto (the cloud goes away); the hub's counters go with it."""
    p = hub._procs[0]
    p.terminate()
    p.wait(10)


def start_broker(hub, freeze=None, timeout=30):
    """Starts the hub's mosquitto again on the same ports and waits until the hub's cloud-side
    recorder is subscribed again (a probe of its own comes back), so nothing a device publishes
    from then on is missed. freeze: a Daemon kept stopped (SIGSTOP) until then, so that it
    cannot deliver before the recorder is back."""
    if freeze is not None:
        os.kill(freeze.proc.pid, signal.SIGSTOP)
    try:
        log = os.path.join(hub.dir, "mosquitto.log")
        with open(log, "ab") as lf:
            hub._procs[0] = subprocess.Popen(
                ["mosquitto", "-c", os.path.join(hub.dir, "mosquitto.conf")], stdout=lf,
                stderr=lf, stdin=subprocess.DEVNULL, start_new_session=True)
        import hubctl
        hubctl.wait_port(hub.info["mqtt_port"], hub._procs[0], log)
        deadline = time.monotonic() + timeout
        while True:
            mark = hub.mark()
            hub.cloud.publish("aligw-test/probe", "x", qos=0)
            if hub.wait_message("aligw-test/probe", 0.3, since=mark):
                return
            if time.monotonic() > deadline:
                raise AssertionError("the hub's recorder did not come back")
    finally:
        if freeze is not None:
            os.kill(freeze.proc.pid, signal.SIGCONT)


def hub_device_config(hub, dev, tls=False, **extra):
    """A device entry pointing at the hub (plain TCP by default, or its TLS listener)."""
    d = {
        "product_key": dev["product_key"],
        "device_name": dev["device_name"],
        "host": "127.0.0.1" if not tls else "localhost",
        "port": hub.info["mqtts_port"] if tls else hub.info["mqtt_port"],
        "tls": tls,
    }
    if tls:
        d["ca_file"] = hub.info["ca_file"]
    if dev.get("device_secret"):
        d["device_secret"] = dev["device_secret"]
    d.update(extra)
    return d


def base_config(workdir, **over):
    cfg = {
        "log_level": "info",
        "cloud": {"connect_rate": 1000, "connect_burst": 100, "backoff_min_ms": 200,
                  "backoff_max_ms": 2000, "auth_backoff_ms": 30000, "kick_backoff_ms": 30000},
        "store": {"path": os.path.join(workdir, "state", "outbox.db")},
        "devices": [],
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


class TestCase(unittest.TestCase):
    """Gives each test a temp dir and stops whatever it started."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="aligw-it-")
        self.tmp = self._tmp.name
        self._later_fns = []

    def _failed(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return False
        return any(t is self for t, _ in list(result.failures) + list(result.errors))

    def tearDown(self):
        if self._failed():  # leave the daemon's own account of what happened in the CI log
            for name in sorted(os.listdir(self.tmp)):
                if name.endswith(".log"):
                    with open(os.path.join(self.tmp, name), errors="replace") as f:
                        tail = f.read()[-4000:]
                    print("---- %s (last 4000 bytes) ----\n%s" % (name, tail), file=sys.stderr)
        for fn in reversed(self._later_fns):
            try:
                fn()
            except Exception as e:  # keep cleaning up
                print("cleanup:", e, file=sys.stderr)
        self._tmp.cleanup()

    def later(self, fn):
        self._later_fns.append(fn)

    def daemon(self, config, **start):
        d = Daemon(self.tmp, config)
        self.later(d.stop)
        if start.pop("start", True):
            d.start(**start)
        return d


def main():
    """unittest.main with the closing line CI reads: 'N passed, N failed'."""
    prog = unittest.main(exit=False, verbosity=2)
    r = prog.result
    failed = len(r.failures) + len(r.errors)
    skipped = len(r.skipped)
    passed = r.testsRun - failed - skipped
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    sys.exit(1 if failed else 0)
