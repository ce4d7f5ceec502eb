"""Watch streams end to end (a cloud message on a configured /user/get topic, a device going
offline and online, a platform reply, the filters) and the reload op through the API, with a
configuration that changes and one that is refused."""
import base64
import os

import aligwtest as T
import hubctl

PK = "a1EventTst"


def next_event(api, pred, what, timeout=10):
    """The next event on api satisfying pred (earlier ones are skipped), or AssertionError."""
    while True:
        try:
            ev = api.next_event(timeout)
        except OSError:
            raise AssertionError("no event: %s" % what)
        if pred(ev):
            return ev


class Watch(T.TestCase):
    def test_message_state_and_reply_events_with_their_fields(self):
        rows = hubctl.gen_devices(2, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp, cloud={"backoff_min_ms": 100, "backoff_max_ms": 200})
        cfg["devices"] = [T.hub_device_config(hub, r,
                                              topics=["/${productKey}/${deviceName}/user/get"])
                          for r in rows]
        dm = self.daemon(cfg)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        for k in keys:
            dm.wait_state(k, "online")
        dn0, dn1 = rows[0]["device_name"], rows[1]["device_name"]
        w = dm.api()  # everything
        r = w.call("watch")
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["watching"], True)
        # a second watcher only for the other device's messages on /user/#
        w1 = dm.api()
        r = w1.call("watch", devices=[keys[1]], kinds=["message"], topics=["/+/+/user/#"])
        self.assertEqual((r["result"]["devices"], r["result"]["topics"], r["result"]["kinds"]),
                         (1, 1, ["message"]))

        # message: the seed's downlink case, JSON, text and binary payloads
        get = "/%s/user/get" % keys[0]
        hub.publish_custom(PK, dn0, "get", b'{"cmd":"open","n":1}', qos=1)
        ev = next_event(w, lambda e: e["event"] == "message", "a message event")
        self.assertEqual((ev["device"], ev["topic"], ev["payload_json"]),
                         (keys[0], get, {"cmd": "open", "n": 1}))
        self.assertEqual(ev["kind"], "custom")
        self.assertNotIn("payload", ev)
        hub.publish_custom(PK, dn0, "get", "plain text, not JSON", qos=1)
        ev = next_event(w, lambda e: e["event"] == "message", "a text message event")
        self.assertEqual(ev["payload"], "plain text, not JSON")
        raw = b"\x00\xff\xfe binary"
        hub.publish_custom(PK, dn0, "get", raw, qos=0)
        ev = next_event(w, lambda e: e["event"] == "message", "a binary message event")
        self.assertEqual(base64.b64decode(ev["payload_b64"]), raw)

        # reply: the platform's answer to a post
        r = w.call("post_properties", device=keys[0], params={"Temp": 1.5})
        self.assertTrue(r["ok"], r)
        ev = next_event(w, lambda e: e["event"] == "reply", "a reply event")
        self.assertEqual(ev["device"], keys[0])
        self.assertEqual(ev["topic"], "/sys/%s/thing/event/property/post_reply" % keys[0])
        self.assertEqual(ev["msg_id"], r["result"]["msg_id"])
        self.assertEqual(ev["code"], 200)

        # state: the platform closes the session; the device goes offline and comes back
        hub.kick(PK, dn0)
        ev = next_event(w, lambda e: e["event"] == "state" and e["device"] == keys[0],
                        "a state event")
        self.assertEqual(ev["old"], "online")
        self.assertNotEqual(ev["state"], "online")
        self.assertIn("connection lost", ev["last_error"])
        self.assertGreater(ev["since_ms"], 0)
        seen = [(ev["old"], ev["state"])]
        ev = next_event(w, lambda e: e["event"] == "state" and e["device"] == keys[0] and (
            seen.append((e["old"], e["state"])) or e["state"] == "online"), "back online", 15)
        self.assertEqual(ev["old"], "connecting", seen)
        self.assertIn("queued", ev)

        # the filtered watcher saw none of that: its first event is the other device's message
        hub.publish_custom(PK, dn1, "get", b'{"to":1}', qos=1)
        ev = w1.next_event(10)
        self.assertEqual((ev["event"], ev["device"], ev["payload_json"]),
                         ("message", keys[1], {"to": 1}))
        # and the wide watcher got it too
        next_event(w, lambda e: e["event"] == "message" and e["device"] == keys[1],
                   "the other device's message")
        st = dm.call("stats")["result"]["api"]
        self.assertEqual(st["watchers"], 2)
        self.assertGreaterEqual(st["events_sent"], 9)
        w.close()
        w1.close()


class ReloadOp(T.TestCase):
    def test_reload_through_the_api_applies_a_changed_config_and_refuses_a_bad_one(self):
        rows = hubctl.gen_devices(3, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, r) for r in rows[:2]]
        dm = self.daemon(cfg)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        for k in keys[:2]:
            dm.wait_state(k, "online")
        dn = [r["device_name"] for r in rows]
        self.assertEqual(hub.last_connect(PK, dn[1])["keepalive"], 300)
        api = dm.api()
        w = dm.api()
        w.call("watch", kinds=["state"])

        # changed: device 1 gets a new keepalive, device 2 is added, device 0 is untouched
        # (and store.max_bytes, which waits for a restart and is named in the answer)
        cfg["devices"] = [T.hub_device_config(hub, rows[0]),
                          T.hub_device_config(hub, rows[1], keepalive=90),
                          T.hub_device_config(hub, rows[2])]
        cfg["store"]["max_bytes"] = 1 << 20
        dm.write_config(cfg)
        r = api.call("reload")
        self.assertEqual(r, {"id": r["id"], "ok": True,
                             "result": {"restart_needed": ["store.max_bytes"]}})
        dm.wait_state(keys[2], "online")
        T.wait_for(lambda: (hub.last_connect(PK, dn[1]) or {}).get("keepalive") == 90, 15,
                   what="device 1 to log in again with keepalive 90")
        dm.wait_state(keys[1], "online")
        self.assertEqual(dm.device(keys[0])["counters"]["connects"], 1)
        self.assertIn("configuration reloaded: 3 devices", dm.log())
        self.assertEqual(dm.call("devices")["result"]["total"], 3)
        # the watcher saw the new device come online
        next_event(w, lambda e: e["device"] == keys[2] and e["state"] == "online",
                   "the added device online")

        # refused: two mistakes; the answer says so, the log names both, nothing changes
        with open(dm.config_path, "w") as f:
            f.write('{\n  "cloud": {"keepalive": 5},\n  "devices": [],\n  "colour": "red"\n}\n')
        connects = hub.counters()["connects"]
        r = api.call("reload")
        self.assertFalse(r["ok"], r)
        self.assertEqual(r["error"]["code"], "bad_request")
        self.assertIn("configuration has errors", r["error"]["message"])
        self.assertIn("running configuration is kept", r["error"]["message"])
        log = dm.log()
        name = os.path.basename(dm.config_path)
        self.assertRegex(log, name + r":2:\d+: cloud\.keepalive")
        self.assertRegex(log, name + r":4:\d+: colour")
        self.assertIn("reload refused: 2 error(s)", log)
        for k in keys:
            self.assertEqual(dm.device(k)["state"], "online")
        self.assertEqual(dm.call("devices")["result"]["total"], 3)
        self.assertEqual(hub.counters()["connects"], connects)
        self.assertIsNone(dm.proc.poll())
        # and the same connection goes on working
        self.assertTrue(api.call("status")["ok"])
        api.close()
        w.close()


if __name__ == "__main__":
    T.main()
