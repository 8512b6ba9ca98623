'use strict';
/*
 * funcmesh Node.js runtime: serves one Kubeless function over HTTP/1.1.
 *
 * The Kubeless Node.js contract (kubeless/runtimes stable/nodejs/kubeless.js) on Node's own
 * `http` module: `handler(event, context)` with `event.extensions.request` and `.response`
 * shaped like Express's, `GET /healthz`, `GET /metrics`, CORS on every function response. Where
 * funcmesh differs from Kubeless on purpose, docs/kubeless-compat.md says so.
 *
 * Two ways to run it:
 *
 *   node kubeless_runtime.js
 *     like a Kubeless runtime container: MOD_NAME, FUNC_HANDLER, FUNC_PORT, FUNC_TIMEOUT,
 *     FUNC_RUNTIME, FUNC_MEMORY_LIMIT, KUBELESS_INSTALL_VOLUME (default /kubeless).
 *
 *   node kubeless_runtime.js --spare --listen-fd N --control-fd M
 *     a spare process of the funcmesh daemon, started before it is needed, with a listening
 *     socket (fd N) and a Unix stream socket to the daemon (fd M). It says {"op":"hello"} once
 *     warm, waits for one line {"op":"specialise", ...}, loads the function, starts accepting,
 *     and answers {"op":"ready"} or {"op":"failed","error":"..."} (it then serves that error as
 *     500). The daemon keeps its end open for the instance's whole life: end of file means the
 *     daemon is gone, and the process exits. An instance with a mesh identity (the
 *     specialisation's "mesh": {"cidr"}) asks {"op":"certificate"} when its code first calls a
 *     mesh VIP, and again once they are due; the daemon answers {"op":"certificate",
 *     "credentials": {...}} or {"op":"certificate","error":"..."} (funcmesh_mtls.js).
 *
 * Must not: use npm packages (Node's standard library only, Node 14 or newer), enforce timeouts
 * (the daemon kills the process and answers 504), or log per request (the daemon records calls).
 */

const { AsyncLocalStorage } = require('async_hooks');
const fs = require('fs');
const http = require('http');
const https = require('https');
const net = require('net');
const path = require('path');
const querystring = require('querystring');
const util = require('util');
const Module = require('module');
const names = require('./funcmesh_names.js');
const mtls = require('./funcmesh_mtls.js');

const DEFAULT_BODY_LIMIT_MB = 1; // Kubeless's REQ_MB_LIMIT default
const MAX_HEADER_BYTES = 64 * 1024;
// Longer than the gateway keeps idle upstream connections (30 s), so it always closes first.
const KEEP_ALIVE_TIMEOUT_MS = 65 * 1000;
const DRAIN_SWEEP_MS = 50;
const MAX_METHOD_LABELS = 16;
const MAX_ERROR_CHARS = 900;
const HISTOGRAM_BUCKETS_S = [
  0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
];
const TEXT_PLAIN = 'text/plain; charset=utf-8';
const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
const CHARSET_TYPES = /^(text\/|application\/(javascript|json)\b)/i;
const SHORT_TYPES = {
  html: 'text/html',
  text: 'text/plain',
  txt: 'text/plain',
  json: 'application/json',
  js: 'application/javascript',
  css: 'text/css',
  xml: 'application/xml',
  bin: 'application/octet-stream',
  octet: 'application/octet-stream',
  urlencoded: 'application/x-www-form-urlencoded',
  multipart: 'multipart/*',
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  gif: 'image/gif',
  svg: 'image/svg+xml',
  'event-stream': 'text/event-stream',
};

const kQuery = Symbol('funcmesh.query');

// ------------------------------------------------------------------------- request, response

function mediaType(contentType) {
  if (!contentType) return '';
  const semicolon = contentType.indexOf(';');
  const type = semicolon < 0 ? contentType : contentType.slice(0, semicolon);
  return type.trim().toLowerCase();
}

function normaliseType(type) {
  if (type[0] === '+') return '*/*' + type;
  return type.indexOf('/') < 0 ? SHORT_TYPES[type] || '' : type.toLowerCase();
}

function typeMatches(wanted, actual) {
  const [wantedType, wantedSub] = wanted.split('/');
  const [actualType, actualSub] = actual.split('/');
  if (!actualSub || (wantedType !== '*' && wantedType !== actualType)) return false;
  if (wantedSub.startsWith('*+')) return actualSub.endsWith(wantedSub.slice(1));
  return wantedSub === '*' || wantedSub === actualSub;
}

