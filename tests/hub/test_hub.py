#!/usr/bin/python3
"""The local hub's own tests: a real mosquitto with aligw_hub.so, real sockets, real SQLite.

Device side: python3-paho-mqtt with signs computed here (hubctl.login_creds, Python's hmac), so
the C plugin is checked against an independent implementation. Run by CTest with
ALIGW_HUB_PLUGIN set; by hand: ALIGW_HUB_PLUGIN=build/tests/hub/aligw_hub.so python3 test_hub.py
"""
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hubctl  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

PK, PKR, PKN = "pkA1", "pkReg1", "pkNo1"


def table():
    rows = hubctl.gen_devices(9, PK, prefix="d")
    rows[7]["hub_topics"] = "update:pub;get:sub;data:all"
    reg = hubctl.gen_devices(6, PKR, dynreg="both", register="https", prefix="r")
    reg[5]["hub_active"] = "1"
    no = hubctl.gen_devices(1, PKN, dynreg="no", prefix="n")
    return rows + reg + no


class Dev:
    """One device-side MQTT connection."""

    def __init__(self, hub, cid, user, pw, tls=False, keepalive=300, clean_session=True):
        self.hub = hub
        self.rc = None
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.msgs = []
        self.cond = threading.Condition()
        self.suback = {}
        self.c = mqtt.Client(client_id=cid, clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(user, pw)
        if tls:
            self.c.tls_set(ca_certs=hub.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda c, u, rc: self.gone.set()
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda c, u, mid, granted: self.suback.__setitem__(mid, granted)
        self.c.connect(hub.host, hub.mqtts_port if tls else hub.mqtt_port, keepalive=keepalive)
        self.c.loop_start()
        self.connected.wait(5)

    def _on_connect(self, c, u, flags, rc):
        self.rc = rc
        self.connected.set()
        if rc != 0:
            c.disconnect()

    def _on_message(self, c, u, m):
        with self.cond:
            self.msgs.append((m.topic, m.payload))
            self.cond.notify_all()

    def wait(self, topic, timeout=3.0, pred=None):
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for t, p in self.msgs:
                    if hubctl.topic_matches(topic, t) and (pred is None or pred(p)):
                        return p
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def subscribe(self, topic, qos=1):
        rc, mid = self.c.subscribe(topic, qos)
        deadline = time.time() + 3
        while mid not in self.suback and time.time() < deadline:
            time.sleep(0.01)
        return self.suback.get(mid, (None,))[0]

    def publish(self, topic, payload, qos=1):
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.c.publish(topic, payload, qos=qos).wait_for_publish()

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def login(hub, row, method="hmacsha256", timestamp="2524608000000", tls=False, keepalive=300,
          secret=None, client_id=None, username=None, securemode=None, clean_session=True):
    sm = securemode if securemode is not None else (2 if tls else 3)
    cid, user, pw = hubctl.login_creds(row["product_key"], row["device_name"],
                                       secret or row["device_secret"], method, timestamp, sm,
                                       client_id)
    return Dev(hub, cid, username or user, pw, tls=tls, keepalive=keepalive,
               clean_session=clean_session)


class HubTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rows = table()
        cls.hub = hubctl.Hub(cls.rows, rate=10, rate_mode="reply").start()
        cls.devs = []

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()

    def tearDown(self):
        for d in self.devs:
            d.close()
        self.devs = []

    def dev(self, *a, **kw):
        d = login(self.hub, *a, **kw)
        self.devs.append(d)
        return d

    def row(self, pk, i):
        return [r for r in self.rows if r["product_key"] == pk][i]

    # -- authentication --

    def test_each_sign_method_with_and_without_timestamp_tls_and_plain(self):
        r = self.row(PK, 0)
        for method in ("hmacsha256", "hmacsha1", "hmacmd5"):
            for ts in ("2524608000000", ""):
                for tls in (False, True):
                    d = self.dev(r, method=method, timestamp=ts, tls=tls)
                    self.assertEqual(d.rc, 0, (method, ts, tls))
                    d.close()

    def test_lowercase_hex_accepted(self):
        r = self.row(PK, 0)
        cid, user, pw = hubctl.login_creds(PK, r["device_name"], r["device_secret"])
        d = Dev(self.hub, cid, user, pw.lower())
        self.devs.append(d)
        self.assertEqual(d.rc, 0)

    def test_refusals(self):
        r, other = self.row(PK, 1), self.row(PK, 2)
        before = self.hub.counters(devices=False)["auth_failures"]
        self.assertEqual(self.dev(r, secret="wrong" + r["device_secret"]).rc, 5)
        # The sign is right for r, but the username names another device.
        cid, _, pw = hubctl.login_creds(PK, r["device_name"], r["device_secret"], securemode=3)
        for user in ("%s&%s" % (other["device_name"], PK), r["device_name"], "nobody&" + PK):
            d = Dev(self.hub, cid, user, pw)
            self.devs.append(d)
            self.assertEqual(d.rc, 5, user)
        self.assertEqual(self.dev(r, keepalive=20).rc, 5)
        self.assertEqual(self.dev(r, securemode=2).rc, 5)  # TLS mode on the plain listener
        self.assertEqual(self.dev(r, tls=True, securemode=3).rc, 5)
        d = Dev(self.hub, "no-bars-here", "%s&%s" % (r["device_name"], PK), "x")
        self.devs.append(d)
        self.assertEqual(d.rc, 5)
        after = self.hub.counters(devices=False)["auth_failures"]
        diff = {k: after[k] - before[k] for k in after}
        self.assertEqual(diff["bad_sign"], 2)
        self.assertEqual(diff["bad_username"], 1)
        self.assertEqual(diff["unknown_device"], 1)
        self.assertEqual(diff["keepalive"], 1)
        self.assertEqual(diff["securemode"], 2)
        self.assertEqual(diff["bad_client_id"], 1)
        self.assertEqual(self.dev(r).rc, 0)  # and the right credentials still work

    def test_second_login_kicks_first(self):
        r = self.row(PK, 3)
        k0 = self.hub.counters(devices=False)["kicks"]
        first = self.dev(r, client_id="first")
        self.assertEqual(first.rc, 0)
        second = self.dev(r, client_id="second", tls=True)
        self.assertEqual(second.rc, 0)
        self.assertTrue(first.gone.wait(3), "first session was not kicked")
        self.assertFalse(second.gone.is_set())
        c = self.hub.counters()
        self.assertEqual(c["kicks"], k0 + 1)
        self.assertTrue(c["devices"]["%s/%s" % (PK, r["device_name"])]["online"])
        # The survivor still works.
        since = self.hub.mark()
        second.publish("/%s/%s/user/update" % (PK, r["device_name"]), "still here")
        self.assertIsNotNone(self.hub.wait_message("/%s/+/user/update" % PK, 3, since))

    def test_connect_fields_recorded(self):
        # The hub keeps what each device's last accepted CONNECT carried, so daemon tests can
        # check client id, keepalive and clean session on the wire.
        r = self.row(PK, 8)
        self.assertIsNone(self.hub.last_connect(PK, "no-such-device"))
        d = self.dev(r, client_id="rec-1", keepalive=45, clean_session=False)
        self.assertEqual(d.rc, 0)
        seen = self.hub.last_connect(PK, r["device_name"])
        self.assertEqual(seen["keepalive"], 45)
        self.assertIs(seen["clean_session"], False)
        self.assertEqual(seen["protocol_version"], 4)
        self.assertIs(seen["tls"], False)
        self.assertTrue(seen["client_id"].startswith("rec-1|securemode=3,"), seen)
        d.close()
        d = self.dev(r, client_id="rec-2", keepalive=90, clean_session=True, tls=True)
        self.assertEqual(d.rc, 0)
        seen = self.hub.last_connect(PK, r["device_name"])
        self.assertEqual(seen["keepalive"], 90)
        self.assertIs(seen["clean_session"], True)
        self.assertIs(seen["tls"], True)
        self.assertTrue(seen["client_id"].startswith("rec-2|securemode=2,"), seen)
        # a refused login does not overwrite it
        bad = self.dev(r, client_id="rec-3", secret="wrong")
        self.assertEqual(bad.rc, 5)
        self.assertTrue(self.hub.last_connect(PK, r["device_name"])["client_id"]
                        .startswith("rec-2|"))

    # -- topic permissions --

    def test_topic_permissions(self):
        r, other = self.row(PK, 4), self.row(PK, 5)
        d = self.dev(r)
        dn, odn = r["device_name"], other["device_name"]
        c0 = self.hub.counters()["devices"]["%s/%s" % (PK, dn)]
        self.assertEqual(d.subscribe("/sys/%s/%s/thing/service/property/set" % (PK, odn)), 128)
        self.assertEqual(d.subscribe("/%s/%s/user/get" % (PK, odn)), 128)
        self.assertEqual(d.subscribe("/sys/%s/+/thing/#" % PK), 128)
        self.assertEqual(d.subscribe("#"), 128)
        self.assertEqual(d.subscribe("/%s/%s/user/update" % (PK, dn)), 128)  # pub-only class
        self.assertEqual(d.subscribe("/sys/%s/%s/thing/service/+" % (PK, dn)), 1)
        self.assertEqual(d.subscribe("/%s/%s/user/get" % (PK, dn)), 1)
        self.assertEqual(d.subscribe("/ota/device/upgrade/%s/%s" % (PK, dn)), 1)
        self.assertEqual(d.subscribe("/sys/%s/%s/rrpc/request/+" % (PK, dn)), 1)
        since = self.hub.mark()
        d.publish("/%s/%s/user/update" % (PK, odn), "foreign")
        d.publish("/%s/%s/user/get" % (PK, dn), "sub-only class")
        d.publish("/%s/%s/user/update" % (PK, dn), "mine")
        d.publish("/ota/device/inform/%s/%s" % (PK, dn), {"id": "1", "params": {"version": "1"}})
        self.assertIsNotNone(self.hub.wait_message("/ota/device/inform/+/+", 3, since))
        self.assertEqual([m.payload for m in self.hub.messages("/%s/+/user/#" % PK, since)],
                         [b"mine"])
        c1 = self.hub.counters()["devices"]["%s/%s" % (PK, dn)]
        self.assertEqual(c1["refused_publishes"] - c0["refused_publishes"], 2)
        self.assertEqual(c1["refused_subscribes"] - c0["refused_subscribes"], 5)
        self.assertGreaterEqual(c1["messages"] - c0["messages"], 2)

    def test_custom_topic_rights_from_table(self):
        r = self.row(PK, 7)  # hub_topics update:pub;get:sub;data:all
        d = self.dev(r)
        self.assertEqual(d.subscribe("/%s/%s/user/data" % (PK, r["device_name"])), 1)
        self.assertEqual(d.subscribe("/%s/%s/user/update/error" % (PK, r["device_name"])), 128)
        self.hub.publish_custom(PK, r["device_name"], "data", b"\x00\x01binary")
        self.assertEqual(d.wait("/%s/+/user/data" % PK), b"\x00\x01binary")

    # -- alink --

    def test_post_reply_and_sys_ack(self):
        r = self.row(PK, 6)
        dn = r["device_name"]
        d = self.dev(r)
        d.subscribe("/sys/%s/%s/thing/event/+/post_reply" % (PK, dn))
        d.subscribe("/sys/%s/%s/thing/event/property/post_reply" % (PK, dn))
        base = "/sys/%s/%s/thing/event/" % (PK, dn)
        d.publish(base + "property/post", {"id": "41", "version": "1.0", "params": {"T": 1.5},
                                           "sys": {"ack": 1}})
        rep = d.wait(base + "property/post_reply", pred=lambda p: json.loads(p)["id"] == "41")
        self.assertIsNotNone(rep)
        rep = json.loads(rep)
        self.assertEqual(rep["code"], 200)
        self.assertEqual(rep["method"], "thing.event.property.post")
        d.publish(base + "alarm/post", {"id": "42", "params": {"value": {}}})
        rep = d.wait(base + "alarm/post_reply", pred=lambda p: json.loads(p)["id"] == "42")
        self.assertEqual(json.loads(rep)["code"], 200)
        d.publish(base + "property/post", {"id": "43", "params": {}, "sys": {"ack": 0}})
        d.publish(base + "property/post", {"id": "44", "params": {}})
        self.assertIsNotNone(d.wait(base + "#", pred=lambda p: json.loads(p)["id"] == "44"))
        self.assertIsNone(d.wait(base + "#", 0.3, pred=lambda p: json.loads(p)["id"] == "43"))

    def test_ntp(self):
        r = self.row(PK, 6)
        dn = r["device_name"]
        d = self.dev(r)
        d.subscribe("/ext/ntp/%s/%s/response" % (PK, dn))
        sent = str(int(time.time() * 1000))
        d.publish("/ext/ntp/%s/%s/request" % (PK, dn), {"deviceSendTime": sent}, qos=0)
        rep = d.wait("/ext/ntp/%s/%s/response" % (PK, dn))
        self.assertIsNotNone(rep)
        rep = json.loads(rep)
        self.assertEqual(rep["deviceSendTime"], sent)
        now = time.time() * 1000
        self.assertLess(abs(int(rep["serverRecvTime"]) - now), 5000)
        self.assertGreaterEqual(int(rep["serverSendTime"]), int(rep["serverRecvTime"]))

    def test_rate_limit_replies_429(self):
        r = self.row(PK, 5)
        dn = r["device_name"]
        d = self.dev(r)
        topic = "/sys/%s/%s/thing/event/property/post" % (PK, dn)
        d.subscribe(topic + "_reply")
        c0 = self.hub.counters()["devices"]["%s/%s" % (PK, dn)]["rate_limited"]
        for i in range(25):  # the hub runs this test class at 10 msg/s, burst 10
            d.publish(topic, {"id": str(1000 + i), "params": {}}, qos=0)
        self.assertIsNotNone(d.wait(topic + "_reply", pred=lambda p: json.loads(p)["code"] == 429))
        time.sleep(0.3)
        codes = [json.loads(p)["code"] for t, p in d.msgs if t == topic + "_reply"]
        self.assertGreaterEqual(codes.count(200), 9)
        self.assertGreaterEqual(codes.count(429), 5)
        c1 = self.hub.counters()["devices"]["%s/%s" % (PK, dn)]["rate_limited"]
        self.assertEqual(c1 - c0, codes.count(429))

    # -- cloud side --

    def test_cloud_pushes_and_rrpc(self):
        r = self.row(PK, 2)
        dn = r["device_name"]
        d = self.dev(r)
        d.subscribe("/sys/%s/%s/thing/service/#" % (PK, dn))
        d.subscribe("/sys/%s/%s/rrpc/request/+" % (PK, dn))
        d.subscribe("/ota/device/upgrade/%s/%s" % (PK, dn))
        mid = self.hub.property_set(PK, dn, {"Power": 1})
        p = json.loads(d.wait("/sys/+/+/thing/service/property/set"))
        self.assertEqual((p["id"], p["params"]), (mid, {"Power": 1}))
        self.hub.service_call(PK, dn, "reboot", {"delay": 3})
        self.assertIsNotNone(d.wait("/sys/+/+/thing/service/reboot"))
        self.hub.ota_notice(PK, dn, "2.0.0", "https://127.0.0.1/fw.bin", 10, "0" * 32)
        self.assertEqual(json.loads(d.wait("/ota/device/upgrade/+/+"))["data"]["version"], "2.0.0")

        def responder(c, u, m):
            if "/rrpc/request/" in m.topic:
                c.publish(m.topic.replace("/request/", "/response/"), b"pong:" + m.payload, qos=0)

        d.c.on_message = responder
        self.assertEqual(self.hub.rrpc(PK, dn, b"ping", timeout=3), b"pong:ping")

    # -- one product, one secret --

    def test_mqtt_register_then_login_then_refused_when_active(self):
        r = self.row(PKR, 0)
        dn, ps = r["device_name"], r["product_secret"]
        cid, user, pw = hubctl.register_creds(PKR, dn, ps, "register")
        d = Dev(self.hub, cid, user, pw, tls=True, keepalive=60)
        self.devs.append(d)
        self.assertEqual(d.rc, 0)
        got = d.wait("/ext/register")  # pushed without any SUBSCRIBE, as the platform does
        self.assertIsNotNone(got)
        got = json.loads(got)
        self.assertEqual((got["productKey"], got["deviceName"]), (PKR, dn))
        secret = got["deviceSecret"]
        d.close()
        self.assertEqual(self.dev(dict(r, device_secret=secret), tls=True).rc, 0)
        # Now active: registering again is refused.
        cid, user, pw = hubctl.register_creds(PKR, dn, ps, "register")
        d = Dev(self.hub, cid, user, pw, tls=True)
        self.devs.append(d)
        self.assertEqual(d.rc, 5)
        # Wrong product secret.
        cid, user, pw = hubctl.register_creds(PKR, self.row(PKR, 1)["device_name"], "x" + ps)
        d = Dev(self.hub, cid, user, pw, tls=True)
        self.devs.append(d)
        self.assertEqual(d.rc, 5)
        # Registration on the plain listener is refused (the platform: TLS only).
        cid, user, pw = hubctl.register_creds(PKR, self.row(PKR, 1)["device_name"], ps)
        d = Dev(self.hub, cid, user, pw)
        self.devs.append(d)
        self.assertEqual(d.rc, 5)
        f = self.hub.counters(devices=False)["auth_failures"]
        self.assertGreaterEqual(f["already_active"], 1)
        self.assertGreaterEqual(f["dynreg_plain"], 1)

    def test_mqtt_regnwl_then_connwl(self):
        r = self.row(PKR, 2)
        dn, ps = r["device_name"], r["product_secret"]
        cid, user, pw = hubctl.register_creds(PKR, dn, ps, "regnwl", method="hmacsha1")
        d = Dev(self.hub, cid, user, pw, tls=True)
        self.devs.append(d)
        self.assertEqual(d.rc, 0)
        got = json.loads(d.wait("/ext/regnwl"))
        d.close()
        connwl = "%s|authType=connwl,securemode=-2,_ss=1,ext=3|" % got["clientId"]
        d = Dev(self.hub, connwl, user, got["deviceToken"], tls=True)
        self.devs.append(d)
        self.assertEqual(d.rc, 0)
        d = Dev(self.hub, connwl, user, got["deviceToken"] + "0", tls=True)
        self.devs.append(d)
        self.assertEqual(d.rc, 5)

    def _https(self, **form):
        ctx = ssl.create_default_context(cafile=self.hub.ca_file)
        req = urllib.request.Request(
            "https://localhost:%d/auth/register/device" % self.hub.https_port,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return json.loads(resp.read())

    def _https_register(self, pk, dn, ps, method="hmacsha256"):
        rnd = hubctl.random_secret(10)
        return self._https(productKey=pk, deviceName=dn, random=rnd, signMethod=method,
                           sign=hubctl.register_sign(method, ps, pk, dn, rnd))

    def test_https_register(self):
        r = self.row(PKR, 3)
        dn, ps = r["device_name"], r["product_secret"]
        self.assertEqual(self._https_register(PKR, dn, "x" + ps)["code"], 6600)
        rep = self._https_register(PKR, dn, ps, "hmacmd5")
        self.assertEqual(rep["code"], 200)
        self.assertEqual(rep["message"], "success")
        self.assertEqual((rep["data"]["productKey"], rep["data"]["deviceName"]), (PKR, dn))
        d = self.dev(dict(r, device_secret=rep["data"]["deviceSecret"]))
        self.assertEqual(d.rc, 0)
        self.assertEqual(self._https_register(PKR, dn, ps)["code"], 6289)  # now active
        self.assertEqual(self._https_register(PKR, self.row(PKR, 5)["device_name"], ps)["code"],
                         6289)  # hub_active=1 in the table
        n = self.row(PKN, 0)
        self.assertEqual(self._https_register(PKN, n["device_name"], n["product_secret"])["code"],
                         6288)
        self.assertEqual(self._https(productKey=PKR, deviceName=dn)["code"], 460)

    def test_https_and_mqtt_share_state(self):
        r = self.row(PKR, 4)
        dn, ps = r["device_name"], r["product_secret"]
        cid, user, pw = hubctl.register_creds(PKR, dn, ps, "register")
        d = Dev(self.hub, cid, user, pw, tls=True)
        self.devs.append(d)
        secret = json.loads(d.wait("/ext/register"))["deviceSecret"]
        self.assertEqual(self.dev(dict(r, device_secret=secret)).rc, 0)
        self.assertEqual(self._https_register(PKR, dn, ps)["code"], 6289)


    # -- TLS that stock SDK devices can use --

    def _s_client(self, port, cipher):
        """openssl s_client offering only cipher over TLS 1.2, verifying against the hub's CA."""
        p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                            "-servername", "localhost", "-tls1_2", "-cipher", cipher,
                            "-CAfile", self.hub.ca_file, "-verify_return_error"],
                           input="", capture_output=True, text=True, timeout=20)
        return p.returncode, p.stdout + p.stderr

    def test_rsa_server_and_rsa_key_exchange_suites(self):
        # The default CA and server key are RSA-2048, as the platform serves.
        x = subprocess.run(["openssl", "x509", "-in", self.hub.ca_file, "-noout", "-text"],
                           check=True, capture_output=True, text=True).stdout
        self.assertIn("rsaEncryption", x)
        self.assertIn("2048 bit", x)
        # LinkSDK 4.1.0's mbedtls offers RSA key exchange only: AES128-GCM-SHA256 must work on
        # the MQTT TLS listener and on the HTTPS registration endpoint.
        for port in (self.hub.mqtts_port, self.hub.https_port):
            rc, out = self._s_client(port, "AES128-GCM-SHA256")
            self.assertEqual(rc, 0, out[-1500:])
            self.assertRegex(out, r"Cipher( is|\s*:) AES128-GCM-SHA256")
            self.assertIn("Verify return code: 0 (ok)", out)
            self.assertIn("Server public key is 2048 bit", out)

    def test_ecdsa_keys_on_request(self):
        with tempfile.TemporaryDirectory() as tmp:
            ca = hubctl.make_certs(tmp, "ec")
            x = subprocess.run(["openssl", "x509", "-in", ca, "-noout", "-text"],
                               check=True, capture_output=True, text=True).stdout
            self.assertIn("id-ecPublicKey", x)


class RateDropTest(unittest.TestCase):
    def test_drop_mode_sends_no_reply(self):
        rows = hubctl.gen_devices(1, "pkD1")
        with hubctl.Hub(rows, rate=5, rate_mode="drop") as hub:
            r = rows[0]
            d = login(hub, r)
            try:
                self.assertEqual(d.rc, 0)
                topic = "/sys/pkD1/%s/thing/event/property/post" % r["device_name"]
                d.subscribe(topic + "_reply")
                since = hub.mark()
                for i in range(15):
                    d.publish(topic, {"id": str(i), "params": {}}, qos=1)
                time.sleep(0.3)
                codes = [json.loads(p)["code"] for t, p in d.msgs]
                self.assertNotIn(429, codes)
                self.assertGreaterEqual(len(codes), 5)
                self.assertLess(len(codes), 15)
                self.assertEqual(len(codes), len(hub.messages(topic, since)))
                self.assertEqual(hub.counters()["rate_limited"], 15 - len(codes))
            finally:
                d.close()


class LauncherTest(unittest.TestCase):
    def test_device_table_format(self):
        text = ("\ufeff# comment\r\n\r\ndevice_name,product_key,device_secret,hub_topics\r\n"
                'd1,pk,"se""c,ret","a:pub;b:sub"\r\n')
        rows = hubctl.parse_devices(text)
        self.assertEqual(rows[0]["device_secret"], 'se"c,ret')
        self.assertEqual(rows[0]["hub_topics"], "a:pub;b:sub")
        with self.assertRaisesRegex(hubctl.DeviceTableError, "unknown column 'colour'"):
            hubctl.parse_devices("product_key,device_name,colour\npk,d,red\n")
        with self.assertRaisesRegex(hubctl.DeviceTableError, "missing required column"):
            hubctl.parse_devices("product_key\npk\n")

    def test_cli_start_stop_leaves_nothing(self):
        tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aligw-hub")
        with tempfile.TemporaryDirectory() as tmp:
            dev = os.path.join(tmp, "devices.csv")
            with open(dev, "w") as f:
                f.write(subprocess.run([tool, "gen-devices", "--count", "3", "--product", "pkC"],
                                       check=True, capture_output=True, text=True).stdout)
            bad = os.path.join(tmp, "bad.csv")
            with open(bad, "w") as f:
                f.write("product_key,device_name,nope\n")
            p = subprocess.run([tool, "start", "--devices", bad, "--dir", tmp + "/x"],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 2)
            self.assertIn("unknown column 'nope'", p.stderr)
            out = subprocess.run([tool, "start", "--devices", dev, "--dir", tmp + "/run"],
                                 check=True, capture_output=True, text=True).stdout
            info = json.loads(out)
            with open(tmp + "/run/hub.json") as f:
                self.assertEqual(info, json.load(f))
            pids = (info["mosquitto_pid"], info["https_pid"])
            for pid in pids:
                os.kill(pid, 0)
            subprocess.run([tool, "stop", "--dir", tmp + "/run"], check=True)
            for pid in pids:
                self.assertFalse(hubctl._alive(pid))


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print("%d passed, %d failed" % (result.testsRun - failed, failed))
    sys.exit(1 if failed else 0)
