"""Firmware upgrades (OTA) end to end against the hub: the hub pushes a job, serves the package
over HTTPS and answers thing.ota.firmware.get; the real aligwd downloads it on its loop, verifies
it, hands it to the simulator plugin or an API client, and reports progress and the new version.
Faults: a download cut at 50 %, a wrong digest, an expired URL, a newer job, a kill -9 in the
middle of a download, and the bad inputs of issue 17."""
import hashlib
import json
import os
import subprocess
import time

import aligwtest as T
import hubctl

PK = "a1OtaTest"
PLUGIN_DIR = os.environ.get("ALIGW_PLUGIN_PATH", "")


def informs(hub, dn, version=None):
    return [p for _, _, d, _, p in hub.ota_reports(PK, dn, "inform")
            if version is None or p.get("version") == version]


def progress(hub, dn):
    return [p for _, _, d, _, p in hub.ota_reports(PK, dn, "progress")]


def make_file(path, size, head=b""):
    with open(path, "wb") as f:
        f.write(head)
        f.write(os.urandom(size - len(head)))
    return path


class Ota(T.TestCase):
    def setUp(self):
        super().setUp()
        if not PLUGIN_DIR or not os.path.exists(os.path.join(PLUGIN_DIR, "simulator.so")):
            self.skipTest("plugins not built")

    def start(self, n, plugin=True, ota=None, firmware="1.0.0", fw_modules=None,
              isolation="none"):
        rows = hubctl.gen_devices(n, PK)
        hub = hubctl.Hub(rows, rate=0).start()
        self.later(hub.stop)
        keys = ["%s/%s" % (PK, r["device_name"]) for r in rows]
        cfg = T.base_config(self.tmp)
        cfg["devices"] = [T.hub_device_config(hub, r, rate=0,
                                              firmware_version=fw_modules or firmware)
                          for r in rows]
        o = {"ca_file": hub.info["ca_file"], "progress_interval_ms": 500, "min_free_bytes": 0}
        o.update(ota or {})
        cfg["ota"] = o
        if plugin:
            cfg["plugins"] = [{"name": "simulator", "devices": keys, "isolation": isolation,
                               "config": {"interval_ms": 60000, "apply_ms": 100}}]
        dm = self.daemon(cfg)
        for k in keys:
            dm.wait_state(k, "online")
        for r in rows:  # the first inform after login
            T.wait_for(lambda: informs(hub, r["device_name"], firmware if not fw_modules else None),
                       10, what="first inform of " + r["device_name"])
        return hub, rows, keys, dm

    def job(self, dm, key, module=""):
        r = dm.call("ota", device=key)
        self.assertTrue(r["ok"], r)
        jobs = [j for j in r["result"]["jobs"] if j["module"] == module]
        return jobs[0] if jobs else None

    def wait_job(self, dm, key, state, timeout=20, module=""):
        def check():
            j = self.job(dm, key, module)
            return j if j and j["state"] == state else None
        try:
            return T.wait_for(check, timeout, what="%s job to be %s" % (key, state))
        except AssertionError as e:
            raise AssertionError("%s; job %s; log:\n%s" % (e, self.job(dm, key, module),
                                                            dm.log()[-3000:]))

    def test_five_devices_upgraded_through_the_simulator(self):
        """Every notice variant: "1000" and 200 codes, sign and md5 fields, MD5/Md5/SHA256/
        Sha256, a module, a multi-file package; each device ends on the new version, informed."""
        hub, rows, keys, dm = self.start(5, fw_modules=None)
        fw = make_file(os.path.join(self.tmp, "fw.bin"), 300 * 1024)
        fw2 = make_file(os.path.join(self.tmp, "fw2.bin"), 50 * 1024)
        variants = [
            dict(sign_method="MD5", code="1000"),
            dict(sign_method="Md5", code="200", md5_field=True),
            dict(sign_method="SHA256", code="1000", ext_data={"key": "v"}),
            dict(sign_method="Sha256", code="200", is_diff=True),
            dict(sign_method="Md5", code="1000", files_extra=[fw2]),
        ]
        for r, v in zip(rows, variants):
            files = [fw] + v.pop("files_extra", [])
            hub.ota_push(PK, r["device_name"], files, "2.0.0", **v)
        for r, k in zip(rows, keys):
            T.wait_for(lambda: informs(hub, r["device_name"], "2.0.0"), 20,
                       what="inform of 2.0.0 from " + k)
            j = self.wait_job(dm, k, "done")
            self.assertEqual(j["from_version"], "1.0.0")
            self.assertEqual(j["to_version"], "2.0.0")
            steps = [int(p["step"]) for p in progress(hub, r["device_name"])]
            self.assertIn(100, steps, steps)
            self.assertEqual(steps, sorted(steps), "progress went backwards: %s" % steps)
            self.assertTrue(all(1 <= s <= 100 for s in steps), steps)
            dev = dm.device(k)
            self.assertIn({"device": k, "module": "", "version": "2.0.0", "source": "ota"},
                          dev["firmware"])
            for f in j["files"]:  # removed once applied
                self.assertFalse(os.path.exists(f["path"]), f)
        self.assertEqual(len(self.job(dm, keys[4])["files"]), 2)
        # aligwctl shows the jobs
        out = subprocess.run([T.ALIGWCTL, "-s", dm.socket_path, "ota"], capture_output=True,
                             text=True, timeout=10)
        self.assertEqual(out.returncode, 0, out.stderr)
        for k in keys:
            self.assertRegex(out.stdout, r"%s\s+\S*\s*1\.0\.0 → 2\.0\.0\s+done" % k)

    def test_out_of_process_simulator_applies_firmware(self):
        """The default isolation: on_firmware runs in the simulator's aligw-plugin-host, which
        reads the package beneath state_dir/ota (Landlock keeps the rest of state_dir out of its
        reach) and answers with firmware_result over the socket: one device ends on the new
        version; the other's package starts with the simulator's flash-failure mark, which it can
        only see by reading the file, so its job fails with -4 and that reason."""
        hub, rows, keys, dm = self.start(2, isolation="process")
        st = dm.call("status")["result"]
        self.assertEqual([(h["name"], h["isolation"]) for h in st["plugin_hosts"]],
                         [("simulator", "process")], st["plugin_hosts"])
        good = make_file(os.path.join(self.tmp, "good.bin"), 200 * 1024)
        bad = make_file(os.path.join(self.tmp, "bad.bin"), 64 * 1024, b"ALIGW-SIM-FLASH-FAIL")
        hub.ota_push(PK, rows[0]["device_name"], [good], "2.0.0")
        hub.ota_push(PK, rows[1]["device_name"], [bad], "2.0.0")
        T.wait_for(lambda: informs(hub, rows[0]["device_name"], "2.0.0"), 20,
                   what="inform of 2.0.0 from the out-of-process plugin's device")
        j = self.wait_job(dm, keys[0], "done")
        self.assertEqual((j["from_version"], j["to_version"]), ("1.0.0", "2.0.0"))
        self.assertIn({"device": keys[0], "module": "", "version": "2.0.0", "source": "ota"},
                      dm.device(keys[0])["firmware"])
        j = self.wait_job(dm, keys[1], "failed")
        self.assertIn("simulated flash failure", json.dumps(j))
        # the job is failed locally before its -4 progress has gone through the outbox to the
        # hub: wait for it there, then check it is the only failure reported
        T.wait_for(lambda: [p for p in progress(hub, rows[1]["device_name"])
                            if int(p["step"]) < 0], 10, what="progress -4 at the hub")
        fails = [p for p in progress(hub, rows[1]["device_name"]) if int(p["step"]) < 0]
        self.assertEqual([int(p["step"]) for p in fails], [-4], fails)
        self.assertFalse(informs(hub, rows[1]["device_name"], "2.0.0"))

    def test_api_client_applies_firmware(self):
        hub, rows, keys, dm = self.start(1, plugin=False)
        dn, key = rows[0]["device_name"], keys[0]
        api = dm.api()
        self.later(api.close)
        r = api.call("watch", devices=[key], kinds=["ota"])
        self.assertTrue(r["ok"], r)
        fw = make_file(os.path.join(self.tmp, "fw.bin"), 200 * 1024)
        hub.ota_push(PK, dn, [fw], "1.1.0", module="MCU", sign_method="SHA256")
        while True:
            ev = api.next_event(20)
            if ev.get("action") == "apply":
                break
        self.assertEqual(ev["module"], "MCU")
        self.assertEqual(ev["version"], "1.1.0")
        with open(ev["files"][0]["path"], "rb") as f, open(fw, "rb") as g:
            self.assertEqual(f.read(), g.read())
        self.assertEqual(ev["files"][0]["digest"], hashlib.sha256(open(fw, "rb").read()).hexdigest())
        # a wrong job id is refused, the right one accepted
        bad = api.call("ota_result", device=key, job=ev["job"] + 1000, step=0)
        self.assertFalse(bad["ok"])
        ok = api.call("ota_result", device=key, job=ev["job"], step=0, version="1.1.0")
        self.assertTrue(ok["ok"], ok)
        T.wait_for(lambda: [p for p in informs(hub, dn, "1.1.0") if p.get("module") == "MCU"],
                   10, what="inform of MCU 1.1.0")
        self.wait_job(dm, key, "done", module="MCU")
        again = api.call("ota_result", device=key, job=ev["job"], step=0)
        self.assertFalse(again["ok"], again)

    def test_cut_at_half_resumes(self):
        hub, rows, keys, dm = self.start(1)
        dn, key = rows[0]["device_name"], keys[0]
        size = 2 * 1024 * 1024
        fw = make_file(os.path.join(self.tmp, "fw.bin"), size)
        _, names = hub.ota_push(PK, dn, [fw], "2.0.0", send=False)
        hub.ota_fault(names[0], size // 2)
        hub.ota_push(PK, dn, [fw], "2.0.0")
        self.wait_job(dm, key, "done", 30)
        reqs = hub.ota_requests(names[0])
        self.assertEqual(reqs[0][1:], (0, 200, size // 2), reqs)
        self.assertEqual(reqs[1][1:], (size // 2, 206, size // 2), reqs)
        T.wait_for(lambda: informs(hub, dn, "2.0.0"), 10, what="inform of 2.0.0")

    def test_digest_mismatch_reports_minus_3(self):
        hub, rows, keys, dm = self.start(1)
        dn, key = rows[0]["device_name"], keys[0]
        fw = make_file(os.path.join(self.tmp, "fw.bin"), 100 * 1024)
        hub.ota_push(PK, dn, [fw], "2.0.0", bad_sign=True)
        j = self.wait_job(dm, key, "failed")
        self.assertEqual(j["step"], -3)
        p = T.wait_for(lambda: [p for p in progress(hub, dn) if p["step"] == "-3"], 10,
                       what="progress -3")[0]
        self.assertIn("digest mismatch", p["desc"])
        self.assertLessEqual(len(p["desc"]), 128)
        self.assertFalse(os.path.exists(j["files"][0]["path"]))
        self.assertFalse(informs(hub, dn, "2.0.0"))

    def test_expired_url_is_refreshed(self):
        hub, rows, keys, dm = self.start(1)
        dn, key = rows[0]["device_name"], keys[0]
        fw = make_file(os.path.join(self.tmp, "fw.bin"), 100 * 1024)
        notice, names = hub.ota_push(PK, dn, [fw], "2.0.0", send=False)
        hub.ota_expire()  # the URL in the notice is dead before the device uses it
        since = hub.mark()
        hub.publish("/ota/device/upgrade/%s/%s" % (PK, dn), notice)
        self.wait_job(dm, key, "done", 30)
        statuses = [r[2] for r in hub.ota_requests(names[0])]
        self.assertEqual(statuses[0], 403, statuses)
        self.assertEqual(statuses[-1], 200, statuses)
        self.assertIsNotNone(hub.wait_message("/sys/%s/thing/ota/firmware/get" % key, 1, since))

    def test_newer_job_replaces_older(self):
        hub, rows, keys, dm = self.start(1, ota={"max_rate": 256 * 1024, "max_concurrent": 1})
        dn, key = rows[0]["device_name"], keys[0]
        old = make_file(os.path.join(self.tmp, "old.bin"), 2 * 1024 * 1024)
        new = make_file(os.path.join(self.tmp, "new.bin"), 64 * 1024)
        hub.ota_push(PK, dn, [old], "2.0.0")
        j1 = self.wait_job(dm, key, "downloading")
        hub.ota_push(PK, dn, [new], "3.0.0")
        T.wait_for(lambda: informs(hub, dn, "3.0.0"), 20, what="inform of 3.0.0")
        j2 = self.wait_job(dm, key, "done")
        self.assertEqual(j2["to_version"], "3.0.0")
        self.assertNotEqual(j1["job"], j2["job"])
        self.assertFalse(os.path.exists(j1["files"][0]["path"]))
        self.assertFalse(informs(hub, dn, "2.0.0"))

    def test_restart_mid_download_resumes(self):
        hub, rows, keys, dm = self.start(1, ota={"max_rate": 512 * 1024})
        dn, key = rows[0]["device_name"], keys[0]
        size = 3 * 1024 * 1024
        fw = make_file(os.path.join(self.tmp, "fw.bin"), size)
        _, names = hub.ota_push(PK, dn, [fw], "2.0.0")
        j = self.wait_job(dm, key, "downloading")
        path = j["files"][0]["path"]
        T.wait_for(lambda: os.path.exists(path) and os.path.getsize(path) > size // 4, 20,
                   what="a quarter of the file on disk")
        dm.kill9()
        have = os.path.getsize(path)
        self.assertLess(have, size)
        dm.start()
        self.wait_job(dm, key, "done", 30)
        T.wait_for(lambda: informs(hub, dn, "2.0.0"), 10, what="inform of 2.0.0")
        starts = [r[1] for r in hub.ota_requests(names[0])]
        self.assertTrue(any(s >= have - 65536 and s > 0 for s in starts[1:]), (have, starts))
        self.assertIn("resumed after a restart", dm.log())

    def test_bad_input(self):
        """Each bad notice or download is one clear failure with the right step, no crash."""
        hub, rows, keys, dm = self.start(1, ota={"max_retries": 1})
        dn, key = rows[0]["device_name"], keys[0]
        topic = "/ota/device/upgrade/%s/%s" % (PK, dn)
        fw = make_file(os.path.join(self.tmp, "fw.bin"), 64 * 1024)
        notice, _ = hub.ota_push(PK, dn, [fw], "2.0.0", send=False)

        def expect(payload, step, text):
            since = len(progress(hub, dn))
            hub.publish(topic, payload)
            ps = T.wait_for(lambda: progress(hub, dn)[since:], 10, what="a report for " + text)
            self.assertEqual(ps[0]["step"], str(step), (text, ps))
            self.assertIn(text, ps[0].get("desc", ""))

        def variant(**change):
            n = json.loads(json.dumps(notice))
            for k, v in change.items():
                if v is None:
                    n["data"].pop(k, None)
                else:
                    n["data"][k] = v
            return n

        expect("{not json", -1, "bad JSON")
        expect(variant(signMethod="CRC32"), -3, "signMethod")
        expect(variant(sign="abc", md5=None), -3, "digest has 32")
        expect(variant(url="http://127.0.0.1:1/fw.bin"), -2, "not https")
        expect(variant(size=10**12), -2, "not enough disk")
        expect(variant(size=1000), -2, "more than the announced")
        expect(variant(url="https://127.0.0.1:%d/ota-loop" % hub.info["https_port"]), -2,
               "redirect")
        self.assertIsNone(dm.proc.poll(), "aligwd died")
        self.assertFalse(informs(hub, dn, "2.0.0"))
        # and a good one still works afterwards
        hub.ota_push(PK, dn, [fw], "2.0.0")
        T.wait_for(lambda: informs(hub, dn, "2.0.0"), 20, what="inform of 2.0.0")


if __name__ == "__main__":
    T.main()
