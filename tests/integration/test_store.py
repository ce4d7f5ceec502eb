"""Store-and-forward fault tests. Each one counts on the hub side what the daemon accepted:
every message answered ok must arrive at least once, in order per device."""
import json
import os
import random
import subprocess
import threading
import time

import aligwtest as T
import hubctl

PK = "a1StoreTst"


class Producer:
    """Pipelines publish requests on one API connection; remembers which were answered ok."""

    def __init__(self, socket_path, keys, start=0, window=200, pad=0):
        self.pad = "x" * pad
        self.socket_path = socket_path
        self.keys = keys
        self.n = start
        self.window = window
        self.acked = []  # (key, n)
        self.errors = []
        self.stop = False

    def run(self, limit=None):
        try:
            api = T.Api(self.socket_path, timeout=5)
        except OSError:
            return
        inflight = {}
        try:
            while not self.stop and (limit is None or self.n < limit or inflight):
                while len(inflight) < self.window and not self.stop and \
                        (limit is None or self.n < limit):
                    key = self.keys[self.n % len(self.keys)]
                    pk, dn = key.split("/")
                    rid = api.send({"op": "publish", "device": key,
                                    "topic": "/%s/%s/user/update" % (pk, dn),
                                    "payload": json.dumps({"n": self.n, "pad": self.pad}),
                                    "qos": 1})
                    inflight[rid] = (key, self.n)
                    self.n += 1
                msg = api.read_line()
                item = inflight.pop(msg.get("id"), None)
                if item is None:
                    continue
                if msg.get("ok"):
                    self.acked.append(item)
                else:
                    self.errors.append((item, msg["error"]))
        except (OSError, EOFError, ValueError):
            pass  # the daemon was killed: what was acked so far is what was promised
        finally:
            api.close()


def received(hub):
    """{key: [n, ...]} in arrival order, from everything devices published on user/update."""
    out = {}
    for m in hub.messages("/+/+/user/update"):
        parts = m.topic.split("/")
        out.setdefault("%s/%s" % (parts[1], parts[2]), []).append(json.loads(m.payload)["n"])
    return out


def check_delivery(test, hub, acked, window, timeout=60):
    # The cloud-side recorder (a Python client) may lag behind on a loaded machine: wait until
    # it has seen every acked message, or the time-out, before judging.
    want = {}
    for key, n in acked:
        want.setdefault(key, set()).add(n)

    def complete():
        g = received(hub)
        return all(ns <= set(g.get(k, ())) for k, ns in want.items())

    try:
        T.wait_for(complete, timeout, interval=0.5, what="every acked message at the hub")
    except AssertionError:
        pass  # the assertions below say which ones are missing
    got = received(hub)
    by_key = {}
    for key, n in acked:
        by_key.setdefault(key, []).append(n)
    for key, ns in by_key.items():
        seq = got.get(key, [])
        have = set(seq)
        missing = [n for n in ns if n not in have]
        test.assertEqual(missing, [], "%s: %d acked messages never arrived" % (key, len(missing)))
        # order: first arrivals come in the order they were produced
        first = []
        seen = set()
        for n in seq:
            if n not in seen:
                seen.add(n)
                first.append(n)
        test.assertEqual(first, sorted(first), "%s: first deliveries out of order" % key)
        # Duplicates only within the in-flight window: a repeat never goes further back than
        # the window from the newest message seen before it, counted in the device's own
        # messages (its first arrivals: numbers the API never answered before a kill leave gaps
        # in n, so n itself is no measure). A message acknowledged by the platform keeps its
        # place in the window until its delete commits, so one window is what a kill -9 may
        # repeat; the bound leaves a second one for a kill during the repeat.
        rank = {n: i for i, n in enumerate(first)}
        newest = -1
        for n in seq:
            if n < newest:
                test.assertLess(rank[newest] - rank[n], 2 * window,
                                "%s: %d repeated %d messages behind the newest, %d" %
                                (key, n, rank[newest] - rank[n], newest))
            newest = max(newest, n)
    return got


