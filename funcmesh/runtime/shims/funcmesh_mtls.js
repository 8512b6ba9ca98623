'use strict';
/**
 * Mesh mTLS for the plain-HTTP calls a Node.js function makes to cluster Services.
 *
 * The Node counterpart of _funcmesh_mtls.py. `install({cidr, fetchCredentials, resolver})`
 * replaces `http.Agent.prototype.createConnection`, which every http agent uses (the global one
 * under http.get/http.request, `agent: false`, and agents the code makes itself; https agents
 * have their own and are never touched). Once the TCP connection stands, when its peer is a
 * ClusterIP (in `cidr`), it is upgraded to mutual TLS with the instance's certificate: SNI and
 * the name checked against the VIP's certificate are `<svc>.<ns>.svc.cluster.local` when the
 * code named the Service (`resolver.serviceName`, the names shim's), the mesh root alone when
 * it gave an address. The agent gets the socket through createConnection's callback, as Node
 * allows, so the upgrade is invisible to the code: same response, its identity on the call.
 *
 * As in Python, TLS is tried first: a VIP that is not the daemon's mesh entrance (kernel NAT or
 * a forwarder to a plain workload) answers the ClientHello with something else than a
 * certificate of the mesh CA, and the call is made again in plaintext on a new connection; the
 * address and port then get plaintext for PLAIN_FOR_MS. Credentials (JSON: certChain, key,
 * root, notAfter, renewAt) come from the daemon over the control socket
 * (`fetchCredentials(callback)`), at the first call to a VIP and again after renewAt; they stay
 * in memory (tls.createSecureContext takes PEM strings). The next connection to the same VIP
 * resumes the TLS session of the last one.
 *
 * fetch() is Node's bundled undici, which has agents of its own and no module to require. At
 * the code's first fetch() the shim puts a dispatcher in undici's global place
 * (Symbol.for('undici.globalDispatcher.1'), where undici's setGlobalDispatcher puts one) that
 * hands requests to http: origins to an undici Agent of its own, made with a `connect` function
 * (undici's documented hook for how an Agent opens connections) that connects as undici does
 * and then upgrades the socket as above; every other origin goes to the dispatcher that was
 * there. So redirects, bodies, streams, decompression and errors stay fetch's own. The other
 * way, running such fetches through http.request and rebuilding a Response, would have to
 * copy all of that (a Response's url and redirected cannot even be set). The Agent class is
 * the one of the dispatcher undici made for itself (its constructor); loading undici costs
 * about 15 ms, so it happens at the first fetch() (which loads it anyway), never at start. A
 * dispatcher the code set itself (a ProxyAgent, a MockAgent: anything but a plain Agent) is
 * left alone, and so is a fetch() given its own `dispatcher`.
 * Not covered: sockets the code opens with net or tls itself, and an npm undici's own fetch.
 *
 * Both ways make the connection leave from the instance's own pod IP (`podIp`, $POD_IP unless
 * given: the address its worker listens on) when the destination is a loopback address (a
 * ClusterIP, a pod IP, the gateway; a name counts when the cluster's DNS resolves it to such
 * addresses), unless the code chose a localAddress: the daemon then knows which workload
 * called from the peer address alone (Istio's source_workload). When the pod IP cannot be
 * bound (EADDRNOTAVAIL), the connection is made again without it, and so are the next ones.
 *
 * Node's own modules only.
 */

const { EventEmitter } = require('events');
const http = require('http');
const https = require('https');
const net = require('net');
const tls = require('tls');

const PLAIN_FOR_MS = 30000;
const HANDSHAKE_TIMEOUT_MS = 2000;
const REREAD_AFTER_MS = 5000; // after renewAt: the daemon renews at that time
const RETRY_MS = 30000;
const MAX_PLAIN_ENTRIES = 1024;
const MAX_SESSIONS = 256;
const GLOBAL_DISPATCHER = Symbol.for('undici.globalDispatcher.1');
// As undici connects (its buildConnector): these are its defaults for an Agent.
const CONNECT_TIMEOUT_MS = 10000;
const KEEP_ALIVE_INITIAL_DELAY_MS = 60000;
const HIGH_WATER_MARK_BYTES = 64 * 1024;

function ipv4ToInt(ip) {
  const parts = ip.split('.');
  if (parts.length !== 4) return null;
  let value = 0;
  for (const part of parts) value = value * 256 + (Number(part) & 255);
  return value;
}