function hasBody(req) {
  const headers = req.headers;
  return headers['transfer-encoding'] !== undefined || headers['content-length'] !== undefined;
}

/** The request a function sees: Node's IncomingMessage plus what Express adds to it. */
class Request extends http.IncomingMessage {
  get path() {
    const url = this.url;
    const query = url.indexOf('?');
    return query < 0 ? url : url.slice(0, query);
  }

  get originalUrl() {
    return this.url;
  }

  get baseUrl() {
    return '';
  }

  get params() {
    return { 0: this.path }; // Kubeless routes everything through app.all('*')
  }

  get query() {
    if (this[kQuery] === undefined) {
      const url = this.url;
      const start = url.indexOf('?');
      this[kQuery] = start < 0 ? {} : querystring.parse(url.slice(start + 1));
    }
    return this[kQuery];
  }

  get(name) {
    const lower = String(name).toLowerCase();
    if (lower === 'referer' || lower === 'referrer') {
      return this.headers.referer || this.headers.referrer;
    }
    return this.headers[lower];
  }

  header(name) {
    return this.get(name);
  }

  /** Express's req.is(): the matching type, false, or null when there is no body. */
  is(...types) {
    const list = types.length === 1 && Array.isArray(types[0]) ? types[0] : types;
    if (!hasBody(this)) return null;
    const actual = mediaType(this.headers['content-type']);
    if (!actual) return false;
    if (list.length === 0) return actual;
    for (const type of list) {
      const wanted = normaliseType(String(type));
      if (wanted && typeMatches(wanted, actual)) {
        return type[0] === '+' || type.indexOf('*') >= 0 ? actual : type;
      }
    }
    return false;
  }

  // The gateway is the only way in and sets X-Forwarded-*: trust it, as a proxied Express
  // app with `trust proxy` does.
  get ips() {
    const forwarded = this.headers['x-forwarded-for'];
    return forwarded ? forwarded.split(',').map((ip) => ip.trim()) : [];
  }

  get ip() {
    const ips = this.ips;
    return ips.length ? ips[0] : this.socket.remoteAddress;
  }

  get protocol() {
    const proto = this.headers['x-forwarded-proto'];
    return proto ? proto.split(',')[0].trim() : 'http';
  }

  get secure() {
    return this.protocol === 'https';
  }

  get hostname() {
    const host = this.headers['x-forwarded-host'] || this.headers.host;
    if (!host) return undefined;
    const start = host[0] === '[' ? host.indexOf(']') + 1 : 0; // [::1]:8080
    const colon = host.indexOf(':', start);
    return colon < 0 ? host : host.slice(0, colon);
  }

  get xhr() {
    return String(this.headers['x-requested-with'] || '').toLowerCase() === 'xmlhttprequest';
  }
}

function withCharset(value) {
  return CHARSET_TYPES.test(value) && !/;\s*charset=/i.test(value)
    ? value + '; charset=utf-8'
    : value;
}

/** The response a function sees: Node's ServerResponse (a writable stream) plus Express's
 * status(), set(), get(), type(), send(), json() and friends. */
class Response extends http.ServerResponse {
  constructor(req, options) {
    super(req, options);
    this.locals = {};
  }

  status(code) {
    this.statusCode = code;
    return this;
  }

  sendStatus(code) {
    this.statusCode = code;
    this.type('txt');
    return this.send(http.STATUS_CODES[code] || String(code));
  }

  set(field, value) {
    if (typeof field === 'object' && field !== null) {
      for (const name of Object.keys(field)) this.set(name, field[name]);
      return this;
    }
    let text = Array.isArray(value) ? value.map(String) : String(value);
    if (String(field).toLowerCase() === 'content-type' && typeof text === 'string') {
      text = withCharset(text);
    }
    this.setHeader(field, text);
    return this;
  }

  header(field, value) {
    return this.set(field, value);
  }

  get(field) {
    return this.getHeader(field);
  }

  append(field, value) {
    const previous = this.getHeader(field);
    const added = Array.isArray(value) ? value.map(String) : [String(value)];
    if (previous === undefined) return this.set(field, added.length === 1 ? added[0] : added);
    return this.set(field, [].concat(previous, added));
  }

