"""Package environments through the real service: the data stack LLM code reaches for,
installed once, read-only, and warm; hints when a run lacks a module; a build that
cannot install a package stops with pip's reason and the service says so."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from protocol import messages as m
from protocol.client import Client
from tests.conftest import Service

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]

CSV = """region,month,units,price
north,1,10,2.5
north,2,14,2.5
south,1,7,3.0
south,2,9,3.0
east,1,21,1.75
east,2,18,1.75
"""

ANALYSIS = """
import io, sys
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

df = pd.read_csv(io.StringIO(sys.stdin.read()))
df["revenue"] = df["units"] * df["price"]
by_region = df.groupby("region")["revenue"].sum().sort_values(ascending=False)
print(by_region.round(2).to_string())
print("total", round(df["revenue"].sum(), 2))

fig, ax = plt.subplots(figsize=(4, 3))
by_region.plot(kind="bar", ax=ax)
ax.set_ylabel("revenue")
fig.savefig("/work/revenue.png")
with open("/work/revenue.png", "rb") as src:
    print("png", src.read(8) == b"\\x89PNG\\r\\n\\x1a\\n")

# A least-squares trend of units over months, with numpy's linear algebra.
x = np.column_stack([np.ones(len(df)), df["month"].to_numpy(float)])
coef, *_ = np.linalg.lstsq(x, df["units"].to_numpy(float), rcond=None)
print("slope", round(float(coef[1]), 3))
print("det", round(float(np.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]]))), 6))
"""


@pytest.fixture(scope="module")
def data(service: Service) -> None:
    runtimes = {rt.name: rt for rt in service.status().runtimes}
    data = runtimes.get("python:data")
    if data is None or not data.offered:
        reason = data.reason if data else "not configured"
        pytest.skip(f"the data environment is not offered here ({reason}); `cellblock env build` builds it")


def test_a_realistic_analysis_runs_in_the_default_environment(data: None, client: Client) -> None:
    result = client.execute(ANALYSIS, stdin=CSV)
    assert result.status is m.Status.OK, result.stderr
    assert result.stdout.splitlines() == [
        "region",
        "east     68.25",
        "north    60.00",
        "south    48.00",
        "total 176.25",
        "png True",
        "slope 1.0",
        "det 5.0",
    ], result.stdout


def test_the_issue_example_dataframe_groupby_describe_and_a_png(data: None, client: Client) -> None:
    code = """