function isLoopback(ip) {
  return typeof ip === 'string' && net.isIPv4(ip) && ip.startsWith('127.');
}

function parseCidr(cidr) {
  const [address, bits] = String(cidr).split('/');
  const length = bits === undefined ? 32 : Number(bits);
  const mask = length === 0 ? 0 : (0xffffffff * 2 ** (32 - length)) % 2 ** 32;
  return { network: (ipv4ToInt(address) & mask) >>> 0, mask: mask >>> 0 };
}

class Originator {
  constructor({ cidr, fetchCredentials, resolver, now, podIp }) {
    const { network, mask } = parseCidr(cidr);
    this.podIp = podIp || null; // where connections to loopback addresses leave from
    this.network = network;
    this.mask = mask;
    this.fetchCredentials = fetchCredentials;
    this.resolver = resolver || null;
    this.now = now || Date.now;
    this.credentials = null; // {context, notAfterMs, renewAtMs}
    this.readAfterMs = 0;
    this.waiting = null; // callbacks while a fetch is under way
    this.plainUntil = new Map();
    this.complained = false;
  }

  isVip(ip) {
    const value = typeof ip === 'string' ? ipv4ToInt(ip.replace(/^::ffff:/, '')) : null;
    return value !== null && ((value & this.mask) >>> 0) === this.network;
  }

  wants(ip, port) {
    return this.isVip(ip) && (this.plainUntil.get(`${ip}:${port}`) || 0) <= this.now();
  }

  rememberPlain(ip, port) {
    if (this.plainUntil.size >= MAX_PLAIN_ENTRIES) this.plainUntil.clear();
    this.plainUntil.set(`${ip}:${port}`, this.now() + PLAIN_FOR_MS);
  }

  /** callback(localAddress or undefined): the pod IP when `host` is a loopback address, or a
   * cluster name with only such addresses (cached by the names shim, which dns.lookup asks
   * next). */
  sourceFor(host, callback) {
    const podIp = this.podIp;
    if (podIp === null || typeof host !== 'string' || !host) return callback(undefined);
    if (net.isIP(host)) return callback(isLoopback(host) ? podIp : undefined);
    const resolver = this.resolver;
    if (resolver === null || typeof resolver.resolve !== 'function') return callback(undefined);
    return resolver.resolve(host, (addresses) => {
      callback(addresses.length && addresses.every(isLoopback) ? podIp : undefined);
    });
  }

  /** The pod IP cannot be bound here (EADDRNOTAVAIL): connect without it from now on. */
  unbindable(error, localAddress) {
    if (!error || error.code !== 'EADDRNOTAVAIL' || !localAddress) return false;
    if (localAddress === this.podIp) this.podIp = null;
    return localAddress !== undefined;
  }

  serviceName(host) {
    return this.resolver && typeof host === 'string' ? this.resolver.serviceName(host) : null;
  }

  /** callback(credentials or null): fetched first, or again once they are due. */
  current(callback) {
    const now = this.now();
    const held = this.credentials;
    const usable = held !== null && now < held.notAfterMs;
    if (now < this.readAfterMs) return callback(usable ? held : null);
    if (usable) {
      this.refresh(() => {}); // meanwhile the ones we hold
      return callback(held);
    }
    return this.refresh(() => {
      const fresh = this.credentials;
      callback(fresh !== null && this.now() < fresh.notAfterMs ? fresh : null);
    });
  }

  refresh(callback) {
    if (this.waiting !== null) return this.waiting.push(callback);
    this.waiting = [callback];
    this.fetchCredentials((error, payload) => {
      const previous = this.credentials;
      try {
        if (error) throw error;
        if (previous === null || payload.renewAt * 1000 > previous.renewAtMs) {
          this.credentials = {
            context: tls.createSecureContext({
              cert: payload.certChain,
              key: payload.key,
              ca: payload.root,
              minVersion: 'TLSv1.2',
            }),
            notAfterMs: payload.notAfter * 1000,
            renewAtMs: payload.renewAt * 1000,
            sessions: new Map(), // TLS sessions to resume, of this context only
          };
          this.readAfterMs = this.credentials.renewAtMs + REREAD_AFTER_MS;
        } else {
          this.readAfterMs = this.now() + RETRY_MS; // not renewed yet
        }
      } catch (failure) {
        this.readAfterMs = this.now() + RETRY_MS;
        if (!this.complained) {
          this.complained = true;
          console.error(
            `funcmesh: no mesh credentials (${failure.message || failure}); ` +
              'calls to Services go in plaintext',
          );
        }
      }
      const waiting = this.waiting;
      this.waiting = null;
      for (const waiter of waiting) waiter();
    });
  }