  type(type) {
    const text = String(type);
    return this.set('Content-Type', text.indexOf('/') < 0 ? SHORT_TYPES[text] || text : text);
  }

  contentType(type) {
    return this.type(type);
  }

  location(url) {
    return this.set('Location', url);
  }

  redirect(first, second) {
    const status = second === undefined ? 302 : first;
    const url = second === undefined ? first : second;
    this.statusCode = status;
    this.location(url);
    this.type('txt');
    return this.send(`${http.STATUS_CODES[status] || 'Redirecting'}. Redirecting to ${url}`);
  }

  send(body) {
    let chunk = body;
    if (typeof chunk === 'number' && arguments.length === 1) {
      // Express 4: res.send(404) answers that status with its reason phrase.
      this.statusCode = chunk;
      if (!this.getHeader('content-type')) this.type('txt');
      chunk = http.STATUS_CODES[chunk] || String(chunk);
    }
    if (typeof chunk === 'string') {
      const type = this.getHeader('content-type');
      this.setHeader('Content-Type', type ? withCharset(String(type)) : 'text/html; charset=utf-8');
    } else if (chunk === null || chunk === undefined) {
      chunk = '';
    } else if (Buffer.isBuffer(chunk)) {
      if (!this.getHeader('content-type')) this.type('bin');
    } else {
      return this.json(chunk);
    }
    if (this.statusCode === 204 || this.statusCode === 304) {
      this.removeHeader('Content-Type');
      this.removeHeader('Content-Length');
      this.removeHeader('Transfer-Encoding');
      chunk = '';
    }
    this.end(chunk);
    return this;
  }

  json(value) {
    const body = JSON.stringify(value);
    if (!this.getHeader('content-type')) {
      this.setHeader('Content-Type', 'application/json; charset=utf-8');
    }
    return this.send(body === undefined ? '' : body);
  }
}

function ended(res) {
  return res.writableEnded !== undefined ? res.writableEnded : res.finished;
}

function isStream(value) {
  return value !== null && typeof value === 'object' && typeof value.pipe === 'function';
}

// ------------------------------------------------------------------------- metrics

function bucketIndex(durationS) {
  let index = 0;
  while (index < HISTOGRAM_BUCKETS_S.length && HISTOGRAM_BUCKETS_S[index] < durationS) index++;
  return index;
}

function formatBound(bound) {
  return Number.isInteger(bound) ? bound.toFixed(1) : String(bound); // as Python writes them
}

