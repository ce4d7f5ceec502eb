"""The platform's time over MQTT: one request for the whole gateway (not one per device), through
one online device, QoS 0 and never stored; the offset computed from the four timestamps; a
system clock off by more than cloud.max_clock_skew_ms logged once as a warning; aligwctl time."""
import json
import os
import subprocess

import aligwtest as T
import hubctl

PK = "a1TimeTest"


class TimeSync(T.TestCase):
    def test_one_request_for_the_gateway_and_the_offset(self):
        rows = hubctl.gen_devices(6, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        # The platform's clock 7.5 s ahead of this machine's.
        hub.publish("hub/ctl/ntp_skew", {"ms": 7500}, qos=1)
        cfg = T.base_config(self.tmp, cloud={"max_clock_skew_ms": 2000})
        cfg["devices"] = [T.hub_device_config(hub, r) for r in rows]
        dm = self.daemon(cfg)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        for k in keys:
            dm.wait_state(k, "online")
        T.wait_for(lambda: dm.call("status")["result"]["time"]["synced"], 10,
                   what="the platform's time learnt")
        t = dm.call("status")["result"]["time"]
        # The hub answers 7.5 s ahead; both clocks are this machine's, so the offset is that,
        # within the round trip.
        self.assertLess(abs(t["offset_ms"] - 7500), 500, t)
        self.assertGreaterEqual(t["rtt_ms"], 0, t)
        self.assertTrue(t["skewed"], t)
        self.assertIn(t["via"], keys)
        # One request for six devices (two if the first went out before the answer's
        # subscription was in place on a loaded machine), at QoS 0, on the device it went through.
        reqs = hub.messages("/ext/ntp/+/+/request")
        self.assertIn(len(reqs), (1, 2), [m.topic for m in reqs])
        self.assertEqual(len(reqs), t["requests"])
        for m in reqs:
            self.assertEqual(m.qos, 0)
            self.assertEqual(m.topic, "/ext/ntp/%s/request" % t["via"])
            self.assertRegex(m.json()["deviceSendTime"], r"^\d{13}$")
        # Logged once, as a warning naming the key.
        T.wait_for(lambda: "max_clock_skew_ms" in dm.log(), 5, what="the skew warning")
        self.assertEqual(dm.log().count("the system clock is"), 1)
        self.assertRegex(dm.log(), r"<4>the system clock is 7\.\d s behind the platform's")
        # Not stored: the outbox never saw it.
        self.assertEqual(dm.call("status")["result"]["queue"]["queued"], 0)
        # aligwctl time says the same for people.
        env = dict(os.environ, ALIGW_SOCKET=dm.socket_path)
        r = subprocess.run([T.ALIGWCTL, "time"], capture_output=True, text=True, env=env,
                           timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"system clock behind by 7\d{3} ms .* via %s/" % PK)
        self.assertIn("beyond cloud.max_clock_skew_ms", r.stdout)

    def test_an_answer_that_does_not_match_is_ignored(self):
        rows = hubctl.gen_devices(1, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp, cloud={"time_sync_s": 0})  # never asks
        cfg["devices"] = [T.hub_device_config(hub, r) for r in rows]
        dm = self.daemon(cfg)
        key = "%s/%s" % (PK, rows[0]["device_name"])
        dm.wait_state(key, "online")
        # An unsolicited answer, then one with garbage in it: counted, not taken.
        topic = "/ext/ntp/%s/response" % key
        hub.publish(topic, {"deviceSendTime": "1", "serverRecvTime": "2", "serverSendTime": "3"})
        hub.publish(topic, b"\xff{not json")
        T.wait_for(lambda: dm.call("status")["result"]["time"]["bad_answers"] == 2, 10,
                   what="two answers refused")
        t = dm.call("status")["result"]["time"]
        self.assertFalse(t["synced"], t)
        self.assertEqual(t["requests"], 0, t)
        self.assertEqual(hub.messages("/ext/ntp/+/+/request"), [])
        self.assertIsNone(dm.proc.poll())


class PlatformErrors(T.TestCase):
    def test_ext_error_notices_reach_the_status_and_the_log(self):
        """/ext/error is subscribed; what the platform reports there shows in the device's status
        and is logged once per distinct notice; a batch post's reply (a topic '+' does not
        reach) gets to the watchers."""
        rows = hubctl.gen_devices(1, PK)
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        cfg = T.base_config(self.tmp, cloud={"time_sync_s": 0})
        cfg["devices"] = [T.hub_device_config(hub, r) for r in rows]
        dm = self.daemon(cfg)
        key = "%s/%s" % (PK, rows[0]["device_name"])
        dm.wait_state(key, "online")
        w = dm.api()
        self.assertTrue(w.call("watch", kinds=["reply"])["ok"])
        # Sent again until seen: the first may come before the subscription is in place.
        def until_seen(payload, want):
            T.wait_for(lambda: (hub.publish("/ext/error/%s" % key, payload),
                                dm.device(key).get("platform_error") == want)[1], 10,
                       interval=0.3, what="%r in the device's status" % want)

        until_seen({"code": 6204, "message": "device disabled"}, "6204: device disabled")
        hub.publish("/ext/error/%s" % key, {"code": 6204, "message": "device disabled"})
        until_seen(b"\x01raw\xfftext", "?raw?text")
        self.assertEqual(dm.log().count("the platform reports: 6204: device disabled"), 1)
        hub.publish("/sys/%s/thing/event/property/batch/post_reply" % key,
                    {"id": "77", "code": 200, "data": {}})
        ev = w.next_event(10)
        self.assertEqual(ev["event"], "reply", ev)
        self.assertEqual(ev["msg_id"], "77")
        self.assertIsNone(dm.proc.poll())


if __name__ == "__main__":
    T.main()