  /** Upgrade `plain` (connected) to mTLS; callback(null, socket) with what the agent uses. */
  upgrade(plain, host, again, callback) {
    const ip = plain.remoteAddress;
    const port = plain.remotePort;
    if (!this.wants(ip, port)) return callback(null, plain);
    let failed = null; // while the credentials come: the socket's error is the call's
    const early = (error) => {
      failed = error;
    };
    plain.on('error', early);
    this.current((credentials) => {
      plain.removeListener('error', early);
      if (failed !== null) return callback(failed);
      if (credentials === null) return callback(null, plain);
      const name = this.serviceName(host);
      const key = `${ip}:${port}:${name || ''}`;
      const sessions = credentials.sessions;
      const secure = tls.connect({
        socket: plain,
        secureContext: credentials.context,
        servername: name || undefined,
        checkServerIdentity: name ? tls.checkServerIdentity : () => undefined,
        session: sessions.get(key), // resumed: no certificate signatures to make or check
      });
      secure.on('session', (session) => {
        if (sessions.size >= MAX_SESSIONS) sessions.clear();
        sessions.set(key, session);
      });
      let settled = false;
      const timer = setTimeout(
        () => secure.destroy(new Error('handshake timed out')),
        HANDSHAKE_TIMEOUT_MS,
      );
      secure.once('secureConnect', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        secure.removeListener('error', onError);
        callback(null, secure);
      });
      const onError = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        secure.destroy();
        plain.destroy();
        this.rememberPlain(ip, port);
        callback(null, again()); // what the code asked for: plaintext
      };
      secure.once('error', onError);
    });
  }
}

// ------------------------------------------------------------------------- fetch()

/** callback(error) once `socket` is connected (at once when it is), or fails or times out. */
function whenConnected(socket, hostname, port, callback) {
  if (!socket.connecting) return callback(socket.destroyed ? new Error('socket closed') : null);
  const timer = setTimeout(() => {
    const error = new Error(
      `Connect Timeout Error (attempted address: ${hostname}:${port}, ` +
        `timeout: ${CONNECT_TIMEOUT_MS}ms)`,
    );
    error.name = 'ConnectTimeoutError';
    error.code = 'UND_ERR_CONNECT_TIMEOUT';
    socket.destroy(error);
  }, CONNECT_TIMEOUT_MS);
  const done = (error) => {
    clearTimeout(timer);
    socket.removeListener('connect', onConnect);
    socket.removeListener('error', done);
    callback(error || null);
  };
  const onConnect = () => done(null);
  socket.once('connect', onConnect);
  socket.once('error', done);
  return undefined;
}

/** An undici `connect` function for http: origins: a TCP connection as undici makes one, then
 * upgraded to mTLS when its peer is a mesh VIP. */
function meshConnector(originator) {
  return function connect({ hostname, port, localAddress }, callback) {
    const options = {
      highWaterMark: HIGH_WATER_MARK_BYTES,
      host: hostname,
      port: Number(port) || 80,
      localAddress: localAddress || undefined,
    };
    const open = () =>
      net.connect(options).setNoDelay(true).setKeepAlive(true, KEEP_ALIVE_INITIAL_DELAY_MS);
    const handOver = (error, socket) => {
      if (error) return callback(error);
      return whenConnected(socket, hostname, options.port, (failed) =>
        failed ? callback(failed) : callback(null, socket),
      );
    };
    const start = () => {
      const plain = open();
      whenConnected(plain, hostname, options.port, (error) => {
        if (originator.unbindable(error, options.localAddress)) {
          options.localAddress = undefined;
          return start();
        }
        if (error) return callback(error);
        return originator.upgrade(plain, hostname, open, handOver);
      });
    };
    if (options.localAddress) return start();
    return originator.sourceFor(hostname, (source) => {
      options.localAddress = source;
      start();
    });
  };
}

/** undici's global dispatcher for fetch(): http: origins to `mesh`, the rest to `other`; their
 * events are its own (code that dispatches itself waits for 'drain'). */
class MeshDispatcher extends EventEmitter {
  constructor(mesh, other) {
    super();
    this.mesh = mesh;
    this.other = other;
    for (const event of ['connect', 'disconnect', 'connectionError', 'drain']) {
      const forward = (...args) => this.emit(event, ...args);
      mesh.on(event, forward);
      other.on(event, forward);
    }
  }

