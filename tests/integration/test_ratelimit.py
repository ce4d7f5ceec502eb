"""The per-device uplink rate limit against the hub's own limiter (the platform's ~30 msg/s per
device, code 429 above it): the default rate never trips it and the excess waits in the outbox;
without a limit the 429s appear; a platform limit lower than configured is learnt from the 429
replies (multiplicative decrease, slow additive recovery) and shown in status."""
import json
import time

import aligwtest as T
import hubctl

PK = "a1RateTest"


def offer(api, key, rate, seconds, start=0):
    """Posts properties at `rate` per second for `seconds` through the API; returns the count."""
    n = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(n):
        r = api.call("post_properties", device=key, params={"N": start + i})
        assert r.get("ok"), r
        delay = t0 + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return n


class RateLimit(T.TestCase):
    def setup(self, hub_rate, rate=None):
        rows = hubctl.gen_devices(1, PK)
        hub = hubctl.Hub(rows, rate=hub_rate, rate_mode="reply").start()
        self.later(hub.stop)
        extra = {} if rate is None else {"rate": rate}
        dev = T.hub_device_config(hub, rows[0], **extra)
        dm = self.daemon(T.base_config(self.tmp, devices=[dev]))
        key = "%s/%s" % (PK, rows[0]["device_name"])
        dm.wait_state(key, "online")
        post = "/sys/%s/%s/thing/event/property/post" % (PK, rows[0]["device_name"])
        return hub, dm, key, post

    def replies_429(self, hub, since=0):
        return [m for m in hub.messages("/sys/+/+/thing/event/property/post_reply", since)
                if json.loads(m.payload).get("code") == 429]

    def test_default_rate_never_trips_the_platform_limit(self):
        hub, dm, key, post = self.setup(30)  # aligwd's default rate, the platform's 30/s
        self.assertEqual(dm.device(key)["rate"], 30)
        api = dm.api()
        self.later(api.close)
        n = offer(api, key, 100, 3)
        # the excess waits in the outbox: 300 offered in 3 s, at most ~105 could have gone
        self.assertGreater(dm.device(key)["queued"], 100)
        T.wait_for(lambda: len(hub.messages(post)) >= n, 30, what="every message at the hub")
        time.sleep(0.5)
        dev = hub.counters()["devices"][key]
        self.assertEqual(dev["rate_limited"], 0, dev)
        self.assertEqual(len(hub.messages(post)), n)
        self.assertEqual(self.replies_429(hub), [])
        st = dm.device(key)
        self.assertEqual((st["queued"], st["counters"]["throttled"], st["rate"]), (0, 0, 30), st)

    def test_unlimited_rate_meets_the_429s(self):
        hub, dm, key, post = self.setup(30, rate=0)
        api = dm.api()
        self.later(api.close)
        offer(api, key, 100, 2)
        T.wait_for(lambda: hub.counters()["devices"][key]["rate_limited"] > 0, 10,
                   what="the hub's limiter to reject")
        T.wait_for(lambda: self.replies_429(hub), 10, what="429 replies")
        T.wait_for(lambda: dm.device(key)["counters"]["throttled"] > 0, 10,
                   what="aligwd to count the 429s")

    def test_a_lower_platform_limit_is_learnt_from_429s(self):
        # The platform allows 10/s, aligwd is configured for 30/s: the 429 replies halve the
        # device's rate, which then creeps back up by 1 msg/s every 5 s without a 429.
        hub, dm, key, post = self.setup(10, rate=30)
        api = dm.api()
        self.later(api.close)
        offer(api, key, 40, 4)
        first = hub.counters()["devices"][key]["rate_limited"]
        st = dm.device(key)
        self.assertLess(st["rate"], 30, st)
        self.assertGreater(st["counters"]["throttled"], 0, st)
        offer(api, key, 40, 4, start=1000)
        time.sleep(1)
        second = hub.counters()["devices"][key]["rate_limited"] - first
        st = dm.device(key)
        print("rejected: first 4 s %d, next 4 s %d; rate now %s" % (first, second, st["rate"]))
        # Sending at the configured 30/s would have had ~20 of every 30 rejected (~80 per 4 s).
        self.assertLess(first, 40)
        self.assertLess(second, 20)
        self.assertLessEqual(st["rate"], 12, st)
        self.assertIn("429", dm.log())


if __name__ == "__main__":
    T.main()
