"""The daemon's life cycle: systemd notifications, reload, shutdown, --check-config, the unit."""
import json
import os
import re
import shutil
import signal
import subprocess

import aligwtest as T

ROOT = os.path.abspath(os.path.join(T.HERE, "..", ".."))


class DaemonLifecycle(T.TestCase):
    def test_ready_watchdog_reload_refused_and_clean_stop(self):
        d = self.daemon(T.base_config(self.tmp), watchdog_usec=400000)
        # READY=1 comes with a STATUS= summary; the watchdog pings at half of WATCHDOG_USEC.
        self.assertTrue(d.notify.has("READY=1"))
        self.assertTrue(any("devices online" in m for m in d.notify.has("STATUS=")),
                        d.notify.messages)
        T.wait_for(lambda: len(d.notify.has("WATCHDOG=1")) >= 3, 5, what="3 WATCHDOG=1")
        self.assertIn("every 200 ms", d.log())

        # A broken config on SIGHUP is refused with every error logged; the daemon keeps going.
        good = dict(d.config)
        with open(d.config_path, "w") as f:
            f.write('{\n  "log_level": "loud",\n  "cloud": {"keepalive": 5},\n  "bogus": 1\n}\n')
        d.signal(signal.SIGHUP)
        T.wait_for(lambda: "reload refused" in d.log(), 5, what="reload refused")
        log = d.log()
        self.assertRegex(log, r"aligw\.json:2:\d+: log_level")
        self.assertRegex(log, r"aligw\.json:3:\d+: cloud\.keepalive")
        self.assertRegex(log, r"aligw\.json:4:\d+: bogus")
        T.wait_for(lambda: d.notify.has("RELOADING=1"), 3, what="RELOADING=1")
        self.assertIsNone(d.proc.poll())
        n_watchdog = len(d.notify.has("WATCHDOG=1"))
        T.wait_for(lambda: len(d.notify.has("WATCHDOG=1")) > n_watchdog + 1, 5,
                   what="watchdog after a refused reload")
        r = d.call("hello")
        self.assertTrue(r["ok"], r)

        # A good config reloads.
        d.write_config(dict(good, log_level="debug"))
        d.signal(signal.SIGHUP)
        T.wait_for(lambda: "configuration reloaded" in d.log(), 5, what="reload")

        notify = d.notify
        self.assertEqual(d.stop(), 0)
        T.wait_for(lambda: notify.has("STOPPING=1"), 3, what="STOPPING=1")
        self.assertIn("stopped", d.log())
        self.assertNotIn("still open", d.log())
        self.assertFalse(os.path.exists(d.socket_path), "API socket left behind")

    def test_reload_names_keys_that_need_a_restart(self):
        """The API's reload applies what it can and names, in the reply and the log, each changed
        key that takes effect only after a restart; a refused config keeps the running one."""
        cfg = T.base_config(self.tmp)
        d = self.daemon(cfg)
        nxt = json.loads(json.dumps(cfg))
        nxt["log_level"] = "debug"                      # applied at once
        nxt.setdefault("store", {})["max_bytes"] = 1 << 20  # needs a restart
        nxt.setdefault("api", {})["max_line"] = 2 << 20     # needs a restart
        d.write_config(nxt)
        r = d.call("reload")
        self.assertTrue(r["ok"], r)
        self.assertEqual(sorted(r["result"]["restart_needed"]), ["api.max_line", "store.max_bytes"])
        self.assertRegex(d.log(), r"applied only after a restart of aligwd: .*store\.max_bytes")
        # The applied part is in force: debug lines appear for the next connection.
        d.call("hello")
        T.wait_for(lambda: "<7>" in d.log(), 5, what="debug logging after the reload")
        # Reloaded again, the keys are still named: the store and the socket in force are
        # still those the daemon started with.
        r = d.call("reload")
        self.assertEqual(sorted(r["result"]["restart_needed"]), ["api.max_line", "store.max_bytes"])
        # Nothing changed: an empty list.
        d.write_config(cfg)
        r = d.call("reload")
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["restart_needed"], [])
        # A refused config: an error reply, the running configuration kept.
        with open(d.config_path, "w") as f:
            f.write('{"store": {"max_bytes": "lots"}}')
        r = d.call("reload")
        self.assertFalse(r["ok"], r)
        self.assertEqual(r["error"]["code"], "bad_request", r)
        self.assertIsNone(d.proc.poll())

    def test_state_and_runtime_dirs_created(self):
        cfg = T.base_config(self.tmp)
        cfg["state_dir"] = os.path.join(self.tmp, "deep", "state")
        cfg["runtime_dir"] = os.path.join(self.tmp, "deep", "run")
        cfg["store"]["path"] = os.path.join(cfg["state_dir"], "outbox.db")
        cfg["api"] = {"socket": os.path.join(cfg["runtime_dir"], "aligw.sock")}
        d = self.daemon(cfg)
        self.assertTrue(os.path.isdir(cfg["state_dir"]))
        self.assertTrue(os.path.exists(cfg["store"]["path"]))
        self.assertEqual(d.stop(), 0)

    def test_sigint_stops_with_zero(self):
        d = self.daemon(T.base_config(self.tmp))
        d.signal(signal.SIGINT)
        self.assertEqual(d.proc.wait(10), 0)