import pandas as pd, matplotlib.pyplot as plt
df = pd.DataFrame({"team": ["a", "b", "a", "b", "c"], "score": [3, 5, 4, 6, 9]})
print(df.groupby("team")["score"].mean().to_dict())
print(df.describe().loc["mean", "score"])
df.plot(x="team", y="score", kind="bar")
plt.savefig("/work/scores.png")
import os; print(os.path.getsize("/work/scores.png") > 1000)
"""
    result = client.execute(code)
    assert result.status is m.Status.OK, result.stderr
    assert result.stdout == "{'a': 3.5, 'b': 5.5, 'c': 9.0}\n5.4\nTrue\n", result.stdout
    assert result.memory_peak_bytes < 256 << 20


def test_status_names_each_environment_with_its_packages(data: None, service: Service) -> None:
    status = service.status()
    data_rt = {rt.name: rt for rt in status.runtimes}["python:data"]
    names = {p.split()[0] for p in data_rt.packages}
    assert {"numpy", "pandas", "matplotlib", "scipy", "requests", "pillow", "sympy"} <= names, data_rt.packages
    assert data_rt.environment == "data" and status.default_environments["python"] == "data"


def test_a_missing_module_gets_a_hint_naming_where_it_is(data: None, client: Client) -> None:
    bare = client.execute("import numpy", environment="none")
    assert bare.status is m.Status.ERROR and "No module named 'numpy'" in bare.stderr
    (hint,) = [f for f in bare.findings if f.rule == "missing_module"]
    assert "environments that have it: data" in hint.message and "cellblock env build" in hint.message
    nowhere = client.execute("import tabulate_not_here")
    (hint,) = [f for f in nowhere.findings if f.rule == "missing_module"]
    assert "no environment of this service has it" in hint.message


def test_pip_install_in_a_run_fails_with_a_clear_message(data: None, client: Client) -> None:
    code = "import subprocess, sys\npip = [sys.executable, '-m', 'pip', 'install', 'tabulate']\n"
    code += "sys.exit(subprocess.run(pip).returncode)"
    result = client.execute(code)
    assert result.status is m.Status.ERROR, result.stdout
    (hint,) = [f for f in result.findings if f.rule == "package_install"]
    assert "cannot be installed inside a run" in hint.message and "[environments.<name>]" in hint.message


def test_an_environment_that_is_not_there_is_refused_by_name(client: Client) -> None:
    result = client.execute("print(1)", environment="nope")
    assert result.status is m.Status.REJECTED and result.error is not None
    assert result.error.field == "environment" and "'nope' is not available" in result.error.message


def test_a_package_pip_cannot_install_stops_the_build_and_the_service_says_so(
    tmp_path: pathlib.Path, service_factory: Callable[..., Service]
) -> None:
    index = tmp_path / "empty-index"
    index.mkdir()
    service_section = f'cache_dir = "{tmp_path / "cache"}"\npackage_index = "file://{index}"\n'
    extra = '[environments.broken]\npackages = ["cellblock-not-a-package==9.9"]\n'
    config = tmp_path / "broken.toml"
    config.write_text(f"[service]\n{service_section}\n{extra}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    built = subprocess.run(
        [sys.executable, "-m", "supervisor.tools.cli", "env", "build", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert built.returncode == 1, built.stdout
    assert "broken: pip could not install it" in built.stderr and "cellblock-not-a-package" in built.stderr
    assert not (tmp_path / "cache" / "envs").exists() or not [
        p for p in (tmp_path / "cache" / "envs").iterdir() if not p.name.startswith(".")
    ], "nothing half-built is left where the service would look"
    listed = subprocess.run(
        [sys.executable, "-m", "supervisor.tools.cli", "env", "list", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    (row,) = json.loads(listed.stdout)
    assert row["name"] == "broken" and row["built"] is False
    svc = service_factory(pool=1, service=service_section, extra=extra)
    broken = {rt.name: rt for rt in svc.status().runtimes}["python:broken"]
    assert not broken.offered and "not built" in broken.reason
    with svc.client() as client:
        refused = client.execute("print(1)", environment="broken")
        assert refused.status is m.Status.REJECTED and "not built" in refused.error.message  # type: ignore[union-attr]
        assert client.execute("print('still serving')").stdout == "still serving\n"


def test_a_kind_kept_warm_by_no_worker_still_runs_runs_and_sessions(
    data: None, service_factory: Callable[..., Service]
) -> None:
    """``pool = {"python:data" = 0}`` keeps no data worker warm: a run or a session of it
    gets a sandbox made for it (it used to wait queue_wait_s and end overloaded)."""
    svc = service_factory(pool=1, service='pool = {python = 1, "python:data" = 0, bash = 0}\n')
    runtimes = {rt.name: rt for rt in svc.status().runtimes}
    assert runtimes["python:data"].warm == 0 and runtimes["bash"].warm == 0
    with svc.client() as client:
        for _ in range(2):  # the default environment of python is data here
            result = client.execute("import pandas; print(pandas.DataFrame({'a': [1, 2]})['a'].sum())")
            assert result.status is m.Status.OK and result.stdout == "3\n", result
        assert client.execute("echo $((6 * 7))", "bash").stdout == "42\n"
        opened = client.session_open("python")
        assert client.execute("import numpy as np; x = np.arange(4)", session=opened.session).status is m.Status.OK
        assert client.execute("int(x.sum())", session=opened.session).stdout == "6\n"
        client.session_close(opened.session)
    counters = svc.status().counters
    assert counters["dispatch_reserved"] >= 4 and counters.get("dispatch_overloaded", 0) == 0
