'use strict';
/**
 * Cluster names for Node.js functions, without root and without code changes.
 *
 * The Node counterpart of _funcmesh_names.py: `install(env)` replaces `dns.lookup` (which `net`,
 * `http` and `https` call for every connection) with one that first asks funcmesh's DNS
 * server (`FUNCMESH_DNS_SERVER`, HOST:PORT) for the names a pod's resolv.conf would try
 * (`FUNCMESH_DNS_SEARCH`, ndots 5) inside the cluster zone (`FUNCMESH_DNS_ZONE`, default
 * cluster.local), and hands everything the cluster does not know to the original lookup.
 * Answers are cached for their TTL. Node's own modules only.
 */

const dns = require('dns');
const net = require('net');

const NDOTS = 5;
const NEGATIVE_TTL_MS = 5000;
const MAX_CACHE_ENTRIES = 1024;

function trimDots(name) {
  return name.replace(/^\.+|\.+$/g, '').toLowerCase();
}

class ClusterResolver {
  constructor(server, search, zone) {
    this.search = search.map(trimDots).filter(Boolean);
    this.zone = trimDots(zone);
    this.resolver = new dns.Resolver({ timeout: 1000, tries: 2 });
    this.resolver.setServers([server]);
    this.cache = new Map();
  }

  inZone(name) {
    const lowered = name.toLowerCase();
    return lowered === this.zone || lowered.endsWith('.' + this.zone);
  }

  /** The names resolv.conf would try for `name`, kept to those in the cluster zone. */
  candidates(name) {
    let tried;
    if (name.endsWith('.')) {
      tried = [name.slice(0, -1)];
    } else {
      const expanded = this.search.map((domain) => `${name}.${domain}`);
      const dots = name.split('.').length - 1;
      tried = dots >= NDOTS ? [name, ...expanded] : [...expanded, name];
    }
    return tried.filter((candidate) => this.inZone(candidate));
  }

  /** The cluster's IPv4 addresses for `name` (empty: the cluster does not know it). */
  resolve(name, callback) {
    const candidates = this.candidates(name);
    const next = (index) => {
      if (index >= candidates.length) return callback([]);
      this.lookupOne(candidates[index], (addresses) => {
        if (addresses.length) callback(addresses);
        else next(index + 1);
      });
    };
    next(0);
  }

  /**
   * The Service name `<svc>.<ns>.svc.<zone>` that `name` resolved to lately (the first of its
   * candidates with addresses in the cache), null when it resolved to no Service: the mTLS
   * shim's SNI and the name it checks the VIP's certificate against.
   */
  serviceName(name) {
    if (typeof name !== 'string' || !name) return null;
    for (const candidate of this.candidates(name)) {
      const key = candidate.toLowerCase();
      const cached = this.cache.get(key);
      if (cached && cached.addresses.length) {
        const labels = key.slice(0, -this.zone.length - 1).split('.');
        return labels.length === 3 && labels[2] === 'svc' ? key : null;
      }
    }
    return null;
  }

  lookupOne(name, callback) {
    const key = name.toLowerCase();
    const cached = this.cache.get(key);
    if (cached && cached.expires > Date.now()) return callback(cached.addresses);
    this.resolver.resolve4(name, { ttl: true }, (err, records) => {
      if (err && err.code !== dns.NOTFOUND && err.code !== dns.NODATA) {
        return callback([]); // the server is down or confused: not cached, ask again next time
      }
      const addresses = err ? [] : records.map((record) => record.address);
      const ttlMs = err || !records.length
        ? NEGATIVE_TTL_MS
        : Math.min(...records.map((record) => record.ttl)) * 1000;
      if (this.cache.size >= MAX_CACHE_ENTRIES) this.cache.clear();
      this.cache.set(key, { expires: Date.now() + ttlMs, addresses });
      callback(addresses);
    });
  }
}

function resolverFrom(env) {
  const server = env.FUNCMESH_DNS_SERVER || '';
  if (!/^[^:]+:\d+$/.test(server)) return null;
  const search = (env.FUNCMESH_DNS_SEARCH || 'svc.cluster.local cluster.local').split(/\s+/);
  return new ClusterResolver(server, search, env.FUNCMESH_DNS_ZONE || 'cluster.local');
}

/** Replace dns.lookup with the cluster-aware one; the resolver, or null when not asked to. */
function install(env) {
  const resolver = resolverFrom(env);
  if (resolver === null || dns.lookup.funcmesh) return null;
  const original = dns.lookup;

  function lookup(hostname, options, callback) {
    if (typeof options === 'function') {
      callback = options;
      options = {};
    }
    const opts = typeof options === 'number' ? { family: options } : options || {};
    const family = opts.family === 'IPv4' ? 4 : opts.family === 'IPv6' ? 6 : opts.family || 0;
    if (typeof hostname !== 'string' || !hostname || hostname === 'localhost' ||
        net.isIP(hostname) || family === 6) {
      return original(hostname, options, callback);
    }
    resolver.resolve(hostname, (addresses) => {
      if (!addresses.length) return original(hostname, options, callback);
      if (opts.all) callback(null, addresses.map((address) => ({ address, family: 4 })));
      else callback(null, addresses[0], 4);
    });
    return {};
  }
  lookup.funcmesh = true;
  dns.lookup = lookup;
  return resolver;
}

module.exports = { install, ClusterResolver };
