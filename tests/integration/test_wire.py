"""What reaches the cloud, checked on the hub's side of the wire: QoS 0 publishes, the setMqtt
values (client id, keepalive, clean session) in the CONNECT packet the broker saw,
auto_reconnect off staying offline after a kick and after a broker restart, and drop-oldest at
the outbox cap while the cloud is away."""
import time

import aligwtest as T
import hubctl
from test_store import Producer, received

PK = "a1WireTest"


class Wire(T.TestCase):
    def hub(self, n, **kw):
        rows = hubctl.gen_devices(n, PK)
        hub = hubctl.Hub(rows, rate=0, **kw).start()
        self.later(hub.stop)
        return hub, rows, ["%s/%s" % (PK, r["device_name"]) for r in rows]

    def test_qos0_publish_reaches_the_cloud_at_qos0_and_leaves_the_outbox(self):
        hub, rows, keys = self.hub(2)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, rows[0]),
                          T.hub_device_config(hub, rows[1], port=1)]  # offline for now
        dm = self.daemon(cfg)
        on, off = keys
        dm.wait_state(on, "online")
        api = dm.api()
        topic = "/%s/user/update" % on
        for i, qos in enumerate((0, 1, 0)):
            r = api.call("publish", device=on, topic=topic, payload="m%d" % i, qos=qos)
            self.assertTrue(r["ok"], r)
        got = T.wait_for(lambda: len(hub.messages(topic)) >= 3 and hub.messages(topic), 10,
                         what="three messages at the cloud")
        self.assertEqual([(m.payload, m.qos) for m in got],
                         [(b"m0", 0), (b"m1", 1), (b"m2", 0)])
        T.wait_for(lambda: dm.device(on)["queued"] == 0, 10, what="the outbox to empty")
        self.assertEqual(dm.device(on)["counters"]["messages_out"], 3)
        # A QoS 0 message is stored and forwarded like any other: queued while the device is
        # away, sent at QoS 0 once it is back.
        topic = "/%s/user/update" % off
        r = api.call("publish", device=off, topic=topic, payload="late", qos=0)
        self.assertTrue(r["ok"], r)
        self.assertEqual(dm.device(off)["queued"], 1)
        cfg["devices"][1]["port"] = hub.info["mqtt_port"]
        dm.write_config(cfg)
        self.assertTrue(api.call("reload")["ok"])
        m = hub.wait_message(topic, 15)
        self.assertIsNotNone(m, "the queued QoS 0 message never arrived")
        self.assertEqual((m.payload, m.qos), (b"late", 0))
        T.wait_for(lambda: dm.device(off)["queued"] == 0, 10, what="the outbox to empty")
        self.assertEqual(dm.call("status")["result"]["queue"]["queued"], 0)
        api.close()

    def test_connect_carries_client_id_keepalive_and_clean_session(self):
        hub, rows, keys = self.hub(3)
        # cloud-wide defaults, one device overriding them, one on TLS with its own values
        cfg = T.base_config(self.tmp, cloud={"keepalive": 120, "clean_session": True})
        cfg["devices"] = [
            T.hub_device_config(hub, rows[0], client_id="gw7-${deviceName}", keepalive=45,
                                clean_session=False),
            T.hub_device_config(hub, rows[1]),
            T.hub_device_config(hub, rows[2], tls=True, keepalive=1200, clean_session=False),
        ]
        dm = self.daemon(cfg)
        for k in keys:
            dm.wait_state(k, "online")
        seen = [hub.last_connect(PK, r["device_name"]) for r in rows]
        dn = [r["device_name"] for r in rows]
        self.assertTrue(seen[0]["client_id"].startswith("gw7-%s|securemode=3," % dn[0]), seen[0])
        self.assertEqual((seen[0]["keepalive"], seen[0]["clean_session"]), (45, False))
        self.assertTrue(seen[1]["client_id"].startswith("%s.%s|securemode=3," % (PK, dn[1])),
                        seen[1])
        self.assertEqual((seen[1]["keepalive"], seen[1]["clean_session"]), (120, True))
        self.assertTrue(seen[2]["client_id"].startswith("%s.%s|securemode=2," % (PK, dn[2])),
                        seen[2])
        self.assertEqual((seen[2]["keepalive"], seen[2]["clean_session"], seen[2]["tls"]),
                         (1200, False, True))
        for s in seen:
            self.assertEqual(s["protocol_version"], 4)  # MQTT 3.1.1, as the platform wants
        # Both clean-session values keep working after a reconnect: the daemon logs in again
        # with the same values (a lost session gets a new Paho client).
        hub.kick(PK, dn[0])
        hub.kick(PK, dn[1])
        for r in rows[:2]:
            T.wait_for(lambda: hub.counters()["devices"]["%s/%s" % (PK, r["device_name"])]
                       ["connects"] >= 2, 15, what="%s to log in again" % r["device_name"])
        again = [hub.last_connect(PK, r["device_name"]) for r in rows[:2]]
        self.assertEqual((again[0]["keepalive"], again[0]["clean_session"]), (45, False))
        self.assertEqual((again[1]["keepalive"], again[1]["clean_session"]), (120, True))
        self.assertTrue(again[0]["client_id"].startswith("gw7-%s|" % dn[0]))

    def auto_reconnect_pair(self, hub, rows):
        cfg = T.base_config(self.tmp, cloud={"backoff_min_ms": 100, "backoff_max_ms": 200})
        cfg["devices"] = [T.hub_device_config(hub, rows[0], auto_reconnect=False),
                          T.hub_device_config(hub, rows[1])]  # the control: reconnects
        dm = self.daemon(cfg)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        for k in keys:
            dm.wait_state(k, "online")
        return dm, keys

    def assert_stays_offline(self, dm, hub, keys, connects_before):
        off, control = keys
        dm.wait_state(control, "online")  # the control came back: a reconnect had its chance
        time.sleep(1.0)  # five times the longest back-off: time enough for a retry to show
        st = dm.device(off)
        self.assertEqual(st["state"], "offline", st)
        self.assertIn("connection lost", st.get("last_error", ""))
        c = hub.counters()["devices"].get(off, {})
        self.assertEqual(c.get("connects", 0), connects_before, "the device logged in again")
        self.assertEqual(st["counters"]["connects"], 1)
        self.assertIn("auto_reconnect is off: staying offline", dm.log())
        # it still takes messages into the outbox, for a later start
        pk, dn = off.split("/")
        r = dm.call("publish", device=off, topic="/%s/%s/user/update" % (pk, dn), payload="x")
        self.assertTrue(r["ok"], r)
        self.assertEqual(dm.device(off)["queued"], 1)

    def test_auto_reconnect_off_stays_offline_after_a_kick(self):
        hub, rows, keys = self.hub(2)
        dm, keys = self.auto_reconnect_pair(hub, rows)
        for r in rows:
            hub.kick(PK, r["device_name"])
        dm.wait_state(keys[0], "offline")
        self.assert_stays_offline(dm, hub, keys, 1)
        # a daemon restart brings it back (as restarting the seed script did)
        self.assertEqual(dm.stop(), 0)
        dm2 = self.daemon(dm.config)
        dm2.wait_state(keys[0], "online")

    def test_auto_reconnect_off_stays_offline_after_a_broker_restart(self):
        hub, rows, keys = self.hub(2)
        dm, keys = self.auto_reconnect_pair(hub, rows)
        T.stop_broker(hub)
        T.wait_for(lambda: dm.call("devices")["result"]["online"] == 0, 10, what="all offline")
        T.start_broker(hub)
        # the restarted broker has seen no login of the device that stays offline
        self.assert_stays_offline(dm, hub, keys, 0)

    def test_drop_oldest_drops_and_counts_the_oldest_and_delivers_the_newest_in_order(self):
        hub, rows, keys = self.hub(1)
        cfg = T.base_config(self.tmp)
        cfg["store"].update(max_bytes=65536, policy="drop-oldest")
        cfg["devices"] = [T.hub_device_config(hub, rows[0], rate=0)]
        dm = self.daemon(cfg)
        key = keys[0]
        dm.wait_state(key, "online")
        T.stop_broker(hub)  # the cloud goes away
        T.wait_for(lambda: dm.device(key)["state"] != "online", 10, what="the device offline")
        n = 400
        p = Producer(dm.socket_path, keys, window=50, pad=400)
        p.run(limit=n)
        self.assertEqual(p.errors, [], "drop-oldest refused a message")
        self.assertEqual(len(p.acked), n)
        st = dm.device(key)
        self.assertGreater(st["dropped"], 0, st)
        self.assertLessEqual(st["queued_bytes"], 65536, st)
        self.assertEqual(st["dropped"] + st["queued"], n, st)
        q = dm.call("status")["result"]["queue"]
        self.assertEqual(q["dropped"], st["dropped"])
        self.assertIn("outbox cap reached: dropped", dm.log())
        kept = st["queued"]
        T.start_broker(hub, freeze=dm)  # the cloud is back
        T.wait_for(lambda: dm.device(key)["queued"] == 0, 30, what="the outbox to drain")
        T.wait_for(lambda: len(received(hub).get(key, [])) >= kept, 10,
                   what="the cloud to see every kept message")
        time.sleep(0.3)  # nothing more comes
        self.assertEqual(received(hub)[key], list(range(n - kept, n)),
                         "not exactly the newest messages, once each, in order")
        st = dm.device(key)
        self.assertEqual(st["dropped"], n - kept)
        self.assertEqual(st["counters"]["messages_out"], kept)


if __name__ == "__main__":
    T.main()
