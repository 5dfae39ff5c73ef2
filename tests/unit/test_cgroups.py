"""cgroup layout detection (v1, v2, hybrid, none) and slot files, on fake trees."""

from __future__ import annotations

import pathlib

from worker import cgroups

V1 = """\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2 = "30 25 0:26 / {root} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"


def test_parse_v1_and_combined_mounts() -> None:
    mounts = cgroups.parse_mountinfo(V1)
    assert mounts.v1["memory"] == "/sys/fs/cgroup/memory"
    assert mounts.v1["cpu"] == mounts.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert mounts.v2 == "/sys/fs/cgroup/unified"


def test_detect_v1_as_root() -> None:
    layout, reason = cgroups.detect("i1", True, mountinfo=V1, self_cgroup="0::/\n")
    assert layout is not None and reason == ""
    assert layout.parents["memory"] == (1, "/sys/fs/cgroup/memory/cellblock/i1")
    assert layout.version("cpuacct") == 1


def test_detect_v2_as_root(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    layout, _ = cgroups.detect("i2", True, mountinfo=V2.format(root=tmp_path), self_cgroup="0::/\n")
    assert layout is not None
    assert layout.parents["memory"] == (2, str(tmp_path / "cellblock" / "i2"))
    assert "cpuacct" not in layout.parents and "missing" not in layout.detail


def test_detect_nothing_writable_unprivileged(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "absent"
    mountinfo = f"30 25 0:26 / {missing}/memory rw - cgroup cgroup rw,memory\n"
    layout, reason = cgroups.detect("i3", False, mountinfo=mountinfo, self_cgroup="5:memory:/user\n")
    assert layout is None and "delegated" in reason


def kernel_files(directory: pathlib.Path, names: list[str]) -> None:
    """What the kernel would create in a new cgroup directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("")


def test_prepare_slot_v2_writes_limits(tmp_path: pathlib.Path) -> None:
    parent = tmp_path / "cellblock"
    layout = cgroups.Layout(parents={c: (2, str(parent)) for c in ("memory", "pids", "cpu")}, detail="")
    kernel_files(parent / "w3", ["memory.max", "memory.swap.max", "pids.max", "cpu.max", "cpu.weight"])
    dirs = cgroups.prepare_slot(layout, 3, 256 << 20, 64, 0.5)
    slot = parent / "w3"
    assert dirs["memory"] == str(slot)
    assert (slot / "memory.max").read_text() == str(256 << 20)
    assert (slot / "memory.swap.max").read_text() == "0"
    assert (slot / "pids.max").read_text() == "64"
    assert (slot / "cpu.max").read_text() == "50000 100000"
    assert (slot / "cpu.weight").read_text() == cgroups.WEIGHT_IDLE[2]


def test_prepare_slot_v1_writes_limits(tmp_path: pathlib.Path) -> None:
    layout = cgroups.Layout(
        parents={c: (1, str(tmp_path / c)) for c in ("memory", "pids", "cpu", "cpuacct")}, detail=""
    )
    for controller, names in {
        "memory": ["memory.limit_in_bytes"],
        "pids": ["pids.max"],
        "cpu": ["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"],
        "cpuacct": [],
    }.items():
        kernel_files(tmp_path / controller / "w0", names)
    dirs = cgroups.prepare_slot(layout, 0, 1 << 20, 16, 1.0)
    assert (pathlib.Path(dirs["memory"]) / "memory.limit_in_bytes").read_text() == str(1 << 20)
    assert (pathlib.Path(dirs["cpu"]) / "cpu.cfs_quota_us").read_text() == "100000"
    assert (pathlib.Path(dirs["cpu"]) / "cpu.shares").read_text() == cgroups.WEIGHT_IDLE[1]


def test_oom_kill_counter_parsing() -> None:
    assert cgroups._oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3
    assert cgroups._oom_kills("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n") == 1
