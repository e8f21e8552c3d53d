"""Helpers shared by the benchmark scripts in bench/: starting the servers
under test on loopback (each pinned to core 0 and stopped by its PID; any
fastntpd binary, e.g. an older build to compare against), waiting for a
quiet host, running ntp-loadgen (pinned to core 1), and reading fastntpd's
own counters from its log."""

import json
import os
import re
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


def answers(port, timeout=10.0, accept_unsynchronized=False):
    """True once something on 127.0.0.1:port answers an NTP request with a
    synchronized mode-4 reply (or, with accept_unsynchronized, any mode-4
    reply: ntpd-rs without a source answers LI 3)."""
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
                if len(data) >= 48 and data[0] & 7 == 4 and (
                    accept_unsynchronized or data[1] != 0
                ):
                    return True
            except OSError:
                time.sleep(0.05)
    return False


def which(name):
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.isfile(p)), None
    )


class Server:
    """A server process we started (stopped by PID). `loadgen_args` are
    extra ntp-loadgen options every measurement of it needs."""

    def __init__(self, name, argv, port, tmp, note="", loadgen_args=()):
        self.name, self.port, self.note = name, port, note
        self.loadgen_args = list(loadgen_args)
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        if not answers(port, accept_unsynchronized="--accept-unsynchronized" in self.loadgen_args):
            self.stop()
            raise RuntimeError(f"{name} did not answer on 127.0.0.1:{port}; see {self.log_path}")

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


def fastntpd_exe(cargo_target, exe=None):
    """The fastntpd binary to measure: `exe` if given (any build, e.g. an
    older one), else this repository's release build."""
    path = exe or os.path.join(cargo_target, "release", "fastntpd")
    if not os.access(path, os.X_OK):
        raise SystemExit(f"no fastntpd binary at {path}")
    return path