class SilentBroker:
    """An MQTT 3.1.1 server that logs anyone in, answers SUBSCRIBE and PINGREQ, and never
    acknowledges a PUBLISH: a connection that looks alive but holds every QoS 1 message in flight.
    mosquitto cannot be made to behave like this, so this small fault injector stands in for it.
    Records the CONNECTs and the PUBLISH payloads it swallowed."""

    def __init__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connects = 0
        self.publishes = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _read(c, n):
        b = b""
        while len(b) < n:
            chunk = c.recv(n - len(b))
            if not chunk:
                raise EOFError
            b += chunk
        return b

    def _serve(self, c):
        try:
            while not self.stopped:
                head = self._read(c, 1)[0]
                length, shift = 0, 0
                while True:
                    byte = self._read(c, 1)[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = self._read(c, length)
                kind = head >> 4
                if kind == 1:  # CONNECT
                    self.connects += 1
                    c.sendall(b"\x20\x02\x00\x00")
                elif kind == 8:  # SUBSCRIBE: grant every filter at QoS 1
                    pos, granted = 2, b""
                    while pos < len(body):
                        tl = int.from_bytes(body[pos:pos + 2], "big")
                        pos += 2 + tl + 1
                        granted += b"\x01"
                    c.sendall(bytes([0x90, 2 + len(granted)]) + body[:2] + granted)
                elif kind == 12:  # PINGREQ
                    c.sendall(b"\xd0\x00")
                elif kind == 3:  # PUBLISH: swallowed, never acknowledged
                    tl = int.from_bytes(body[:2], "big")
                    qos = (head >> 1) & 3
                    self.publishes.append(body[2 + tl + (2 if qos else 0):])
                elif kind == 14:  # DISCONNECT
                    break
        except (EOFError, OSError):
            pass
        finally:
            c.close()


class StoreFaults(T.TestCase):
    def setup_hub(self, ndev=3):
        rows = hubctl.gen_devices(ndev, PK)
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        return hub, rows, keys

    def config(self, hub, rows, **store):
        cfg = T.base_config(self.tmp)
        cfg["store"].update(store)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        return cfg

    def wait_drained(self, dm, timeout=60):
        T.wait_for(lambda: dm.call("status")["result"]["queue"]["queued"] == 0, timeout,
                   what="the outbox to drain")

    def test_kill9_during_stream(self):
        hub, rows, keys = self.setup_hub()
        # The total as small as one window: no device's window stretches, so the duplicate bound
        # below is exactly 2 windows. (With 32-message windows under ASan, a few messages
        # delivered long before a kill were sometimes resent after it: see issue 5's notes.)
        window = 8
        dm = self.daemon(self.config(hub, rows, inflight=window, inflight_total=window),
                         start=False)
        acked = []
        n = 0
        rnd = random.Random(7)
        kills = 12
        for i in range(kills):
            dm.start()
            p = Producer(dm.socket_path, keys, start=n)
            # a bounded stream per round, killed at a random moment, usually in the middle of it
            t = threading.Thread(target=p.run, kwargs={"limit": n + 6000})
            t.start()
            # kill once a random share of the round is answered, so the kill lands mid-stream
            # however fast the daemon accepts
            target = len(p.acked) + rnd.randint(300, 5700)
            deadline = time.monotonic() + 10
            while len(p.acked) < target and t.is_alive() and time.monotonic() < deadline:
                time.sleep(0.001)
            dm.kill9()
            p.stop = True
            t.join(10)
            acked += p.acked
            n = p.n
        self.assertGreater(len(acked), 200, "the producer got too few messages through")
        self.assertLess(len(acked), n, "no kill landed in the middle of a stream")
        dm.start()
        self.wait_drained(dm)
        got = check_delivery(self, hub, acked, window)
        total = sum(len(v) for v in got.values())
        print("kill -9 x%d: %d acked, %d delivered (incl. duplicates)" % (kills, len(acked), total))

    def test_hub_down_then_back(self):
        hub, rows, keys = self.setup_hub()
        cfg = self.config(hub, rows)
        cfg["cloud"].update(backoff_min_ms=200, backoff_max_ms=500)
        dm = self.daemon(cfg)
        for k in keys:
            dm.wait_state(k, "online")
        # take the broker away and queue while it is gone
        p = Producer(dm.socket_path, keys)
        broker = hub._procs[0]
        broker.terminate()
        broker.wait(10)
        T.wait_for(lambda: dm.call("devices")["result"]["online"] == 0, 10, what="all offline")
        p.run(limit=600)
        self.assertEqual(len(p.acked), 600)
        st = dm.call("status")["result"]["queue"]
        self.assertEqual(st["queued"], 600)
        self.assertGreater(st["oldest_ms"], 0)
        # back: everything goes out. The daemon is held (SIGSTOP) until the hub's recorder is
        # subscribed again: a daemon reconnecting first delivered into a recorder not yet
        # listening, and the test saw fewer than 600 (a fresh-clone scripts/test.sh run, ASan).
        T.start_broker(hub, freeze=dm)
        self.wait_drained(dm, 60)
        T.wait_for(lambda: sum(len(v) for v in received(hub).values()) >= 600, 10,
                   what="the cloud to see all 600")
        check_delivery(self, hub, p.acked, 32 * 4)  # default store.inflight, stretched

    def test_ttl_expiry(self):
        hub, rows, keys = self.setup_hub(1)
        cfg = self.config(hub, rows, ttl=1)
        cfg["devices"][0]["port"] = 1  # nothing listens: the device stays offline
        dm = self.daemon(cfg)
        p = Producer(dm.socket_path, keys)
        p.run(limit=50)
        self.assertEqual(len(p.acked), 50)
        key = keys[0]
        st = T.wait_for(lambda: (lambda s: s if s.get("expired", 0) == 50 else None)(
            dm.device(key)), 15, what="50 expired")
        self.assertEqual(st["queued"], 0)
        self.assertIn("expired", dm.log())
        # logged once per burst, not once per message
        self.assertLess(dm.log().count("expired"), 5)

    def test_reject_new_at_cap(self):
        hub, rows, keys = self.setup_hub(1)
        cfg = self.config(hub, rows, max_bytes=65536, policy="reject-new")
        cfg["devices"][0]["port"] = 1  # offline: the store fills up
        dm = self.daemon(cfg)
        p = Producer(dm.socket_path, keys, window=1, pad=400)
        p.run(limit=400)
        self.assertGreater(len(p.acked), 10)
        self.assertGreater(len(p.errors), 0)
        codes = {e[1]["code"] for e in p.errors}
        self.assertEqual(codes, {"store_full"})
        self.assertIn("store full", p.errors[0][1]["message"])
        # what was accepted is delivered once the device comes online
        cfg["devices"][0]["port"] = hub.info["mqtt_port"]
        dm.write_config(cfg)
        dm.signal(__import__("signal").SIGHUP)
        self.wait_drained(dm, 30)
        check_delivery(self, hub, p.acked, 32 * 4)  # default store.inflight, stretched
        self.assertEqual(sum(len(v) for v in received(hub).values()), len(p.acked))

    def test_large_window_keeps_order(self):
        # A window far above Paho's default 100-message buffer: every message must go out once,
        # in order. With Paho's cap in place a publish past it was refused while the next one
        # was taken, so a later message overtook it and the resend duplicated the window.
        hub, rows, keys = self.setup_hub(1)
        cfg = self.config(hub, rows, inflight=300)
        cfg["devices"][0]["port"] = 1  # offline while the backlog builds up
        dm = self.daemon(cfg)
        p = Producer(dm.socket_path, keys, window=200)
        p.run(limit=1500)
        self.assertEqual(len(p.acked), 1500)
        cfg["devices"][0]["port"] = hub.info["mqtt_port"]
        dm.write_config(cfg)
        dm.signal(__import__("signal").SIGHUP)
        self.wait_drained(dm, 30)
        T.wait_for(lambda: sum(len(v) for v in received(hub).values()) >= 1500, 10,
                   what="the cloud to see all 1500")
        time.sleep(0.3)
        self.assertEqual(received(hub)[keys[0]], list(range(1500)))
        self.assertEqual(dm.call("device", device=keys[0])["result"]["counters"]["messages_out"],
                         1500)

    def test_unacknowledged_device_does_not_hold_others(self):
        # Device A's connection answers pings but never PUBACKs; with the in-flight total as small
        # as A's window, device B could only deliver if A's window is taken back. The
        # acknowledgement watchdog closes A's session after cloud.ack_timeout_ms and sends A's
        # messages again on a new one.
        hub, rows, keys = self.setup_hub(2)
        silent = SilentBroker()
        self.later(silent.stop)
        cfg = self.config(hub, rows, inflight=8, inflight_total=8)
        cfg["cloud"].update(ack_timeout_ms=1500, backoff_min_ms=200, backoff_max_ms=400)
        cfg["devices"][0]["port"] = 1  # A offline while its messages queue up
        dm = self.daemon(cfg)
        a, b = keys
        dm.wait_state(b, "online")
        api = T.Api(dm.socket_path)
        for i in range(20):
            pk, dn = a.split("/")
            api.call("publish", device=a, topic="/%s/%s/user/update" % (pk, dn),
                     payload=json.dumps({"n": i}), qos=1)
        # A comes online on the silent connection and takes its whole window: the whole total
        cfg["devices"][0]["port"] = silent.port
        dm.write_config(cfg)
        dm.signal(__import__("signal").SIGHUP)
        T.wait_for(lambda: dm.call("device", device=a)["result"]["inflight"] == 8, 10,
                   what="device A to hold the whole in-flight total")
        for i in range(20):
            pk, dn = b.split("/")
            r = api.call("publish", device=b, topic="/%s/%s/user/update" % (pk, dn),
                         payload=json.dumps({"n": i}), qos=1)
            self.assertTrue(r["ok"], r)
        api.close()
        T.wait_for(lambda: len(received(hub).get(b, [])) >= 20, 20,
                   what="device B's messages past device A's stuck window")
        self.assertEqual(received(hub)[b], list(range(20)))
        st = dm.call("device", device=a)["result"]
        self.assertGreaterEqual(st["counters"]["ack_timeouts"], 1)
        # A's session is opened again and its oldest message goes out again on it; still queued
        T.wait_for(lambda: silent.connects >= 2, 10, what="device A to log in again")
        T.wait_for(lambda: sum(json.loads(p) == {"n": 0} for p in silent.publishes) >= 2, 10,
                   what="device A's oldest message sent again")
        self.assertEqual(st["queued"], 20)
        self.assertIn("no acknowledgement", dm.log())

    def restart_broker_under(self, hub, dm):
        """Stops the hub's broker while aligwd has messages in flight and starts it again.
        aligwd is frozen (SIGSTOP) first so the recorder can take everything the broker already
        acknowledged (the hub keeps nothing across a restart, and that would be the hub's loss,
        not the gateway's), and thawed only once the recorder has subscribed again."""
        import signal
        os.kill(dm.proc.pid, signal.SIGSTOP)
        try:
            # The recorder takes what the broker already has: wait until it has been quiet for
            # half a second (a fixed 0.3 s lost messages to the kill on a loaded machine).
            deadline, last, quiet_since = time.monotonic() + 15, -1, time.monotonic()
            while time.monotonic() < deadline:
                n = hub.mark()
                if n != last:
                    last, quiet_since = n, time.monotonic()
                elif time.monotonic() - quiet_since >= 0.5:
                    break
                time.sleep(0.05)
            broker = hub._procs[0]
            broker.kill()
            broker.wait(10)
            with open(os.path.join(hub.dir, "mosquitto.log"), "ab") as lf:
                hub._procs[0] = subprocess.Popen(
                    ["mosquitto", "-c", os.path.join(hub.dir, "mosquitto.conf")], stdout=lf,
                    stderr=lf, stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 30
            while True:  # a probe of the cloud client's own comes back: it is subscribed again
                mark = hub.mark()
                hub.cloud.publish("aligw-test/probe", "x", qos=0)
                if hub.wait_message("aligw-test/probe", 0.3, since=mark):
                    break
                self.assertLess(time.monotonic(), deadline, "the hub's recorder never came back")
        finally:
            os.kill(dm.proc.pid, signal.SIGCONT)

    def test_broker_restarts_with_messages_in_flight(self):
        # clean_session off (the default) and a server that comes back without the session: the
        # messages in flight at the loss must go out again, in order, and none may be taken for
        # delivered (bench/soak once saw a message deleted unsent: Paho reused the lost
        # connection's packet ids on a reused client).
        hub, rows, keys = self.setup_hub(3)
        cfg = self.config(hub, rows)
        cfg["cloud"].update(backoff_min_ms=100, backoff_max_ms=300)
        dm = self.daemon(cfg)
        for k in keys:
            dm.wait_state(k, "online")
        p = Producer(dm.socket_path, keys, window=200)
        t = threading.Thread(target=p.run, kwargs={"limit": 30000})
        t.start()
        for _ in range(3):
            time.sleep(0.4)
            self.restart_broker_under(hub, dm)
        t.join(120)
        self.assertEqual(len(p.acked), 30000)
        self.wait_drained(dm, 60)
        T.wait_for(lambda: sum(len(v) for v in received(hub).values()) >= 30000, 20,
                   what="the cloud to see every message")
        check_delivery(self, hub, p.acked, 32 * 4)  # default store.inflight, stretched

    def test_full_disk(self):
        mnt = os.path.join(self.tmp, "small")
        os.makedirs(mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", mnt],
                           capture_output=True)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: %s" % r.stderr.decode().strip())
        self.later(lambda: subprocess.run(["umount", "-l", mnt]))
        hub, rows, keys = self.setup_hub(1)
        cfg = self.config(hub, rows, path=os.path.join(mnt, "outbox.db"))
        cfg["devices"][0]["port"] = 1  # offline until we say so
        dm = self.daemon(cfg)
        p = Producer(dm.socket_path, keys, window=20)
        big = "x" * 2000
        api = dm.api()
        acked, full = [], 0
        for i in range(600):
            r = api.call("publish", device=keys[0], topic="/%s/%s/user/update" % tuple(
                keys[0].split("/")), payload=json.dumps({"n": i, "pad": big}), qos=1)
            if r["ok"]:
                acked.append((keys[0], i))
            else:
                self.assertEqual(r["error"]["code"], "store_full", r)
                full += 1
                if full > 20:
                    break
        api.close()
        self.assertGreater(full, 0, "the 512 KiB filesystem never filled up")
        self.assertGreater(len(acked), 10)
        self.assertIsNone(dm.proc.poll(), "the daemon died on a full disk")
        # the daemon keeps delivering what it has
        cfg["devices"][0]["port"] = hub.info["mqtt_port"]
        dm.write_config(cfg)
        dm.signal(__import__("signal").SIGHUP)
        self.wait_drained(dm, 30)
        check_delivery(self, hub, acked, 32 * 4)  # default store.inflight, stretched
        del p


class StoreDamage(T.TestCase):
    def test_corrupt_database_stops_with_clear_error(self):
        cfg = T.base_config(self.tmp)
        os.makedirs(os.path.join(self.tmp, "state"), exist_ok=True)
        path = cfg["store"]["path"]
        junk = b"this is not a database" * 100
        with open(path, "wb") as f:
            f.write(junk)
        d = T.Daemon(self.tmp, cfg)
        d.start(wait_ready=False)
        self.later(d.stop)
        rc = d.proc.wait(10)
        self.assertNotEqual(rc, 0)
        self.assertIn(path, d.log())
        with open(path, "rb") as f:
            self.assertEqual(f.read(), junk, "the damaged file was modified")


if __name__ == "__main__":
    T.main()
