"""Issue 13's hardening: a damaged or lost outbox is never mistaken for a working or an empty
queue, one state_dir serves one daemon. Each test builds the bad situation on real files the way
an operator (or a disk) would, then starts the real aligwd against the hub."""
import json
import os
import random
import shutil
import subprocess
import time

import aligwtest as T
import hubctl

PK = "a1HardTst"


def publish_n(dm, key, n, pad=0, start=0):
    """Publishes n messages one request at a time; returns how many were answered ok."""
    pk, dn = key.split("/")
    api = dm.api()
    ok = 0
    try:
        for i in range(start, start + n):
            rid = api.send({"op": "publish", "device": key, "topic": "/%s/%s/user/update" % (pk, dn),
                            "payload": json.dumps({"n": i, "pad": "x" * pad}), "qos": 1})
            if api.response(rid).get("ok"):
                ok += 1
    finally:
        api.close()
    return ok


def damage_pages(path, first_frac, last_frac, seed=13):
    """Overwrites whole pages between first_frac and last_frac of the file with random bytes (page
    1, the header and schema, is spared: that damage is found at open and tested elsewhere)."""
    with open(path, "r+b") as f:
        head = f.read(100)
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        f.seek(0, 2)
        pages = f.tell() // page
        rnd = random.Random(seed)
        lo, hi = max(2, int(pages * first_frac)), max(3, int(pages * last_frac))
        for p in range(lo, hi):
            f.seek(p * page)
            f.write(bytes(rnd.getrandbits(8) for _ in range(page)))
    return lo, hi, pages


