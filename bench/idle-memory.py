#!/usr/bin/env python3
"""Per idle subscribed connection, user space and kernel side by side.

Starts `ferrocable serve --bench-channel` (release build), connects N BenchmarkChannel
subscribers with `ferrocable-bench broadcast`, and while they sit idle (the tool idles 2 s
after connecting) reads: the server's RSS and PSS (/proc/PID/smaps_rollup), the kernel's TCP
socket buffer pages (/proc/net/sockstat `mem`) and the slab caches a TCP connection uses
(/proc/slabinfo: TCP, sock_inode_cache, filp, dentry, eppoll/epitem, skbuff...), each as the
difference from before connecting, divided by N. On loopback both ends of every connection
live in this kernel, so the kernel figure is halved for "per server-side socket" (an
approximation: the client's sockets are the same kind).

Usage: bench/idle-memory.py --n 19000 [--bin target/release]   (prints one JSON line)"""
import argparse, json, os, socket, subprocess, tempfile, time

SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq",
         "skbuff_head_cache", "kmalloc-rnd", "request_sock_TCP", "tcp_bind_bucket", "inet_peer_cache")


def slab_bytes():
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 5 and parts[0] in SLABS:
                out[parts[0]] = int(parts[2]) * int(parts[3])  # num_objs * objsize
    return out


def sockstat_mem_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                p = line.split()
                return int(p[p.index("mem") + 1])
    return 0


def rollup(pid):
    vals = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if p[0] in ("Rss:", "Pss:"):
                vals[p[0][:-1].lower()] = int(p[1])
    return vals


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--bin", default="target/release")
    o = ap.parse_args()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    data = tempfile.mkdtemp()
    srv = subprocess.Popen([f"{o.bin}/ferrocable", "serve", "--bind", f"127.0.0.1:{port}", "--bench-channel",
                            "--disable-forgery-protection", "--session-store", "memory", "--data-dir", data],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close(); break
        except OSError:
            time.sleep(0.1)
    time.sleep(0.5)
    before = (rollup(srv.pid), slab_bytes(), sockstat_mem_pages(), fds(srv.pid))
    tool = subprocess.Popen([f"{o.bin}/ferrocable-bench", "broadcast", "--addr", f"127.0.0.1:{port}", "--n", str(o.n),
                             "--rounds", "1", "--concurrency", "500", "--label", "idle-memory"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while fds(srv.pid) < before[3] + o.n and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # connected and subscribed; the tool idles 2 s before its round
    after = (rollup(srv.pid), slab_bytes(), sockstat_mem_pages(), fds(srv.pid))
    tool.wait(timeout=300)
    srv.terminate(); srv.wait()
    n = after[3] - before[3]
    slab = {k: after[1].get(k, 0) - before[1].get(k, 0) for k in after[1]}
    kernel_total = sum(slab.values()) + (after[2] - before[2]) * 4096
    r = {
        "n": o.n, "connected": n,
        "user_rss_kib_per_conn": round((after[0]["rss"] - before[0]["rss"]) / n, 2),
        "user_pss_kib_per_conn": round((after[0]["pss"] - before[0]["pss"]) / n, 2),
        "kernel_slab_kib_per_conn_both_ends": {k: round(v / 1024 / n, 2) for k, v in sorted(slab.items()) if v},
        "kernel_socket_buffer_kib_per_conn_both_ends": round((after[2] - before[2]) * 4 / n, 2),
        "kernel_kib_per_server_socket": round(kernel_total / 1024 / n / 2, 2),
    }
    print(json.dumps(r))


if __name__ == "__main__":
    main()
