// category: resources
// name: fork bomb from node (child_process)
// safe-status: ok, error, killed, timeout
// timeout: 5
const { spawn } = require('child_process');
let n = 0, failed = 0;
for (let i = 0; i < 300; i++) {
  try { const c = spawn('/bin/sleep', ['30']); c.on('error', () => { failed++; }); n++; } catch (e) { failed++; }
}
setTimeout(() => {
  console.log(failed > 0 ? `BLOCKED: ${failed} spawns refused` : `ESCAPED: ${n} processes`);
  process.exit(0);
}, 500);
