"""The same walls for JavaScript and shell: fork bombs, network, files, escapes.

Each test sends real code in the runtime's own language through the service.
"""

from __future__ import annotations

import socket

import pytest

from protocol import messages as m

pytestmark = pytest.mark.sandbox

JS_FORKS = """
const { spawn } = require('child_process');
let refused = 0;
for (let i = 0; i < 300; i++) {
  try { spawn('/bin/sleep', ['30']).on('error', () => { refused++; }); } catch (e) { refused++; }
}
setTimeout(() => { console.log('REFUSED', refused); process.exit(0); }, 500);
"""
SH_FORKS = """
for i in $(seq 100); do sleep 30 & done
echo PROCS $(ls /proc | grep -c '^[0-9]')
"""


def test_cant_fork_bomb_from_node(run):
    result = run(JS_FORKS, language="javascript")
    assert result.status is m.Status.OK, result.stderr
    refused = int(result.stdout.split()[-1])
    assert refused >= 300 - 64, result.stdout  # the pids limit held


def test_cant_fork_bomb_from_bash(run):
    # bash retries a refused fork with growing sleeps, so this may end in the deadline.
    result = run(SH_FORKS, language="bash", limits=m.Limits(timeout_ms=4000))
    assert result.status in (m.Status.OK, m.Status.TIMEOUT), result.stderr
    assert "Resource temporarily unavailable" in result.stderr
    if result.status is m.Status.OK:
        assert int(result.stdout.split()[-1]) <= 64


@pytest.fixture
def host_listener():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        yield server


def _heard(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except OSError:
        return False
    return True


def test_cant_reach_the_network_from_node(run, host_listener):
    port = host_listener.getsockname()[1]
    code = f"""
const net = require('net');
let left = 2;
for (const [host, port] of [['127.0.0.1', {port}], ['1.1.1.1', 443]]) {{
  const s = net.connect({{ host, port }});
  s.on('connect', () => {{ console.log('CONNECTED', host); s.destroy(); if (--left === 0) process.exit(0); }});
  s.on('error', (e) => {{ console.log('ERR', host, e.code); if (--left === 0) process.exit(0); }});
}}
require('dns').lookup('example.com', (e) => console.log('DNS', e ? e.code : 'resolved'));
"""
    result = run(code, language="javascript")
    assert "CONNECTED" not in result.stdout, result.stdout
    assert "ERR 127.0.0.1 ECONNREFUSED" in result.stdout and "ERR 1.1.1.1 ENETUNREACH" in result.stdout
    assert not _heard(host_listener)


def test_cant_reach_the_network_from_bash(run, host_listener):
    port = host_listener.getsockname()[1]
    code = f"""
(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED-HOST || echo refused-host
(exec 3<>/dev/tcp/1.1.1.1/443) 2>/dev/null && echo CONNECTED-NET || echo refused-net
"""
    result = run(code, language="bash")
    assert result.stdout == "refused-host\nrefused-net\n", result.stdout + result.stderr
    assert not _heard(host_listener)


@pytest.mark.parametrize("language", ["javascript", "bash"])
def test_cant_read_host_files(run, language):
    if language == "javascript":
        code = """
const fs = require('fs');
for (const p of ['/etc/shadow', '/root', '/home', '/proc/1/environ']) {
  try { fs.readdirSync(p); console.log('OPEN', p); } catch (e) {
    try { fs.readFileSync(p); console.log('OPEN', p); } catch (e2) { console.log('NO', p, e2.code); } }
}
try { fs.writeFileSync('/etc/x', 'y'); console.log('WROTE'); } catch (e) { console.log('NOWRITE', e.code); }
"""
    else:
        code = """
for p in /etc/shadow /root /home /proc/1/environ; do
  if [ -d $p ]; then ls $p >/dev/null 2>&1 && echo OPEN $p || echo NO $p
  else cat $p >/dev/null 2>&1 && echo OPEN $p || echo NO $p; fi
done
echo y > /etc/x 2>/dev/null && echo WROTE || echo NOWRITE
"""
    result = run(code, language=language)
    assert "OPEN" not in result.stdout and "WROTE" not in result.stdout, result.stdout
    assert result.stdout.count("NO ") == 4 and "NOWRITE" in result.stdout


@pytest.mark.parametrize("language", ["javascript", "bash"])
def test_cant_escape_through_namespaces_or_mounts(run, language):
    commands = [
        ["/usr/bin/unshare", "-U", "true"],
        ["/usr/bin/unshare", "-m", "true"],
        ["/bin/mount", "-t", "tmpfs", "x", "/tmp"],
        ["/usr/sbin/chroot", "/", "/bin/true"],
    ]
    if language == "javascript":
        code = "const {spawnSync} = require('child_process');\n" + "\n".join(
            f"console.log({cmd[0]!r}, spawnSync({cmd[0]!r}, {cmd[1:]!r}).status === 0 ? 'WORKED' : 'refused');"
            for cmd in commands
        )
    else:
        code = "\n".join(
            f"{' '.join(cmd)} 2>/dev/null && echo {cmd[0]} WORKED || echo {cmd[0]} refused" for cmd in commands
        )
    result = run(code, language=language)
    assert "WORKED" not in result.stdout and result.stdout.count("refused") == len(commands), result.stdout


def test_cant_reach_programs_outside_the_shell_tool_set(run):
    """bash's own root: the fixed tool set and its libraries, no other interpreter, no host /usr."""
    from worker.runtimes.bash import TOOLS

    script = """
    for p in python3 perl node ssh gcc apt su sudo mount; do command -v $p >/dev/null && echo "FOUND $p"; done
    ls /usr/lib | grep -v x86_64-linux-gnu | grep . && echo FOUND-LIB-DIR
    [ -e /usr/share ] && echo FOUND-SHARE
    [ -e /etc/alternatives/python3 ] && echo FOUND-ALT
    ls /usr/bin
    echo hi | sed s/hi/ho/ | awk '{print $1}' | grep ho | wc -l
    """
    result = run(script, language="bash")
    assert result.status is m.Status.OK, result.stderr
    assert "FOUND" not in result.stdout, result.stdout
    lines = result.stdout.split()
    assert lines[-1] == "1"  # the pipeline of tools works
    assert set(lines[:-1]) <= {*TOOLS, "bash", "mawk", "gawk", "original-awk", "["}, lines