  dispatch(options, handler) {
    const plain = String(options.origin || '').startsWith('http:');
    return (plain ? this.mesh : this.other).dispatch(options, handler);
  }

  close(callback) {
    return settle(Promise.all([this.mesh.close(), this.other.close()]), callback);
  }

  destroy(error, callback) {
    if (typeof error === 'function') [error, callback] = [null, error];
    const both = [this.mesh.destroy(error || null), this.other.destroy(error || null)];
    return settle(Promise.all(both), callback);
  }
}

function settle(promise, callback) {
  const done = promise.then(() => undefined);
  if (typeof callback !== 'function') return done;
  done.then(() => callback(null), callback);
  return undefined;
}

/** Make fetch()'s http: calls go through the mesh connector; false when the code has a
 * dispatcher of its own (left alone) or there is no undici. */
function useMeshForFetch(originator) {
  void globalThis.Headers; // loads Node's undici, which puts its own Agent in the global place
  const current = globalThis[GLOBAL_DISPATCHER];
  if (!current || typeof current.dispatch !== 'function') return false;
  if (current instanceof MeshDispatcher || current.constructor.name !== 'Agent') return false;
  const Agent = current.constructor;
  const mesh = new Agent({ connect: meshConnector(originator) });
  globalThis[GLOBAL_DISPATCHER] = new MeshDispatcher(mesh, current);
  return true;
}

/** globalThis.fetch that sets up the mesh dispatcher at its first call. */
function meshFetch(original, originator) {
  let ready = false;
  const fetch = function fetch(input, init) {
    if (!ready) {
      ready = true;
      useMeshForFetch(originator);
    }
    return original.call(this, input, init);
  };
  fetch.funcmeshMesh = true;
  return fetch;
}

// ------------------------------------------------------------------------- install

/** Replace http.Agent's createConnection with the mesh-aware one, and fetch() with one that
 * uses it too; the Originator, or null. */
function install({ cidr, fetchCredentials, resolver, now, podIp }) {
  const proto = http.Agent.prototype;
  if (proto.createConnection.funcmeshMesh) return null;
  const original = proto.createConnection;
  const originator = new Originator({
    cidr,
    fetchCredentials,
    resolver,
    now,
    podIp: podIp === undefined ? process.env.POD_IP : podIp,
  });
  if (typeof globalThis.fetch === 'function' && !globalThis.fetch.funcmeshMesh) {
    globalThis.fetch = meshFetch(globalThis.fetch, originator);
  }

  function createConnection(options, callback) {
    if (typeof callback !== 'function' || this instanceof https.Agent || options.socketPath) {
      return original.call(this, options, callback);
    }
    if (options.localAddress) {
      connectAndUpgrade(this, options, callback);
    } else {
      originator.sourceFor(options.host, (source) => {
        const bound = source ? { ...options, localAddress: source } : options;
        connectAndUpgrade(this, bound, callback);
      });
    }
    return undefined; // the socket comes through the callback
  }

  function connectAndUpgrade(agent, options, callback) {
    const plain = original.call(agent, options);
    let handed = false;
    const hand = (error, socket) => {
      if (handed) return;
      handed = true;
      plain.removeListener('error', onError);
      plain.removeListener('timeout', onTimeout);
      callback(error, socket);
    };
    const onError = (error) => {
      if (!handed && originator.unbindable(error, options.localAddress)) {
        handed = true; // again without the pod IP, on a new socket
        plain.removeListener('timeout', onTimeout);
        const { localAddress, ...unbound } = options;
        return connectAndUpgrade(agent, unbound, callback);
      }
      return hand(error);
    };
    // A connect timeout (the request's `timeout`) is the request's to see: hand the socket
    // over as it is, and let it fire again there.
    const onTimeout = () => {
      hand(null, plain);
      process.nextTick(() => plain.emit('timeout'));
    };
    plain.once('error', onError);
    plain.once('timeout', onTimeout);
    plain.once('connect', () => {
      if (handed) return;
      plain.removeListener('timeout', onTimeout);
      plain.removeListener('error', onError);
      handed = true;
      originator.upgrade(plain, options.host, () => original.call(agent, options), callback);
    });
  }
  createConnection.funcmeshMesh = true;
  proto.createConnection = createConnection;
  return originator;
}

module.exports = { install, Originator, parseCidr };
