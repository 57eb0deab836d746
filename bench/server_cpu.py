"""What bench/connect-cpu.py and bench/fanout-cpu.py share: start the floor (../shared/peers/floor,
the C epoll server) or a ferrocable build on a free loopback port, and sample its user and kernel
CPU from /proc every 10 ms while the load tool runs."""
import json, os, socket, subprocess, threading, time

HZ = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR_BIN = "/tmp/floor-server"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, secs=30):
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close(); return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu(pid):
    """(user, kernel) seconds of process `pid`, or None once it is gone."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) / HZ, int(f[12]) / HZ
    except (OSError, IndexError):
        return None


def time_wait():
    """Sockets in TIME_WAIT on this machine (/proc/net/sockstat's `tw`)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("tw") + 1])
    return 0


def settle(limit=1000, secs=75):
    """Waits (at most `secs`) until fewer than `limit` sockets are in TIME_WAIT. Why: the load
    tool connects from one source address, and at 19,000 connections a run that follows another
    within a minute (TIME_WAIT lasts 60 s) searches a nearly full ephemeral port range: the C
    floor's own connect rate read 5,683, 5,123 and 4,398/s in three runs back to back, so
    whichever server runs second is slowed by the first. Returns the seconds waited."""
    start = time.time()
    while time_wait() >= limit and time.time() - start < secs:
        time.sleep(1)
    return round(time.time() - start, 1)


def build_floor():
    if not os.path.exists(FLOOR_BIN):
        floor_c = os.path.join(ROOT, "../shared/peers/floor/floor.c")
        subprocess.run(["cc", "-O2", "-o", FLOOR_BIN, floor_c, "-lcrypto"], check=True)


class Server:
    """A running server (the floor when `binary` is None) with a 10 ms CPU sampler; use with
    `with`: leaving stops the sampler and the server and removes its data directory."""

    def __init__(self, binary, label):
        self.label, self.port = label, free_port()
        self.data = f"/tmp/server-cpu-{self.port}"
        if binary is None:
            cmd = [FLOOR_BIN, str(self.port)]
        else:
            cmd = [binary, "serve", "--bind", f"127.0.0.1:{self.port}", "--bench-channel",
                   "--disable-forgery-protection", "--session-store", "memory", "--data-dir", self.data]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            c = cpu(self.proc.pid)
            if c:
                self.samples.append((time.time(), *c))
            time.sleep(0.01)

    def __enter__(self):
        if wait_port(self.port):
            self._thread.start()
            time.sleep(0.05)
        return self

    def listening(self):
        return self._thread.is_alive()

    def stop_sampling(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def cpu_at(self, t):
        """(user, kernel) seconds at the last sample taken at or before `t` (the first sample
        if none was); None without samples."""
        if not self.samples:
            return None
        at = max((s for s in self.samples if s[0] <= t), default=self.samples[0])
        return at[1], at[2]

    def __exit__(self, *exc):
        self.stop_sampling()
        self.proc.terminate(); self.proc.wait()
        subprocess.run(["rm", "-rf", self.data])
        return False


def bench_broadcast(server, n, rounds, timeout, source_ips=0):
    """Runs `ferrocable-bench broadcast` against `server` (500 connections in flight, as pair.py
    runs it; from `source_ips` loopback addresses, 0 for the default source as pair.py does);
    returns (start time, end time, the tool's JSON result or an error string)."""
    t0 = time.time()
    out = subprocess.run([os.path.join(ROOT, "target/release/ferrocable-bench"), "broadcast", "--addr",
                          f"127.0.0.1:{server.port}", "--n", str(n), "--rounds", str(rounds),
                          "--concurrency", "500", "--server-pid", str(server.proc.pid),
                          "--source-ips", str(source_ips)],
                         capture_output=True, text=True, timeout=timeout)
    t1 = time.time()
    server.stop_sampling()
    line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
    return t0, t1, (json.loads(line) if line else (out.stderr or out.stdout)[-300:])