class Hardening(T.TestCase):
    def setup_hub(self, ndev=1):
        rows = hubctl.gen_devices(ndev, PK)
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        return hub, rows, keys

    def config(self, hub, rows, offline=False, **store):
        cfg = T.base_config(self.tmp)
        cfg["store"].update(store)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        if offline:
            for d in cfg["devices"]:
                d["port"] = 1  # nothing listens: messages stay queued
        return cfg

    def populate(self, hub, rows, keys, n=200, pad=1000):
        cfg = self.config(hub, rows, offline=True)
        dm = T.Daemon(self.tmp, cfg).start()
        self.assertEqual(publish_n(dm, keys[0], n, pad=pad), n)
        self.assertEqual(dm.stop(), 0)
        return cfg

    # ---- 1. a damaged outbox stops delivery loudly ----

    def test_damaged_pages_stop_the_daemon(self):
        hub, rows, keys = self.setup_hub()
        cfg = self.populate(hub, rows, keys)
        path = cfg["store"]["path"]
        self.assertFalse(os.path.exists(path + "-wal") and os.path.getsize(path + "-wal") > 0,
                         "a clean stop leaves everything in the database file")
        lo, hi, pages = damage_pages(path, 0.45, 0.55)
        with open(path, "rb") as f:
            damaged = f.read()
        # The operator's check finds it.
        chk = subprocess.run([T.ALIGWD, "--check-store", "-c", os.path.join(self.tmp, "aligw.json")],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(chk.returncode, 3, chk.stdout + chk.stderr)
        self.assertIn("DAMAGED", chk.stdout)
        # The daemon, now able to reach the hub, must refuse to start or stop with the message
        # within seconds of reaching the damage: never sit "online" with a stuck queue.
        cfg["devices"][0]["port"] = hub.info["mqtt_port"]
        dm = T.Daemon(self.tmp, cfg)
        dm.start(wait_ready=False)
        self.later(dm.stop)
        t0 = time.monotonic()
        rc = dm.proc.wait(30)
        took = time.monotonic() - t0
        log = dm.log()
        self.assertEqual(rc, 3, log[-3000:])
        self.assertIn("damaged", log)
        self.assertIn(path, log)
        self.assertLess(took, 20)
        delivered = len(hub.messages("/+/+/user/update"))
        print("damaged pages %d-%d of %d: %d of 200 delivered, stopped with exit 3 after %.1f s"
              % (lo, hi, pages, delivered, took))
        self.assertLess(delivered, 200)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), damaged, "the damaged file was written to")

    def test_check_store_on_an_intact_store(self):
        hub, rows, keys = self.setup_hub()
        self.populate(hub, rows, keys, n=20, pad=10)
        chk = subprocess.run([T.ALIGWD, "--check-store", "-c", os.path.join(self.tmp, "aligw.json")],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(chk.returncode, 0, chk.stdout + chk.stderr)
        self.assertEqual(chk.stdout.count(": ok"), 2, chk.stdout)

    # ---- 2. a missing or emptied outbox is not an empty queue ----

    def start_expecting_refusal(self, cfg, code=4):
        dm = T.Daemon(self.tmp, cfg)
        dm.start(wait_ready=False)
        self.later(dm.stop)
        rc = dm.proc.wait(20)
        log = dm.log()
        self.assertEqual(rc, code, log[-3000:])
        self.assertIn(cfg["store"]["path"], log)
        self.assertIn("--accept-store-loss", log)
        dm.stop()
        return log

    def test_deleted_outbox_refuses_start_until_accepted(self):
        hub, rows, keys = self.setup_hub()
        cfg = self.populate(hub, rows, keys, n=200, pad=10)
        path = cfg["store"]["path"]
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        self.assertIn("is missing", self.start_expecting_refusal(cfg))
        self.assertFalse(os.path.exists(path), "the refusal created a new outbox")
        # the operator accepts the loss once; from then on the new store is the one remembered
        dm = T.Daemon(self.tmp, cfg).start(extra_args=("--accept-store-loss",))
        self.assertEqual(dm.call("status")["result"]["queue"]["queued"], 0)
        self.assertIn("--accept-store-loss", dm.log())
        self.assertEqual(publish_n(dm, keys[0], 5), 5)
        self.assertEqual(dm.stop(), 0)
        dm = T.Daemon(self.tmp, cfg).start()
        self.assertEqual(dm.call("status")["result"]["queue"]["queued"], 5)
        self.assertEqual(dm.stop(), 0)

    def test_emptied_outbox_refuses_start(self):
        hub, rows, keys = self.setup_hub()
        cfg = self.populate(hub, rows, keys, n=200, pad=10)
        open(cfg["store"]["path"], "wb").close()
        self.assertIn("is empty", self.start_expecting_refusal(cfg))
        self.assertEqual(os.path.getsize(cfg["store"]["path"]), 0)

    def test_deleted_wal_after_kill9_refuses_start(self):
        hub, rows, keys = self.setup_hub()
        cfg = self.populate(hub, rows, keys, n=50, pad=10)  # a clean stop: all in the file
        dm = T.Daemon(self.tmp, cfg).start()
        self.assertEqual(publish_n(dm, keys[0], 200, pad=100, start=50), 200)
        time.sleep(1.5)  # the state database's record follows the outbox within a second
        dm.kill9()
        path = cfg["store"]["path"]
        self.assertGreater(os.path.getsize(path + "-wal"), 0, "the recent messages live in the WAL")
        os.unlink(path + "-wal")
        os.unlink(path + "-shm")
        log = self.start_expecting_refusal(cfg)
        self.assertIn("-wal file was probably deleted", log)

    # ---- 5. a device publishes only its own topics ----

    def test_api_publish_checks_the_topic_grammar(self):
        hub, rows, keys = self.setup_hub(2)
        dm = self.daemon(self.config(hub, rows, offline=True))
        me, other = keys
        pk, dn = me.split("/")
        _, odn = other.split("/")
        api = dm.api()
        self.later(api.close)

        def pub(topic, device=me):
            return api.call("publish", device=device, topic=topic, payload="{}")

        for bad in ("/%s/%s/user/update/%s/%s" % (pk, odn, pk, dn),  # the three
                    "/evil/%s/%s" % (pk, dn),
                    "/sys/%s/%s/thing/event/%s/%s" % (pk, odn, pk, dn),
                    "/%s/%s/other/x" % (pk, dn), "/%s/%s/user" % (pk, dn)):
            r = pub(bad)
            self.assertFalse(r["ok"], bad)
            self.assertEqual(r["error"]["code"], "bad_request", r)
            self.assertIn("topic", r["error"]["message"])
        for good in ("/%s/%s/user/update" % (pk, dn), "/sys/%s/%s/thing/event/property/post" % (pk, dn),
                     "/ota/device/inform/%s/%s" % (pk, dn), "/ext/ntp/%s/%s/request" % (pk, dn)):
            self.assertTrue(pub(good)["ok"], good)
        # an unknown device is said to be unknown, whatever the topic
        r = pub("/%s/nodev/user/update" % pk, device="%s/nodev" % pk)
        self.assertEqual(r["error"]["code"], "no_device", r)
        r = pub("/%s/%s/user/update" % (pk, dn), device="%s/nodev" % pk)
        self.assertEqual(r["error"]["code"], "no_device", r)


if __name__ == "__main__":
    T.main()
