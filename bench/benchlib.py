"""benchlib: what bench/sessions and bench/forward share.

Finds the built programs, starts the local hub (tests/hub/hubctl.py) and aligwd with a generated
config, speaks aligwd's API socket (newline-delimited JSON, pipelined), reads a process's RSS and
CPU time from /proc, and runs mosquitto_sub as the cloud-side consumer that counts arrivals.
Python 3 stdlib only (Debian's /usr/bin/python3).
"""
import glob
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "hub"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import hubctl  # noqa: E402
from aligwtest import Api as _TestApi  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile():
    """Raises our (and so our children's) open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Build:
    """Paths of the programs a benchmark runs, from one build directory."""

    def __init__(self, build_dir):
        self.dir = os.path.abspath(build_dir)
        self.aligwd = os.environ.get("ALIGWD") or os.path.join(self.dir, "daemon", "aligwd")
        self.paho_sessions = os.path.join(self.dir, "bench", "paho_sessions")
        self.paho_publish = os.path.join(self.dir, "bench", "paho_publish")
        self.api_publish = os.path.join(self.dir, "bench", "api_publish")
        self.hub_plugin = find_hub_plugin(self.dir)

    def check(self, *names):
        names = names + ("hub_plugin",)
        missing = [getattr(self, n) for n in names if not os.path.exists(getattr(self, n))]
        if missing:
            sys.exit("missing: %s\nbuild them first: make -C %s aligwd aligw_hub paho_sessions "
                     "paho_publish api_publish" % (", ".join(missing), self.dir))


def find_hub_plugin(build_dir):
    """The hub's mosquitto plugin: $ALIGW_HUB_PLUGIN, else the one built in build_dir (CMake puts
    it in plugins-out/ with every other plugin), else the newest in any build*/ of the tree."""
    env = os.environ.get("ALIGW_HUB_PLUGIN")
    if env:
        return env
    for sub in ("plugins-out", os.path.join("tests", "hub")):
        p = os.path.join(build_dir, sub, "aligw_hub.so")
        if os.path.exists(p):
            return p
    try:
        return hubctl.find_plugin()
    except FileNotFoundError:
        return os.path.join(build_dir, "plugins-out", "aligw_hub.so")  # Build.check names it


def default_build():
    return os.environ.get("ALIGW_BUILD", os.path.join(ROOT, "build"))


# ---- /proc --------------------------------------------------------------------------------

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def children(pid):
    """Direct children of pid (aligwd's plugin hosts)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _tree(read, pid, read_child=None):
    """read(pid) plus read_child() (default: read) of each of its children (aligwd's session
    shards and plugin hosts; a child that just exited counts 0)."""
    total = read(pid)
    for c in children(pid):
        try:
            total += (read_child or read)(c)
        except OSError:
            pass
    return total


def cpu_seconds_tree(pid):
    """cpu_seconds of pid plus its children."""
    return _tree(cpu_seconds, pid)


def private_kb(pid):
    """A process's pages that no other process maps (Private_Clean + Private_Dirty)."""
    n = 0
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                n += int(line.split()[1])
    return n


def rss_kb_tree(pid):
    """Memory of pid and its children (aligwd's session shards, plugin hosts), each page once:
    pid's RSS plus each child's private pages. A child's RSS would count again the shared
    libraries that pid already maps (~5 MB of libcrypto and libc per session shard: 4 shards
    holding 1,000 sessions have 8.3 MB of RSS each and 2.8 MB of their own)."""
    return _tree(rss_kb, pid, private_kb)


def ctx_switches(pid):
    """Voluntary context switches (a thread waiting: each one a wake-up) of all of a process's
    threads now alive. Involuntary ones (preemption) depend on the machine's other load."""
    n = 0
    for t in glob.glob("/proc/%d/task/*/status" % pid):
        try:
            with open(t) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        n += int(line.split()[1])
        except OSError:
            pass
    return n


def percentile(xs, q):
    """The q-th percentile (0..100) of xs by the nearest-rank method, or None when empty."""
    if not xs:
        return None
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(q / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- the hub ------------------------------------------------------------------------------

def gen_devices(n, product="a1BenchProd", prefix="bench"):
    return hubctl.gen_devices(n, product, prefix=prefix)


class Hub:
    """A fresh local hub (own dir, fresh hub.db) with the per-device rate limit off."""

    def __init__(self, rows, workdir, build, rate=0):
        self.dir = tempfile.mkdtemp(prefix="hub-", dir=workdir)
        self.info, self.procs = hubctl.start(rows, self.dir, rate=rate, plugin=build.hub_plugin)
        self.conf = os.path.join(self.dir, "mosquitto.conf")

    @property
    def pid(self):
        return self.procs[0].pid

    def stop_broker(self):
        """Stops only the mosquitto process (the HTTPS helper keeps running)."""
        hubctl.stop_procs(self.procs[:1])

    def restart_broker(self):
        """Starts mosquitto again with the same config: same ports, same hub.db."""
        with open(os.path.join(self.dir, "mosquitto.log"), "ab") as lf:
            p = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=lf, stderr=lf,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[0] = p
        hubctl.wait_port(self.info["mqtt_port"], p, os.path.join(self.dir, "mosquitto.log"))

    def stop(self):
        hubctl.stop_procs(self.procs)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- aligwd -------------------------------------------------------------------------------

def write_daemon_devices(path, rows):
    """aligwd's devices file: the hub's rows plus rate=0 (the hub's limit is off too)."""
    with open(path, "w") as f:
        f.write("product_key,device_name,device_secret,rate\n")
        for r in rows:
            f.write("%s,%s,%s,0\n" % (r["product_key"], r["device_name"], r["device_secret"]))


class Daemon:
    """aligwd with a generated config in its own dir, pointed at a hub."""

    def __init__(self, build, workdir, hub, rows, tls=False, store=None, cloud=None,
                 log_level="warning"):
        self.build = build
        self.dir = tempfile.mkdtemp(prefix="aligwd-", dir=workdir)
        self.devices_path = os.path.join(self.dir, "devices.csv")
        write_daemon_devices(self.devices_path, rows)
        self.socket_path = os.path.join(self.dir, "run", "aligw.sock")
        c = {"host": "localhost" if tls else "127.0.0.1",
             "port": hub.info["mqtts_port"] if tls else hub.info["mqtt_port"], "tls": tls,
             "connect_rate": 100000, "connect_burst": 100000, "backoff_min_ms": 200,
             "backoff_max_ms": 1000}
        if tls:
            c["ca_file"] = hub.info["ca_file"]
        c.update(cloud or {})
        st = {"path": os.path.join(self.dir, "state", "outbox.db"), "durability": "normal"}
        st.update(store or {})
        self.config = {"log_level": log_level, "state_dir": os.path.join(self.dir, "state"),
                       "runtime_dir": os.path.join(self.dir, "run"),
                       "api": {"socket": self.socket_path}, "cloud": c, "store": st,
                       "devices": [], "devices_file": self.devices_path}
        self.config_path = os.path.join(self.dir, "aligw.json")
        with open(self.config_path, "w") as f:
            json.dump(self.config, f, indent=2)
        os.chmod(self.config_path, 0o600)
        self.log_path = os.path.join(self.dir, "aligwd.log")
        self.proc = None
        self.t_start = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen([self.build.aligwd, "-c", self.config_path],
                                     stdout=self.logf, stderr=self.logf, env=env,
                                     stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc and self.proc.poll() is None

    def log_tail(self, n=3000):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def wait_socket(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError("aligwd exited with %s:\n%s" % (self.proc.returncode,
                                                                   self.log_tail()))
            if os.path.exists(self.socket_path):
                try:
                    return Api(self.socket_path)
                except OSError:
                    pass
            time.sleep(0.01)
        raise RuntimeError("aligwd API socket not up after %ss" % timeout)

    def stop(self, timeout=30):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Api(_TestApi):
    """A connection to aligwd's API socket: the integration tests' client, with a longer time-out
    (a daemon opening 10,000 sessions answers late)."""

    def __init__(self, path, timeout=60):
        super().__init__(path, timeout)


def pipeline_publish_c(build, socket_path, rows_csv, n_devices, m, payload, connections=2,
                       first_id=1, offset=0, window=8192, stats=None, rate=None, times=None):
    """Pipelined publish requests from bench/api_publish, a C producer (so the gateway's CPU is
    not spent on Python): message i goes to device i % N, like paho_publish. rows_csv
    is a device table with product_key and device_name columns (the hub's or the daemon's
    devices.csv); its first n_devices rows are used. The lines are built before the clock starts.

    Returns (t_first_send, t_last_ok, n_ok, errors[:5]); stats (a dict), when given, receives the
    producer's whole report (cpu_s: its CPU seconds while sending, cpu_build_s: building the lines).
    rate (msg/s) paces the sends; times names a file for each message's send time (wall clock).
    """
    cmd = [build.api_publish, "--socket", socket_path, "--devices", rows_csv, "--count",
           str(n_devices), "--messages", str(m), "--payload", str(payload), "--connections",
           str(connections), "--window", str(window), "--first-id", str(first_id), "--offset",
           str(offset)]
    if rate:
        cmd += ["--rate", str(rate)]
    if times:
        cmd += ["--times", times]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    if not last.startswith("{"):
        raise RuntimeError("api_publish exited with %d: %s" % (p.returncode, p.stderr[-2000:]))
    r = json.loads(last)
    if stats is not None:
        stats.update(r)
    return r["t0"], r["t_ok"], r["ok"], r["errors"]


def read_times(path):
    """{i: wall-clock seconds} from an api_publish / paho_publish --times file."""
    out = {}
    with open(path) as f:
        for line in f:
            i, t = line.split()
            out[int(i)] = float(t)
    return out


def latencies_ms(sent, arrived):
    """Send -> first arrival, in ms, for every message that has both."""
    return [(arrived[i] - t) * 1000.0 for i, t in sent.items() if i in arrived]


# ---- the consumer -------------------------------------------------------------------------

class Consumer:
    """mosquitto_sub as the hub's cloud user, counting messages on /+/+/user/update.

    QoS 1 subscription, so the hub queues (up to its max_queued_messages) rather than drops when
    the consumer lags. Each arrival is one line in a file; count() reads how many so far.
    """

    def __init__(self, hub, workdir, topic="/+/+/user/update", stamp=False):
        self.path = os.path.join(workdir, "consumer-%d.out" % time.monotonic_ns())
        self.f = open(self.path, "wb")
        info = hub.info
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", info["host"], "-p", str(info["mqtt_port"]), "-u",
             info["cloud_username"], "-P", info["cloud_password"], "-i",
             "bench-consumer-%d" % os.getpid(), "-q", "1", "-t", topic, "-F",
             "%U %p" if stamp else "%t", "-V",
             "mqttv311"], stdout=self.f, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        time.sleep(0.3)  # subscribed before the first message (mosquitto_sub has no ready signal)
        if self.proc.poll() is not None:
            raise RuntimeError("mosquitto_sub exited: %s" % self.proc.stderr.read().decode())

    def count(self):
        self.f.flush()
        n = 0
        with open(self.path, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    return n
                n += b.count(b"\n")

    def wait(self, want, timeout, poll=0.02, stall=30.0):
        """Waits until want messages arrived; returns (n, t_reached or None).

        Gives up after timeout, or when nothing new arrived for `stall` seconds.
        """
        deadline = time.monotonic() + timeout
        last_n, last_t = -1, time.monotonic()
        size_per = None
        while True:
            now = time.monotonic()
            sz = os.path.getsize(self.path)
            if size_per is None and sz > 0:
                n = self.count()
                size_per = sz / n if n else None
            # cheap check on size first; exact count only near the end
            if size_per and sz >= size_per * want * 0.999:
                n = self.count()
                if n >= want:
                    return n, now
            if sz != last_n:
                last_n, last_t = sz, now
            if now > deadline or now - last_t > stall:
                return self.count(), None
            time.sleep(poll)

    @property
    def pid(self):
        return self.proc.pid

    def arrivals(self):
        """With stamp=True: {seq: first arrival, wall-clock seconds} from the payloads' "seq"."""
        self.f.flush()
        first = {}
        with open(self.path, "rb") as f:
            for line in f:
                t, _, p = line.partition(b" ")
                k = p.find(b'"seq":')
                if k < 0:
                    continue
                e = k + 6
                while e < len(p) and p[e:e + 1].isdigit():
                    e += 1
                seq = int(p[k + 6:e])
                if seq not in first:
                    first[seq] = float(t)
        return first

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.f.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def fmt(x, spec="%.2f"):
    return "-" if x is None else spec % x
