// category: escape
// name: namespaces and mounts from node (through unshare and mount)
// safe-status: ok
const { spawnSync } = require('child_process');
for (const [cmd, args] of [['/usr/bin/unshare', ['-U', 'true']], ['/usr/bin/unshare', ['-m', 'true']], ['/bin/mount', ['-t', 'tmpfs', 'x', '/tmp']]]) {
  const r = spawnSync(cmd, args);
  console.log(r.status === 0 ? `ESCAPED: ${cmd} ${args.join(' ')}` : `BLOCKED: ${cmd} ${args[0]} (${r.status}) ${String(r.stderr).trim().slice(0, 60)}`);
}
