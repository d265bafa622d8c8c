"""The trainer across two "hosts" — network namespaces joined by a veth pair —
under torchrun (c10d rendezvous, Gloo) and mpirun -H (Horovod over MPI/TCP):
equivalence with one host, a rank killed with SIGKILL mid-epoch (torchrun's
elastic restart, and Horovod's kill + --resume auto), and a peer that never
arrives. Every process runs in a namespace made by the test and is killed, and
the namespaces deleted, when the test ends, pass or fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ..test_trainer import FASHION, FMNIST, TRAIN, assert_same_weights, launch, needs_mpi, weights
from .netns import Host, free_port, kill_tree, namespaces_available, two_hosts

BIN = os.path.dirname(sys.executable)
RSH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_rsh.sh")
_why_not = namespaces_available()

pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(_why_not is not None, reason=f"no network namespaces here: {_why_not}"),
    pytest.mark.skipif(not os.path.isdir(FASHION), reason="Debian's dataset-fashion-mnist is not installed"),
]

# Long enough epochs (256 steps of 2 x 32) that a kill lands inside one.
LONG = [*FMNIST, "--train-subset", "16384", "--batch-size", "32", "--epochs", "3"]
TIMEOUT = 240  # seconds for any one run; every test stops by itself


def _env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def torchrun_on(host: Host, head: Host, args: list[str], log_dir, run_id: str, port: int, restarts: int = 0,
                join_timeout: int = 60):
    """One torchrun agent with one worker on `host`; `head` hosts the rendezvous store."""
    cmd = [os.path.join(BIN, "torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"{head.addr}:{port}", "--rdzv-id", run_id, "--local-addr", host.addr,
           "--rdzv-conf", f"is_host={int(host is head)},join_timeout={join_timeout}",
           "--max-restarts", str(restarts), "--monitor-interval", "0.5",
           TRAIN, *args, "--dist", "torch", "--log-dir", str(log_dir)]
    # Gloo must use the veth: the hostname both namespaces share resolves to an
    # address neither can reach (on real hosts, name the NIC the same way).
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: a fresh store for each restart's
    # workers. torchrun otherwise hands the restarted workers the rendezvous
    # store with the first attempt's keys still in it, and a restarted rank may
    # dial its peer's old Gloo address ("Connection refused", then a hang).
    return host.popen(cmd, env=_env(GLOO_SOCKET_IFNAME=host.iface, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"))


def mpirun_from(a: Host, b: Host, args: list[str], log_dir, rsh_log=None):
    """mpirun in host a, one Horovod rank on each of a and b (-H), MPI over TCP on the veth."""
    subnet = a.addr.rsplit(".", 1)[0] + ".0/24"
    env = _env(LARS_NETNS_HOSTS=f"{a.addr}={a.name},{b.addr}={b.name}", LARS_NETNS_RSH_LOG=str(rsh_log or ""))
    cmd = ["mpirun", "--allow-run-as-root", "-np", "2", "-H", f"{a.addr}:1,{b.addr}:1",
           "--mca", "plm_rsh_agent", RSH, "--mca", "oob_tcp_if_include", subnet,
           "--mca", "btl_tcp_if_include", subnet, "--mca", "btl", "self,tcp",
           "-x", "OMP_NUM_THREADS", "-x", "PATH", "-x", "PYTHONUNBUFFERED",
           sys.executable, TRAIN, *args, "--dist", "horovod", "--log-dir", str(log_dir)]
    return a.popen(cmd, env=env)


def finish(*procs, timeout=TIMEOUT) -> list[str]:
    """Wait for every process; on a failure or a timeout, fail with all their output."""
    outs, deadline = [], time.time() + timeout
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                kill_tree(q)
            logs = "\n".join(f"--- process {i}:\n{q.communicate()[0][-3000:]}" for i, q in enumerate(procs))
            pytest.fail(f"still running after {timeout}s\n{logs}")
        outs.append(out)
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} exit {p.returncode}\n" + "\n".join(
            f"--- process {j}:\n{o[-3000:]}" for j, o in enumerate(outs))
    return outs


def is_worker(argv: list[str]) -> bool:
    """A trainer process itself (not the torchrun agent or mpirun that started it)."""
    return any(a.endswith("train/imagenet.py") for a in argv) and not any(a.endswith("torchrun") for a in argv)


def trainer_pids_in_epoch_two(host: Host, log_dir, procs) -> list[int]:
    """The trainer ranks on `host`, shortly after epoch 1's checkpoint appears."""
    first = log_dir / "checkpoint-1.pth.tar"
    deadline = time.time() + TIMEOUT
    while not first.exists():
        assert time.time() < deadline and all(p.poll() is None for p in procs), "epoch 1 never finished"
        time.sleep(0.02)
    time.sleep(0.5)  # into epoch 2 (each epoch takes several seconds here)
    victims = host.pids(lambda argv: is_worker(argv) and str(log_dir) in " ".join(argv))
    assert victims, "no trainer process found in the host"
    return victims


