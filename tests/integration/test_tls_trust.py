"""TLS at scale (issue 15): trust through the hashed CA directory, and the window of TLS
handshakes. Sessions no longer hand Paho the CA file but a directory of the file's certificates
named by subject hash (daemon/cadir.c). The promises stay: a server chaining to a trusted root is
accepted, one from any other CA is refused, and one with the right CA but another host name is
refused before a byte of MQTT is sent. And at most 256 TLS handshakes are handed to Paho at once
(session.c), the others wait their turn.

The refusals are watched from the server side with small TLS servers of our own (Python's ssl
module): a positive control on the same kind of server proves that a CONNECT is what an accepted
server receives, so "nothing received" means the client refused it."""
import os
import socket
import ssl
import subprocess
import threading
import time

import aligwtest as T
import hubctl

PK = "a1TlsTrust"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(ROOT, "conf", "aliyun-ca-bundle.pem")


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def make_cert(d, name, san, ca_crt, ca_key):
    """A P-256 server certificate for san, signed by ca; returns (cert, key) paths."""
    key, csr, crt, ext = (os.path.join(d, name + s) for s in (".key", ".csr", ".crt", ".ext"))
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" % san)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-out", csr, "-subj", "/CN=" + name)
    openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
            "-out", crt, "-days", "30", "-extfile", ext)
    return crt, key


class Probe:
    """A TLS server on a free loopback port that records, per connection, whether the handshake
    completed and the first bytes the client sent after it."""

    def __init__(self, crt, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(crt, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.handshake_errors = 0
        self.data = b""
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        c.settimeout(5)
        try:
            s = self.ctx.wrap_socket(c, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_errors += 1
            c.close()
            return
        self.handshakes += 1
        try:
            b = s.recv(64)
            self.data += b
        except (ssl.SSLError, OSError):
            pass
        s.close()

    def stop(self):
        self.stopping = True
        self.sock.close()


class TlsTrust(T.TestCase):
    def test_hashed_ca_directory_keeps_verification(self):
        rows = hubctl.gen_devices(4, PK)
        hub = hubctl.Hub(rows[:1]).start()
        self.later(hub.stop)
        hubdir = os.path.dirname(hub.info["ca_file"])
        ca_crt, ca_key = hub.info["ca_file"], os.path.join(hubdir, "ca.key")

        # What a gateway trusts: the shipped roots plus the hub's CA.
        trust = os.path.join(self.tmp, "trust.pem")
        with open(trust, "w") as out:
            for f in (BUNDLE, ca_crt):
                with open(f) as inp:
                    out.write(inp.read().rstrip("\n") + "\n")
        n_certs = open(trust).read().count("BEGIN CERTIFICATE")

        # The servers: right CA and host (control), right CA but another host, a stranger CA.
        good = Probe(*make_cert(self.tmp, "good", "DNS:localhost", ca_crt, ca_key))
        wrong_host = Probe(*make_cert(self.tmp, "wronghost", "DNS:wrong.example", ca_crt, ca_key))
        sca_crt, sca_key = os.path.join(self.tmp, "stranger.crt"), os.path.join(self.tmp, "s.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", sca_key, "-out", sca_crt, "-days", "30", "-subj", "/CN=stranger CA")
        stranger = Probe(*make_cert(self.tmp, "strangerleaf", "DNS:localhost", sca_crt, sca_key))
        for p in (good, wrong_host, stranger):
            self.later(p.stop)

        cfg = T.base_config(self.tmp)
        cfg["devices"].append(T.hub_device_config(hub, rows[0], tls=True, ca_file=trust))
        for r, p in zip(rows[1:], (good, wrong_host, stranger)):
            d = T.hub_device_config(hub, r, tls=True, ca_file=trust)
            d.update(host="localhost", port=p.port, device_secret=r["device_secret"])
            cfg["devices"].append(d)
        dm = self.daemon(cfg)

        # The real hub: verified through the directory, logged in.
        dm.wait_state("%s/%s" % (PK, rows[0]["device_name"]), "online")
        # The control server gets an MQTT CONNECT (packet type 1): the directory found its CA.
        T.wait_for(lambda: good.data[:1] == b"\x10", 20, what="CONNECT at the control server")
        # Give the refused ones the same chances: several attempts each (back-off 0.2-2 s).
        T.wait_for(lambda: wrong_host.handshakes >= 2 and stranger.handshake_errors >= 2, 20,
                   what="attempts at the refused servers")
        self.assertEqual(wrong_host.data, b"", "a CONNECT went to a server with another host name")
        self.assertEqual(stranger.handshakes, 0, "a handshake with a stranger CA completed")
        self.assertEqual(stranger.data, b"")
        for r in rows[2:]:
            self.assertNotEqual(dm.device("%s/%s" % (PK, r["device_name"]))["state"], "online")

        # The directory: one file per certificate of the trust file, named <subject hash>.<n>.
        cadirs = os.path.join(self.tmp, "run", "ca")
        dirs = [d for d in os.listdir(cadirs) if not d.startswith(".")]
        self.assertEqual(len(dirs), 1, dirs)
        names = sorted(os.listdir(os.path.join(cadirs, dirs[0])))
        self.assertEqual(len(names), n_certs, names)
        for n in names:
            h, _, k = n.partition(".")
            self.assertEqual(len(h), 8, n)
            int(h, 16)
            self.assertTrue(k.isdigit(), n)

        # Stopping removes it.
        dm.stop()
        self.assertEqual([d for d in os.listdir(cadirs)], [])


class Holder:
    """Accepts TCP connections and holds them without a byte of TLS: every handshake started
    towards it stays open. Counts how many are open at once."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.open = []
        self.accepted = 0
        self.most = 0
        self.lock = threading.Lock()
        self.stopping = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with self.lock:
                self.open.append(c)
                self.accepted += 1
                self.most = max(self.most, len(self.open))

    def drop_all(self):
        with self.lock:
            for c in self.open:
                c.close()
            self.open = []

    def stop(self):
        self.stopping = True
        self.drop_all()
        self.sock.close()


class TlsWindow(T.TestCase):
    def test_at_most_256_tls_handshakes_at_once(self):
        """300 TLS devices towards a server that never answers: 256 handshakes are started, the
        others wait for one to end (session_paho.c's window) instead of queuing in Paho, where
        their time-out would run out before Paho reached them. The window is per Paho, so per
        process: the sessions stay in aligwd's here; in shards of 150 the window holds each
        shard's handshakes, and 300 start at once."""
        rows = hubctl.gen_devices(300, PK)
        holder = Holder()
        self.later(holder.stop)
        cfg = T.base_config(self.tmp, cloud={"connect_rate": 100000, "connect_burst": 100000,
                                             "devices_per_shard": 0})
        for r in rows:
            cfg["devices"].append({"product_key": r["product_key"], "device_name": r["device_name"],
                                   "device_secret": r["device_secret"], "host": "localhost",
                                   "port": holder.port, "tls": True, "ca_file": BUNDLE})
        self.daemon(cfg)
        T.wait_for(lambda: holder.accepted >= 256, 15, what="256 handshakes started")
        time.sleep(3)  # the rest would have arrived by now without the window
        self.assertEqual(holder.most, 256)
        self.assertEqual(holder.accepted, 256)
        # Handshakes that end (here: the server hangs up) make room for the waiting ones.
        holder.drop_all()
        T.wait_for(lambda: holder.accepted >= 300, 15, what="the waiting 44 started")
        self.assertLessEqual(holder.most, 256)


if __name__ == "__main__":
    T.main()
