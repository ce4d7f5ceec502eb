"""Network awareness, in a network namespace of the test's own: the test enters a new one
(unshare(CLONE_NEWNET), as `unshare -n` does) before anything else, so the hub and aligwd it
starts live inside it. The devices reach the hub at 10.77.0.1, an address of the namespace's
own, which the test removes and gives back (`ip addr`): like a modem's link going, the route
to the endpoint goes with it. (Taking lo itself down would not do: the kernel keeps loopback's
local routes.) Route gone: every device shows no-network within seconds, its session closed,
with no connect attempt and no back-off growth however long it lasts; route back: all online
again at once, through the pacer, not after a back-off grown during the outage."""
import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import time

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def set_link(name, up):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        flags = flags | IFF_UP if up else flags & ~IFF_UP
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags))
    finally:
        s.close()


def enter_namespace():
    """None once in a namespace of our own with lo up, else why not (no CAP_SYS_ADMIN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return "unshare(CLONE_NEWNET): %s" % os.strerror(ctypes.get_errno())
    set_link("lo", True)
    return None


# Before any thread exists: a namespace belongs to the thread that enters it and its children.
NS_ERROR = enter_namespace()

import unittest  # noqa: E402

import aligwtest as T  # noqa: E402
import hubctl  # noqa: E402

PK = "a1NetTest"
ADDR = "10.77.0.1"
hubctl.LISTEN = "0.0.0.0"  # inside the namespace only


def address(add):
    subprocess.run(["ip", "addr", "add" if add else "del", ADDR + "/32", "dev", "lo"],
                   check=True)


@unittest.skipIf(NS_ERROR, NS_ERROR or "")
class Network(T.TestCase):
    def tearDown(self):
        subprocess.run(["ip", "addr", "del", ADDR + "/32", "dev", "lo"], capture_output=True)
        super().tearDown()

    def states(self, dm, keys):
        return [dm.device(k)["state"] for k in keys]

    def test_link_down_and_up(self):
        rows = hubctl.gen_devices(3, PK)
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        cfg = T.base_config(self.tmp)
        # A back-off that would have grown to many seconds over the outage without the watch.
        cfg["cloud"].update(backoff_min_ms=2000, backoff_max_ms=120000)
        address(True)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0, host=ADDR) for r in rows]
        dm = self.daemon(cfg)
        for k in keys:
            dm.wait_state(k, "online")
        api = dm.api()
        self.later(api.close)
        r = api.call("publish", device=keys[0], topic="/%s/user/update" % keys[0],
                     payload='{"n": 1}')
        self.assertTrue(r["ok"], r)

        address(False)
        t0 = time.monotonic()
        T.wait_for(lambda: self.states(dm, keys) == ["no-network"] * 3, 10,
                   what="every device to show no-network")
        took = time.monotonic() - t0
        self.assertIn("no route to " + ADDR, dm.device(keys[1]).get("last_error", ""))
        st = dm.call("status")["result"]
        self.assertEqual(st["states"].get("no-network"), 3, st["states"])
        self.assertTrue(st["network"]["watch"])
        self.assertGreaterEqual(st["network"]["changes"], 1)
        # accepted while there is no network: kept, and delivered once it is back
        r = api.call("publish", device=keys[0], topic="/%s/user/update" % keys[0],
                     payload='{"n": 2}')
        self.assertTrue(r["ok"], r)
        failed_before = dm.log().count("connect failed")
        time.sleep(8)
        self.assertEqual(self.states(dm, keys), ["no-network"] * 3)
        self.assertEqual(dm.log().count("connect failed"), failed_before,
                         "connect attempts were made with no route")
        self.assertNotIn("next attempt in", dm.log().split("no route to")[-1])

        since = hub.mark()
        address(True)
        t1 = time.monotonic()
        T.wait_for(lambda: self.states(dm, keys) == ["online"] * 3, 10,
                   what="every device online again")
        back = time.monotonic() - t1
        # at once (the settle time and one login), not after a back-off grown over 8 s: that
        # would be its fourth step, 8 to 16 s
        self.assertLess(back, 5, "reconnected %.1f s after the route came back" % back)
        self.assertIn("a route is back: 3 device(s) reconnecting", dm.log())
        T.wait_for(lambda: any(b'"n": 2' in m.payload or b'"n":2' in m.payload
                               for m in hub.messages("/%s/user/update" % keys[0], since)),
                   15, what="the message accepted during the outage at the hub")
        print("no-network after %.1f s, online again %.1f s after the link came up" %
              (took, back))


if __name__ == "__main__":
    T.main()