def kill_mid_epoch_two(host: Host, log_dir, procs) -> None:
    """SIGKILL the trainer rank on `host` in epoch 2."""
    victims = trainer_pids_in_epoch_two(host, log_dir, procs)
    assert not (log_dir / "checkpoint-2.pth.tar").exists(), "epoch 2 ended before the kill: make the epochs longer"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


def gradient_bytes(log_dir, steps=16) -> int:
    """What `steps` all-reduces of the model's float32 gradients move at least
    (with two ranks each sends the other half of every gradient, twice)."""
    return steps * 4 * sum(t.numel() for t in weights(log_dir, 1).values())


def freeze_mid_epoch_two(host: Host, log_dir, procs) -> float:
    """SIGSTOP the trainer rank on `host` in epoch 2 (a hung node: its sockets stay
    open, nothing answers); returns when it was frozen."""
    for pid in trainer_pids_in_epoch_two(host, log_dir, procs):
        os.kill(pid, signal.SIGSTOP)
    return time.time()


def no_temporary_files(log_dir) -> bool:
    return not [n for n in os.listdir(log_dir) if n.startswith(".tmp-")]


def test_two_hosts_under_torchrun_equal_one_host_and_one_rank_with_the_doubled_batch(tmp_path):
    args = [*FMNIST, "--batch-size", "32", "--epochs", "1"]
    with two_hosts() as (a, b):
        port = free_port()
        before = b.veth_bytes()
        procs = [torchrun_on(h, a, args, tmp_path / "hosts", "equal", port) for h in (a, b)]
        out = finish(*procs)[0]
        assert "torch: 2 rank(s)" in out
        assert b.veth_bytes() - before > gradient_bytes(tmp_path / "hosts"), "the gradients did not cross the veth"
    launch(args, tmp_path / "local", nproc=2, launcher="torchrun")
    launch([*FMNIST, "--batch-size", "64", "--epochs", "1"], tmp_path / "one", nproc=1)
    two_hosts_w = weights(tmp_path / "hosts", 1)
    assert_same_weights(two_hosts_w, weights(tmp_path / "local", 1), rtol=0, atol=0)
    assert_same_weights(two_hosts_w, weights(tmp_path / "one", 1), rtol=1e-4, atol=1e-6)


@needs_mpi
def test_two_hosts_under_mpirun_equal_one_rank_with_the_doubled_batch(tmp_path):
    args = [*FMNIST, "--batch-size", "32", "--epochs", "1"]
    with two_hosts() as (a, b):
        before = b.veth_bytes()
        out = finish(mpirun_from(a, b, args, tmp_path / "hosts", rsh_log=tmp_path / "rsh.log"))[0]
        assert "horovod: 2 rank(s)" in out
        assert b.veth_bytes() - before > gradient_bytes(tmp_path / "hosts"), "the gradients did not cross the veth"
        assert (tmp_path / "rsh.log").read_text().split() == [b.addr, b.name], "rank 1 was not started in host b"
    launch([*FMNIST, "--batch-size", "64", "--epochs", "1"], tmp_path / "one", nproc=1)
    assert_same_weights(weights(tmp_path / "hosts", 1), weights(tmp_path / "one", 1), rtol=1e-4, atol=1e-6)


