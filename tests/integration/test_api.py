"""The local API through the real socket against the real daemon and the hub: thing-model posts
and their replies, watch streams answering property sets, service-call time-outs, runtime
devices, errors, access control and aligwctl."""
import json
import os
import pwd
import shutil
import subprocess
import time

import aligwtest as T
import hubctl

PK = "a1ApiTest"


class Api(T.TestCase):
    def start(self, n=2, hub_rate=30, **cfg_over):
        rows = hubctl.gen_devices(n, PK)
        hub = hubctl.Hub(rows, rate=hub_rate).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp, **cfg_over)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        dm = self.daemon(cfg)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        for k in keys:
            dm.wait_state(k, "online")
        return hub, rows, keys, dm

    def test_post_properties_reply_and_event(self):
        hub, rows, keys, dm = self.start()
        api = dm.api()
        r = api.call("hello")
        self.assertTrue(r["ok"])
        self.assertEqual(r["result"]["protocol"], 1)
        r = api.call("post_properties", device=keys[0], params={"Temp": 21.5, "Power": "on"},
                     wait_reply=True)
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["code"], 200)
        m = hub.wait_message("/sys/%s/thing/event/property/post" % keys[0], 5)
        body = m.json()
        self.assertEqual(body["params"]["Temp"], 21.5)
        self.assertEqual(body["id"], r["result"]["msg_id"])
        self.assertEqual(body["version"], "1.0")
        # an event
        r = api.call("post_event", device=keys[1], event="Overheat", params={"Level": 3})
        self.assertTrue(r["ok"], r)
        m = hub.wait_message("/sys/%s/thing/event/Overheat/post" % keys[1], 5)
        self.assertEqual(m.json()["params"]["value"], {"Level": 3})
        api.close()

    def test_batch_and_history_posts_matched_by_id(self):
        """post_batch and post_history build the platform's envelopes (history carries the
        device's identity), their _reply topics are subscribed and each reply is matched to its
        request by id; what the hub refuses (a history record with the wrong shape never leaves:
        the API checks it first) and what the API refuses are named."""
        hub, rows, keys, dm = self.start(1)
        api = dm.api()
        t0 = int(time.time() * 1000) - 3600 * 1000
        r = api.call("post_batch", device=keys[0],
                     properties={"Temp": [{"value": 20.5, "time": t0},
                                          {"value": 21.0, "time": t0 + 1000}]},
                     events={"Overheat": [{"value": {"Level": 2}, "time": t0 + 500}]},
                     wait_reply=True)
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["code"], 200)
        m = hub.wait_message("/sys/%s/thing/event/property/batch/post" % keys[0], 5)
        body = m.json()
        self.assertEqual(body["id"], r["result"]["msg_id"])
        self.assertEqual(body["params"]["properties"]["Temp"][1], {"value": 21.0, "time": t0 + 1000})
        self.assertEqual(body["params"]["events"]["Overheat"][0]["value"], {"Level": 2})
        r2 = api.call("post_history", device=keys[0],
                      properties=[{"Temp": {"value": 19.0, "time": t0}},
                                  {"Temp": {"value": 19.5, "time": t0 + 60000}}],
                      wait_reply=True)
        self.assertTrue(r2["ok"], r2)
        self.assertEqual(r2["result"]["code"], 200)
        self.assertNotEqual(r2["result"]["msg_id"], r["result"]["msg_id"])
        m = hub.wait_message("/sys/%s/thing/event/property/history/post" % keys[0], 5)
        params = m.json()["params"]
        self.assertEqual(params[0]["identity"],
                         {"productKey": PK, "deviceName": rows[0]["device_name"]})
        self.assertEqual(len(params[0]["properties"]), 2)
        self.assertNotIn("events", params[0])
        # the platform's refusal comes back as "refused" with its code: a batch value without
        # a time, sent raw (the API would refuse it), is answered 460 and matched by its id
        reply = "/sys/%s/thing/event/property/batch/post_reply" % keys[0]
        since = hub.mark()
        bad = {"id": "777", "version": "1.0", "params": {"properties": {"Temp": [{"value": 1}]}}}
        w = dm.api()
        w.call("watch", kinds=["reply"])
        api.call("publish", device=keys[0], topic=reply.replace("_reply", ""),
                 payload=json.dumps(bad))
        ev = w.next_event(5)
        while ev.get("msg_id") != "777":
            ev = w.next_event(5)
        self.assertEqual(ev["code"], 460)
        self.assertEqual(hub.wait_message(reply, 5, since).json()["code"], 460)
        w.close()
        # the API's own checks
        for op, kw, field in [
            ("post_batch", {}, "properties"),
            ("post_batch", {"properties": {"Temp": []}}, "properties.Temp"),
            ("post_batch", {"properties": {"Temp": [{"value": 1}]}}, "properties.Temp[0]"),
            ("post_batch", {"events": {"E": [{"value": 3, "time": t0}]}}, "events.E[0]"),
            ("post_history", {"properties": {"Temp": {"value": 1, "time": t0}}}, "properties"),
            ("post_history", {"properties": [{"Temp": {"value": 1, "time": 9e15}}]},
             "properties[0].Temp"),
        ]:
            e = api.call(op, device=keys[0], **kw)
            self.assertFalse(e["ok"], (op, kw))
            self.assertEqual(e["error"]["code"], "bad_request", e)
            self.assertIn(field, e["error"]["message"], e)
        api.close()
        if os.path.exists(T.ALIGWCTL):  # aligwctl history, from a file, waiting for the reply
            path = os.path.join(self.tmp, "hist.json")
            with open(path, "w") as f:
                json.dump({"events": [{"Overheat": {"value": {"Level": 1}, "time": t0}}]}, f)
            r = subprocess.run([T.ALIGWCTL, "--json", "history", keys[0], "@" + path, "--wait"],
                               capture_output=True, text=True, timeout=20,
                               env=dict(os.environ, ALIGW_SOCKET=dm.socket_path))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["result"]["code"], 200)
            m = hub.wait_message("/sys/%s/thing/event/property/history/post" % keys[0], 5,
                                 predicate=lambda m: "events" in m.json()["params"][0])
            self.assertEqual(m.json()["params"][0]["events"][0]["Overheat"]["value"], {"Level": 1})

    def test_platform_reply_code_reported(self):
        # the hub's rate limit (1 msg/s per device) answers the second post with code 429
        hub, rows, keys, dm = self.start(1, hub_rate=1)
        api = dm.api()
        codes = []
        for i in range(3):
            r = api.call("post_properties", device=keys[0], params={"N": i}, wait_reply=True)
            codes.append(r["result"]["code"] if r["ok"] else r["error"])
        refused = [c for c in codes if isinstance(c, dict)]
        self.assertTrue(refused, codes)
        self.assertEqual(refused[0]["code"], "refused")
        self.assertIn("429", refused[0]["message"])
        api.close()

    def test_property_set_on_watch_answered(self):
        hub, rows, keys, dm = self.start()
        w = dm.api()
        r = w.call("watch", devices=[keys[0]], kinds=["property_set", "service_call"])
        self.assertTrue(r["ok"], r)
        mid = hub.property_set(PK, rows[0]["device_name"], {"Power": "off"})
        ev = w.next_event(10)
        self.assertEqual(ev["event"], "property_set")
        self.assertEqual(ev["device"], keys[0])
        self.assertEqual(ev["id"], mid)
        self.assertEqual(ev["params"], {"Power": "off"})
        since = hub.mark()
        r = w.call("reply", device=keys[0], request_id=mid, code=200, data={"Power": "off"})
        self.assertTrue(r["ok"], r)
        m = hub.wait_message("/sys/%s/thing/service/property/set_reply" % keys[0], 5, since)
        self.assertIsNotNone(m)
        self.assertEqual(m.json()["id"], mid)
        self.assertEqual(m.json()["code"], 200)
        # a second answer to the same call is an error naming the id
        r = w.call("reply", device=keys[0], request_id=mid, code=200)
        self.assertFalse(r["ok"])
        self.assertIn(mid, r["error"]["message"])
        # a watcher for another device did not get it; state events reach state watchers
        w.close()

    def test_unanswered_service_call_times_out(self):
        hub, rows, keys, dm = self.start(1, api={"service_timeout_ms": 1000})
        w = dm.api()
        w.call("watch", kinds=["service_call"])
        since = hub.mark()
        mid = hub.service_call(PK, rows[0]["device_name"], "Reboot", {"Delay": 1})
        ev = w.next_event(10)
        self.assertEqual(ev["service"], "Reboot")
        m = hub.wait_message("/sys/%s/thing/service/Reboot_reply" % keys[0], 6, since)
        self.assertIsNotNone(m, "no error reply after the time limit")
        self.assertEqual(m.json()["id"], mid)
        self.assertNotEqual(m.json()["code"], 200)
        self.assertGreaterEqual(m.t - since if isinstance(since, float) else 1.0, 0)
        w.close()

    def test_service_call_without_any_handler_answered_at_once(self):
        hub, rows, keys, dm = self.start(1)
        since = hub.mark()
        mid = hub.service_call(PK, rows[0]["device_name"], "Reboot", {})
        m = hub.wait_message("/sys/%s/thing/service/Reboot_reply" % keys[0], 3, since)
        self.assertIsNotNone(m)
        self.assertEqual(m.json()["id"], mid)
        self.assertEqual(m.json()["code"], 503)

    def test_runtime_device_added_survives_restart_and_removed(self):
        rows = hubctl.gen_devices(2, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, rows[0])]
        dm = self.daemon(cfg)
        new = T.hub_device_config(hub, rows[1])
        r = dm.call("add_device", device=new)
        self.assertTrue(r["ok"], r)
        key = "%s/%s" % (PK, rows[1]["device_name"])
        dm.wait_state(key, "online")
        r = dm.call("add_device", device=new)
        self.assertEqual(r["error"]["code"], "exists")
        bad = dict(new, keepalive=5)
        bad["device_name"] = "other-01"
        r = dm.call("add_device", device=bad)
        self.assertEqual(r["error"]["code"], "bad_request")
        self.assertIn("keepalive", r["error"]["message"])
        self.assertEqual(dm.stop(), 0)
        dm2 = self.daemon(cfg)
        dm2.wait_state(key, "online")
        # configured devices cannot be removed at runtime; runtime ones can
        r = dm2.call("remove_device", device="%s/%s" % (PK, rows[0]["device_name"]))
        self.assertFalse(r["ok"])
        self.assertIn("configuration file", r["error"]["message"])
        r = dm2.call("remove_device", device=key)
        self.assertTrue(r["ok"], r)
        self.assertEqual(dm2.call("device", device=key)["error"]["code"], "no_device")
        self.assertEqual(dm2.stop(), 0)
        dm3 = self.daemon(cfg)
        self.assertEqual(dm3.call("devices")["result"]["total"], 1)

    def test_errors_keep_the_connection(self):
        hub, rows, keys, dm = self.start(1, api={"max_payload": 1024, "max_line": 8192})
        api = dm.api()
        api.send_raw(b"{not json\n")
        r = api.read_line()
        self.assertEqual(r["error"]["code"], "bad_json")
        r = api.call("frobnicate")
        self.assertEqual(r["error"]["code"], "unknown_op")
        r = api.call("publish", device="a1Nope/nodev01", topic="/a1Nope/nodev01/user/update",
                     payload="x")
        self.assertEqual(r["error"]["code"], "no_device")
        r = api.call("publish", device=keys[0], topic="/%s/user/update" % keys[0],
                     payload="x" * 2000)
        self.assertEqual(r["error"]["code"], "payload_too_large")
        r = api.call("publish", device=keys[0], topic="/%s/user/#" % keys[0], payload="x")
        self.assertEqual(r["error"]["code"], "bad_request")
        self.assertIn("topic", r["error"]["message"])
        api.send_raw(b'{"id":77,"op":"publish","payload":"' + b"y" * 20000 + b'"}\n')
        r = api.read_line()
        self.assertEqual(r["error"]["code"], "line_too_long")
        r = api.call("status")
        self.assertTrue(r["ok"], r)
        api.close()

    def test_refused_peer(self):
        nobody = pwd.getpwnam("nobody")
        setpriv = shutil.which("setpriv")
        if os.getuid() != 0 or not setpriv:
            self.skipTest("needs root and setpriv to connect as another uid")
        cfg = T.base_config(self.tmp, api={"allow_users": ["root"]})
        dm = self.daemon(cfg)
        os.chmod(self.tmp, 0o755)
        os.chmod(os.path.dirname(dm.socket_path), 0o755)
        os.chmod(dm.socket_path, 0o666)  # past the file mode: the peer check must refuse
        # the daemon answers a refused peer with one "forbidden" line and closes
        code = ("import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
                "print(s.recv(4096).decode())")
        r = subprocess.run([setpriv, "--reuid=%d" % nobody.pw_uid, "--regid=%d" % nobody.pw_gid,
                            "--clear-groups", "/usr/bin/python3", "-c", code, dm.socket_path],
                           capture_output=True, text=True, timeout=10)
        self.assertIn("forbidden", r.stdout + r.stderr)
        self.assertTrue(dm.call("status")["ok"])  # root still gets in

    def test_example_client_posts_and_serves(self):
        hub, rows, keys, dm = self.start(1)
        client = os.path.join(T.HERE, "..", "..", "docs", "examples", "aligw_client.py")
        env = dict(os.environ, ALIGW_SOCKET=dm.socket_path)
        r = subprocess.run(["/usr/bin/python3", client, "post", keys[0], "Temp=19.5"],
                           capture_output=True, text=True, env=env, timeout=20)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("'code': 200", r.stdout)
        srv = subprocess.Popen(["/usr/bin/python3", "-u", client, "serve", keys[0]],
                               stdout=subprocess.PIPE, text=True, env=env)
        self.later(lambda: (srv.kill(), srv.wait()))
        self.assertIn("protocol", srv.stdout.readline())
        T.wait_for(lambda: dm.call("stats")["result"]["api"]["watchers"] >= 1, 10,
                   what="the example client's watch")
        since = hub.mark()
        mid = hub.service_call(PK, rows[0]["device_name"], "Ping", {"x": 1})
        m = hub.wait_message("/sys/%s/thing/service/Ping_reply" % keys[0], 5, since)
        self.assertIsNotNone(m, "the example client did not answer")
        self.assertEqual(m.json()["id"], mid)
        self.assertEqual(m.json()["data"], {"echo": {"x": 1}})

    def test_aligwctl(self):
        if not os.path.exists(T.ALIGWCTL):
            self.skipTest("aligwctl not built")
        hub, rows, keys, dm = self.start(2)
        env = dict(os.environ, ALIGW_SOCKET=dm.socket_path)

        def ctl(*args):
            return subprocess.run([T.ALIGWCTL, *args], capture_output=True, text=True,
                                  env=env, timeout=20)

        r = ctl("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("2", r.stdout)
        r = ctl("--json", "devices")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["result"]["online"], 2)
        r = ctl("post", keys[0], "Temp=20.5")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsNotNone(hub.wait_message("/sys/%s/thing/event/property/post" % keys[0], 5))
        r = ctl("device", "a1Nope/nodev01")
        self.assertEqual(r.returncode, 1)
        r = subprocess.run([T.ALIGWCTL, "-s", os.path.join(self.tmp, "none.sock"), "status"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 3)
        self.assertIn("not running", r.stderr)
        for row in rows:
            self.assertNotIn(row["device_secret"], ctl("device", keys[0]).stdout)


if __name__ == "__main__":
    T.main()
