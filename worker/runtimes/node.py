"""JavaScript on Node.js: a warm node process per worker, fed the code when it comes.

The payload execs ``node`` with the bootstrap below before any job exists
(a cold node start is 40-170 ms here); node reads the job (JSON) from fd 3,
which blocks until the monitor writes it. Code runs as a CommonJS script
(``require`` works), or as an ES module when the language asks for one
(``mjs``, ``esm``) or the code has top-level import/export/await. An
uncaught error prints its stack and exits 1. V8's old space is sized from
the memory limit, so running out of heap ends as memory_limit rather than
an opaque crash (the monitor reads V8's own message on stderr).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import NoReturn

import msgspec

from protocol.messages import Job
from protocol.profile import Profile
from worker.runtimes.base import Runtime

NODE = shutil.which("node") or "/usr/bin/node"
HEAP_OF_MEMORY = 0.75  # V8's old space, as a share of the run's memory limit
OOM_MARKER = b"JavaScript heap out of memory"

BOOT = r"""
'use strict';
const fs = require('fs');
const Module = require('module');
function readAll(fd) {
  const chunks = [];
  const buf = Buffer.alloc(1 << 16);
  for (;;) {
    let n;
    try { n = fs.readSync(fd, buf, 0, buf.length, null); }
    catch (e) { if (e.code === 'EAGAIN' || e.code === 'EINTR') continue; throw e; }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks);
}
// Node makes process.stdout, process.stderr, the console and the CommonJS
// compiler on first use, ~15 ms of module loading: pay it before the job exists.
require('util').format('%s %o', 1, {a: [1]});
process.stdout.write('');  // an empty write: nothing reaches the pipe
process.stderr.write('');
{ // and the CommonJS compile path, on an empty module
  const warm = new Module('/work/warm.js', null);
  warm.filename = '/work/warm.js';
  warm._compile('', '/work/warm.js');
}
const raw = readAll(3);
fs.closeSync(3);
if (raw.length === 0) process.exit(0);
const job = JSON.parse(raw.toString('utf8'));
let reported = false;
process.on('exit', (code) => {
  if (reported) return;
  reported = true;
  try { fs.writeSync(4, 'X' + (code === undefined ? 0 : code)); } catch (e) {}
});
process.chdir('/work');
process.argv = [process.argv[0], '/work/main.js'];
// node -e leaves these as globals; the code sees only what a script would.
for (const name of ['require', 'module', 'exports', '__filename', '__dirname']) delete globalThis[name];
const source = job.code;
const esm = job.module || /^\s*(import\s[\s\S]*?from\s|import\s*['"(]|export\s)/m.test(source)
  || /^[^\S\n]*(?:const|let|var)?[^\n]*\bawait\s/m.test(source) && !/\b(async\s+function|async\s*\()/.test(source);
function fail(err) {
  console.error(err && err.stack ? err.stack : String(err));
  process.exitCode = 1;
}
// Node emits 'exit' before it prints a fatal error; print it first, then exit.
process.on('uncaughtException', (err) => { fail(err); process.exit(1); });
if (esm) {
  import('data:text/javascript;base64,' + Buffer.from(source).toString('base64')).catch(fail);
} else {
  const filename = '/work/main.js';
  const m = new Module(filename, null);
  m.filename = filename;
  m.paths = Module._nodeModulePaths('/work');
  process.mainModule = m;
  try { m._compile(source, filename); } catch (err) { fail(err); }
}
"""


class NodeJob(msgspec.Struct):
    code: str
    module: bool


_json = msgspec.json.Encoder()


class NodeRuntime(Runtime):
    name = "javascript"
    languages = ("javascript", "js", "node", "nodejs", "mjs", "esm")
    self_test = ("console.log(6 * 7)", "42\n")
    execs = True
    needs_exec_syscall = True
    address_space_rlimit = False  # V8 reserves far more address space than it uses
    oom_marker = OOM_MARKER

    def probe(self) -> tuple[bool, str]:
        if not os.access(NODE, os.X_OK):
            return False, "node is not installed (apt-get install nodejs)"
        try:
            version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"node does not run ({exc})"
        return True, f"Node.js {version.lstrip('v')}"

    def encode_job(self, job: Job) -> bytes:
        return _json.encode(NodeJob(code=job.code, module=job.language in ("mjs", "esm")))

    def exec_interpreter(self, profile: Profile) -> NoReturn:
        heap_mb = max(16, int(profile.limits.memory_mb * HEAP_OF_MEMORY))
        argv = ["node", f"--max-old-space-size={heap_mb}", "--no-warnings", "-e", BOOT]
        os.execv(NODE, argv)  # noqa: S606 - the interpreter itself, no shell
