"""Remote configuration against the hub: config_get (thing.config.get answered with the product's
file, fetched over HTTPS, digest checked, kept under state_dir/config), pushes (thing/config/push
answered on push_reply only once the file is verified), what is refused (a wrong digest, a file
above the platform's 64 KB, a malformed push) and the hand-over to the simulator plugin."""
import base64
import json
import os
import subprocess
import time

import aligwtest as T
import hubctl

PK = "a1CfgTest"


class RemoteConfig(T.TestCase):
    def start(self, n=1, plugin=False):
        rows = hubctl.gen_devices(n, PK)
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        cfg["ota"] = {"ca_file": hub.info["ca_file"], "min_free_bytes": 0}
        if plugin:
            cfg["plugins"] = [{"name": "simulator", "devices": keys,
                               "config": {"interval_ms": 600000}}]
        dm = self.daemon(cfg)
        for k in keys:
            dm.wait_state(k, "online")
        return hub, rows, keys, dm

    def push_reply(self, hub, key, mid, since, timeout=10):
        m = hub.wait_message("/sys/%s/thing/config/push_reply" % key, timeout, since,
                             lambda m: m.json().get("id") == mid)
        self.assertIsNotNone(m, "no push_reply for %s" % mid)
        return m.json()

    def test_get_push_and_refusals(self):
        hub, rows, keys, dm = self.start()
        key, dn = keys[0], rows[0]["device_name"]
        api = dm.api()
        # nothing configured for the product yet: a clear refusal, not a hang
        r = api.call("config_get", device=key)
        self.assertFalse(r["ok"])
        self.assertIn("no configuration", r["error"]["message"])
        # the product's file: fetched, checked, kept, returned with its content
        text = json.dumps({"interval_ms": 2000, "site": "hall-3"})
        f = hub.config_set(PK, text, config_id="cfg-1")
        r = api.call("config_get", device=key)
        self.assertTrue(r["ok"], r)
        res = r["result"]
        self.assertEqual((res["config_id"], res["content"], res["size"]), ("cfg-1", text, len(text)))
        self.assertEqual(res["digest"], f["sign"])
        with open(res["path"]) as fh:
            self.assertEqual(fh.read(), text)
        self.assertTrue(res["path"].startswith(os.path.join(self.tmp, "state")), res["path"])
        out = subprocess.run([T.ALIGWCTL, "-s", dm.socket_path, "--json", "config", key],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["result"]["content"], text)
        # a push of another file: the watcher gets the config event, the platform a 200
        w = dm.api()
        w.call("watch", devices=[key], kinds=["config"])
        binary = bytes(range(256)) * 4
        hub.config_set(PK, binary, config_id="cfg-2")
        since = hub.mark()
        mid = hub.config_push(PK, dn)
        ev = w.next_event(10)
        self.assertEqual((ev["event"], ev["config_id"]), ("config", "cfg-2"))
        self.assertEqual(base64.b64decode(ev["content_b64"]), binary)  # not text: base64
        self.assertEqual(self.push_reply(hub, key, mid, since)["code"], 200)
        # a wrong digest: refused with the reason, the kept file is still the last good one
        f = hub.config_set(PK, "tampered", config_id="cfg-3", bad_sign=True)
        since = hub.mark()
        mid = hub.config_push(PK, dn)
        body = self.push_reply(hub, key, mid, since)
        self.assertEqual(body["code"], 500)
        self.assertIn("digest", body["message"])
        with open(ev["path"], "rb") as fh:
            self.assertEqual(fh.read(), binary)
        # above the platform's 64 KB: refused before any byte is fetched
        big = dict(f, configSize=65537, configId="cfg-4")
        since = hub.mark()
        mid = hub.config_push(PK, dn, fields=big)
        body = self.push_reply(hub, key, mid, since)
        self.assertEqual(body["code"], 460)
        self.assertIn("65536", body["message"])
        # malformed pushes: a 460 naming the field, the daemon carries on
        for params, field in (({"configId": "x"}, "configSize"),
                              (dict(f, signMethod="crc32"), "signMethod"),
                              (dict(f, getType="raw"), "getType"),
                              (dict(f, sign="zz"), "sign")):
            since = hub.mark()
            mid = hub.config_push(PK, dn, fields=params)
            body = self.push_reply(hub, key, mid, since)
            self.assertEqual(body["code"], 460, params)
            self.assertIn(field, body["message"])
        hub.publish("/sys/%s/thing/config/push" % key, b"\xff not json")
        self.assertTrue(api.call("device", device=key)["ok"])
        w.close()
        api.close()

    def test_push_reaches_the_simulator(self):
        """The simulator lists "config": a pushed {"interval_ms": 300} makes its device post
        every 300 ms instead of every ten minutes."""
        hub, rows, keys, dm = self.start(plugin=True)
        key, dn = keys[0], rows[0]["device_name"]
        hub.config_set(PK, json.dumps({"interval_ms": 300}), config_id="fast")
        since = hub.mark()
        mid = hub.config_push(PK, dn)
        self.assertEqual(self.push_reply(hub, key, mid, since)["code"], 200)
        T.wait_for(lambda: len(hub.messages("/sys/%s/thing/event/property/post" % key,
                                            since)) >= 3, 10,
                   what="posts at the configured interval")
        self.assertIn("configuration fast", dm.log())


if __name__ == "__main__":
    T.main()
