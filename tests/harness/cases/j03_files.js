// category: filesystem
// name: host files from node
// safe-status: ok
const fs = require('fs');
for (const p of ['/etc/shadow', '/root', '/home', '/proc/1/environ']) {
  try { const d = fs.statSync(p).isDirectory() ? fs.readdirSync(p) : fs.readFileSync(p); console.log('ESCAPED: read', p, String(d).slice(0, 40)); }
  catch (e) { console.log('BLOCKED:', p, e.code); }
}
try { fs.writeFileSync('/usr/cellblock-escape-marker', 'x'); console.log('ESCAPED: wrote /usr'); }
catch (e) { console.log('BLOCKED: write /usr', e.code); }
