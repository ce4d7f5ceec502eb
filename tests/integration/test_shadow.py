"""The device shadow, desired properties and tags against the hub's documents: shadow_get and
shadow_update with versions (aligw's choice, and a conflict when the caller's is stale), a
control push from the cloud as a shadow event, clearing desired; desired_get/delete and
tags_update/delete matched by id, and what the API refuses."""
import subprocess

import aligwtest as T
import hubctl

PK = "a1ShadowT"


class Shadow(T.TestCase):
    def start(self, plugin=False):
        rows = hubctl.gen_devices(1, PK)
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, rows[0], rate=0)]
        if plugin:
            cfg["plugins"] = [{"name": "simulator", "devices": ["%s/%s" % (PK, rows[0]["device_name"])],
                               "config": {"interval_ms": 600000}}]
        dm = self.daemon(cfg)
        key = "%s/%s" % (PK, rows[0]["device_name"])
        dm.wait_state(key, "online")
        return hub, rows[0]["device_name"], key, dm

    def test_shadow_versions_control_and_clear(self):
        hub, dn, key, dm = self.start()
        api = dm.api()
        # no version given and none known: aligw asks first, then sends 0 + 1
        r = api.call("shadow_update", device=key, reported={"interval": 5})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["version"], 1)
        self.assertEqual(hub.services(PK, dn)["shadow"]["reported"], {"interval": 5})
        r = api.call("shadow_update", device=key, reported={"mode": "eco"})
        self.assertEqual(r["result"]["version"], 2, r)
        # the caller's stale version: the platform's 409, with the version it is at
        r = api.call("shadow_update", device=key, reported={"mode": "x"}, version=1)
        self.assertFalse(r["ok"])
        self.assertEqual(r["error"]["code"], "refused")
        self.assertIn("409", r["error"]["message"])
        self.assertIn("version 2", r["error"]["message"])
        # the cloud sets desired values: a control push, a shadow event with the version
        w = dm.api()
        w.call("watch", devices=[key], kinds=["shadow"])
        hub.shadow_set_desired(PK, dn, {"interval": 30})
        ev = w.next_event(10)
        self.assertEqual((ev["event"], ev["method"]), ("shadow", "control"))
        self.assertEqual(ev["desired"], {"interval": 30})
        self.assertEqual(ev["version"], 3)
        r = api.call("shadow_get", device=key)
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["desired"], {"interval": 30})
        self.assertEqual(r["result"]["reported"], {"interval": 5, "mode": "eco"})
        # the device applies it: reports, then clears desired (the documented device flow)
        r = api.call("shadow_update", device=key, reported={"interval": 30})
        self.assertEqual(r["result"]["version"], 4, r)
        r = api.call("shadow_clear_desired", device=key)
        self.assertTrue(r["ok"], r)
        doc = hub.services(PK, dn)["shadow"]
        self.assertEqual((doc["version"], doc["desired"], doc["reported"]["interval"]),
                         (5, {}, 30))
        # bad input is refused by the API before anything is sent
        for fields, what in (({"reported": {}}, "reported"), ({"reported": [1]}, "reported"),
                             ({"reported": {"a": 1}, "version": -2}, "version")):
            r = api.call("shadow_update", device=key, **fields)
            self.assertFalse(r["ok"])
            self.assertIn(what, r["error"]["message"])
        w.close()
        api.close()

    def test_desired_and_tags(self):
        hub, dn, key, dm = self.start()
        api = dm.api()
        hub.desired_set(PK, dn, {"power": "on", "temp": 21.5})
        T.wait_for(lambda: hub.services(PK, dn)["desired_properties"].get("temp"), 5)
        r = api.call("desired_get", device=key, identifiers=["power", "temp", "none"])
        self.assertTrue(r["ok"], r)
        data = r["result"]["data"]
        self.assertEqual(data["power"], {"value": "on", "version": 1})
        self.assertNotIn("none", data)
        r = api.call("desired_delete", device=key, identifiers=["power"])
        self.assertTrue(r["ok"], r)
        self.assertNotIn("power", hub.services(PK, dn)["desired_properties"])
        r = api.call("tags_update", device=key, tags={"site": "hall-3", "line": "L2"})
        self.assertTrue(r["ok"], r)
        self.assertEqual(hub.services(PK, dn)["tags"], {"site": "hall-3", "line": "L2"})
        # the same through aligwctl
        out = subprocess.run([T.ALIGWCTL, "-s", dm.socket_path, "tags-delete", key, "line"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(hub.services(PK, dn)["tags"], {"site": "hall-3"})
        out = subprocess.run([T.ALIGWCTL, "-s", dm.socket_path, "shadow-update", key,
                              '{"fw": "1.2"}'], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(hub.services(PK, dn)["shadow"]["reported"], {"fw": "1.2"})
        for op, fields, what in (("tags_update", {"tags": {"1bad": "x"}}, "tags"),
                                 ("tags_update", {"tags": {"k": "v" * 129}}, "tags"),
                                 ("tags_delete", {"keys": []}, "keys"),
                                 ("desired_get", {"identifiers": ["a/b"]}, "identifiers"),
                                 ("desired_delete", {}, "identifiers")):
            r = api.call(op, device=key, **fields)
            self.assertFalse(r["ok"], (op, fields))
            self.assertIn(what, r["error"]["message"])
        api.close()

    def test_control_through_the_simulator(self):
        """The simulator lists "shadow": desired values set in the cloud reach it as a control
        push; it applies them (interval_ms, a pinned property), reports what holds with
        shadow_update and clears desired, and its posts follow the new state."""
        hub, dn, key, dm = self.start(plugin=True)
        post = "/sys/%s/thing/event/property/post" % key
        since = hub.mark()
        hub.shadow_set_desired(PK, dn, {"interval_ms": 300, "mode": 7})

        def settled():
            doc = hub.services(PK, dn)["shadow"]
            return doc if doc["desired"] == {} and doc["reported"] else None
        doc = T.wait_for(settled, 15, what="the simulator to report and clear desired", interval=0.3)
        self.assertEqual(doc["reported"], {"interval_ms": 300, "mode": 7})
        # control (1), the report (2), clearing desired (3)
        self.assertEqual(doc["version"], 3, doc)
        T.wait_for(lambda: len(hub.messages(post, since)) >= 3, 10,
                   what="posts at the desired interval")
        last = hub.messages(post, since)[-1].json()["params"]
        self.assertEqual(last["mode"]["value"] if isinstance(last["mode"], dict) else last["mode"],
                         7)
        self.assertIn("shadow version 1 applied", dm.log())
        # a desired state the simulator cannot apply is left for someone else
        hub.shadow_set_desired(PK, dn, {"interval_ms": 5})  # below the simulator's minimum
        T.wait_for(lambda: "nothing in the desired state applies" in dm.log(), 10,
                   what="the simulator to decline")
        self.assertEqual(hub.services(PK, dn)["shadow"]["desired"], {"interval_ms": 5})


if __name__ == "__main__":
    T.main()