function escapeLabel(value) {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Kubeless's three function metrics per HTTP method, as the Python worker writes them. */
class Metrics {
  constructor() {
    this.methods = new Map();
  }

  observe(method, durationS, failed) {
    let stats = this.methods.get(method);
    if (stats === undefined) {
      // An unbounded label set would grow without limit.
      const label = this.methods.size >= MAX_METHOD_LABELS ? 'OTHER' : method;
      stats = this.methods.get(label);
      if (stats === undefined) {
        const buckets = new Array(HISTOGRAM_BUCKETS_S.length + 1).fill(0);
        stats = { calls: 0, failures: 0, sumS: 0, buckets };
        this.methods.set(label, stats);
      }
    }
    stats.calls += 1;
    if (failed) stats.failures += 1;
    stats.sumS += durationS;
    stats.buckets[bucketIndex(durationS)] += 1;
  }

  render() {
    const rows = Array.from(this.methods.entries()).sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const out = [
      '# HELP function_duration_seconds Duration of user function in seconds',
      '# TYPE function_duration_seconds histogram',
    ];
    for (const [method, stats] of rows) {
      const label = `method="${escapeLabel(method)}"`;
      let cumulative = 0;
      stats.buckets.forEach((count, index) => {
        cumulative += count;
        const bound = HISTOGRAM_BUCKETS_S[index];
        const le = bound === undefined ? '+Inf' : formatBound(bound);
        out.push(`function_duration_seconds_bucket{${label},le="${le}"} ${cumulative}`);
      });
      out.push(`function_duration_seconds_count{${label}} ${stats.calls}`);
      out.push(`function_duration_seconds_sum{${label}} ${stats.sumS}`);
    }
    const counters = [
      ['function_calls_total', 'Number of calls to user function', 'calls'],
      ['function_failures_total', 'Number of exceptions in user function', 'failures'],
    ];
    for (const [name, help, key] of counters) {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`);
      for (const [method, stats] of rows) {
        out.push(`${name}{method="${escapeLabel(method)}"} ${stats[key]}`);
      }
    }
    return out.join('\n') + '\n';
  }
}

// ------------------------------------------------------------------------- trace context

// The trace headers of the request a handler is serving, kept (AsyncLocalStorage) for the
// duration of the call and of everything it starts, so the HTTP requests it makes carry them.
// The gateway wrote this hop's span into them, so a call through the mesh becomes that span's
// child: one trace across functions without the handler copying a header. Not a span of its own.
const TRACE_HEADERS = [
  'traceparent',
  'tracestate',
  'b3',
  'x-b3-traceid',
  'x-b3-spanid',
  'x-b3-parentspanid',
  'x-b3-sampled',
  'x-b3-flags',
];
const TRACE_HEADER_NAMES = new Set(TRACE_HEADERS);
const traceStorage = new AsyncLocalStorage();

/** The trace headers among a request's, as [name, value] pairs; null when there are none. */
function traceContextOf(headers) {
  let context = null;
  for (const name of TRACE_HEADERS) {
    const value = headers[name];
    if (value !== undefined) (context || (context = [])).push([name, value]);
  }
  return context;
}

function hasTraceHeader(headers) {
  if (headers === null || typeof headers !== 'object') return false;
  if (Array.isArray(headers)) {
    // raw headers: [name, value, name, value, ...] (or [[name, value], ...])
    const names = Array.isArray(headers[0]) ? headers.map((pair) => pair[0]) : headers;
    const step = Array.isArray(headers[0]) ? 1 : 2;
    for (let index = 0; index < names.length; index += step) {
      if (TRACE_HEADER_NAMES.has(String(names[index]).toLowerCase())) return true;
    }
    return false;
  }
  return Object.keys(headers).some((name) => TRACE_HEADER_NAMES.has(name.toLowerCase()));
}

/** A copy of request options with the context's headers, unless they carry trace headers. */
function withTraceHeaders(options, context) {
  const headers = options.headers;
  if (hasTraceHeader(headers)) return options;
  let merged;
  if (Array.isArray(headers)) {
    merged = headers.slice();
    const pairs = Array.isArray(headers[0]);
    for (const [name, value] of context) {
      if (pairs) merged.push([name, value]);
      else merged.push(name, value);
    }
  } else {
    merged = Object.assign({}, headers);
    for (const [name, value] of context) merged[name] = value;
  }
  return Object.assign({}, options, { headers: merged });
}

/** http.request / http.get (and https's) that add the call's trace headers. */
function tracedRequest(original) {
  const request = function (...args) {
    const context = traceStorage.getStore();
    if (context === undefined) return original.apply(this, args);
    const [first, second] = args;
    if (typeof first === 'string' || first instanceof URL) {
      const hasOptions = second !== null && typeof second === 'object';
      if (hasOptions) args[1] = withTraceHeaders(second, context);
      else args.splice(1, 0, withTraceHeaders({}, context));
    } else if (first !== null && typeof first === 'object') {
      args[0] = withTraceHeaders(first, context);
    }
    return original.apply(this, args);
  };
  request.funcmeshTraced = true;
  return request;
}

/** fetch() that adds the call's trace headers to a request that carries none. */
function tracedFetch(original) {
  return function fetch(input, init) {
    const context = traceStorage.getStore();
    if (context === undefined) return original.call(this, input, init);
    const given = init && init.headers !== undefined;
    const source = given ? init.headers : input instanceof globalThis.Request ? input.headers : {};
    const headers = new globalThis.Headers(source);
    if (TRACE_HEADERS.some((name) => headers.has(name))) return original.call(this, input, init);
    for (const [name, value] of context) headers.set(name, value);
    return original.call(this, input, Object.assign({}, init, { headers }));
  };
}

/** Wrap http, https and fetch so the calls a handler makes carry its call's trace headers. */
function propagateTraceContext() {
  if (http.request.funcmeshTraced) return;
  for (const module of [http, https]) {
    module.request = tracedRequest(module.request);
    module.get = tracedRequest(module.get); // get() calls the module's own request, not ours
  }
  if (typeof globalThis.fetch === 'function') globalThis.fetch = tracedFetch(globalThis.fetch);
}

// ------------------------------------------------------------------------- the function

function describeError(error) {
  if (error instanceof Error || (error && typeof error.message === 'string')) {
    const name = error.name || 'Error';
    let text = `${name}: ${String(error.message).split('\n')[0]}`;
    const where = syntaxErrorLocation(error);
    if (where) text += ` (${where})`;
    return text.slice(0, MAX_ERROR_CHARS);
  }
  return (typeof error === 'string' ? error : util.inspect(error)).slice(0, MAX_ERROR_CHARS);
}

/** `file.js:3` for a SyntaxError from require(): Node puts it on the first stack line only. */
function syntaxErrorLocation(error) {
  if (error.name !== 'SyntaxError' || typeof error.stack !== 'string') return '';
  const first = error.stack.split('\n')[0];
  const match = /^(.*):(\d+)$/.exec(first);
  return match ? `${path.basename(match[1])}:${match[2]}` : '';
}

/** The loaded handler and its context, or the error that kept it from loading. */
class FunctionApp {
  constructor(context, { bodyLimitBytes }) {
    this.context = context;
    this.handler = null;
    this.loadError = null;
    this.bodyLimitBytes = bodyLimitBytes;
    this.metrics = new Metrics();
  }
}

function makeContext({ functionName, timeoutS, runtime, memoryLimit }) {
  return {
    'function-name': functionName,
    timeout: Number(timeoutS),
    runtime,
    'memory-limit': memoryLimit,
  };
}

function bodyLimitBytes(env) {
  const megabytes = Number(env.REQ_MB_LIMIT || DEFAULT_BODY_LIMIT_MB);
  return (megabytes > 0 ? megabytes : DEFAULT_BODY_LIMIT_MB) * 1024 * 1024;
}

function moduleFile(codeDir, moduleName) {
  const file = path.join(codeDir, `${moduleName}.js`); // Kubeless: /kubeless/<MOD_NAME>.js
  if (fs.existsSync(file)) return file;
  // Node's own resolution as a fallback: .cjs/.mjs files and directories with an index.js.
  return require.resolve(path.join(codeDir, moduleName));
}

/** The handler: module.exports[handler], or module.exports itself when it is a function. */
async function loadHandler(codeDir, moduleName, handlerName) {
  const file = moduleFile(codeDir, moduleName);
  let exported;
  try {
    exported = require(file);
  } catch (error) {
    if (error.code !== 'ERR_REQUIRE_ESM') throw error;
    const { pathToFileURL } = require('url');
    const namespace = await import(pathToFileURL(file).href);
    exported = namespace[handlerName] !== undefined ? namespace : namespace.default;
  }
  if (typeof exported === 'function') return exported;
  const handler = exported !== null && exported !== undefined ? exported[handlerName] : undefined;
  if (typeof handler === 'function') return handler;
  const names = exported && typeof exported === 'object' ? Object.keys(exported) : [];
  const found = names.length ? `it exports ${names.join(', ')}` : 'it exports nothing';
  throw new TypeError(
    `module ${moduleName} has no function ${handlerName} ` +
      `(handler ${moduleName}.${handlerName}; ${found})`,
  );
}

// ------------------------------------------------------------------------- one call

function dispatch(app, req, res) {
  const method = req.method;
  if (method === 'GET' || method === 'HEAD') {
    const path = req.path;
    if (path === '/healthz') return answer(res, 200, TEXT_PLAIN, 'OK');
    if (path === '/metrics' && app.loadError === null) {
      return answer(res, 200, METRICS_CONTENT_TYPE, app.metrics.render());
    }
  }
  if (app.loadError !== null) return answer(res, 500, TEXT_PLAIN, app.loadError);
  res.setHeader('Access-Control-Allow-Origin', '*');
  if (method === 'OPTIONS') return answerPreflight(req, res);
  if (!hasBody(req)) {
    req.body = {}; // what body-parser leaves when there is no body
    return invoke(app, req, res, {});
  }
  if (mediaType(req.headers['content-type']).startsWith('multipart/')) {
    req.body = {}; // unread, as in Kubeless: the function parses the stream (multer, busboy)
    return invoke(app, req, res, {});
  }
  return readBody(app, req, res);
}

function answer(res, status, contentType, text) {
  res.statusCode = status;
  res.setHeader('Content-Type', contentType);
  res.end(text);
}

/** CORS preflight as Kubeless answers it: whatever was asked for is allowed. */
function answerPreflight(req, res) {
  const method = req.headers['access-control-request-method'];
  const headers = req.headers['access-control-request-headers'];
  if (method !== undefined) res.setHeader('Access-Control-Allow-Methods', method);
  if (headers !== undefined) res.setHeader('Access-Control-Allow-Headers', headers);
  res.end();
}

function readBody(app, req, res) {
  const limit = app.bodyLimitBytes;
  const declared = Number(req.headers['content-length']);
  if (declared > limit) return refuseLargeBody(res, limit);
  const chunks = [];
  let size = 0;
  let refused = false;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > limit && !refused) {
      refused = true;
      refuseLargeBody(res, limit);
    }
    if (!refused) chunks.push(chunk);
  });
  req.on('end', () => {
    if (!refused) onBody(app, req, res, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
  });
  req.on('error', () => {}); // the client went away: nobody is left to answer
}

function refuseLargeBody(res, limitBytes) {
  res.shouldKeepAlive = false; // the rest of the body is not read
  const megabytes = limitBytes / (1024 * 1024);
  answer(res, 413, TEXT_PLAIN, `request body larger than ${megabytes} MB (REQ_MB_LIMIT)`);
}

function onBody(app, req, res, body) {
  req.body = body;
  let data = {};
  if (body.length > 0) {
    const text = body.toString('utf8');
    if (mediaType(req.headers['content-type']) === 'application/json') {
      try {
        data = JSON.parse(text);
      } catch (error) {
        return answer(res, 400, TEXT_PLAIN, `invalid JSON body: ${error.message}`);
      }
    } else {
      data = text;
    }
  }
  return invoke(app, req, res, data);
}

function invoke(app, req, res, data) {
  const headers = req.headers;
  const event = {
    'event-type': headers['event-type'],
    'event-id': headers['event-id'],
    'event-time': headers['event-time'],
    'event-namespace': headers['event-namespace'],
    data,
    extensions: { request: req, response: res },
  };
  const started = process.hrtime();
  const trace = traceContextOf(headers);
  let result;
  try {
    result =
      trace === null
        ? app.handler(event, app.context)
        : traceStorage.run(trace, app.handler, event, app.context);
  } catch (error) {
    return fail(app, req, res, started, error);
  }
  if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
    return result.then(
      (value) => finish(app, req, res, started, value),
      (error) => fail(app, req, res, started, error),
    );
  }
  return finish(app, req, res, started, result);
}

function elapsedS(started) {
  const [seconds, nanoseconds] = process.hrtime(started);
  return seconds + nanoseconds / 1e9;
}

function finish(app, req, res, started, result) {
  try {
    writeResult(res, result);
  } catch (error) {
    return fail(app, req, res, started, error); // JSON.stringify of a cycle, a BigInt ...
  }
  app.metrics.observe(req.method, elapsedS(started), false);
}

/** Kubeless's modFinalize: the returned value becomes the body, unless the function has
 * answered (or is answering) itself. */
function writeResult(res, result) {
  if (ended(res)) return;
  // Readable.prototype.pipe() listens for 'unpipe' on its destination while it pipes.
  const owned = res.headersSent || res.listenerCount('unpipe') > 0;
  if (owned && (result === undefined || isStream(result))) return; // it ends the response itself
  switch (typeof result) {
    case 'string':
      res.end(result);
      return;
    case 'undefined':
      res.end();
      return;
    case 'object':
      if (isStream(result)) {
        result.pipe(res);
      } else if (result instanceof Uint8Array) {
        res.end(Buffer.from(result.buffer, result.byteOffset, result.byteLength));
      } else {
        const body = JSON.stringify(result);
        if (!res.headersSent && !res.getHeader('content-type')) {
          res.setHeader('Content-Type', 'application/json; charset=utf-8');
        }
        res.end(body);
      }
      return;
    default: {
      const body = JSON.stringify(result); // numbers and booleans; undefined for symbols
      res.end(body === undefined ? '' : body);
    }
  }
}

function fail(app, req, res, started, error) {
  app.metrics.observe(req.method, elapsedS(started), true);
  const detail = error && error.stack ? error.stack : util.inspect(error);
  console.error(`Function failed to execute: ${detail}`);
  if (ended(res)) return;
  if (res.headersSent) {
    res.destroy(); // a cut connection is the only way left to say the answer is incomplete
    return;
  }
  for (const name of res.getHeaderNames()) {
    if (name !== 'access-control-allow-origin') res.removeHeader(name);
  }
  answer(res, 500, TEXT_PLAIN, describeError(error));
}

// ------------------------------------------------------------------------- the server

function createServer(app) {
  const options = {
    IncomingMessage: Request,
    ServerResponse: Response,
    maxHeaderSize: MAX_HEADER_BYTES,
  };
  const server = http.createServer(options, (req, res) => dispatch(app, req, res));
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  server.headersTimeout = KEEP_ALIVE_TIMEOUT_MS + 1000;
  server.requestTimeout = 0; // the daemon times calls out
  return server;
}

/** On SIGTERM or SIGINT: stop accepting, let calls in progress finish, then exit. */
function drainOnSignals(server) {
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    if (!server.listening) process.exit(0);
    server.close(() => process.exit(0));
    const sweep = () => {
      for (const socket of sockets) {
        const response = socket._httpMessage; // the response in progress, if any
        if (!response) socket.destroy();
        else response.shouldKeepAlive = false;
      }
    };
    sweep();
    setInterval(sweep, DRAIN_SWEEP_MS).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function reportUnhandledRejections() {
  // Node 14, which Kubeless's last image ran, only warned: an instance keeps serving.
  process.on('unhandledRejection', (reason) => {
    const detail = reason && reason.stack ? reason.stack : util.inspect(reason);
    console.error(`Unhandled promise rejection: ${detail}`);
  });
}

function useNodePath(paths) {
  const all = paths.concat(process.env.NODE_PATH ? [process.env.NODE_PATH] : []);
  if (all.length === 0) return;
  process.env.NODE_PATH = all.join(path.delimiter);
  Module._initPaths(); // NODE_PATH is read at start-up only; this reads it again
}

async function loadInto(app, spec) {
  try {
    app.handler = await loadHandler(spec.codeDir, spec.module, spec.handler);
  } catch (error) {
    app.loadError = describeError(error);
    const detail = error && error.stack ? error.stack : util.inspect(error);
    console.error(`funcmesh: function failed to load: ${detail}`);
  }
}

// ------------------------------------------------------------------------- stand-alone

async function serveStandalone(env) {
  const spec = {
    codeDir: env.KUBELESS_INSTALL_VOLUME || '/kubeless',
    module: env.MOD_NAME || '',
    handler: env.FUNC_HANDLER || '',
  };
  const app = new FunctionApp(
    makeContext({
      functionName: env.FUNCMESH_FUNCTION_NAME || spec.handler,
      timeoutS: env.FUNC_TIMEOUT || 180,
      runtime: env.FUNC_RUNTIME || '',
      memoryLimit: env.FUNC_MEMORY_LIMIT || '0',
    }),
    { bodyLimitBytes: bodyLimitBytes(env) },
  );
  propagateTraceContext();
  await loadInto(app, spec);
  const server = createServer(app);
  drainOnSignals(server);
  server.listen(Number(env.FUNC_PORT || 8080));
}

// ------------------------------------------------------------------------- spare of the daemon

function readLines(socket, onLine) {
  let buffered = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => {
    buffered += chunk;
    let newline = buffered.indexOf('\n');
    while (newline >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      onLine(line);
      newline = buffered.indexOf('\n');
    }
  });
}

function replaceEnvironment(env) {
  for (const key of Object.keys(process.env)) delete process.env[key];
  for (const key of Object.keys(env || {})) process.env[key] = String(env[key]);
}

async function specialise(message, listenFd, control) {
  if (message.pod_name) process.title = `funcmesh-node ${message.pod_name}`; // for ps and top
  replaceEnvironment(message.env);
  // cluster names for http.get('http://hello:8080'); no-op without DNS
  const resolver = names.install(process.env);
  if (message.mesh) {
    // its identity on plain-HTTP calls to mesh VIPs; credentials asked for at the first one
    mtls.install({
      cidr: message.mesh.cidr,
      fetchCredentials: (callback) => askForCredentials(control, callback),
      resolver,
    });
  }
  propagateTraceContext(); // before the handler loads: it may keep http.request in a variable
  const app = new FunctionApp(
    makeContext({
      functionName: message.function_name,
      timeoutS: message.timeout_s,
      runtime: message.runtime,
      memoryLimit: message.memory_limit,
    }),
    { bodyLimitBytes: bodyLimitBytes(process.env) },
  );
  try {
    process.chdir(message.code_dir);
    useNodePath(message.node_paths || []);
  } catch (error) {
    app.loadError = describeError(error);
  }
  if (app.loadError === null) {
    await loadInto(app, {
      codeDir: message.code_dir,
      module: message.module,
      handler: message.handler,
    });
  }
  const server = createServer(app);
  drainOnSignals(server);
  server.on('error', (error) => {
    failAndExit(control, `cannot serve on fd ${listenFd}: ${error.message}`);
  });
  server.listen({ fd: listenFd }, () => {
    const loaded = app.loadError === null;
    send(control, loaded ? { op: 'ready' } : { op: 'failed', error: app.loadError });
  });
}

function send(control, message, done) {
  control.write(JSON.stringify(message) + '\n', done);
}

// Callbacks waiting for the daemon's answer to {"op":"certificate"}: one question at a time.
let credentialWaiters = null;

/** callback(error, credentials): this instance's mesh credentials, from the daemon. */
function askForCredentials(control, callback) {
  if (credentialWaiters !== null) return credentialWaiters.push(callback);
  credentialWaiters = [callback];
  send(control, { op: 'certificate' });
}

/** A line from the daemon after the specialisation: the answer about credentials. */
function onDaemonLine(line) {
  let message;
  try {
    message = JSON.parse(line);
  } catch (error) {
    return;
  }
  if (message.op !== 'certificate' || credentialWaiters === null) return;
  const waiters = credentialWaiters;
  credentialWaiters = null;
  const error = message.credentials ? null : new Error(message.error || 'no credentials');
  for (const waiter of waiters) waiter(error, message.credentials);
}

function failAndExit(control, error) {
  send(control, { op: 'failed', error }, () => process.exit(1));
}

/** Warm the serving path (V8 compiles functions on first use) on a private socket, so the
 * first real call does not pay for it. */
function rehearse(done) {
  const app = new FunctionApp(makeContext({ functionName: '', timeoutS: 1, runtime: '' }), {
    bodyLimitBytes: 1024,
  });
  app.handler = (event) => ({ data: event.data });
  const server = createServer(app);
  server.listen(0, '127.0.0.1', () => {
    const body = '{"a":1}';
    const request = http.request(
      {
        host: '127.0.0.1',
        port: server.address().port,
        method: 'POST',
        path: '/?a=1',
        headers: { 'Content-Type': 'application/json', 'Content-Length': body.length },
        agent: false,
      },
      (response) => {
        response.resume();
        response.on('end', () => server.close(done));
      },
    );
    request.on('error', () => server.close(done));
    request.end(body);
  });
}

function serveAsSpare(listenFd, controlFd) {
  const daemonPid = process.env.FUNCMESH_DAEMON_PID;
  if (daemonPid && process.ppid !== Number(daemonPid)) process.exit(1); // the daemon died already
  const control = new net.Socket({ fd: controlFd, readable: true, writable: true });
  let specialised = false;
  control.on('error', () => process.exit(1));
  control.on('end', () => process.exit(0)); // the daemon is gone, or no longer needs this process
  readLines(control, (line) => {
    if (specialised) return onDaemonLine(line);
    specialised = true;
    let message;
    try {
      message = JSON.parse(line);
    } catch (error) {
      failAndExit(control, `unreadable specialisation: ${error.message}`);
      return;
    }
    specialise(message, listenFd, control).catch((error) => {
      failAndExit(control, describeError(error));
    });
  });
  const stopUnspecialised = () => {
    if (!specialised) process.exit(0);
  };
  process.once('SIGTERM', stopUnspecialised);
  process.once('SIGINT', stopUnspecialised);
  rehearse(() => send(control, { op: 'hello', pid: process.pid, node: process.version }));
}

function argument(argv, name) {
  const index = argv.indexOf(name);
  return index >= 0 ? Number(argv[index + 1]) : NaN;
}

function main(argv, env) {
  reportUnhandledRejections();
  if (argv.indexOf('--spare') >= 0) {
    serveAsSpare(argument(argv, '--listen-fd'), argument(argv, '--control-fd'));
  } else {
    serveStandalone(env);
  }
}

if (require.main === module) {
  main(process.argv.slice(2), process.env);
}

module.exports = {
  Metrics,
  Request,
  Response,
  describeError,
  loadHandler,
  propagateTraceContext,
  writeResult,
};
