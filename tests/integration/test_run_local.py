"""The README's run command (scripts/run-local.sh) on the embedded default: simulated devices
come online and their properties reach the local hub within 10 seconds, and the one hub command
the README shows upgrades all of them (1.0.0 -> 2.0.0, informed to the cloud)."""
import os
import re
import subprocess

import aligwtest as T

ROOT = os.path.abspath(os.path.join(T.HERE, "..", ".."))


class RunLocal(T.TestCase):
    def test_devices_online_and_data_at_the_hub_within_10s(self):
        build = os.environ.get("ALIGW_BUILD_DIR")
        if not build:
            self.skipTest("ALIGW_BUILD_DIR not set (run through ctest)")
        p = subprocess.Popen([os.path.join(ROOT, "scripts", "run-local.sh"), "--no-build",
                              "--build-dir", build, "--duration", "10"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        lines = []
        push = None
        for line in p.stdout:  # the upgrade command the script prints, run as the README says
            lines.append(line)
            m = re.match(r"^==\s+(\S+/aligw-hub ota-push .*)$", line.strip())
            if m:
                push = m.group(1).split()
                break
        self.assertIsNotNone(push, "".join(lines))
        ota = subprocess.run(push, capture_output=True, text=True, timeout=30, cwd=ROOT)
        rest, _ = p.communicate(timeout=90)
        out = "".join(lines) + rest
        self.assertEqual(ota.returncode, 0, ota.stdout + ota.stderr)
        self.assertEqual(p.returncode, 0, out[-3000:])
        upgraded = re.findall(r"^\[cloud\] /ota/device/inform/a1LocalDemo/(sim\d+) .*\"2\.0\.0\"",
                              out, re.M)
        self.assertEqual(len(set(upgraded)), 5, out[-3000:])
        posts = re.findall(r"^\[cloud\] /sys/a1LocalDemo/(sim\d+)/thing/event/property/post ",
                           out, re.M)
        self.assertEqual(len(set(posts)), 5, out[-3000:])
        self.assertIn("5 devices: 5 online", out)
        self.assertIn("stopped", out)


if __name__ == "__main__":
    T.main()
