#!/usr/bin/python3
"""Minimal aligwd client, standard library only (see docs/api.md).

    aligw_client.py post PK/DN Temperature=21.5      post properties, wait for the platform
    aligw_client.py serve PK/DN                      answer property sets and service calls
"""
import itertools
import json
import os
import socket
import sys

SOCKET = os.environ.get("ALIGW_SOCKET", "/run/aligw/aligw.sock")


class Client:
    def __init__(self, path=SOCKET):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.ids = itertools.count(1)
        self.events = []  # events that arrived while waiting for a response

    def send(self, op, **fields):
        rid = next(self.ids)
        line = json.dumps(dict(id=rid, op=op, **fields), separators=(",", ":"))
        self.file.write(line.encode() + b"\n")
        self.file.flush()
        return rid

    def read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("aligwd closed the connection")
        return json.loads(line)

    def call(self, op, **fields):
        rid = self.send(op, **fields)
        while True:
            msg = self.read()
            if "event" in msg and "ok" not in msg:
                self.events.append(msg)
            elif msg.get("id") == rid:
                if not msg["ok"]:
                    err = msg["error"]
                    raise RuntimeError("%s: %s" % (err["code"], err["message"]))
                return msg["result"]

    def next_event(self):
        return self.events.pop(0) if self.events else self.read()


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    cmd, device = argv[1], argv[2]
    c = Client()
    print("protocol", c.call("hello", client="aligw_client.py")["protocol"])
    if cmd == "post":
        params = {}
        for kv in argv[3:]:
            key, _, value = kv.partition("=")
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
        print(c.call("post_properties", device=device, params=params, wait_reply=True))
    elif cmd == "serve":
        c.call("watch", devices=[device], kinds=["property_set", "service_call"])
        while True:
            ev = c.next_event()
            if ev.get("event") not in ("property_set", "service_call"):
                continue
            print("got", ev["event"], ev.get("service", ""), ev["params"])
            # A real program would act here; answer 200 with an echo of the inputs.
            rid = c.send("reply", device=ev["device"], request_id=ev["id"], code=200,
                         data={"echo": ev["params"]} if ev["event"] == "service_call" else {})
            print("replied (request %d)" % rid)  # its response arrives among the events
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