def start_fastntpd(tmp, cargo_target, io="io-uring", name="fastntpd", exe=None, workers=1,
                   cores=SERVER_CORE, extra_conf="", extra_note=""):
    """fastntpd serving the local clock at stratum 10 on a free loopback
    port, restricted to `cores` (taskset list; its workers pin themselves
    to those cores in turn), or to none with cores=None. `extra_conf` is
    appended to its configuration file (e.g. `protection_conf`), and
    `extra_note` to its note."""
    exe = fastntpd_exe(cargo_target, exe)
    port = free_port()
    conf = os.path.join(tmp, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(
            f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = {workers}\nio = "{io}"\n\n'
            "[clock]\nlocal-stratum = 10\n" + (f"\n{extra_conf}" if extra_conf else "")
        )
    pin = ["taskset", "-c", cores] if cores else []
    argv = pin + [exe, "--config", conf]
    where = "" if exe == os.path.join(cargo_target, "release", "fastntpd") else f" ({exe})"
    on = f" on core{'s' if ',' in cores or '-' in cores else ''} {cores}" if cores else ""
    return Server(name, argv, port, tmp,
                  f"workers = {workers}, io = {io}{on}{where}{extra_note}"), None


def toml_list(items):
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def protection_conf(allow=(), deny=(), default="allow", deny_action="ignore", interval=2.0,
                    burst=8, leak=2, kod=True, clients=1 << 20):
    """The `[access]` and `[rate-limit]` sections of a fastntpd
    configuration (rate limiting on) with these keys."""
    return (
        f'[access]\ndefault = "{default}"\nallow = {toml_list(allow)}\n'
        f'deny = {toml_list(deny)}\ndeny-action = "{deny_action}"\n\n'
        f"[rate-limit]\nenabled = true\ninterval = {interval!r}\nburst = {burst}\n"
        f"leak = {leak}\nkod = {'true' if kod else 'false'}\nclients = {clients}\n"
    )


def start_fastntpd_mmsg(tmp, cargo_target, exe=None):
    return start_fastntpd(tmp, cargo_target, io="mmsg", name="fastntpd-mmsg", exe=exe)


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


def ntpd_rs_exe(exe=None):
    """ntpd-rs's ntp-daemon: `exe`, $NTPD_RS, PATH, or ~/.cargo/bin."""
    for path in (exe, os.environ.get("NTPD_RS"), which("ntp-daemon"),
                 os.path.expanduser("~/.cargo/bin/ntp-daemon")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def start_ntpd_rs(tmp, cargo_target, exe=None):
    exe = ntpd_rs_exe(exe)
    if not exe:
        return None, ("skipped: ntpd-rs (ntp-daemon) not found: cargo install ntpd --root DIR, "
                      "then --ntpd-rs DIR/bin/ntp-daemon (or NTPD_RS=…)")
    port = free_port()
    conf = os.path.join(tmp, "ntpd-rs.toml")
    with open(conf, "w") as f:
        f.write(
            "[observability]\nlog-level = \"warn\"\n\n"
            f"[[server]]\nlisten = \"127.0.0.1:{port}\"\n\n"
            "[synchronization]\nlocal-stratum = 10\n"
        )
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    version = (out.stdout + out.stderr).split()
    argv = ["taskset", "-c", SERVER_CORE, exe, "-c", conf]
    return Server(
        "ntpd-rs", argv, port, tmp,
        f"ntpd-rs {version[-1] if version else '?'}; no [[source]] (never touches the clock), "
        "so it answers LI 3: measured with --accept-unsynchronized",
        loadgen_args=["--accept-unsynchronized"],
    ), None


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


LOADGEN_TIMEOUT_S = 900


class LoadgenRun:
    """One ntp-loadgen started on LOADGEN_CORE, running beside whatever
    else the caller does (e.g. a second one); `wait` collects its result.
    It is killed (by PID) if it is still running `timeout` s after it was
    started."""

    def __init__(self, cargo_target, port, args, tmp, tag, timeout=LOADGEN_TIMEOUT_S):
        self.out = os.path.join(tmp, f"{tag}.json")
        if os.path.exists(self.out):
            os.remove(self.out)
        self.argv = [
            "taskset", "-c", LOADGEN_CORE,
            os.path.join(cargo_target, "release", "ntp-loadgen"),
            f"127.0.0.1:{port}", "--no-progress", "--json", self.out,
        ] + args
        self.deadline = time.time() + timeout
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def open_fds(self):
        """How many files it has open (its sockets, once it set them up)."""
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return 0

    def wait(self, allow_no_valid=False):
        """Its JSON and its table. It exits 1 when not one valid reply
        came; with allow_no_valid that is a result (e.g. a flood took the
        server down, or it is the flood), not a failure."""
        try:
            stdout, stderr = self.proc.communicate(timeout=max(1.0, self.deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
            raise RuntimeError(f"ntp-loadgen still running at its deadline: {' '.join(self.argv)}")
        no_valid = (self.proc.returncode == 1 and "no valid reply" in stderr
                    and os.path.exists(self.out))
        if self.proc.returncode != 0 and not (allow_no_valid and no_valid):
            raise RuntimeError(f"ntp-loadgen failed ({self.proc.returncode}): {stderr}\n{stdout}")
        with open(self.out) as f:
            return json.load(f), stdout

    def stop(self):
        """Kills it (by PID) if it still runs (after a failure elsewhere)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


def loadgen(cargo_target, port, args, tmp, tag, quiet_wait=0, allow_no_valid=False):
    """Runs ntp-loadgen on LOADGEN_CORE and returns (its JSON, its table).
    It exits 1 when not one valid reply came; with allow_no_valid that is
    a result (e.g. a flood took the server down), not a failure."""
    busy = wait_quiet(quiet_wait)
    run = LoadgenRun(cargo_target, port, args, tmp, tag)
    try:
        j, table = run.wait(allow_no_valid)
    finally:
        run.stop()
    j["busy_before_pct"] = busy
    return j, table


def rss_kib(pid):
    """VmRSS of process `pid` in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_ns(pid):
    """CPU time all threads of process `pid` have run so far, ns
    (/proc/PID/task/*/schedstat: steal time left out)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def log_lines(log_path, *needles):
    """The messages (after the time stamp and level) of the lines of a
    server's log that contain any of `needles`."""
    out = []
    with open(log_path) as f:
        for line in f:
            if any(n in line for n in needles):
                parts = line.rstrip("\n").split(None, 2)
                out.append(parts[2] if len(parts) == 3 else line.strip())
    return out


def worker_counters(log_path):
    """fastntpd's own totals from the `worker N (…): received …` lines it
    logs when it stops: {"received", "replied", "dropped", "kernel drops",
    "re-arms", …, "KoD DENY", "KoD RATE"} summed over workers, and "drop
    reasons" {reason: n}."""
    totals = {"drop reasons": {}}
    with open(log_path) as f:
        for line in f:
            if "worker " not in line or "received " not in line or "): " not in line:
                continue
            body = line.split("): ", 1)[1]
            reasons = re.search(r"\(([^)]*)\)", body)
            if reasons:
                for key, value in re.findall(r"([a-z_]+)=(\d+)", reasons.group(1)):
                    totals["drop reasons"][key] = totals["drop reasons"].get(key, 0) + int(value)
                body = body.replace(" " + reasons.group(0), "")
            for key, value in re.findall(r"([A-Za-z -]+?) (\d+)(?:,|$)", body.strip()):
                key = key.strip()
                totals[key] = totals.get(key, 0) + int(value)
    return totals
