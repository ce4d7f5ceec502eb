"""aligwctl, every command, against the real daemon and the hub, with its exit codes: 0 ok, 1 the
request failed, 2 usage, 3 aligwd is not running, 4 access refused (daemon/aligwctl.c)."""
import base64
import concurrent.futures
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess

import aligwtest as T
import hubctl

PK = "a1CtlTest"


class Ctl(T.TestCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(T.ALIGWCTL):
            self.skipTest("aligwctl not built")
        self.sock = os.path.join(self.tmp, "none.sock")

    def ctl(self, *args, code=0, stdin=None, sock=None, env=None):
        """Runs aligwctl; asserts its exit code; returns (stdout, stderr)."""
        e = dict(os.environ, ALIGW_SOCKET=sock or self.sock)
        e.update(env or {})
        r = subprocess.run([T.ALIGWCTL, *args], capture_output=True, env=e, timeout=30,
                           input=stdin if isinstance(stdin, bytes) else
                           (stdin.encode() if stdin else b""))
        out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, code, "aligwctl %s: exit %d, expected %d\nstdout: %s\n"
                         "stderr: %s" % (" ".join(args), r.returncode, code, out, err))
        return out, err

    def watch(self, *args):
        """aligwctl watch ARGS in the background, with pipes; stopped at the end of the test."""
        w = subprocess.Popen([T.ALIGWCTL, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, ALIGW_SOCKET=self.sock))

        def done():
            if w.poll() is None:
                w.kill()
            w.wait()
            w.stdout.close()
            w.stderr.close()
        self.later(done)
        return w

    def start(self, n=3, configured=None):
        """The hub with n devices; the daemon configured with the first `configured` of them
        (default: all but the last)."""
        configured = n - 1 if configured is None else configured
        rows = hubctl.gen_devices(n, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp)
        # what `add --pk --dn` leaves out comes from here
        cfg["cloud"].update(host="127.0.0.1", port=hub.info["mqtt_port"], tls=False)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0,
                                              topics=["/${productKey}/${deviceName}/user/get"])
                          for r in rows[:configured]]
        dm = self.daemon(cfg)
        self.sock = dm.socket_path
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        for k in keys[:configured]:
            dm.wait_state(k, "online")
        return hub, rows, keys, dm

    def test_usage_errors_exit_2_and_no_daemon_exits_3(self):
        out, _ = self.ctl("--help")
        for cmd in ("status", "devices", "device", "post", "event", "publish", "reply", "watch",
                    "add", "remove", "reload", "stats", "hello", "ota", "ota-version",
                    "ota-check", "ota-result"):
            self.assertIn("  %s" % cmd, out)
        bad = [(), ("frobnicate",), ("--bogus", "status"), ("-s",), ("status", "--bogus"),
               ("device",), ("remove",), ("post", "pk/dn"), ("post", "pk/dn", "novalue"),
               ("post", "pk/dn", "=1"), ("event", "pk/dn"), ("publish", "pk/dn", "/t"),
               ("publish", "pk/dn", "/t", "x", "--qos", "2"),
               ("publish", "pk/dn", "/t", "x", "--qos", "one"),
               ("publish", "pk/dn", "/t", "x", "--qos"),
               ("post", "pk/dn", "a=1", "--time", "soon"),
               ("post", "pk/dn", "--params", "[1]"), ("post", "pk/dn", "--params", "{"),
               ("reply", "pk/dn", "7"), ("reply", "pk/dn", "7", "ok"),
               ("watch", "--kind"), ("add",), ("add", "--pk", "p"),
               ("add", "--json", "not json"), ("add", "--json", "@/nonexistent.json"),
               ("add", "--pk", "p", "--dn", "d", "--secret-file", "/nonexistent"),
               ("ota-version", "pk/dn"), ("ota-check",), ("ota-result", "pk/dn", "1"),
               ("ota-result", "pk/dn", "x", "ok"), ("ota-result", "pk/dn", "1", "-9"),
               ("ota-result", "pk/dn", "1", "0")]
        # a few at a time: each run is short, but slow to start and end under ASan
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for _, err in pool.map(lambda a: self.ctl(*a, code=2), bad):
                self.assertIn("aligwctl: ", err)
        # the hint to --help comes with the plain usage mistakes
        _, err = self.ctl("frobnicate", code=2)
        self.assertIn("unknown command 'frobnicate'", err)
        self.assertIn("Try 'aligwctl --help'", err)
        # a socket path longer than sun_path is a usage error, not "not running"
        self.ctl("-s", "/tmp/" + "x" * 120, "status", code=2)
        # nothing at the path, and a socket nobody listens on
        _, err = self.ctl("status", code=3)
        self.assertIn("not running (no socket at %s)" % self.sock, err)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.sock)  # bound, never listening: connect() is refused
        self.later(s.close)
        _, err = self.ctl("hello", code=3)
        self.assertIn("nothing listens on", err)
        # -s wins over $ALIGW_SOCKET
        self.ctl("-s", os.path.join(self.tmp, "other.sock"), "status", code=3)

    def test_hello_status_stats_device_devices(self):
        hub, rows, keys, dm = self.start()
        out, _ = self.ctl("hello")
        self.assertIn("protocol: 1", out)
        self.assertIn("server: aligwd", out)
        doc = json.loads(self.ctl("--json", "hello")[0])
        self.assertEqual(doc["result"]["protocol"], 1)
        out, _ = self.ctl("stats")
        self.assertIn("api:", out)
        self.assertIn("requests:", out)
        doc = json.loads(self.ctl("stats", "--json")[0])  # --json after the command too
        self.assertIn("events_sent", doc["result"]["api"])
        out, _ = self.ctl("status")
        self.assertIn("2 devices: 2 online", out)

        out, _ = self.ctl("device", keys[0])
        self.assertIn("device: %s" % keys[0], out)
        self.assertIn("state: online", out)
        self.assertIn("counters:", out)
        _, err = self.ctl("device", "%s/nodev1" % PK, code=1)
        self.assertIn("no_device", err)
        _, err = self.ctl("device", "not-a-key", code=1)
        self.assertIn("bad_request", err)

        # add a device that stays offline, so the table has two states
        cfg = dm.config
        cfg["devices"].append(T.hub_device_config(hub, rows[2], port=1))
        dm.write_config(cfg)
        self.ctl("reload")
        T.wait_for(lambda: dm.call("devices")["result"]["total"] == 3, 5, what="3 devices")
        out, _ = self.ctl("devices", "--all")
        lines = out.splitlines()
        self.assertIn("3 devices: 2 online", lines[0])
        self.assertTrue(lines[1].startswith("DEVICE"), lines)
        self.assertEqual(len(lines), 5, out)
        self.assertTrue(lines[2].startswith(keys[2]), "the device not online is listed first")
        out, _ = self.ctl("devices", "--state", "online")
        rows_out = [l.split()[0] for l in out.splitlines()[2:]]
        self.assertEqual(sorted(rows_out), sorted(keys[:2]))
        doc = json.loads(self.ctl("--json", "devices", "--state", "online")[0])
        self.assertEqual(sorted(d["device"] for d in doc["result"]["devices"]), sorted(keys[:2]))
        doc = json.loads(self.ctl("--json", "devices")[0])
        self.assertEqual(doc["result"]["total"], 3)
        # a state that does not exist is an error, not an empty table
        _, err = self.ctl("devices", "--state", "onlin", code=1)
        self.assertIn("bad_request: state: 'onlin' is not one of", err)
        for r in rows:
            self.assertNotIn(r["device_secret"], out)

    def test_publish_post_event(self):
        hub, rows, keys, dm = self.start()
        key, dn = keys[0], rows[0]["device_name"]
        topic = "/%s/user/update" % key
        out, _ = self.ctl("publish", key, topic, "hello text")
        self.assertRegex(out, r"^seq: \d+")
        m = hub.wait_message(topic, 5)
        self.assertEqual((m.payload, m.qos), (b"hello text", 1))
        since = hub.mark()
        self.ctl("publish", key, topic, "q0", "--qos", "0")
        m = hub.wait_message(topic, 5, since)
        self.assertEqual((m.payload, m.qos), (b"q0", 0))
        since = hub.mark()
        raw = bytes(range(256))
        self.ctl("publish", key, topic, base64.b64encode(raw).decode(), "--b64")
        self.assertEqual(hub.wait_message(topic, 5, since).payload, raw)
        since = hub.mark()
        raw = b"\x00stdin\xff\n" * 100
        self.ctl("publish", key, topic, "-", stdin=raw)
        self.assertEqual(hub.wait_message(topic, 5, since).payload, raw)
        # requests the daemon refuses exit 1 with its error
        _, err = self.ctl("publish", key, topic, "%%%not base64", "--b64", code=1)
        self.assertIn("bad_request", err)
        _, err = self.ctl("publish", key, "/a1Other/dev/user/update", "x", code=1)
        self.assertIn("topic", err)
        _, err = self.ctl("publish", "%s/nodev1" % PK, "/%s/nodev1/user/update" % PK, "x",
                          code=1)
        self.assertIn("no_device", err)

        # event: KEY=VALUE (JSON when it parses), --time, --wait
        since = hub.mark()
        out, _ = self.ctl("event", key, "Overheat", "Level=3", "Where=boiler", "--time",
                          "1700000000000", "--wait")
        self.assertIn("code: 200", out)
        m = hub.wait_message("/sys/%s/thing/event/Overheat/post" % key, 5, since)
        body = m.json()
        self.assertEqual(body["params"]["value"], {"Level": 3, "Where": "boiler"})
        self.assertEqual(body["params"]["time"], 1700000000000)
        out, _ = self.ctl("event", key, "Empty")
        self.assertRegex(out, r"msg_id: \d+")
        # post: --params, --no-ack
        since = hub.mark()
        self.ctl("post", key, "--params", '{"Power":"on"}', "Temp=20.5", "--no-ack")
        m = hub.wait_message("/sys/%s/thing/event/property/post" % key, 5, since)
        self.assertEqual(m.json()["params"], {"Power": "on", "Temp": 20.5})
        self.assertEqual(m.json()["sys"]["ack"], 0)
        _, err = self.ctl("event", key, "bad name!", code=1)
        self.assertIn("event", err)

    def test_watch_and_reply(self):
        hub, rows, keys, dm = self.start()
        key, dn = keys[0], rows[0]["device_name"]
        # --json: the watch response (at once: a script knows the watch is in place), then one
        # event per line
        w = self.watch("--json", "watch", key, "--kind", "property_set")
        first = json.loads(w.stdout.readline())
        self.assertEqual(first["result"]["kinds"], ["property_set"])
        mid = hub.property_set(PK, dn, {"Power": 0})
        ev = json.loads(w.stdout.readline())
        self.assertEqual((ev["event"], ev["device"], ev["id"], ev["params"]),
                         ("property_set", key, mid, {"Power": 0}))
        since = hub.mark()
        out, _ = self.ctl("reply", key, mid, "200", "Power=0", "--message", "done")
        self.assertEqual(out, "ok\n")
        m = hub.wait_message("/sys/%s/thing/service/property/set_reply" % key, 5, since)
        self.assertEqual((m.json()["id"], m.json()["code"], m.json()["data"]),
                         (mid, 200, {"Power": 0}))
        _, err = self.ctl("reply", key, mid, "200", code=1)  # answered already
        self.assertIn(mid, err)
        w.send_signal(signal.SIGINT)  # Ctrl-C stops it, with 0
        self.assertEqual(w.wait(10), 0)

        # for people: one line per event; --topic filters; the daemon going away exits 1
        w = self.watch("watch", "--kind", "message", "--topic", "/+/+/user/#")
        self.assertIn("watching; Ctrl-C to stop", w.stderr.readline())
        hub.service_call(PK, dn, "Ping", {})  # a /sys/ topic: filtered out
        hub.publish_custom(PK, dn, "get", b'{"door":"open"}', qos=1)
        line = w.stdout.readline()
        self.assertRegex(line, r"^\d\d:\d\d:\d\d message +%s " % key)
        self.assertIn("topic=/%s/user/get" % key, line)
        self.assertIn('payload_json={"door":"open"}', line)
        dm.stop()
        self.assertEqual(w.wait(10), 1)
        self.assertIn("aligwd closed the connection", w.stderr.read())

    def test_add_remove_reload(self):
        hub, rows, keys, dm = self.start(4, configured=2)
        secret_file = os.path.join(self.tmp, "secret")
        with open(secret_file, "w") as f:
            f.write(rows[2]["device_secret"] + "\n")
        # add --pk --dn with --secret-file; the JSON form from a file and inline
        out, _ = self.ctl("add", "--pk", PK, "--dn", rows[2]["device_name"], "--secret-file",
                          secret_file)
        self.assertIn("device: %s" % keys[2], out)
        dm.wait_state(keys[2], "online")
        _, err = self.ctl("add", "--pk", PK, "--dn", rows[2]["device_name"], "--secret-stdin",
                          stdin=rows[2]["device_secret"], code=1)
        self.assertIn("exists", err)
        self.ctl("remove", keys[2])
        self.assertEqual(dm.call("device", device=keys[2])["error"]["code"], "no_device")
        self.ctl("add", "--pk", PK, "--dn", rows[2]["device_name"], "--secret-stdin",
                 stdin=rows[2]["device_secret"] + "\n")
        dm.wait_state(keys[2], "online")
        dev = T.hub_device_config(hub, rows[3])
        path = os.path.join(self.tmp, "dev.json")
        with open(path, "w") as f:
            json.dump(dev, f)
        out, err = self.ctl("add", "--json", "@" + path)
        dm.wait_state(keys[3], "online")
        self.ctl("remove", keys[3])
        out, err = self.ctl("--json", "add", "--json", json.dumps(dev))
        self.assertEqual(json.loads(out)["result"], {"device": keys[3]})
        dm.wait_state(keys[3], "online")
        _, err = self.ctl("add", "--json", json.dumps(dict(dev, keepalive=5)), code=1)
        self.assertIn("keepalive", err)
        for r in rows:
            self.assertNotIn(r["device_secret"], out + err)
        # remove: a runtime device once, not twice, never a configured one
        self.ctl("remove", keys[3])
        _, err = self.ctl("remove", keys[3], code=1)
        self.assertIn("no_device", err)
        _, err = self.ctl("remove", keys[0], code=1)
        self.assertIn("configuration file", err)

        # reload: a changed file is applied; a broken one is refused with exit 1
        cfg = dm.config
        cfg["devices"] = cfg["devices"][:1]
        dm.write_config(cfg)
        out, _ = self.ctl("reload")
        self.assertEqual(out, "restart_needed: []\n")
        T.wait_for(lambda: dm.call("device", device=keys[1])["error"]["code"] == "no_device", 5,
                   what="the device taken out of the file to go")
        with open(dm.config_path, "w") as f:
            f.write('{"devices": [}')
        _, err = self.ctl("reload", code=1)
        self.assertIn("the configuration has errors", err)
        self.assertIn(keys[0], self.ctl("devices")[0])

    def test_access_refused_exits_4(self):
        setpriv = shutil.which("setpriv")
        if os.getuid() != 0 or not setpriv:
            self.skipTest("needs root and setpriv to run aligwctl as another user")
        nobody = pwd.getpwnam("nobody")
        cfg = T.base_config(self.tmp, api={"allow_users": ["root", "nobody"],
                                           "admin_users": ["root"]})
        dm = self.daemon(cfg)
        os.chmod(self.tmp, 0o755)
        os.chmod(os.path.dirname(dm.socket_path), 0o755)
        ctl = os.path.join(self.tmp, "aligwctl")  # where nobody may run it from
        shutil.copy(T.ALIGWCTL, ctl)
        os.chmod(ctl, 0o755)

        def as_nobody(*args):
            return subprocess.run([setpriv, "--reuid=%d" % nobody.pw_uid,
                                   "--regid=%d" % nobody.pw_gid, "--clear-groups", ctl,
                                   "-s", dm.socket_path, *args],
                                  capture_output=True, text=True, timeout=20)

        # the socket's mode keeps nobody out: connect() fails with EACCES
        os.chmod(dm.socket_path, 0o660)
        r = as_nobody("status")
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("permission denied on %s" % dm.socket_path, r.stderr)
        # let it in: an allowed user may read, but an admin operation is forbidden
        os.chmod(dm.socket_path, 0o666)
        r = as_nobody("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        for args in (("reload",), ("remove", "%s/dev1" % PK),
                     ("add", "--pk", PK, "--dn", "dev1")):
            r = as_nobody(*args)
            self.assertEqual(r.returncode, 4, "%s: %s" % (args, r.stderr))
            self.assertIn("forbidden", r.stderr)
        r = as_nobody("--json", "reload")
        self.assertEqual(r.returncode, 4)
        self.assertEqual(json.loads(r.stdout)["error"]["code"], "forbidden")
        # a peer not allowed at all is turned away on connect
        cfg["api"]["allow_users"] = ["root"]
        dm.write_config(cfg)
        self.ctl("reload", sock=dm.socket_path)
        r = as_nobody("hello")
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        self.assertIn("forbidden", r.stderr)


if __name__ == "__main__":
    T.main()
