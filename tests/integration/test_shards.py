"""Session shards: a fleet larger than cloud.devices_per_shard runs its Paho clients in
aligw-session-shard worker processes. The sessions are spread over them; uplink, acknowledgement
and downlink all cross the process boundary; a shard killed with SIGKILL in the middle of a
stream is started again and its devices resume from the outbox with nothing lost, in order."""
import os
import random
import signal
import threading
import time
import urllib.request

import aligwtest as T
import hubctl
from test_store import Producer, check_delivery

PK = "a1ShardTst"


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")[0].decode()
    except OSError:
        return ""


class Shards(T.TestCase):
    def start(self, ndev, per_shard, window=None, metrics_port=None):
        rows = hubctl.gen_devices(ndev, PK)
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        cfg = T.base_config(self.tmp)
        cfg["cloud"]["devices_per_shard"] = per_shard
        cfg["cloud"]["max_shards"] = 8  # not the machine's 2 per CPU: the tests count shards
        if window:
            cfg["store"].update(inflight=window, inflight_total=window * ndev)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        if metrics_port:
            cfg["metrics"] = {"listen": "127.0.0.1:%d" % metrics_port}
        dm = self.daemon(cfg)
        for k in keys:
            dm.wait_state(k, "online")
        return hub, rows, keys, dm

    def shards(self, dm):
        return dm.call("status")["result"]["shards"]

    def test_small_fleet_stays_in_one_process(self):
        hub, rows, keys, dm = self.start(2, 250)
        self.assertEqual(self.shards(dm), [])
        # this daemon's children only: other tests' shards run alongside (ctest -j2)
        pid = dm.proc.pid
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = [int(x) for x in f.read().split()]
        children = [k for k in kids if cmdline(k).endswith("aligw-session-shard")]
        self.assertEqual(children, [])

    def test_sessions_spread_and_every_path_crosses(self):
        port = hubctl.free_port()
        hub, rows, keys, dm = self.start(5, 2, metrics_port=port)
        sh = self.shards(dm)
        self.assertEqual(len(sh), 3, sh)
        self.assertEqual(sum(s["sessions"] for s in sh), 5)
        self.assertLessEqual(max(s["sessions"] for s in sh) - min(s["sessions"] for s in sh), 1)
        for s in sh:
            self.assertTrue(cmdline(s["pid"]).endswith("aligw-session-shard"), s)
            self.assertEqual(s["restarts"], 0)
        # uplink (acknowledged: the queue drains) on every device
        api = dm.api()
        for k in keys:
            pk, dn = k.split("/")
            r = api.call("publish", device=k, topic="/%s/%s/user/update" % (pk, dn),
                         payload='{"n": 1}', qos=1)
            self.assertTrue(r["ok"], r)
        T.wait_for(lambda: dm.call("status")["result"]["queue"]["queued"] == 0, 20,
                   what="every message acknowledged")
        self.assertEqual(len(hub.messages("/+/+/user/update")), 5)
        # downlink: a property set reaches the API watcher, the reply goes back up
        w = dm.api()
        w.call("watch", devices=[keys[4]], kinds=["property_set"])
        mid = hub.property_set(PK, rows[4]["device_name"], {"Power": "on"})
        ev = w.next_event(10)
        self.assertEqual((ev["event"], ev["id"], ev["params"]), ("property_set", mid,
                                                                 {"Power": "on"}))
        since = hub.mark()
        w.call("reply", device=keys[4], request_id=mid, code=200)
        m = hub.wait_message("/sys/%s/thing/service/property/set_reply" % keys[4], 5, since)
        self.assertIsNotNone(m)
        # the metrics say how many shards run
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            text = r.read().decode()
        self.assertIn("\naligw_session_shards 3\n", text)
        self.assertIn("\naligw_session_shard_restarts_total 0\n", text)
        w.close()
        api.close()

    def test_kill9_of_a_shard_during_stream(self):
        window = 8
        hub, rows, keys, dm = self.start(6, 2, window=window)
        rnd = random.Random(11)
        p = Producer(dm.socket_path, keys)
        t = threading.Thread(target=p.run, kwargs={"limit": 12000})
        t.start()
        killed = []
        try:
            for round_ in range(3):
                target = len(p.acked) + rnd.randint(500, 2500)
                T.wait_for(lambda: len(p.acked) >= target or not t.is_alive(), 30,
                           what="the stream to get going")
                sh = self.shards(dm)
                victim = rnd.randrange(len(sh))
                pid = sh[victim]["pid"]
                self.assertGreater(pid, 0, sh)
                os.kill(pid, signal.SIGKILL)
                killed.append((victim, pid))
                T.wait_for(lambda: self.shards(dm)[victim]["pid"] not in (0, pid), 15,
                           what="shard %d started again" % victim)
        finally:
            t.join(120)
            p.stop = True
        self.assertFalse(t.is_alive())
        self.assertEqual(p.errors, [])
        self.assertEqual(len(p.acked), 12000)
        T.wait_for(lambda: dm.call("status")["result"]["queue"]["queued"] == 0, 60,
                   what="the outbox to drain")
        got = check_delivery(self, hub, p.acked, window)
        sh = self.shards(dm)
        self.assertEqual(sum(s["restarts"] for s in sh), len(killed), sh)
        for victim, pid in killed:
            self.assertNotEqual(sh[victim]["pid"], pid)
        log = dm.log()
        self.assertIn("was killed by signal 9", log)
        # the devices of a killed shard reconnected (their sessions were reported lost)
        connects = {k: dm.device(k)["counters"]["connects"] for k in keys}
        for k in keys:
            self.assertEqual(dm.device(k)["state"], "online")
        self.assertGreaterEqual(sum(connects.values()) - len(keys), len(killed), connects)
        total = sum(len(v) for v in got.values())
        print("3 shard kills: %d acked, %d delivered (incl. duplicates)" % (len(p.acked), total))


    def test_hung_shard_is_killed_and_restarted(self):
        """A shard that stops answering (SIGSTOP: a deadlock looks the same from outside) is
        killed after 20 s without an answer to aligwd's pings and started again; its devices
        come back online and a message queued meanwhile is delivered."""
        hub, rows, keys, dm = self.start(4, 2)
        sh = self.shards(dm)
        pid = sh[0]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            T.wait_for(lambda: self.shards(dm)[0]["pid"] not in (0, pid), 40,
                       what="the stopped shard replaced")
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.assertIn("session shard 0 (pid %d) hung: no answer for 20000 ms" % pid, dm.log())
        self.assertEqual(self.shards(dm)[0]["restarts"], 1)
        for k in keys:
            dm.wait_state(k, "online", timeout=30)
        k = keys[0]
        pk, dn = k.split("/")
        since = hub.mark()
        r = dm.call("publish", device=k, topic="/%s/%s/user/update" % (pk, dn),
                    payload='{"n": 7}', qos=1)
        self.assertTrue(r["ok"], r)
        self.assertIsNotNone(hub.wait_message("/%s/%s/user/update" % (pk, dn), 10, since))


if __name__ == "__main__":
    T.main()
