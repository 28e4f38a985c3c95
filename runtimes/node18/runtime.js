// fnrt's Node.js runtime: serves 0.0.0.0:9000 and calls handle(event, context, callback)
// of the user's module (SCF_HANDLER, "module.function" or "dir/module.function", default
// "handler.handle", the module a CommonJS file under USER_CODE_ROOT, /var/user/), the way
// Scaleway's Node runtime does:
//
// - event: {path, httpMethod, headers, queryStringParameters, body, isBase64Encoded};
//   context: {memoryLimitInMb, functionName, functionVersion, requestId}.
// - the handler may return its result, return a Promise of it, or call
//   callback(error, result).
// - a result with statusCode is the answer (its headers and body; a body that is not a
//   string is sent as JSON); anything else is sent as a JSON body with 200.
// - an error (thrown, rejected or passed to the callback) is printed to the function's
//   logs and answered with 500.
'use strict';

const http = require('http');
const path = require('path');

const ROOT = process.env.USER_CODE_ROOT || '/var/user/';
const HANDLER = process.env.SCF_HANDLER || 'handler.handle';
const dot = HANDLER.lastIndexOf('.');
const file = HANDLER.slice(0, dot).replace(/\./g, '/');
const name = HANDLER.slice(dot + 1);
const handle = require(path.join(ROOT, file))[name];
if (typeof handle !== 'function') {
  console.error(`fnrt: ${file}.js exports no function ${name} (SCF_HANDLER=${HANDLER})`);
  process.exit(1);
}

function result(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('error', reject);
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const text = raw.toString('utf8');
      const utf8 = Buffer.from(text, 'utf8').equals(raw);
      const url = new URL(req.url, 'http://function');
      const event = {
        path: url.pathname,
        httpMethod: req.method,
        headers: req.headers,
        queryStringParameters: Object.fromEntries(url.searchParams),
        body: utf8 ? text : raw.toString('base64'),
        isBase64Encoded: !utf8,
      };
      const context = {
        memoryLimitInMb: process.env.SCF_MEMORY || '',
        functionName: process.env.SCF_FUNCTIONNAME || '',
        functionVersion: process.env.SCF_FUNCTIONVERSION || '',
        requestId: req.headers['x-scf-request-id'] || '',
      };
      let settled = false;
      const callback = (err, value) => {
        if (settled) return;
        settled = true;
        if (err) reject(err); else resolve(value);
      };
      try {
        const out = handle(event, context, callback);
        if (out !== undefined || handle.length < 3) {
          Promise.resolve(out).then((v) => callback(null, v), (e) => callback(e));
        }
      } catch (e) {
        callback(e);
      }
    });
  });
}

function answer(res, status, headers, body) {
  const buf = Buffer.from(body);
  res.writeHead(status, { ...headers, 'Content-Length': buf.length });
  res.end(buf);
}

http.createServer((req, res) => {
  result(req).then((r) => {
    if (r && typeof r === 'object' && 'statusCode' in r) {
      const headers = { ...(r.headers || {}) };
      let body = r.body === undefined ? '' : r.body;
      if (typeof body !== 'string') {
        body = JSON.stringify(body);
        if (!Object.keys(headers).some((k) => k.toLowerCase() === 'content-type')) headers['Content-Type'] = 'application/json';
      }
      answer(res, Number(r.statusCode), headers, body);
    } else {
      answer(res, 200, { 'Content-Type': 'application/json' }, JSON.stringify(r === undefined ? null : r));
    }
  }, (e) => {
    console.error(e && e.stack ? e.stack : String(e));
    answer(res, 500, { 'Content-Type': 'application/json' }, '{"error":"the handler raised an exception"}');
  });
}).listen(9000, '0.0.0.0');
