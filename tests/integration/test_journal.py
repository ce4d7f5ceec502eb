"""Structured logging to journald, received where journald would receive it.

sd_journal_send() always sends to /run/systemd/journal/socket (libsystemd takes no other path),
so the test runs aligwd in a private mount namespace (unshare -m, as root): a tmpfs on /run with
the test's own datagram socket bound over /run/systemd/journal. stderr is a file whose
device:inode the test puts in JOURNAL_STREAM, as systemd does for a service whose stderr is the
journal. The datagrams are parsed as journald parses its native protocol (KEY=value lines, or
KEY, a 64-bit little-endian length and the raw value). Checked: DEVICE=/PRODUCT_KEY=/
DEVICE_NAME=/ALIGW_EVENT=/PRIORITY= on the device's life events, nothing on stderr, and the rate
limit: a device failing to connect every ~100 ms logs at most 5 lines of that kind per 10 s, then
"N similar messages suppressed"."""
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time

import aligwtest as T
import hubctl

PK = "a1Journal01"


def parse_entry(data):
    """One native-protocol datagram -> {FIELD: value (str)}."""
    fields = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v.decode(errors="replace")
            i = nl + 1
        else:  # binary-safe form
            n = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            fields[line.decode()] = data[nl + 9:nl + 9 + n].decode(errors="replace")
            i = nl + 9 + n + 1
    return fields


class JournalSocket:
    def __init__(self, dirpath):
        self.path = os.path.join(dirpath, "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.2)
        self.entries = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(1 << 17)
            except socket.timeout:
                continue
            except OSError:
                return
            self.entries.append(parse_entry(data))

    def find(self, **want):
        return [e for e in list(self.entries) if all(e.get(k) == v for k, v in want.items())]

    def close(self):
        self._stop = True
        self._t.join(2)
        self.sock.close()


class Journal(T.TestCase):
    def setUp(self):
        super().setUp()
        if os.geteuid() != 0 or not shutil.which("unshare"):
            self.skipTest("needs root and unshare(1) for a private mount namespace")
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                               capture_output=True)
        if probe.returncode != 0:
            self.skipTest("cannot make a mount namespace here: %s" % probe.stderr.decode())

    def test_structured_fields_and_rate_limit(self):
        rows = hubctl.gen_devices(2, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp)
        good = T.hub_device_config(hub, rows[0], rate=0)
        bad = T.hub_device_config(hub, rows[1], rate=0)
        bad["device_secret"] = "0" * 32
        dead = {"product_key": PK, "device_name": "nowhere", "device_secret": "1" * 32,
                "host": "127.0.0.1", "port": hubctl.free_port(), "tls": False}
        cfg["devices"] = [good, bad, dead]
        cfg["cloud"].update({"backoff_min_ms": 100, "backoff_max_ms": 100})
        dm = T.Daemon(self.tmp, cfg)
        self.later(dm.stop)

        jdir = os.path.join(self.tmp, "journal")
        os.mkdir(jdir)
        js = JournalSocket(jdir)
        self.later(js.close)
        npath = os.path.join(self.tmp, "notify.sock")
        dm.notify = T.Notify(npath)
        dm.logf = open(dm.log_path, "ab")
        st = os.fstat(dm.logf.fileno())
        env = dict(os.environ, NOTIFY_SOCKET=npath,
                   JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        script = ('mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && '
                  'mount --bind "$1" /run/systemd/journal && shift && exec "$@"')
        dm.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", jdir,
             T.ALIGWD, "-c", dm.config_path],
            stdout=dm.logf, stderr=dm.logf, env=env)
        T.wait_for(lambda: dm.notify.has("READY=1") or dm.proc.poll() is not None, 15,
                   what="READY=1")
        self.assertIsNone(dm.proc.poll(), dm.log())

        k_good = "%s/%s" % (PK, rows[0]["device_name"])
        k_bad = "%s/%s" % (PK, rows[1]["device_name"])
        online = T.wait_for(lambda: js.find(DEVICE=k_good, ALIGW_EVENT="online"), 10,
                            what="the online entry")[0]
        self.assertEqual(online["PRODUCT_KEY"], PK)
        self.assertEqual(online["DEVICE_NAME"], rows[0]["device_name"])
        self.assertEqual(online["PRIORITY"], "6")
        self.assertEqual(online["SYSLOG_IDENTIFIER"], "aligwd")
        self.assertEqual(online["MESSAGE"], "%s: online" % k_good)
        refused = T.wait_for(lambda: js.find(DEVICE=k_bad, ALIGW_EVENT="auth_refused"), 10,
                             what="the auth_refused entry")[0]
        self.assertEqual(refused["PRIORITY"], "4")
        self.assertIn("check the device secret", refused["MESSAGE"])
        self.assertNotIn("1" * 32, "".join(str(e) for e in js.entries))  # no secret
        # gateway-wide lines are entries too, without device fields
        started = js.find(PRIORITY="5")
        self.assertTrue([e for e in started if "started" in e["MESSAGE"] and "DEVICE" not in e])

        # the dead endpoint: a connect failure about every second (back-off 100 ms + the connect), at most 5 lines per 10 s window
        k_dead = PK + "/nowhere"
        time.sleep(3)
        fails = js.find(DEVICE=k_dead, ALIGW_EVENT="connect_failed")
        self.assertGreaterEqual(len(fails), 1)
        self.assertLessEqual(len(fails), 5, [e["MESSAGE"] for e in fails])
        summary = T.wait_for(
            lambda: [e for e in js.find(DEVICE=k_dead, ALIGW_EVENT="connect_failed")
                     if "similar messages suppressed" in e["MESSAGE"]], 15,
            what="the suppressed summary")[0]
        n = int(re.search(r": (\d+) similar messages suppressed", summary["MESSAGE"]).group(1))
        self.assertGreaterEqual(n, 2, summary)
        self.assertNotIn("CODE_FILE", summary)
        self.assertTrue(summary["MESSAGE"].startswith(k_dead + ": "))

        dm.stop()
        with open(dm.log_path, errors="replace") as f:
            stderr = f.read()
        self.assertNotIn("<6>", stderr, "in journal mode nothing goes to stderr")


if __name__ == "__main__":
    T.main()
