"""Southbound plugins through the real daemon and the hub: the simulator's data reaching the
cloud, a property set going down to it and reported back, a Modbus TCP slave polled and written,
and plugins that must be refused or fail without taking the daemon down."""
import json
import os
import re
import subprocess
import threading
import time

import aligwtest as T
import hubctl

PK = "a1PlugTest"
PLUGIN_DIR = os.environ.get("ALIGW_PLUGIN_PATH", "")
TEST_PLUGINS = os.environ.get("ALIGW_TEST_PLUGIN_DIR", "")
MODBUS_SERVER = os.environ.get("MODBUS_SERVER", "")


class ModbusServer:
    def __init__(self, holding):
        spec = ",".join("%d=%d" % kv for kv in holding.items())
        self.p = subprocess.Popen([MODBUS_SERVER, "-p", "0", "-H", spec], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.p.stdout.readline()
        m = re.match(r"listening (\d+)", line)
        assert m, line
        self.port = int(m.group(1))
        self.written = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stdout:
            if line.startswith("written"):
                self.written.append(line.split()[1:])

    def set(self, addr, value):
        self.p.stdin.write("set %d %d\n" % (addr, value))
        self.p.stdin.flush()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            self.p.wait(5)


class RtuSlave(ModbusServer):
    """modbus_server -r SLAVE: an RTU slave on a pseudo-terminal; .pty is the line's path."""

    def __init__(self, slave, holding):
        spec = ",".join("%d=%d" % kv for kv in holding.items())
        self.p = subprocess.Popen([MODBUS_SERVER, "-r", str(slave), "-H", spec],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  bufsize=1)
        line = self.p.stdout.readline()
        m = re.match(r"pty (\S+)", line)
        assert m, line
        self.pty = m.group(1)
        self.written = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def command(self, text):
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()


class Plugins(T.TestCase):
    def setUp(self):
        super().setUp()
        if not PLUGIN_DIR or not os.path.exists(os.path.join(PLUGIN_DIR, "simulator.so")):
            self.skipTest("plugins not built")

    def hub(self, n):
        rows = hubctl.gen_devices(n, PK)
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        return hub, rows, ["%s/%s" % (PK, r["device_name"]) for r in rows]

    def test_simulator_posts_and_answers_a_property_set(self):
        hub, rows, keys = self.hub(2)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        cfg["plugins"] = [{"name": "simulator", "devices": keys,
                           "config": {"interval_ms": 200}}]
        dm = self.daemon(cfg)
        for k in keys:
            m = hub.wait_message("/sys/%s/thing/event/property/post" % k, 10)
            self.assertIsNotNone(m, "no property post from the simulator for " + k)
            params = m.json()["params"]
            self.assertIn("temperature", params)
        since = hub.mark()
        mid = hub.property_set(PK, rows[0]["device_name"], {"temperature": 99.5})
        reply = hub.wait_message("/sys/%s/thing/service/property/set_reply" % keys[0], 5, since)
        self.assertIsNotNone(reply, "no set_reply")
        self.assertEqual(reply.json()["id"], mid)
        self.assertEqual(reply.json()["code"], 200)
        posted = hub.wait_message(
            "/sys/%s/thing/event/property/post" % keys[0], 5, since,
            lambda m: _value(m.json()["params"].get("temperature")) == 99.5)
        self.assertIsNotNone(posted, "the new value was not reported back")
        self.assertTrue(dm.call("status")["ok"])

    def test_simulator_serves_calls_through_the_api_events(self):
        """The simulator takes its service calls as ABI 1.3 events and answers them with the
        API's reply request (in its own host process, the default): set_interval answers its
        new interval, an unknown service 460, and an RRPC call (which only events carry) is
        answered on rrpc/response with its parameters echoed."""
        hub, rows, keys = self.hub(1)
        dn = rows[0]["device_name"]
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, rows[0], rate=0)]
        cfg["plugins"] = [{"name": "simulator", "devices": keys, "config": {"interval_ms": 5000}}]
        dm = self.daemon(cfg)
        dm.wait_state(keys[0], "online")
        T.wait_for(lambda: any(h["state"] == "running" for h in
                               dm.call("status")["result"]["plugin_hosts"]), 10, what="running")
        for service, params, code, data in [("set_interval", {"interval_ms": 700}, 200,
                                             {"interval_ms": 700}),
                                            ("no_such_service", {}, 460, None)]:
            since = hub.mark()
            mid = hub.service_call(PK, dn, service, params)
            r = hub.wait_message("/sys/%s/thing/service/%s_reply" % (keys[0], service), 5, since)
            self.assertIsNotNone(r, "no reply to " + service)
            self.assertEqual((r.json()["id"], r.json()["code"]), (mid, code))
            if data is not None:
                self.assertEqual(r.json()["data"], data)
        resp = hub.rrpc(PK, dn, json.dumps({"valve": 3}), timeout=5)
        self.assertIsNotNone(resp, "no RRPC response from the simulator")
        self.assertEqual(json.loads(resp), {"echo": {"valve": 3}})
        self.assertEqual(dm.stop(), 0)

    def test_check_config_runs_the_plugins_own_check(self):
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [{"product_key": PK, "device_name": "dev00000", "device_secret": "s",
                           "host": "127.0.0.1", "port": 1, "tls": False}]
        cfg["plugins"] = [{"name": "simulator", "devices": ["%s/dev00000" % PK],
                           "config": {"interval_ms": 5}}]
        d = T.Daemon(self.tmp, cfg)
        r = subprocess.run([T.ALIGWD, "--check-config", "-c", d.config_path], capture_output=True,
                           text=True, timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("plugins[0]", r.stdout)
        self.assertIn("interval_ms", r.stdout)
        cfg["plugins"][0]["config"]["interval_ms"] = 500
        d.write_config(cfg)
        r = subprocess.run([T.ALIGWD, "--check-config", "-c", d.config_path], capture_output=True,
                           text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("configuration OK", r.stdout)

    def test_bad_plugins_do_not_stop_the_daemon(self):
        if not TEST_PLUGINS:
            self.skipTest("test plugins not built")
        hub, rows, keys = self.hub(3)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        cfg["plugins"] = [
            {"name": os.path.join(TEST_PLUGINS, "testplug_badabi.so"), "devices": [keys[0]]},
            {"name": os.path.join(TEST_PLUGINS, "testplug_failstart.so"), "devices": [keys[1]]},
            {"name": "simulator", "devices": [keys[2]], "config": {"interval_ms": 200}},
        ]
        dm = self.daemon(cfg)
        # out of process, the refusals come from the plugin hosts just after the start
        log = T.wait_for(lambda: (lambda l: l if "testplug_failstart.so" in l and
                                  "testplug_badabi.so" in l else None)(dm.log()), 10,
                         what="both refusals logged")
        self.assertIn("testplug_badabi.so", log)
        self.assertRegex(log, r"testplug_badabi\.so.*ABI")
        self.assertIn("testplug_failstart.so", log)
        # the simulator's device still works, the daemon still answers
        self.assertIsNotNone(hub.wait_message("/sys/%s/thing/event/property/post" % keys[2], 10))
        st = T.wait_for(lambda: (lambda s: s if s.get("field_error") else None)(
            dm.device(keys[1])), 5, what="field error on the failed plugin's device")
        self.assertTrue(st["field_error"])
        self.assertEqual(dm.stop(), 0)

    def test_modbus_polled_scaled_written_and_error_state(self):
        if not MODBUS_SERVER or not os.path.exists(os.path.join(PLUGIN_DIR, "modbus.so")):
            self.skipTest("modbus plugin or test server not built")
        # holding 0: temperature x10 (int16), 1-2: energy float32 CDAB (set later), 3: setpoint
        srv = ModbusServer({0: 215, 3: 40})
        self.later(srv.stop)
        hub, rows, keys = self.hub(1)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, rows[0], rate=0)]
        cfg["plugins"] = [{"name": "modbus", "devices": keys, "config": {
            "interval_ms": 200, "report": "always",
            "buses": {"plc": {"type": "tcp", "host": "127.0.0.1", "port": srv.port,
                              "timeout_ms": 300, "reconnect_min_ms": 100,
                              "reconnect_max_ms": 300}},
            "devices": {keys[0]: {"bus": "plc", "slave": 1, "registers": [
                {"id": "temperature", "address": 0, "type": "int16", "scale": 0.1},
                {"id": "setpoint", "address": 3, "type": "uint16", "scale": 0.5,
                 "writable": True}]}}}}]
        dm = self.daemon(cfg)
        m = hub.wait_message("/sys/%s/thing/event/property/post" % keys[0], 10,
                             predicate=lambda m: "temperature" in m.json()["params"])
        self.assertIsNotNone(m)
        params = m.json()["params"]
        self.assertAlmostEqual(_value(params["temperature"]), 21.5)
        self.assertAlmostEqual(_value(params["setpoint"]), 20.0)
        # a property set writes the register with the inverse scaling
        hub.property_set(PK, rows[0]["device_name"], {"setpoint": 30})
        T.wait_for(lambda: ["3", "60"] in srv.written, 5, what="register 3 written with 60")
        # the slave stops answering: the device shows the error; back: it clears
        srv.stop()
        st = T.wait_for(lambda: (lambda s: s if s.get("field_error") else None)(
            dm.device(keys[0])), 10, what="modbus error state")
        self.assertIn("modbus", st["field_error"])


    def test_modbus_rtu_over_a_pty(self):
        if not MODBUS_SERVER or not os.path.exists(os.path.join(PLUGIN_DIR, "modbus.so")):
            self.skipTest("modbus plugin or test server not built")
        srv = RtuSlave(1, {0: 215, 3: 40})
        self.later(srv.stop)
        hub, rows, keys = self.hub(2)
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0) for r in rows]
        regs = [{"id": "temperature", "address": 0, "type": "int16", "scale": 0.1},
                {"id": "setpoint", "address": 3, "type": "uint16", "scale": 0.5,
                 "writable": True}]
        cfg["plugins"] = [{"name": "modbus", "devices": keys, "config": {
            "interval_ms": 200, "report": "always",
            "buses": {"rs485": {"type": "rtu", "device": srv.pty, "baud": 19200,
                                "timeout_ms": 300, "request_gap_ms": 10}},
            "devices": {keys[0]: {"bus": "rs485", "slave": 1, "registers": regs},
                        # nobody answers slave 2 on this line
                        keys[1]: {"bus": "rs485", "slave": 2, "registers": regs[:1]}}}}]
        dm = self.daemon(cfg)
        post = "/sys/%s/thing/event/property/post" % keys[0]
        m = hub.wait_message(post, 10, predicate=lambda m: "temperature" in m.json()["params"])
        self.assertIsNotNone(m, "no RTU read reached the cloud")
        self.assertAlmostEqual(_value(m.json()["params"]["temperature"]), 21.5)
        self.assertAlmostEqual(_value(m.json()["params"]["setpoint"]), 20.0)

        def field_error(key, pattern):
            def check():
                e = dm.device(key).get("field_error", "")
                return e if re.search(pattern, e) else None
            try:
                return T.wait_for(check, 10, what="%s field error %s" % (key, pattern))
            except AssertionError:
                print("\n".join(l for l in dm.log().splitlines() if "modbus" in l)[-3000:])
                raise

        def recovered(key):
            since = hub.mark()
            T.wait_for(lambda: not dm.device(key).get("field_error"), 10,
                       what="%s recovered" % key)
            self.assertIsNotNone(hub.wait_message("/sys/%s/thing/event/property/post" % key, 5,
                                                  since))
        # the silent slave 2 is in error, and does not take slave 1 down with it
        field_error(keys[1], r"slave 2 .*not answering")
        self.assertFalse(dm.device(keys[0]).get("field_error"))
        # a write goes down the line with the inverse scaling
        hub.property_set(PK, rows[0]["device_name"], {"setpoint": 30})
        T.wait_for(lambda: ["3", "60"] in srv.written, 5, what="register 3 written with 60")
        srv.set(0, 230)
        hub.wait_message(post, 5, predicate=lambda m: _value(
            m.json()["params"].get("temperature", 0)) == 23.0)
        # CRC errors: error state, then recovery
        srv.command("crc on")
        self.assertIn("CRC", field_error(keys[0], r"slave 1 .*CRC"))
        srv.command("crc off")
        recovered(keys[0])
        # a slave gone silent: error, then recovery
        srv.command("silent on")
        field_error(keys[0], r"slave 1 .*timed out")
        srv.command("silent off")
        recovered(keys[0])
        self.assertIn("modbus", dm.log())

    def test_modbus_refuses_two_buses_on_one_serial_line(self):
        if not os.path.exists(os.path.join(PLUGIN_DIR, "modbus.so")):
            self.skipTest("modbus plugin not built")
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [{"product_key": PK, "device_name": "dev00000", "device_secret": "s",
                           "host": "127.0.0.1", "port": 1, "tls": False}]
        line = {"type": "rtu", "device": "/dev/ttyS7"}
        cfg["plugins"] = [{"name": "modbus", "devices": ["%s/dev00000" % PK], "config": {
            "buses": {"a": line, "b": line},
            "devices": {"%s/dev00000" % PK: {"bus": "a", "slave": 1, "registers": [
                {"id": "t", "address": 0}]}}}}]
        d = T.Daemon(self.tmp, cfg)
        r = subprocess.run([T.ALIGWD, "--check-config", "-c", d.config_path], capture_output=True,
                           text=True, timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("serial line /dev/ttyS7 is already bus", r.stdout)


def _value(v):
    return v["value"] if isinstance(v, dict) else v


if __name__ == "__main__":
    T.main()
