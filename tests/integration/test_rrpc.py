"""RRPC, the platform's synchronous calls, against the hub: the /sys/.../rrpc/request form with
raw bytes both ways, the ext=3 forms (/ext/rrpc/<id>/sys/... service calls and the custom form
/ext/rrpc/<id>//pk/dn/user/...), the caller's code honoured, and the 8 s budget: an unanswered
call is answered (or left to the platform's TIMEOUT) inside it, and a late reply is told so."""
import base64
import os
import subprocess
import threading
import time

import aligwtest as T
import hubctl

PK = "a1RrpcTest"


def in_thread(fn, *args, **kw):
    """Runs a blocking hub call (it waits for the device's answer) beside the test."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn(*args, **kw)), daemon=True)
    t.start()
    return t, out


class Rrpc(T.TestCase):
    def start(self, ext_rrpc=False, **cfg_over):
        rows = hubctl.gen_devices(1, PK, topics="get:sub;update:pub")
        hub = hubctl.Hub(rows).start()
        self.later(hub.stop)
        dn = rows[0]["device_name"]
        cfg = T.base_config(self.tmp, **cfg_over)
        dev = T.hub_device_config(hub, rows[0], rate=0,
                                  topics=["/%s/%s/user/get" % (PK, dn)])
        if ext_rrpc:
            dev["ext_rrpc"] = True
        cfg["devices"] = [dev]
        dm = self.daemon(cfg)
        key = "%s/%s" % (PK, dn)
        dm.wait_state(key, "online")
        w = dm.api()
        self.assertTrue(w.call("watch", devices=[key], kinds=["service_call"])["ok"])
        return hub, dn, key, dm, w

    def test_raw_bytes_both_ways(self):
        hub, dn, key, dm, w = self.start()
        lc = hub.last_connect(PK, dn)
        self.assertNotIn("ext=3", lc["client_id"])  # not announced unless configured
        request = b"\x00\x01\xfe binary"
        t, out = in_thread(hub.rrpc, PK, dn, request, timeout=8)
        ev = w.next_event(8)
        self.assertEqual(ev["service"], "rrpc")
        self.assertEqual(base64.b64decode(ev["payload_b64"]), request)
        self.assertEqual(ev["params"], {})  # not JSON: only the bytes carry it
        answer = b"\xff\x00answer"
        r = w.call("reply", device=key, request_id=ev["id"], code=200,
                   payload_b64=base64.b64encode(answer).decode())
        self.assertTrue(r["ok"], r)
        t.join(9)
        self.assertEqual(out.get("v"), answer)
        # JSON still works as before (data serialized as the answer)
        t, out = in_thread(hub.rrpc, PK, dn, b'{"valve":3}', timeout=8)
        ev = w.next_event(8)
        self.assertEqual(ev["params"], {"valve": 3})
        r = w.call("reply", device=key, request_id=ev["id"], code=200, data={"ok": True})
        self.assertTrue(r["ok"], r)
        t.join(9)
        self.assertEqual(out.get("v"), b'{"ok":true}')
        # raw bytes answer RRPC only
        w2 = dm.api()
        w2.call("watch", devices=[key], kinds=["property_set"])
        hub.property_set(PK, dn, {"Power": "off"}, msg_id="991")
        ev = w2.next_event(8)
        r = w.call("reply", device=key, request_id=ev["id"], code=200, payload_b64="AA==")
        self.assertFalse(r["ok"])
        self.assertIn("RRPC request only", r["error"]["message"])
        w2.close()
        w.close()

    def test_ext_forms_announced_and_answered_on_their_topic(self):
        hub, dn, key, dm, w = self.start(ext_rrpc=True)
        lc = hub.last_connect(PK, dn)
        self.assertIn("ext=3", lc["client_id"])
        # the custom form: bytes in, bytes out, on the request's own topic
        t, out = in_thread(hub.rrpc_custom, PK, dn, "get", b"\x10read", timeout=8)
        ev = w.next_event(8)
        self.assertEqual(ev["service"], "rrpc")
        self.assertEqual(ev["rrpc_topic"], "/%s/%s/user/get" % (PK, dn))
        self.assertTrue(ev["topic"].startswith("/ext/rrpc/%s//" % ev["rrpc_id"]), ev)
        self.assertEqual(base64.b64decode(ev["payload_b64"]), b"\x10read")
        # answered with aligwctl this time
        r = subprocess.run([T.ALIGWCTL, "reply", key, ev["id"], "200", "--bytes-b64",
                            base64.b64encode(b"\x20value").decode()],
                           capture_output=True, text=True, timeout=20,
                           env=dict(os.environ, ALIGW_SOCKET=dm.socket_path))
        self.assertEqual(r.returncode, 0, r.stderr)
        t.join(9)
        self.assertEqual(out.get("v"), b"\x20value")
        # a synchronous service call: the caller's code and message reach the platform
        t, out = in_thread(hub.rrpc_service, PK, dn, "Reboot", {"Delay": 1}, timeout=8)
        ev = w.next_event(8)
        self.assertEqual(ev["service"], "Reboot")
        self.assertTrue(ev["rrpc_id"])
        r = w.call("reply", device=key, request_id=ev["id"], code=460, message="busy")
        self.assertTrue(r["ok"], r)
        t.join(9)
        body = out.get("v")
        self.assertIsNotNone(body, "no answer on the /ext/rrpc topic")
        self.assertEqual((body["id"], body["code"], body["message"]), (ev["id"], 460, "busy"))
        w.close()

    def test_budget_inside_the_platforms_8_s(self):
        """With service_timeout_ms far above 8 s, a synchronous call still gets its error
        within the platform's budget; a raw one is left to the platform's TIMEOUT; a reply after
        that is refused as too late."""
        hub, dn, key, dm, w = self.start(ext_rrpc=True, api={"service_timeout_ms": 60000})
        t0 = time.time()
        ts, svc = in_thread(hub.rrpc_service, PK, dn, "Reboot", {}, timeout=9)
        ev_svc = w.next_event(8)
        tr, raw = in_thread(hub.rrpc, PK, dn, b"\x01", timeout=9)
        ev_raw = w.next_event(8)
        ts.join(10)
        self.assertIsNotNone(svc.get("v"), "no error answer within the platform's 8 s")
        self.assertEqual(svc["v"]["code"], 504)
        self.assertLess(time.time() - t0, 8.5)
        tr.join(10)
        self.assertIsNone(raw.get("v"))  # bytes have no error envelope: TIMEOUT at the caller
        r = w.call("reply", device=key, request_id=ev_raw["id"], code=200, payload_b64="AA==")
        self.assertFalse(r["ok"])
        self.assertEqual(r["error"]["code"], "timeout")
        self.assertIn("too late", r["error"]["message"])
        r = w.call("reply", device=key, request_id=ev_svc["id"], code=200)
        self.assertFalse(r["ok"])
        self.assertIn("504", r["error"]["message"])
        self.assertIn("RRPC", dm.log())
        w.close()


if __name__ == "__main__":
    T.main()
