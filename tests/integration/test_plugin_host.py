"""Out-of-process plugins (aligw-plugin-host) through the real daemon and the hub: plugins that
segfault in their thread, crash in start(), hang or exit are restarted or parked while aligwd
and every other device go on; tracked posts whose completion was reported survive kill -9 of
aligwd and a crash of the host; subscribe + on_message end to end; the host cannot open the
outbox."""
import os
import re
import signal
import subprocess
import time
import time

import aligwtest as T
import hubctl

PK = "a1HostTest"
PLUGIN_DIR = os.environ.get("ALIGW_PLUGIN_PATH", "")
TEST_PLUGINS = os.environ.get("ALIGW_TEST_PLUGIN_DIR", "")


def crash_env():
    """Under ASan (abort_on_error), a SIGSEGV would become an abort: let it stay a SIGSEGV."""
    o = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": (o + ":" if o else "") + "handle_segv=0"}


def testplug():
    return os.path.join(TEST_PLUGINS, "testplug_ok.so")


class PluginHost(T.TestCase):
    def setUp(self):
        super().setUp()
        if not TEST_PLUGINS or not os.path.exists(testplug()):
            self.skipTest("test plugins not built")

    def hub(self, n):
        rows = hubctl.gen_devices(n, PK, topics="cmd:sub;echo:pub")
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        return hub, rows, ["%s/%s" % (PK, r["device_name"]) for r in rows]

    def host(self, dm, name):
        for p in dm.call("status")["result"]["plugin_hosts"]:
            if p["name"] == name:
                return p
        return None

    def test_crashing_plugins_are_contained(self):
        hub, rows, keys = self.hub(5)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        sup = {"heartbeat_ms": 2000, "restart_min_ms": 200, "restart_max_ms": 400,
               "max_start_failures": 3}
        cfg["plugins"] = [
            dict(sup, name=testplug(), devices=[keys[0]], config={"crash": "segv"}),
            dict(sup, name=testplug(), devices=[keys[1]], config={"crash": "exit"}),
            dict(sup, name=testplug(), devices=[keys[2]], config={"crash": "start"}),
            dict(sup, name=testplug(), devices=[keys[3]], config={"crash": "hang"}),
            dict(name="simulator", devices=[keys[4]], config={"interval_ms": 100}),
        ]
        dm = self.daemon(cfg, env=crash_env())

        # every field-state change is an API "state" event: watch them all (polling the device
        # could miss the moments between a crash and its restart)
        w = dm.api()
        self.later(w.close)
        self.assertTrue(w.call("watch", devices=keys[:4], kinds=["state"])["ok"])
        seen = []

        def event(key, pattern):
            def check():
                for e in seen:
                    if e.get("device") == key and re.search(pattern, e.get("field_error", "")):
                        return e["field_error"]
                try:
                    seen.append(w.next_event(0.5))
                except OSError:
                    pass
                return None
            return T.wait_for(check, 20, 0, "%s showing %s" % (key, pattern))

        def reason(key, pattern):
            def check():
                err = dm.device(key).get("field_error", "")
                return err if re.search(pattern, err) else None
            return T.wait_for(check, 20, 0.05, "%s showing %s" % (key, pattern))

        # segfault in the plugin's thread: down with the signal, then restarted (and posting)
        self.assertIn("plugin-down", event(keys[0], r"signal 11"))
        # exit(7) from the plugin: down with the status
        self.assertIn("plugin-down", event(keys[1], r"exited with status 7"))
        # crash in start(), 3 times in a row: parked, with a log line naming the plugin
        err = reason(keys[2], r"parked after 3 failed start")
        self.assertIn("signal 11", err)
        # hang in start(): no heartbeat, killed, parked too
        err = reason(keys[3], r"parked after 3 failed start")
        self.assertIn("no heartbeat", err)
        log = dm.log()
        self.assertRegex(log, r"plugin .*testplug_ok\.so.*parked after 3 failed start")
        # restarts of the crashing ones keep happening (with back-off) and they deliver again
        st = dm.call("status")["result"]["plugin_hosts"]
        self.assertEqual(len(st), 5)
        self.assertEqual(st[2]["state"], "parked")
        self.assertEqual(st[3]["state"], "parked")
        T.wait_for(lambda: dm.call("status")["result"]["plugin_hosts"][0]["restarts"] >= 2, 10,
                   what="the segfaulting plugin restarted twice")
        since = hub.mark()
        self.assertIsNotNone(hub.wait_message("/sys/%s/thing/event/property/post" % keys[0], 5,
                                              since), "the restarted plugin delivers again")
        # the other plugin's device delivered all along and aligwd is still up
        self.assertIsNotNone(hub.wait_message("/sys/%s/thing/event/property/post" % keys[4], 5,
                                              since))
        self.assertIsNone(dm.proc.poll())
        self.assertEqual(dm.device(keys[4]).get("state"), "online")
        if os.path.exists(T.ALIGWCTL):  # the operator's view: aligwctl status lists the hosts
            r = subprocess.run([T.ALIGWCTL, "status"], capture_output=True, text=True, timeout=20,
                               env=dict(os.environ, ALIGW_SOCKET=dm.socket_path))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, r"testplug_ok\.so\s+parked\s+process.*no heartbeat")
        self.assertEqual(dm.stop(), 0)

    def test_tracked_posts_survive_kill9_and_a_host_crash(self):
        hub, rows, keys = self.hub(1)
        cfg = T.base_config(self.tmp)
        dev = T.hub_device_config(hub, rows[0], rate=0)
        offline = dict(dev, port=hubctl.free_port())  # nothing listens: everything stays queued
        cfg["devices"] = [offline]
        n = 300
        cfg["plugins"] = [{"name": testplug(), "devices": keys, "config": {"track": n}}]
        dm = self.daemon(cfg, env=crash_env())
        stored = {}

        def all_stored():
            for m in re.finditer(r"stored n=(\d+) seq=(\d+) status=(-?\d+)", dm.log()):
                stored[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
            return len(stored) == n

        T.wait_for(all_stored, 20, 0.1, "all %d completions" % n)
        self.assertTrue(all(st == 0 and seq > 0 for seq, st in stored.values()))
        pid = self.host(dm, testplug())["pid"]
        os.kill(pid, signal.SIGSEGV)  # the host crashes after reporting...
        T.wait_for(lambda: "crashed: signal 11" in dm.log(), 5, what="the crash noticed")
        dm.kill9()  # ...and aligwd dies too
        cfg["devices"] = [dev]
        cfg["plugins"] = []
        dm2 = T.Daemon(self.tmp, cfg)
        dm2.start()
        self.later(dm2.stop)
        post = "/sys/%s/thing/event/property/post" % keys[0]

        def got():
            seen = {m.json()["params"]["n"] for m in hub.messages(post)}
            return seen >= set(range(1, n + 1))
        T.wait_for(got, 30, 0.2, "every stored post at the hub after kill -9")

    def test_api_inside_the_plugin(self):
        """ABI 1.3: a plugin gets the API's events for its device and makes the API's requests,
        out of process and in process alike: "state" events, requests answered through
        on_answer (status with the platform's time, its own device; reload refused, another
        device refused at once), and a service call taken as an event and answered with a
        reply request, which reaches the hub."""
        api = os.path.join(TEST_PLUGINS, "testplug_api.so")
        hub, rows, keys = self.hub(2)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        cfg["plugins"] = [{"name": api, "devices": [keys[0]]},
                          {"name": api, "devices": [keys[1]], "isolation": "none"}]
        dm = self.daemon(cfg)
        for k in keys:
            dm.wait_state(k, "online")
        T.wait_for(lambda: len(re.findall(r"answer 3: ", dm.log())) == 2, 10,
                   what="both plugins' device answers")
        log = dm.log()
        self.assertEqual(len(re.findall(r"unknown or malformed event kinds skipped: Not-A-Kind",
                                        log)), 2)
        self.assertEqual(len(re.findall(r'answer 1: \{"id":1,"ok":true,"result":\{.*"time":',
                                        log)), 2, "status answered with the platform's time")
        self.assertEqual(len(re.findall(r'answer 2: .*"ok":false.*"forbidden"', log)), 2)
        for k in keys:
            self.assertRegex(log, r'answer 3: .*"ok":true,"result":\{"device":"%s"' % re.escape(k))
        self.assertEqual(len(re.findall(r"other device: -1\b", log)), 2)  # -EPERM
        for r in rows:
            since = hub.mark()
            mid = hub.service_call(PK, r["device_name"], "Ping", {"n": 1})
            reply = hub.wait_message("/sys/%s/%s/thing/service/Ping_reply" % (PK, r["device_name"]),
                                     5, since)
            self.assertIsNotNone(reply, "no reply from the plugin's event path")
            self.assertEqual(reply.json()["id"], mid)
            self.assertEqual(reply.json()["code"], 200)
            self.assertEqual(reply.json()["data"], {"via": "event", "service": "Ping"})
        T.wait_for(lambda: len(re.findall(r'answer 10: \{"id":1,"ok":true', dm.log())) == 2, 5,
                   what="the reply requests answered ok")
        self.assertEqual(dm.stop(), 0)

    def test_subscribe_and_on_message(self):
        hub, rows, keys = self.hub(1)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, rows[0], rate=0)]
        cfg["plugins"] = [{"name": testplug(), "devices": keys,
                           "config": {"subscribe": "user/cmd"}}]
        dm = self.daemon(cfg)
        dm.wait_state(keys[0], "online")
        T.wait_for(lambda: "subscribe /%s/user/cmd: 0" % keys[0] in dm.log(), 5,
                   what="the plugin subscribed")
        echo = "/%s/user/echo" % keys[0]

        def roundtrip():  # the subscription may reach the broker just after the log line
            since = hub.mark()
            hub.publish_custom(PK, rows[0]["device_name"], "cmd", "hello", qos=1)
            return hub.wait_message(echo, 1, since)
        m = T.wait_for(roundtrip, 10, 0, "an echo of user/cmd from on_message")
        self.assertEqual(m.payload, b"echo:hello")

    def test_a_flood_meets_back_pressure_not_memory(self):
        hub, rows, keys = self.hub(1)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, rows[0], rate=0)]
        n = 30000
        slow = "ASAN_OPTIONS" in os.environ  # a sanitized host floods ~10 times slower
        # a long heartbeat: aligwd is stopped below, and must not take the silence for a hang
        cfg["plugins"] = [{"name": testplug(), "devices": keys, "heartbeat_ms": 60000,
                           "config": {"flood": n}}]
        # under ASan, freed memory is held in a quarantine: keep it small so RSS means growth
        o = os.environ.get("ASAN_OPTIONS", "")
        dm = self.daemon(cfg, env={"ASAN_OPTIONS": (o + ":" if o else "") +
                                   "quarantine_size_mb=1"})
        dm.wait_state(keys[0], "online")
        host = T.wait_for(lambda: (self.host(dm, testplug()) or {}).get("pid"), 5, what="host")
        # aligwd stops reading (here: stopped outright) while the plugin floods 1.5 s after start
        dm.signal(signal.SIGSTOP)
        try:
            time.sleep(15 if slow else 3.5)
            with open("/proc/%d/status" % host) as f:
                rss_kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        finally:
            dm.signal(signal.SIGCONT)
        # the host's queue is bounded (10,000 frames, 16 MiB): the rest was refused with -EAGAIN
        self.assertLess(rss_kb, 64 * 1024, "the plugin host's memory grew with the flood")

        def report():
            since = hub.mark()
            mid = hub.service_call(PK, rows[0]["device_name"], "report", {})
            m = hub.wait_message("/sys/%s/thing/service/report_reply" % keys[0], 2, since,
                                 lambda m: m.json().get("id") == mid)
            d = m and m.json().get("data")
            return d if d and d["accepted"] + d["rejected"] == n else None
        counts = T.wait_for(report, 60, 0.2, "the flood's counts")
        self.assertGreater(counts["rejected"], 0, counts)
        self.assertGreater(counts["accepted"], 0, counts)
        # every accepted post reached aligwd's store path (delivered to the outbox)
        T.wait_for(lambda: dm.call("stats")["result"]["plugins"]["delivered"] >=
                   counts["accepted"], 20, what="every accepted post delivered")
        self.assertEqual(dm.call("stats")["result"]["plugins"]["sink_errors"], 0)
        self.assertEqual(dm.stop(), 0)

    def test_host_cannot_open_the_outbox(self):
        hub, rows, keys = self.hub(1)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, rows[0], rate=0)]
        outbox = os.path.join(self.tmp, "state", "outbox.db")
        cfg["plugins"] = [{"name": testplug(), "devices": keys, "config": {"probe": outbox}}]
        dm = self.daemon(cfg)
        m = T.wait_for(lambda: re.search(r"probe %s: (.*)" % re.escape(outbox), dm.log()), 5,
                       what="the probe")
        if "Landlock unavailable" in dm.log():
            self.skipTest("kernel without Landlock")
        self.assertEqual(m.group(1).strip(), "Permission denied")
        self.assertEqual(dm.stop(), 0)
        # the same plugin in process can: the difference is the host's doing
        cfg["plugins"][0]["isolation"] = "none"
        dm2 = self.daemon(cfg)
        T.wait_for(lambda: "probe %s: ok" % outbox in dm2.log(), 5, what="the in-process probe")


if __name__ == "__main__":
    T.main()
