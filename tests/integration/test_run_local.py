"""The README's run command (scripts/run-local.sh) on the embedded default: simulated devices
come online and their properties reach the local hub within 10 seconds."""
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
        r = subprocess.run([os.path.join(ROOT, "scripts", "run-local.sh"), "--no-build",
                            "--build-dir", build, "--duration", "10"],
                           capture_output=True, text=True, timeout=90, cwd=ROOT)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, out[-3000:])
        posts = re.findall(r"^\[cloud\] /sys/a1LocalDemo/(sim\d+)/thing/event/property/post ",
                           out, re.M)
        self.assertEqual(len(set(posts)), 5, out[-3000:])
        self.assertIn("5 devices: 5 online", out)
        self.assertIn("stopped", out)


if __name__ == "__main__":
    T.main()
