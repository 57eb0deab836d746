'use strict';
// A TCP proxy between a client and a ferrocable node, for tests of what the network does:
// `cut()` destroys every connection (no close handshake: the network just goes away) and
// refuses new ones until `resume()`; `retarget(port)` sends new connections to another node
// (a load balancer moving clients). Node built-ins only, so the browser tests share it.

const net = require('node:net');

async function startProxy(targetPort) {
  let target = targetPort;
  let refusing = false;
  const sockets = new Set();
  const server = net.createServer((client) => {
    if (refusing) { client.destroy(); return; }
    const upstream = net.connect(target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => { sockets.delete(s); client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    cut() { refusing = true; for (const s of sockets) s.destroy(); },
    resume() { refusing = false; },
    retarget(port) { target = port; },
    close() { for (const s of sockets) s.destroy(); return new Promise((r) => server.close(r)); },
  };
}

module.exports = { startProxy };
