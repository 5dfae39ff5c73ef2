"""cgroup layout detection (v1, v2, hybrid, none) and slot files, on fake trees."""

from __future__ import annotations

import pathlib

import pytest

from worker import cgroup_parents, cgroups

V1 = """\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2 = "30 25 0:26 / {root} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"


def test_parse_v1_and_combined_mounts() -> None:
    mounts = cgroup_parents.parse_mountinfo(V1)
    assert mounts.v1["memory"] == "/sys/fs/cgroup/memory"
    assert mounts.v1["cpu"] == mounts.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert mounts.v2 == "/sys/fs/cgroup/unified"


def test_detect_v1_as_root() -> None:
    layout, reason = cgroup_parents.detect("i1", True, mountinfo=V1, self_cgroup="0::/\n")
    assert layout is not None and reason == ""
    assert layout.parents["memory"] == (1, "/sys/fs/cgroup/memory/cellblock/i1")
    assert layout.version("cpuacct") == 1


def test_detect_v2_as_root(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    layout, _ = cgroup_parents.detect("i2", True, mountinfo=V2.format(root=tmp_path), self_cgroup="0::/\n")
    assert layout is not None
    assert layout.parents["memory"] == (2, str(tmp_path / "cellblock" / "i2"))
    assert "cpuacct" not in layout.parents and "missing" not in layout.detail


def test_detect_nothing_writable_unprivileged(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "absent"
    mountinfo = f"30 25 0:26 / {missing}/memory rw - cgroup cgroup rw,memory\n"
    layout, reason = cgroup_parents.detect("i3", False, mountinfo=mountinfo, self_cgroup="5:memory:/user\n")
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


# --- where the parents go: delegated subtrees (worker.cgroup_parents) ------------------------------


def v1_tree(root: pathlib.Path) -> str:
    """Fake v1 hierarchies under ``root``; their mountinfo."""
    lines = []
    for i, name in enumerate(("memory", "pids", "cpu", "cpuacct")):
        (root / name).mkdir()
        lines.append(f"{30 + i} 25 0:{26 + i} / {root / name} rw - cgroup cgroup rw,{name}")
    return "\n".join(lines) + "\n"


def test_detect_v1_subtree_delegated_to_the_user(tmp_path: pathlib.Path) -> None:
    """Unprivileged: cellblock/user-<uid> in each hierarchy, where root made it for this uid."""
    mountinfo = v1_tree(tmp_path)
    for name in ("memory", "pids"):
        (tmp_path / name / "cellblock" / "user-1234").mkdir(parents=True)
    (tmp_path / "memory" / "cellblock" / "user-999").mkdir()  # another user's: not ours
    layout, reason = cgroup_parents.detect("i4", False, mountinfo=mountinfo, self_cgroup="4:memory:/\n", uid=1234)
    assert layout is not None, reason
    assert layout.parents == {
        "memory": (1, str(tmp_path / "memory" / "cellblock" / "user-1234" / "i4")),
        "pids": (1, str(tmp_path / "pids" / "cellblock" / "user-1234" / "i4")),
    }
    assert layout.detail.startswith("memory=v1, pids=v1; missing: cpu, cpuacct; delegated: ")


def test_detect_v1_parent_setting_names_the_same_place_in_each_hierarchy(tmp_path: pathlib.Path) -> None:
    mountinfo = v1_tree(tmp_path)
    for name in ("memory", "cpu"):
        (tmp_path / name / "ops" / "sandbox").mkdir(parents=True)
    hint = str(tmp_path / "memory" / "ops" / "sandbox")
    layout, _ = cgroup_parents.detect("i5", False, hint, mountinfo=mountinfo, self_cgroup="", uid=1)
    assert layout is not None
    assert layout.parents == {
        "memory": (1, f"{hint}/i5"),
        "cpu": (1, str(tmp_path / "cpu" / "ops" / "sandbox" / "i5")),
    }


def test_detect_v2_own_cgroup_when_systemd_delegated_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd-run --user --scope -p Delegate=yes: the service's own cgroup is the user's."""
    scope = tmp_path / "user.slice" / "run-1.scope"
    kernel_files(scope, ["cgroup.procs", "cgroup.subtree_control"])
    (scope / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    mountinfo = V2.format(root=tmp_path)
    layout, _ = cgroup_parents.detect("i6", False, mountinfo=mountinfo, self_cgroup="0::/user.slice/run-1.scope\n")
    assert layout is not None
    assert set(layout.parents.values()) == {(2, str(scope / "cellblock-i6"))}
    assert sorted(layout.parents) == ["cpu", "memory", "pids"]
    monkeypatch.setattr(cgroup_parents, "_writable", lambda *_: False)  # not delegated: not ours to use
    layout, reason = cgroup_parents.detect("i6", False, mountinfo=mountinfo, self_cgroup="0::/user.slice/run-1.scope\n")
    assert layout is None and "delegated" in reason


def test_enable_v2_skips_levels_that_already_hand_down_and_evacuates_a_busy_one(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above a delegated scope the controllers are already on (no write there: it would be
    refused); the scope holds the service's processes, so they move to its leaf first."""
    scope = tmp_path / "user.slice" / "run-1.scope"
    parent = scope / "cellblock-i7"
    for level, controllers in ((tmp_path, "cpu memory pids"), (tmp_path / "user.slice", "cpu memory pids")):
        kernel_files(level, ["cgroup.subtree_control"])
        (level / "cgroup.controllers").write_text(controllers)
    kernel_files(scope, ["cgroup.subtree_control"])
    (scope / "cgroup.controllers").write_text("cpu memory pids")
    (scope / "cgroup.procs").write_text("101\n102\n")
    kernel_files(parent, ["cgroup.subtree_control", "cgroup.controllers"])
    writes: list[tuple[str, str]] = []
    real_write = cgroup_parents.write_text

    def write(path: str, value: str) -> None:
        writes.append((path, value))
        if path == str(scope / "cgroup.subtree_control") and (scope / "cgroup.procs").read_text():
            raise OSError(16, "Device or resource busy")  # EBUSY: processes in it
        if path.endswith(f"{cgroup_parents.SERVICE_LEAF}/cgroup.procs"):
            (scope / "cgroup.procs").write_text("")  # the kernel moves them out
            return
        real_write(path, value)

    monkeypatch.setattr(cgroup_parents, "write_text", write)
    cgroup_parents._enable_v2(str(parent), ["memory", "pids"])
    assert writes == [
        (str(scope / "cgroup.subtree_control"), "+memory +pids"),
        (str(scope / "service" / "cgroup.procs"), "101"),
        (str(scope / "service" / "cgroup.procs"), "102"),
        (str(scope / "cgroup.subtree_control"), "+memory +pids"),
        (str(parent / "cgroup.subtree_control"), "+memory +pids"),
    ]


def test_remove_parents_takes_everything_deepest_first(tmp_path: pathlib.Path) -> None:
    parent = tmp_path / "memory" / "i8"
    (parent / "w0").mkdir(parents=True)
    (parent / "launcher").mkdir()
    layout = cgroups.Layout(parents={"memory": (1, str(parent))}, detail="")
    cgroup_parents.remove_parents(layout)
    assert not parent.exists() and (tmp_path / "memory").exists()


def test_delegate_commands_hand_each_v1_hierarchy_to_the_user() -> None:
    assert cgroup_parents.delegate_commands(1234, V1) == [
        f"mkdir -p {d} && chown 1234 {d} {d}/tasks {d}/cgroup.procs"
        for d in (
            "/sys/fs/cgroup/cpu,cpuacct/cellblock/user-1234",
            "/sys/fs/cgroup/memory/cellblock/user-1234",
            "/sys/fs/cgroup/pids/cellblock/user-1234",
        )
    ]
    assert "rmdir" in cgroup_parents.undelegate_commands(1234, V1)[0]
    which, commands = cgroup_parents.delegation_advice(1234, V1)
    assert which.startswith("cgroup v1") and all(c.startswith("(root) mkdir") for c in commands)


def test_delegation_advice_on_a_v2_host_names_systemd(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    manager = tmp_path / "user.slice" / "user-1234.slice" / "user@1234.service"
    manager.mkdir(parents=True)
    (manager / "cgroup.controllers").write_text("memory pids\n")  # an older systemd: no cpu
    which, commands = cgroup_parents.delegation_advice(1234, V2.format(root=tmp_path))
    assert which.startswith("cgroup v2")
    assert commands[-1] == "(you)  systemd-run --user --scope -p Delegate=yes cellblock serve"
    assert any("Delegate=cpu memory pids" in c for c in commands)
    (manager / "cgroup.controllers").write_text("cpu memory pids\n")
    assert len(cgroup_parents.delegation_advice(1234, V2.format(root=tmp_path))[1]) == 1  # systemd-run alone
