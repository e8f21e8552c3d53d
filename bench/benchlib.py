"""Helpers shared by the benchmark scripts in bench/: starting the servers
under test on loopback (each pinned to core 0 and stopped by its PID),
waiting for a quiet host, and running ntp-loadgen (pinned to core 1)."""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_CORE = "0"
LOADGEN_CORE = "1"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def busy_percent(seconds=1.0):
    """Share of all CPUs busy over `seconds` (from /proc/stat)."""

    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]

    t1, i1 = sample()
    time.sleep(seconds)
    t2, i2 = sample()
    return 100.0 * (1 - (i2 - i1) / max(1, t2 - t1))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port, timeout=10.0):
    """True once something on 127.0.0.1:port answers an NTP request with a
    synchronized mode-4 reply."""
    req = bytearray(48)
    req[0] = 0x23
    req[40:48] = struct.pack("!Q", 0x123456789ABCDEF0)
    deadline = time.time() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.1)
        while time.time() < deadline:
            try:
                s.sendto(req, ("127.0.0.1", port))
                data, _ = s.recvfrom(512)
                if len(data) >= 48 and data[0] & 7 == 4 and data[1] != 0:
                    return True
            except OSError:
                time.sleep(0.05)
    return False


def which(name):
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.isfile(p)), None
    )


class Server:
    """A server process we started (stopped by PID)."""

    def __init__(self, name, argv, port, tmp, note=""):
        self.name, self.port, self.note = name, port, note
        self.log = open(os.path.join(tmp, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        if not answers(port):
            self.stop()
            raise RuntimeError(f"{name} did not answer on 127.0.0.1:{port}")

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_reflector(tmp, cargo_target):
    src = os.path.join(ROOT, "..", "shared", "tools", "reflector.c")
    if not os.path.isfile(src):
        return None, f"skipped: {src} not found"
    exe = os.path.join(tmp, "reflector")
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    port = free_port()
    argv = ["taskset", "-c", SERVER_CORE, exe, str(port)]
    return Server(
        "reflector", argv, port, tmp, "null responder: recvmmsg/sendmmsg batches of 64, gcc -O2"
    ), None


def start_fastntpd(tmp, cargo_target, io="io-uring", name="fastntpd"):
    exe = os.path.join(cargo_target, "release", "fastntpd")
    port = free_port()
    conf = os.path.join(tmp, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(
            f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\nio = "{io}"\n\n'
            "[clock]\nlocal-stratum = 10\n"
        )
    argv = ["taskset", "-c", SERVER_CORE, exe, "--config", conf]
    return Server(name, argv, port, tmp, f"workers = 1, io = {io}"), None


def start_fastntpd_mmsg(tmp, cargo_target):
    return start_fastntpd(tmp, cargo_target, io="mmsg", name="fastntpd-mmsg")


def start_chronyd(tmp, cargo_target):
    chronyd, capsh = which("chronyd"), which("capsh")
    if not chronyd or not capsh:
        return None, "skipped: chronyd or capsh not installed (apt-get install chrony libcap2-bin)"
    port = free_port()
    d = os.path.join(tmp, "chronyd")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "chrony.conf")
    with open(conf, "w") as f:
        f.write(
            f"port {port}\nbindaddress 127.0.0.1\ncmdport 0\nbindcmdaddress /\n"
            "local stratum 10\nallow 127.0.0.0/8\nnoclientlog\n"
            f"pidfile {d}/chronyd.pid\ndriftfile {d}/drift\n"
        )
    out = subprocess.run([chronyd, "-v"], capture_output=True, text=True).stdout
    words = out.split()
    version = "chronyd " + (words[words.index("version") + 1] if "version" in words else "?")
    argv = [
        "taskset", "-c", SERVER_CORE, capsh, "--drop=cap_sys_time", "--", "-c",
        f"exec {chronyd} -x -d -u root -f {conf}",
    ]
    return Server("chronyd", argv, port, tmp, f"{version}; -x, no ratelimit, noclientlog"), None


def start_ntpd_rs(tmp, cargo_target):
    exe = which("ntp-daemon")
    if not exe:
        return None, "skipped: ntpd-rs (ntp-daemon) is not installed (cargo install ntpd)"
    port = free_port()
    conf = os.path.join(tmp, "ntpd-rs.toml")
    with open(conf, "w") as f:
        f.write(
            "[observability]\nlog-level = \"warn\"\n\n"
            f"[[server]]\nlisten = \"127.0.0.1:{port}\"\n\n"
            "[synchronization]\nlocal-stratum = 10\n"
        )
    argv = ["taskset", "-c", SERVER_CORE, exe, "-c", conf]
    return Server("ntpd-rs", argv, port, tmp, "no [[source]]: never touches the clock"), None


STARTERS = {
    "reflector": start_reflector,
    "fastntpd": start_fastntpd,
    "fastntpd-mmsg": start_fastntpd_mmsg,
    "chronyd": start_chronyd,
    "ntpd-rs": start_ntpd_rs,
}


def wait_quiet(limit_s):
    """Waits up to limit_s for the host to be under 10 % busy (over 1 s);
    returns the last reading."""
    deadline = time.time() + limit_s
    while True:
        b = busy_percent()
        if b < 10 or time.time() >= deadline:
            return b


def loadgen(cargo_target, port, args, tmp, tag, quiet_wait=0):
    busy = wait_quiet(quiet_wait)
    out = os.path.join(tmp, f"{tag}.json")
    argv = [
        "taskset", "-c", LOADGEN_CORE,
        os.path.join(cargo_target, "release", "ntp-loadgen"),
        f"127.0.0.1:{port}", "--no-progress", "--json", out,
    ] + args
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ntp-loadgen failed ({r.returncode}): {r.stderr}\n{r.stdout}")
    with open(out) as f:
        j = json.load(f)
    j["busy_before_pct"] = busy
    return j, r.stdout
