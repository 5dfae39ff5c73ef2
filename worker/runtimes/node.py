"""JavaScript on Node.js: a warm node process per worker, fed the code when it comes.

The payload execs ``node`` with the bootstrap below before any job exists
(a cold node start is 40-170 ms here); node warms its own run path, says
so on fd 4, and reads the job (JSON) from fd 3 in its event loop. Code runs as a CommonJS script
(``require`` works), or as an ES module when the language asks for one
(``mjs``, ``esm``) or the code has top-level import/export/await. An
uncaught error prints its stack and exits 1. V8's old space is sized from
the memory limit, so running out of heap ends as memory_limit rather than
an opaque crash (the monitor reads V8's own message on stderr).

A job that opens a session keeps node: each cell after it is one more
line on the job pipe, run as a script in the same global context
(``vm.runInThisContext``: top-level declarations stay, ``require`` is
there), its completion value shown as the REPL shows it, and a promise it
ends with awaited. Top-level ``await`` runs the cell as an async function
(its declarations then stay inside it). SIGINT stops a cell: a running
script is interrupted (``breakOnSigint``), an awaited promise abandoned.
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
REHEARSAL_FD = 5

BOOT = r"""
'use strict';
const fs = require('fs');
const net = require('net');
const Module = require('module');
const vm = require('vm');
const util = require('util');
const { Console } = require('console');
const { Writable } = require('stream');
const IMPORTS = /^\s*(import\s[\s\S]*?from\s|import\s*['"(]|export\s)/m;
const AWAIT = /^[^\S\n]*(?:const|let|var)?[^\n]*\bawait\s/m;
const ASYNC = /\b(async\s+function|async\s*\()/;
const isModule = (source) => IMPORTS.test(source) || AWAIT.test(source) && !ASYNC.test(source);
function fail(err) {
  let text = err && err.stack ? err.stack : String(err);
  for (const below of ['\n    at Module._compile (node:internal', '\n    at Script.runInThisContext (node:vm']) {
    const ours = text.indexOf(below);  // the frames below are cellblock's
    if (ours >= 0) text = text.slice(0, ours);
  }
  console.error(text);
  process.exitCode = 1;
}
// Node compiles its own code on first use: the console, util's formatting,
// the streams, the CommonJS compiler, the event loop's turn. Walk them all
// once on things that print nothing, before the job exists.
{
  const sink = new Writable({ write(chunk, encoding, done) { done(); } });
  new Console({ stdout: sink, stderr: sink }).log('%s %o', 1, { a: [1] }, 'x');
  process.stdout.write('');  // an empty write: nothing reaches the pipe
  process.stderr.write('');
  const warm = new Module('/work/warm.js', null);
  warm.filename = '/work/warm.js';
  warm.paths = Module._nodeModulePaths('/work');
  warm._compile('', '/work/warm.js');
  isModule('const x = 1;');
  decode([Buffer.from('{"code": "", "module": false}')]);
}
function decode(chunks) {
  const raw = Buffer.concat(chunks);
  return raw.length === 0 ? null : JSON.parse(raw.toString('utf8'));
}
// Everything that does not depend on the job is done before it comes.
let exitReport = 'X';  // a session's interpreter that exits says so: 'QX'
function prepare() {
  let reported = false;
  process.on('exit', (code) => {
    if (reported) return;
    reported = true;
    try { fs.writeSync(4, exitReport + (code === undefined ? 0 : code)); } catch (e) {}
  });
  process.chdir('/work');
  process.argv = [process.argv[0], '/work/main.js'];
  // node -e leaves these as globals; the code sees only what a script would.
  for (const name of ['require', 'module', 'exports', '__filename', '__dirname']) delete globalThis[name];
  // Node emits 'exit' before it prints a fatal error; print it first, then exit.
  process.on('uncaughtException', (err) => { fail(err); process.exit(1); });
}
function run(job) {
  if (job === null) process.exit(0);
  const source = job.code;
  if (job.module || isModule(source)) {
    import('data:text/javascript;base64,' + Buffer.from(source).toString('base64')).catch(fail);
  } else {
    const filename = '/work/main.js';
    const m = new Module(filename, null);
    m.filename = filename;
    m.paths = Module._nodeModulePaths('/work');
    process.mainModule = m;
    try { m._compile(source, filename); } catch (err) { fail(err); }
  }
}
// The job is one line of JSON (no raw newline inside): it runs as soon as
// its last byte arrives; the pipe is closed first, so only the code's own
// handles keep node alive. A job that opens a session keeps the pipe.
function readJob(fd, done) {
  const chunks = [];
  let taken = false;
  const take = () => {
    if (taken) return;
    taken = true;
    const job = decode(chunks);
    if (job && job.session) return session(input, job);
    input.destroy();
    done(job);
  };
  const input = new net.Socket({ fd, readable: true, writable: false });
  input.on('data', (chunk) => { chunks.push(chunk); if (chunk[chunk.length - 1] === 10) take(); });
  input.on('end', take);  // the stream then closes itself
  input.on('error', (err) => { fail(err); process.exit(1); });
  return input;
}
function session(input, first) {
  exitReport = 'QX';
  globalThis.require = Module.createRequire('/work/main.js');
  let current = null;  // the running cell: { code, stop }
  let count = 0;
  process.removeAllListeners('uncaughtException');
  const stray = (err) => { fail(err); process.exitCode = undefined; if (current) current.code = 1; };
  process.on('uncaughtException', stray);
  process.on('unhandledRejection', stray);
  process.on('SIGINT', () => { if (current) current.stop(); });
  async function cell(job) {
    count += 1;
    const filename = `/work/cell-${count}.js`;
    const stopped = new Promise((resolve) => { current = { code: 0, stop: () => resolve(STOP) }; });
    let code = 0;
    try {
      const wrapped = AWAIT.test(job.code) && !ASYNC.test(job.code);
      const source = wrapped ? '(async () => {\n' + job.code + '\n})()' : job.code;
      let value = vm.runInThisContext(source, { filename, breakOnSigint: true, lineOffset: wrapped ? -1 : 0 });
      if (value && typeof value.then === 'function') {
        value = await Promise.race([value, stopped]);
        if (value === STOP) throw new Error('Script execution interrupted.');
      }
      if (value !== undefined && !wrapped) process.stdout.write(util.inspect(value) + '\n');
    } catch (err) { fail(err); code = 1; }
    process.exitCode = undefined;
    code = code || current.code;
    current = null;
    return code;
  }
  const cells = [first];
  let pending = [];
  let busy = false;
  async function pump() {
    if (busy) return;
    busy = true;
    while (cells.length) fs.writeSync(4, 'X' + await cell(cells.shift()));
    busy = false;
  }
  input.removeAllListeners('data');
  input.removeAllListeners('end');
  input.on('data', (chunk) => {
    let start = 0;
    for (let end = chunk.indexOf(10); end >= 0; end = chunk.indexOf(10, start)) {
      pending.push(chunk.subarray(start, end));
      cells.push(decode(pending));
      pending = [];
      start = end + 1;
    }
    if (start < chunk.length) pending.push(chunk.subarray(start));
    pump();
  });
  input.on('end', () => { exitReport = 'X'; process.exit(0); });
  pump();
}
const STOP = Symbol('stop');
// The job pipe is read by the event loop, which is running when the job
// comes. Fd 5 holds a null job: reading it first walks that same path
// once (stream, data, decode, end, close, a turn of the loop) before the job.
readJob(5, () => {}).on('close', () => {
  prepare();
  readJob(3, run);
  fs.writeSync(4, 'R');  // warm: the monitor may say Ready
});
"""


class NodeJob(msgspec.Struct):
    code: str
    module: bool
    session: bool = False


_json = msgspec.json.Encoder()


class NodeRuntime(Runtime):
    name = "javascript"
    languages = ("javascript", "js", "node", "nodejs", "mjs", "esm")
    self_test = ("console.log(6 * 7)", "42\n")
    execs = True
    needs_exec_syscall = True
    address_space_rlimit = False  # V8 reserves far more address space than it uses
    oom_marker = OOM_MARKER
    sessions = True

    def probe(self) -> tuple[bool, str]:
        if not os.access(NODE, os.X_OK):
            return False, "node is not installed (apt-get install nodejs)"
        try:
            version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"node does not run ({exc})"
        return True, f"Node.js {version.lstrip('v')}"

    def encode_job(self, job: Job, first: bool = True) -> bytes:
        # One line: JSON escapes every newline inside strings.
        module = job.language in ("mjs", "esm") and not job.session
        return _json.encode(NodeJob(code=job.code, module=module, session=job.session)) + b"\n"

    def exec_interpreter(self, profile: Profile) -> NoReturn:
        heap_mb = max(16, int(profile.limits.in_bytes().memory_bytes * HEAP_OF_MEMORY) >> 20)
        argv = ["node", f"--max-old-space-size={heap_mb}", "--no-warnings", "-e", BOOT]
        # Fd 5: a pipe holding a null job, its write end closed: the bootstrap
        # reads it as it will read the real job, to walk that path once.
        empty_r, empty_w = os.pipe()
        os.write(empty_w, b"null\n")
        os.close(empty_w)
        if empty_r != REHEARSAL_FD:
            os.dup2(empty_r, REHEARSAL_FD)
            os.close(empty_r)
        os.set_inheritable(REHEARSAL_FD, True)
        os.execv(NODE, argv)  # noqa: S606 - the interpreter itself, no shell