def test_torchrun_restarts_after_a_rank_is_killed_mid_epoch_and_ends_with_the_uninterrupted_weights(tmp_path):
    with two_hosts() as (a, b):
        port = free_port()
        finish(*[torchrun_on(h, a, LONG, tmp_path / "full", "full", port) for h in (a, b)])

        killed = tmp_path / "killed"
        # After a kill, torchrun's two agents tear down and re-form the group at
        # their own pace, and a restarted worker can meet a peer that is still
        # going down (seen here about one time in three). A short --dist-timeout
        # makes any such worker fail fast, and three restarts let the group heal.
        args = [*LONG, "--dist-timeout", "30"]
        procs = [torchrun_on(h, a, args, killed, "killed", port + 1, restarts=3) for h in (a, b)]
        kill_mid_epoch_two(b, killed, procs)
        outs = finish(*procs)
    log = "\n".join(outs)
    assert "torchrun restarted the workers (restart " in log, log[-4000:]
    assert "resuming from" in log and "checkpoint-1.pth.tar" in log
    assert_same_weights(weights(tmp_path / "full", 3), weights(killed, 3), rtol=0, atol=0)
    assert no_temporary_files(killed), "a half-written checkpoint was left behind"


@needs_mpi
def test_horovod_rank_killed_mid_epoch_then_resume_auto_ends_with_the_uninterrupted_weights(tmp_path):
    with two_hosts() as (a, b):
        finish(mpirun_from(a, b, LONG, tmp_path / "full"))

        killed = tmp_path / "killed"
        proc = mpirun_from(a, b, LONG, killed)
        kill_mid_epoch_two(b, killed, [proc])
        out, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode != 0, "mpirun should report the killed rank"
        assert not (killed / "checkpoint-3.pth.tar").exists()

        resumed = finish(mpirun_from(a, b, [*LONG, "--resume", "auto"], killed))[0]
    assert "resuming from" in resumed and "checkpoint-1.pth.tar" in resumed
    assert_same_weights(weights(tmp_path / "full", 3), weights(killed, 3), rtol=0, atol=0)
    assert no_temporary_files(killed), "a half-written checkpoint was left behind"


def test_a_peer_that_never_arrives_is_a_clear_timeout_not_a_hang(tmp_path):
    with two_hosts() as (a, _b):
        start = time.time()
        proc = torchrun_on(a, a, [*FMNIST, "--epochs", "1"], tmp_path / "alone", "alone", free_port(),
                           join_timeout=5)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("torchrun waited more than 120 s for a peer that never came")
        elapsed = time.time() - start
    assert proc.returncode != 0
    assert "RendezvousTimeoutError" in out or "timed out" in out.lower(), out[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f}s with join_timeout=5"
    assert not (tmp_path / "alone" / "checkpoint-1.pth.tar").exists()


@needs_mpi
def test_a_frozen_peer_under_mpirun_ends_the_job_with_an_error_after_the_dist_timeout(tmp_path):
    # Horovod's MPI controller blocks in MPI when a peer is frozen (its stall
    # shutdown never runs); the trainer's progress watchdog ends the job.
    with two_hosts() as (a, b):
        proc = mpirun_from(a, b, [*LONG, "--dist-timeout", "10"], tmp_path / "frozen")
        frozen_at = freeze_mid_epoch_two(b, tmp_path / "frozen", [proc])
        out, _ = proc.communicate(timeout=TIMEOUT)
        elapsed = time.time() - frozen_at
    assert proc.returncode != 0
    assert "no training progress for" in out and "a peer rank stopped answering" in out, out[-3000:]
    assert elapsed < 60, f"the job ended {elapsed:.0f}s after the freeze, with --dist-timeout 10"


def test_a_frozen_peer_under_torchrun_fails_every_host_after_the_dist_timeout(tmp_path):
    with two_hosts() as (a, b):
        port = free_port()
        procs = [torchrun_on(h, a, [*LONG, "--dist-timeout", "10"], tmp_path / "frozen", "frozen", port)
                 for h in (a, b)]
        frozen_at = freeze_mid_epoch_two(b, tmp_path / "frozen", procs)
        outs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
        elapsed = time.time() - frozen_at
    assert all(p.returncode != 0 for p in procs)
    # Gloo's collective timeout and the trainer's progress watchdog are both set
    # to --dist-timeout, so either may end host a first; both name the timeout.
    gloo = "Timed out waiting 10000ms" in outs[0]
    watchdog = "no training progress for" in outs[0] and "(--dist-timeout 10)" in outs[0]
    assert gloo or watchdog, outs[0][-3000:]
    assert elapsed < 120, f"the job ended {elapsed:.0f}s after the freeze, with --dist-timeout 10"
