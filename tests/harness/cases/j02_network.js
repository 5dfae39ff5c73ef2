// category: network
// name: TCP to the host loopback and the internet from node
// safe-status: ok
const net = require('net');
let pending = 2;
for (const [host, port] of [['127.0.0.1', {{HOST_TCP_PORT}}], ['1.1.1.1', 443]]) {
  const s = net.connect({ host, port, timeout: 2000 });
  s.on('connect', () => { console.log('ESCAPED: connected to', host); s.destroy(); done(); });
  s.on('error', (e) => { console.log('BLOCKED:', host, e.code); done(); });
  s.on('timeout', () => { console.log('BLOCKED: timeout', host); s.destroy(); done(); });
}
function done() { if (--pending === 0) process.exit(0); }