class SocketActivation(T.TestCase):
    def test_api_socket_from_systemd(self):
        tool = shutil.which("systemd-socket-activate")
        if not tool:
            self.skipTest("systemd-socket-activate not installed")
        cfg = T.base_config(self.tmp)
        d = T.Daemon(self.tmp, cfg)
        sock = os.path.join(self.tmp, "activated.sock")
        # systemd-socket-activate listens, then starts aligwd at the first connection with the
        # listening socket as fd 3 (LISTEN_FDS=1); the config's own socket path is not used.
        p = subprocess.Popen([tool, "-l", sock, T.ALIGWD, "-c", d.config_path],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.later(lambda: (p.terminate(), p.wait(10)))
        T.wait_for(lambda: os.path.exists(sock), 5, what="the activation socket")
        api = T.Api(sock, timeout=15)
        r = api.call("status")
        api.close()
        self.assertTrue(r["ok"], r)
        self.assertIn("devices", r["result"])
        self.assertFalse(os.path.exists(d.socket_path), "aligwd made its own socket too")


class CheckConfig(T.TestCase):
    def run_check(self, path, aligwd=None, env=None):
        return subprocess.run([aligwd or T.ALIGWD, "--check-config", "-c", path],
                              capture_output=True, text=True, timeout=20, env=env)

    def test_example_config_is_ok(self):
        # As a user runs it from a build tree: no ALIGW_PLUGIN_PATH pointing at the plugins.
        env = {k: v for k, v in os.environ.items() if k != "ALIGW_PLUGIN_PATH"}
        r = self.run_check(os.path.join(ROOT, "conf", "aligw.example.json"), env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_example_config_is_ok_after_install(self):
        build = os.environ.get("ALIGW_BUILD_DIR")
        if not build or not shutil.which("cmake"):
            self.skipTest("needs ALIGW_BUILD_DIR and cmake")
        dest = os.path.join(self.tmp, "dest")
        env = {k: v for k, v in os.environ.items() if k != "ALIGW_PLUGIN_PATH"}
        r = subprocess.run(["cmake", "--install", build], env=dict(env, DESTDIR=dest),
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        found = [os.path.join(dp, "aligwd") for dp, _, files in os.walk(dest) if "aligwd" in files]
        conf = [os.path.join(dp, "aligw.json") for dp, _, files in os.walk(dest)
                if "aligw.json" in files]
        self.assertEqual((len(found), len(conf)), (1, 1), (found, conf))
        # The installed copy (/etc/aligw/aligw.json from the example) checks with the installed
        # binary, which finds the installed simulator plugin and CA bundle.
        r = self.run_check(conf[0], aligwd=found[0], env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_three_mistakes_all_reported_with_positions(self):
        path = os.path.join(self.tmp, "bad.json")
        with open(path, "w") as f:
            f.write('{\n'
                    '  "cloud": {"keepalive": 20},\n'
                    '  "devices": [\n'
                    '    {"product_key": "a1B2c3", "device_name": "meter-01"},\n'
                    '    {"product_key": "a1B2c3", "device_name": "meter-02", "device_secret": "x",\n'
                    '     "colour": "red"}\n'
                    '  ]\n'
                    '}\n')
        r = self.run_check(path)
        self.assertNotEqual(r.returncode, 0)
        out = r.stdout
        self.assertRegex(out, r"bad\.json:2:\d+: cloud\.keepalive: .*30")
        self.assertRegex(out, r"bad\.json:4:\d+: devices\[0\].*secret")
        self.assertRegex(out, r"bad\.json:6:\d+: devices\[1\]\.colour")
        self.assertNotIn("configuration OK", out)

    def test_syntax_error_has_position(self):
        path = os.path.join(self.tmp, "broken.json")
        with open(path, "w") as f:
            f.write('{\n  "log_level": "info",\n  "devices": [,]\n}\n')
        r = self.run_check(path)
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"broken\.json:3:\d+:")

    def test_version_and_help(self):
        r = subprocess.run([T.ALIGWD, "--version"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^aligwd \d+\.\d+\.\d+")
        r = subprocess.run([T.ALIGWD, "--help"], capture_output=True, text=True)
        self.assertIn("--check-config", r.stdout)
        r = subprocess.run([T.ALIGWD, "--nope"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)


class SystemdUnit(T.TestCase):
    def test_verify_and_exposure(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze not installed")
        unit = os.path.join(self.tmp, "aligwd.service")
        with open(os.path.join(ROOT, "systemd", "aligwd.service")) as f:
            text = f.read()
        # verify checks that ExecStart exists: point it at the binary we built.
        with open(unit, "w") as f:
            f.write(text.replace("/usr/bin/aligwd", os.path.abspath(T.ALIGWD)))
        r = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit],
                           capture_output=True, text=True)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0)
        for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=aligw",
                    "RuntimeDirectory=aligw", "User=aligw",
                    # Modbus RTU under systemd: the serial tty classes and the dialout group
                    "DeviceAllow=char-ttyS rw", "DeviceAllow=char-ttyUSB rw",
                    "DeviceAllow=char-ttyACM rw", "SupplementaryGroups=dialout"):
            self.assertIn(key, text)


if __name__ == "__main__":
    T.main()
