#!/usr/bin/env python3
"""Times QEMU's own ways of saving a running VM, for the capture benchmark.

  qemu-peers.py QMP_SOCKET snapshot-save VMSTATE_NODE   internal snapshot (RAM + devices + disks)
  qemu-peers.py QMP_SOCKET migrate FILE                 stop, migrate everything to FILE, cont

Prints {"seconds": S} where S is the time the guest was paused. Standard library only.
"""
import json
import socket
import sys
import time


class Monitor:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(600)
        self.sock.connect(path)
        self.buf = b""
        self.recv()  # greeting
        self.call("qmp_capabilities")

    def recv(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("qmp: connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, cmd, args=None):
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self.recv()
            if "event" in r:
                continue
            if "error" in r:
                raise SystemExit(f"qmp: {cmd}: {r['error'].get('desc')}")
            return r["return"]


def snapshot_save(m, node):
    t = time.monotonic()
    m.call("snapshot-save", {"job-id": "bench", "tag": f"bench{int(t)}", "vmstate": node, "devices": [node]})
    while True:
        job = next(j for j in m.call("query-jobs") if j["id"] == "bench")
        if job["status"] == "concluded":
            took = time.monotonic() - t
            m.call("job-dismiss", {"id": "bench"})
            if "error" in job:
                raise SystemExit(f"snapshot-save: {job['error']}")
            return took
        time.sleep(0.002)


def migrate(m, path):
    m.call("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": False}]})
    m.call("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    t = time.monotonic()
    m.call("stop")
    m.call("migrate", {"uri": f"file:{path}"})
    while True:
        st = m.call("query-migrate").get("status")
        if st == "completed":
            break
        if st in ("failed", "cancelled"):
            raise SystemExit(f"migrate: {st}")
        time.sleep(0.002)
    m.call("cont")
    return time.monotonic() - t


def main(argv):
    if len(argv) != 4:
        raise SystemExit(__doc__)
    m = Monitor(argv[1])
    took = {"snapshot-save": snapshot_save, "migrate": migrate}[argv[2]](m, argv[3])
    print(json.dumps({"seconds": took}))


if __name__ == "__main__":
    main(sys.argv)
