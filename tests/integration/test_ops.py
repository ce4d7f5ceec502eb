"""Operating aligw: the Prometheus endpoint scraped and parsed by Debian's prometheus_client text
parser (values checked against what the test did), on TCP and on a Unix socket; aligwctl health
(exit codes) and aligwctl top (--once, and live in a real terminal: tmux send-keys and
capture-pane). The real aligwd against the local hub."""
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
import unittest
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import aligwtest as T
import hubctl

PK = "a1OpsMetric"


def parse(text):
    """{sample name: {frozenset(labels): value}} from the text format, through the real parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def value(m, name, **labels):
    return m.get(name, {}).get(frozenset(labels.items()))


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


class Ops(T.TestCase):
    def start(self, n=3, bad=1, metrics=None, **cfg_over):
        """n devices at the hub, the last `bad` of them configured with a wrong secret."""
        rows = hubctl.gen_devices(n, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp, **cfg_over)
        devs = []
        for i, r in enumerate(rows):
            d = T.hub_device_config(hub, r, rate=0)
            if i >= n - bad:
                d["device_secret"] = "0" * 32  # refused by the hub
            devs.append(d)
        cfg["devices"] = devs
        if metrics is not None:
            cfg["metrics"] = metrics
        dm = self.daemon(cfg)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        for k in keys[: n - bad]:
            dm.wait_state(k, "online")
        for k in keys[n - bad:]:
            dm.wait_state(k, "auth-refused")
        return hub, rows, keys, dm

    def scrape_tcp(self, port):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            self.assertEqual(r.status, 200)
            self.assertIn("text/plain", r.headers["Content-Type"])
            return r.read().decode()

    def test_metrics_values_per_device_and_reload(self):
        port = hubctl.free_port()
        hub, rows, keys, dm = self.start(metrics={"listen": "127.0.0.1:%d" % port})
        api = dm.api()
        for i in range(5):
            r = api.call("publish", device=keys[0], topic="/%s/user/update" % keys[0],
                         payload=json.dumps({"i": i}))
            self.assertTrue(r["ok"], r)
        r = api.call("publish", device=PK + "/nobody", topic="/%s/nobody/user/update" % PK,
                     payload="x")
        self.assertEqual(r["error"]["code"], "no_device", r)
        r = api.call("publish", device=keys[0])  # no topic: not a valid request
        self.assertEqual(r["error"]["code"], "bad_request", r)
        api.close()
        self.assertTrue(hub.wait_message("/%s/user/update" % keys[0], 10,
                                         predicate=lambda m: b'"i": 4' in m.payload))

        def acked():
            m = parse(self.scrape_tcp(port))
            return value(m, "aligw_messages_acked_total") == 5 and m
        m = T.wait_for(acked, 10, what="aligw_messages_acked_total == 5")
        self.assertEqual(value(m, "aligw_messages_accepted_total"), 5)
        self.assertGreaterEqual(value(m, "aligw_messages_forwarded_total"), 5)
        self.assertEqual(value(m, "aligw_devices", state="online"), 2)
        self.assertEqual(value(m, "aligw_devices", state="auth-refused"), 1)
        self.assertEqual(value(m, "aligw_devices", state="kicked"), 0)
        self.assertGreaterEqual(value(m, "aligw_connects_total"), 2)
        self.assertGreaterEqual(value(m, "aligw_auth_refusals_total"), 1)
        # A delivered message's delete rides along with the next commit (at most 50 ms later).
        T.wait_for(lambda: value(parse(self.scrape_tcp(port)), "aligw_outbox_messages") == 0, 5,
                   what="aligw_outbox_messages == 0 once the deletes commit")
        self.assertEqual(value(m, "aligw_outbox_full"), 0)
        self.assertEqual(value(m, "aligw_api_requests_total", op="publish", result="ok"), 5)
        self.assertEqual(value(m, "aligw_api_requests_total", op="publish", result="error"), 1)
        self.assertEqual(value(m, "aligw_api_requests_total", op="invalid", result="error"), 1)
        self.assertEqual(list(m["aligw_build_info"].values()), [1])
        self.assertEqual(value(m, "aligw_plugin_restarts_total"), 0)
        for st in ("offered", "downloading", "verifying", "ready", "applying", "done", "failed"):
            self.assertEqual(value(m, "aligw_ota_jobs", state=st), 0)
        # the standard process series describe this very process
        self.assertGreater(value(m, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(value(m, "process_open_fds"), 3)
        self.assertLess(abs(value(m, "process_start_time_seconds") - time.time()), 120)
        self.assertGreater(value(m, "process_cpu_seconds_total"), 0)
        # per-device series are off by default ...
        self.assertFalse([n for n in m if n.startswith("aligw_device_")])
        # ... and a reload turns them on (metrics.per_device applies without a restart)
        dm.config["metrics"]["per_device"] = True
        dm.write_config()
        r = dm.call("reload")
        self.assertTrue(r["ok"], r)
        m = parse(self.scrape_tcp(port))
        pk, dn0 = keys[0].split("/")
        self.assertEqual(value(m, "aligw_device_messages_accepted_total", product_key=pk,
                               device_name=dn0), 5)
        self.assertEqual(value(m, "aligw_device_messages_acked_total", product_key=pk,
                               device_name=dn0), 5)
        self.assertEqual(value(m, "aligw_device_online", product_key=pk, device_name=dn0), 1)
        dn2 = keys[2].split("/")[1]
        self.assertEqual(value(m, "aligw_device_online", product_key=pk, device_name=dn2), 0)
        self.assertGreaterEqual(value(m, "aligw_device_auth_refusals_total", product_key=pk,
                                      device_name=dn2), 1)
        self.assertEqual(len(m["aligw_device_online"]), 3)
        # other paths and methods
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        self.assertEqual(c.getresponse().status, 404)
        c.close()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/metrics", body="x")
        self.assertEqual(c.getresponse().status, 405)
        c.close()

    def test_metrics_on_unix_socket_and_promtool_format(self):
        path = os.path.join(self.tmp, "metrics.sock")
        hub, rows, keys, dm = self.start(n=2, bad=0, metrics={"listen": path, "per_device": True})
        c = UnixHTTPConnection(path)
        c.request("GET", "/metrics")
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        text = r.read().decode()
        c.close()
        m = parse(text)
        self.assertEqual(value(m, "aligw_devices", state="online"), 2)
        self.assertEqual(len(m["aligw_device_online"]), 2)
        # every family has HELP and TYPE lines once, before its samples
        fams = [l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")]
        self.assertEqual(len(fams), len(set(fams)))
        self.assertEqual(oct(os.stat(path).st_mode & 0o777), oct(0o660))
        dm.stop()
        self.assertFalse(os.path.exists(path), "the metrics socket is removed at exit")

    def test_bad_listen_is_a_config_error(self):
        cfg = T.base_config(self.tmp, metrics={"listen": "127.0.0.1:99999"})
        path = os.path.join(self.tmp, "bad.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        p = subprocess.run([T.ALIGWD, "--check-config", "-c", path], capture_output=True,
                           text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("metrics.listen", p.stdout)

    def test_health_exit_codes(self):
        hub, rows, keys, dm = self.start(n=3, bad=1, health={"min_online": 0.5})
        ctl = [T.ALIGWCTL, "-s", dm.socket_path]
        p = subprocess.run(ctl + ["health"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("healthy: 2/3 devices online", p.stdout)
        p = subprocess.run(ctl + ["health", "--min-online", "0.9"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("unhealthy", p.stdout)
        p = subprocess.run(ctl + ["--json", "health", "--min-online", "1"], capture_output=True,
                           text=True)
        self.assertEqual(p.returncode, 1)
        j = json.loads(p.stdout)
        self.assertEqual((j["healthy"], j["online"], j["devices"], j["store_writable"]),
                         (False, 2, 3, True))
        p = subprocess.run(ctl + ["health", "--min-online", "2"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        dm.stop()
        p = subprocess.run(ctl + ["health"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)

    def test_top_once_and_in_a_terminal(self):
        hub, rows, keys, dm = self.start(n=3, bad=1)
        api = dm.api()
        for i in range(20):
            api.call("publish", device=keys[1], topic="/%s/user/update" % keys[1], payload="x%d" % i)
        api.close()
        ctl = [T.ALIGWCTL, "-s", dm.socket_path]
        p = subprocess.run(ctl + ["top", "--once", "--interval", "0.3"], capture_output=True,
                           text=True, timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout
        self.assertNotIn("\033[", out, "--once prints no escape codes")
        self.assertIn("devices 2/3 online", out)
        self.assertIn("TROUBLED (1)", out)
        self.assertIn(keys[2], out.split("TROUBLED")[1])
        self.assertIn("auth-refused", out)
        self.assertRegex(out, r"msg/s: in [0-9.]+  accepted [0-9.]+  out \(acked\) [0-9.]+")

        if not shutil.which("tmux"):
            self.skipTest("tmux not installed")
        sock = "aligw-top-%d" % os.getpid()
        tmux = ["tmux", "-L", sock]
        done = os.path.join(self.tmp, "top.exit")
        cmd = "%s -s %s top --interval 0.3; echo $? > %s; sleep 60" % (
            T.ALIGWCTL, dm.socket_path, done)
        subprocess.run(tmux + ["new-session", "-d", "-s", "top", "-x", "132", "-y", "40", cmd],
                       check=True, env=dict(os.environ, TERM="xterm"))
        self.later(lambda: subprocess.run(tmux + ["kill-server"], capture_output=True))

        def screen():
            return subprocess.run(tmux + ["capture-pane", "-p", "-t", "top"], capture_output=True,
                                  text=True).stdout
        s = T.wait_for(lambda: "TROUBLED" in screen() and "msg/s: in" in screen() and screen(),
                       10, what="top's screen")
        self.assertIn("devices 2/3 online", s)
        self.assertIn("(q quits)", s)
        self.assertIn(keys[2], s)
        self.assertIn("BUSIEST", s)
        # it refreshes by itself: a message published now shows in the queue line or rates
        before = s
        T.wait_for(lambda: screen() != before, 5, what="top to redraw")
        subprocess.run(tmux + ["send-keys", "-t", "top", "q"], check=True)
        T.wait_for(lambda: os.path.exists(done) and open(done).read().strip(), 10,
                   what="top to exit on q")
        self.assertEqual(open(done).read().strip(), "0")


if __name__ == "__main__":
    T.main()
