"""Layer: /proc as the sandbox sees it. What tells a kernel exploit where the kernel is
(kallsyms, kcore, modules, timer_list, ...) is masked, whatever the host's sysctls say
(kptr_restrict=0 shows real addresses to everyone); /sys is not there at all; /proc/sys
is read-only. A control reads what must still work (the run's own /proc/self)."""

from __future__ import annotations

import pytest

from protocol import messages as m
from tests.sandbox.outcome import last_json, show

pytestmark = pytest.mark.sandbox

PYTHON = """
import json, os
found = {}
for name in ("kallsyms", "kcore", "keys", "timer_list", "sched_debug", "modules", "kmsg", "iomem", "vmallocinfo",
             "slabinfo", "kpageflags", "config.gz"):
    try:
        with open("/proc/" + name, "rb") as src:
            found[name] = len(src.read(4096))
    except OSError as exc:
        found[name] = exc.strerror
found["acpi"] = os.listdir("/proc/acpi") if os.path.isdir("/proc/acpi") else "absent"
found["sys"] = os.path.exists("/sys")
try:
    with open("/proc/sys/kernel/hostname", "w") as out:
        out.write("x")
    found["proc_sys_write"] = "WROTE"
except OSError as exc:
    found["proc_sys_write"] = exc.strerror
found["control"] = open("/proc/self/status").readline().split()[0]
print(json.dumps(found))
"""


def test_cant_read_kernel_addresses_or_internals_in_proc(run):
    found = last_json(run(PYTHON))
    assert found["control"] == "Name:", found
    leaked = {k: v for k, v in found.items() if isinstance(v, int) and v > 0}
    assert leaked == {}, f"these /proc files have content in the sandbox: {leaked}"
    assert found["acpi"] in ([], "absent") and found["sys"] is False, found
    assert found["proc_sys_write"] in ("Read-only file system", "Permission denied"), found


@pytest.mark.parametrize("language", ["bash", "javascript"])
def test_cant_read_kallsyms_from_other_runtimes(run, language):
    code = {
        "bash": "wc -c < /proc/kallsyms; [ -e /sys ] && echo SYS || echo nosys",
        "javascript": "const fs = require('fs');\n"
        "console.log(fs.readFileSync('/proc/kallsyms').length);\n"
        "console.log(fs.existsSync('/sys') ? 'SYS' : 'nosys');",
    }[language]
    result = run(code, language=language)
    assert result.status is m.Status.OK, show(result)
    assert result.stdout.split() == ["0", "nosys"], show(result)
