"""Two "hosts" on one machine: network namespaces joined by a veth pair with
private addresses (Debian's iproute2; needs root). Every process a test starts
in a host runs in its own session, and leaving the context kills them all and
deletes both namespaces (which deletes the veth pair), even when the test fails.

    with two_hosts() as (a, b):
        proc = a.popen(["python", "-c", "..."])
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces_available() -> Optional[str]:
    """None if this machine lets us make network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"lcprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


IFACE = "lcnet0"  # each host's end of the veth pair, inside its namespace


@dataclass
class Host:
    name: str  # namespace name
    iface: str  # its end of the veth pair
    addr: str  # its private address
    procs: list = field(default_factory=list)

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` as it runs inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def popen(self, cmd: list[str], env: Optional[dict] = None, **kw) -> subprocess.Popen:
        """Start `cmd` in this host (own session, so it and its children can be
        killed as a group); output goes to a pipe unless `stdout` is given."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(self.wrap(cmd), env=env, text=True, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def run(self, cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(cmd), capture_output=True, text=True, timeout=timeout, **kw)

    def veth_bytes(self) -> int:
        """Bytes sent plus received on this host's end of the veth pair."""
        out = json.loads(_ip("-n", self.name, "-j", "-s", "link", "show", self.iface).stdout)[0]["stats64"]
        return int(out["rx"]["bytes"]) + int(out["tx"]["bytes"])

    def pids(self, predicate: Callable[[list[str]], bool]) -> list[int]:
        """Processes in this host's namespace whose argv satisfies `predicate`."""
        mine = os.stat(f"/run/netns/{self.name}").st_ino
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                net = os.readlink(f"/proc/{entry}/ns/net")
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = [a.decode() for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if net == f"net:[{mine}]" and argv and predicate(argv):
                found.append(int(entry))
        return found


def descendants(pid: int) -> list[int]:
    """Every process below pid, also those that started sessions of their own
    (torchrun starts each worker in a new session, out of reach of killpg)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}/task") else []:
            with contextlib.suppress(OSError):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                found += kids
                todo += kids
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL proc, its process group and every descendant, then reap it."""
    for pid in descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _kill_namespace(name: str) -> None:
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid), signal.SIGKILL)




@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    # Names and a /24 unique to this process, so parallel runs do not collide.
    _remove_stale_namespaces()
    tag = str(os.getpid())
    subnet = 10 + os.getpid() % 200
    a = Host(f"lca{tag}", IFACE, f"10.213.{subnet}.1")
    b = Host(f"lcb{tag}", IFACE, f"10.213.{subnet}.2")
    ends = {a.name: f"vla{tag}", b.name: f"vlb{tag}"}  # names while both ends are in this namespace
    made = []
    try:
        for h in (a, b):
            _ip("netns", "add", h.name)
            made.append(h.name)
        _ip("link", "add", ends[a.name], "type", "veth", "peer", "name", ends[b.name])
        for h in (a, b):
            _ip("link", "set", ends[h.name], "netns", h.name)
            # The same interface name on both hosts, as on a real cluster: one
            # GLOO_SOCKET_IFNAME / --network-interfaces serves every host.
            _ip("-n", h.name, "link", "set", ends[h.name], "name", h.iface)
            _ip("-n", h.name, "addr", "add", f"{h.addr}/24", "dev", h.iface)
            _ip("-n", h.name, "link", "set", h.iface, "up")
            _ip("-n", h.name, "link", "set", "lo", "up")
        _wait_reachable(a, b)
        yield a, b
    finally:
        for h in (a, b):
            for proc in h.procs:
                kill_tree(proc)
        for name in made:
            _kill_namespace(name)  # anything that escaped the trees above
            _ip("netns", "del", name, check=False)


def _remove_stale_namespaces() -> None:
    """Namespaces left by a test run that was itself killed (its pid is gone)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(r"^lc[ab](\d+)\b", line)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _ip("netns", "del", line.split()[0], check=False)


def _wait_reachable(a: Host, b: Host, timeout: float = 10.0) -> None:
    """A TCP round trip from a to b (a veth needs a moment to come up)."""
    server = b.popen(["python3", "-c", (
        "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
        f"s.bind(('{b.addr}', 29399)); s.listen(1); c, _ = s.accept(); c.sendall(b'ok')")])
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            out = a.run(["python3", "-c", (
                "import socket; s = socket.create_connection"
                f"(('{b.addr}', 29399), timeout=1); print(s.recv(2).decode())")], timeout=5)
            if out.stdout.strip() == "ok":
                return
            time.sleep(0.2)
        raise RuntimeError(f"{b.addr} not reachable from namespace {a.name}")
    finally:
        kill_tree(server)


def free_port() -> int:
    """A port number for a listener inside a fresh namespace (any will do there;
    varied per process so reruns never meet a socket in TIME_WAIT)."""
    return 29500 + os.getpid() % 400
