// One long-lived Node process that runs Web-Bench specs against file sets, check after check, on one warm Chromium.
//
// Why not `npx playwright test` per check: the official runner starts Node, compiles the specs, launches a browser
// and a `serve` web server every time (~5 s before the first test). Here the same spec files run under a small
// re-implementation of the part of Playwright Test's API the specs use (test, describe, beforeEach, use, the page /
// context / browser fixtures) with Playwright's own `expect`, the project's own playwright.config.js (its `use`,
// timeouts) and the same static file handler `serve` uses (serve-handler), so the verdicts match the official
// runner's (tests/test_web_bench.py checks that on the bundled projects). Evaluation uses the official runner.
//
// Protocol: one JSON object per line on stdin
//   {"id", "project": DIR, "root": DIR to serve, "specs": ["test/init.spec.js", ...], "production": bool,
//    "modules": {"name": "path"}, "search": [node_modules dirs], "parallel": tests at once, "wait_ms": wait cap}
// and one per line on stdout: {"id", "passed", "failed", "skipped", "total", "failures": [{spec, title, error}],
// "ms"} or {"id", "error"}.
'use strict'
const http = require('http')
const Module = require('module')
const path = require('path')
const readline = require('readline')
const vm = require('vm')
const handler = require('serve-handler')
const real = require('@playwright/test')

const DEAD_PROXY = 'http://127.0.0.1:9' // the page reaches its own origin (loopback) and nothing else
const CONTEXT_KEYS = ['viewport', 'screen', 'deviceScaleFactor', 'isMobile', 'hasTouch', 'userAgent', 'locale',
  'timezoneId', 'geolocation', 'permissions', 'colorScheme', 'javaScriptEnabled', 'ignoreHTTPSErrors', 'offline',
  'extraHTTPHeaders', 'httpCredentials', 'storageState', 'bypassCSP', 'acceptDownloads', 'reducedMotion',
  'forcedColors', 'serviceWorkers', 'baseURL']

// events a test may have listened to on its page or context (removed before the next test reuses them)
const LISTENED = ['dialog', 'console', 'pageerror', 'popup', 'request', 'response', 'requestfailed',
  'requestfinished', 'download', 'filechooser', 'frameattached', 'framenavigated', 'load', 'domcontentloaded',
  'page', 'websocket', 'worker']

// -- the @playwright/test the specs see -------------------------------------------------------------------------
let current = null // the file being collected: {scope}
let expectNow = real.expect
const expect = new Proxy(function () {}, {
  apply: (_, self, args) => expectNow(...args),
  get: (_, key) => expectNow[key],
})
class Skip extends Error {}

function newScope(parent, title) {
  return { parent, title, children: [], beforeEach: [], afterEach: [], beforeAll: [], afterAll: [],
    use: {} }
}
function declare(title, fn, extra = {}) {
  current.scope.children.push({ title, fn, scope: current.scope, ...extra })
}
function test(title, fn) { declare(title, fn) }
test.only = test
test.fixme = (title, fn) => typeof fn === 'function' ? declare(title, fn, { skip: true }) : fixmeOrSkip(title)
test.fail = test
test.slow = () => {}
test.setTimeout = () => {}
test.info = () => ({ annotations: [], attachments: [] })
test.step = async (_title, body) => body()
test.extend = () => { throw new Error('test.extend is not supported by the spec server; use the official runner') }
function fixmeOrSkip(cond) {
  if (current && current.scope) return // at collection: a conditional skip of the whole scope is not modelled
  if (cond === undefined || cond) throw new Skip('skipped')
}
test.skip = (a, b) => (typeof a === 'string' && typeof b === 'function') ? declare(a, b, { skip: true })
  : fixmeOrSkip(a)
test.use = (opts) => { Object.assign(current.scope.use, opts) }
for (const hook of ['beforeEach', 'afterEach', 'beforeAll', 'afterAll']) // (fn) or (title, fn)
  test[hook] = (a, b) => current.scope[hook].push(typeof a === 'function' ? a : b)
function describe(title, fn) {
  if (typeof title === 'function') [title, fn] = ['', title]
  const scope = newScope(current.scope, title)
  current.scope.children.push(scope)
  current.scope = scope
  try { fn() } finally { current.scope = scope.parent }
}
describe.only = describe
describe.serial = describe
describe.parallel = describe
describe.fixme = describe.skip = () => {}
describe.configure = () => {}
describe.serial.only = describe
test.describe = describe
const shim = { ...real, test, expect, defineConfig: (c) => c, devices: real.devices }

// Specs (and the packages they require) get the shim; everything else resolves as usual, then in `search`.
let modules = {}
let search = []
const resolve = Module._resolveFilename
Module._resolveFilename = function (request, parent, ...rest) {
  if (request === '@playwright/test' && parent && !parent.filename.startsWith(path.join(__dirname, 'node_modules')))
    return '@relook/playwright-shim'
  if (modules[request]) return resolve.call(this, modules[request], parent, ...rest)
  try {
    return resolve.call(this, request, parent, ...rest)
  } catch (e) {
    for (const dir of search) {
      try { return require.resolve(request, { paths: [dir] }) } catch (_) { /* next */ }
    }
    throw e
  }
}
// Specs mix `require` and `import` (and some sit in "type": "module" packages): compile them with Playwright's own
// Babel transform to CommonJS, as its runner does.
const { babelTransform } = require('playwright/lib/transform/babelBundle')
let transformed = [] // folders whose .js files are compiled this way (the project's and its workspace packages)
const loadJs = Module._extensions['.js']
Module._extensions['.js'] = function (module, filename) {
  if (!transformed.some((dir) => filename.startsWith(dir + path.sep))) return loadJs(module, filename)
  const source = require('fs').readFileSync(filename, 'utf8') // ES-module specs ask where they are: CommonJS knows
    .replace(/import\.meta\.dirname/g, '__dirname').replace(/import\.meta\.filename/g, '__filename')
    .replace(/import\.meta\.url/g, "require('url').pathToFileURL(__filename).href")
  const code = babelTransform(source, filename, false, [], []).code // 1.56's signature
  // Not module._compile: under a "type": "module" package.json it would hand the file to the ESM loader again.
  // An async wrapper, because ES-module specs may await at top level (a body without await still runs, and sets
  // its exports, synchronously); import() goes through this file's loader (a vm script has none).
  const wrapped = '(async function (exports, require, module, __filename, __dirname, __relookImport) {' +
    code.replace(/\bimport\(/g, '__relookImport(') + '\n})'
  const run = vm.runInThisContext(wrapped, { filename })
  const req = (id) => module.require(id)
  Object.assign(req, { resolve: (id, o) => Module._resolveFilename(id, module, false, o), cache: require.cache })
  module.relookDone = run.call(module.exports, module.exports, req, module, filename, path.dirname(filename),
    (id) => import(path.isAbsolute(id) ? require('url').pathToFileURL(id).href : id))
}
require.cache['@relook/playwright-shim'] = { id: '@relook/playwright-shim', filename: '@relook/playwright-shim',
  loaded: true, exports: shim }

// -- running one check ------------------------------------------------------------------------------------------
let browser = null
async function getBrowser() {
  if (!browser || !browser.isConnected()) {
    browser = await real.chromium.launch({ executablePath: process.env.RELOOK_CHROMIUM || '/usr/bin/chromium',
      args: [`--proxy-server=${DEAD_PROXY}`, ...(process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [])] })
  }
  return browser
}

// waitMs > 0 (training) caps how long an assertion waits for the page: on a loaded page what a spec expects is there
// at once or soon, and a failing assertion otherwise waits the whole timeout for nothing. Actions (clicks) keep the
// test's timeout: a capped click missed its stability wait under load on correct pages. 0: the config's (evaluation).
function loadConfig(project, production, waitMs) {
  if (production) process.env.IS_EVAL_PRODUCTION = '1'
  else delete process.env.IS_EVAL_PRODUCTION
  const file = path.join(project, 'playwright.config.js')
  delete require.cache[require.resolve(file)]
  current = { scope: newScope(null, '') } // a config that calls test.* by mistake does not crash the server
  const loaded = require(file)
  const config = (loaded && loaded.__esModule ? loaded.default : loaded) || {} // `export default` (bom, esmodule)
  const use = { ...(config.use || {}), ...(((config.projects || [])[0] || {}).use || {}) }
  const timeout = config.timeout ?? 30000
  const expectTimeout = (config.expect || {}).timeout ?? 5000
  return { use, fullyParallel: !!config.fullyParallel, timeout,
    expectTimeout: waitMs > 0 ? Math.min(expectTimeout, waitMs) : expectTimeout }
}

function forget(dir) { // a spec runs again on the next check: drop it (and its local helpers) from the cache
  for (const key of Object.keys(require.cache)) if (key.startsWith(dir + path.sep)) delete require.cache[key]
}

function contextOptions(use) {
  const out = {}
  for (const k of CONTEXT_KEYS) if (use[k] !== undefined) out[k] = use[k]
  return out
}

function chain(scope, key) { // outermost first for beforeEach, innermost first for afterEach
  const out = []
  for (let s = scope; s; s = s.parent) out.unshift(...s[key])
  return key === 'afterEach' ? out.reverse() : out
}

function useOf(scope, base) {
  const layers = []
  for (let s = scope; s; s = s.parent) layers.unshift(s.use)
  return Object.assign({}, base, ...layers)
}

function withTimeout(promise, ms, what) {
  let timer
  const t = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} timeout of ${ms}ms exceeded.`)), ms) })
  return Promise.race([promise, t]).finally(() => clearTimeout(timer))
}

// Why reuse a context and its page between tests: a new context and page cost ~200 ms of browser CPU, as much as a
// test. Between tests the page is reset to a fresh document with its origin's storage, cookies, permissions,
// routes and listeners cleared, the viewport set; a test that needs other context options gets a context of its own.
async function lease(lane, use, baseURL, br, cfg) {
  const options = { ...contextOptions(use), baseURL }
  const { viewport, ...rest } = options
  const key = JSON.stringify(rest)
  if (lane.context && lane.key === key && !lane.page.isClosed()) {
    try {
      await lane.page.unrouteAll({ behavior: 'ignoreErrors' })
      for (const ev of LISTENED) { lane.page.removeAllListeners(ev); lane.context.removeAllListeners(ev) }
      lane.context.on('page', settlePopups)
      await Promise.all(lane.context.pages().filter((p) => p !== lane.page).map((p) => p.close()))
      await lane.page.goto('about:blank')
      lane.context.setDefaultTimeout(cfg.timeout) // this check's config, not the one the context was made for
      lane.context.setDefaultNavigationTimeout(cfg.timeout)
      await Promise.all([ // independent of one another: one round trip instead of five
        lane.cdp.send('Storage.clearDataForOrigin', { origin: baseURL, storageTypes: 'all' }),
        lane.context.clearCookies(), lane.context.clearPermissions(), lane.context.setOffline(!!rest.offline),
        viewport ? lane.page.setViewportSize(viewport) : null])
      return lane
    } catch (_) { // the last test left the page mid-navigation (or worse): a fresh context instead
    }
  }
  if (lane.context) await lane.context.close().catch(() => {})
  lane.context = await br.newContext(options)
  lane.context.setDefaultTimeout(cfg.timeout)
  lane.context.setDefaultNavigationTimeout(cfg.timeout)
  await lane.context.route((url) => !url.href.startsWith(baseURL), (route) => route.abort('blockedbyclient'))
  settleNewPages(lane.context)
  lane.page = await lane.context.newPage()
  lane.cdp = await lane.context.newCDPSession(lane.page)
  lane.key = key
  return lane
}

// The official runner's instrumented fixtures hand a new page (context 'page', page 'popup') to the test a few
// event-loop hops later than plain Playwright, by when its first navigation has committed; specs rely on that
// (survey reads popup.url() at once). Here the commit is awaited explicitly (at most 2 s).
async function settle(p) {
  if (p && typeof p.waitForURL === 'function' && (!p.url() || p.url() === 'about:blank'))
    await p.waitForURL((u) => u.href !== 'about:blank', { waitUntil: 'commit', timeout: 2000 }).catch(() => {})
  return p
}
function settleNewPages(context) {
  const waitContext = context.waitForEvent.bind(context)
  context.waitForEvent = async (ev, ...a) => ev === 'page' ? settle(await waitContext(ev, ...a)) : waitContext(ev, ...a)
  context.on('page', settlePopups) // again after every reset: listeners are cleared between tests
}
function settlePopups(page) {
  const waitPage = page.waitForEvent.bind(page)
  page.waitForEvent = async (ev, ...a) => ev === 'popup' ? settle(await waitPage(ev, ...a)) : waitPage(ev, ...a)
}

// The `browser` fixture, as the runner gives it: a context a test makes itself gets the config's options (baseURL,
// viewport, ...) under its own, the same origin-only routing and timeouts, and is closed when the test ends.
function browserFixture(br, use, baseURL, cfg, made) {
  const newContext = async (options = {}) => {
    const c = await br.newContext({ ...contextOptions(use), baseURL, ...options })
    made.push(c)
    c.setDefaultTimeout(cfg.timeout)
    c.setDefaultNavigationTimeout(cfg.timeout)
    await c.route((url) => !url.href.startsWith(baseURL), (route) => route.abort('blockedbyclient'))
    settleNewPages(c)
    return c
  }
  const newPage = async (options) => (await newContext(options)).newPage()
  return new Proxy(br, {
    get: (target, key) => key === 'newContext' ? newContext : key === 'newPage' ? newPage
      : typeof target[key] === 'function' ? target[key].bind(target) : target[key],
  })
}

async function runTest(t, cfg, baseURL, br, lane) {
  const use = useOf(t.scope, cfg.use)
  const { context, page } = await lease(lane, use, baseURL, br, cfg)
  const made = []
  const browserFx = browserFixture(br, use, baseURL, cfg, made)
  const fixtures = { page, context, browser: browserFx, baseURL, browserName: 'chromium', viewport: use.viewport }
  const info = { title: t.title, annotations: [], attachments: [], skip: test.skip }
  const body = async () => {
    for (const fn of chain(t.scope, 'beforeEach')) await fn(fixtures, info)
    await t.fn(fixtures, info)
    for (const fn of chain(t.scope, 'afterEach')) await fn(fixtures, info)
  }
  try {
    await withTimeout(body(), cfg.timeout, 'Test')
    return 'passed'
  } catch (e) {
    if (e instanceof Skip) return 'skipped'
    await context.close().catch(() => {}) // a failed test may have left the page busy: the next one starts afresh
    lane.context = null
    return e
  } finally {
    await Promise.all(made.map((c) => c.close().catch(() => {})))
  }
}

async function runFile(file, cfg, baseURL, br, out, parallel) {
  current = { scope: newScope(null, '') }
  require(file)
  await require.cache[require.resolve(file)].relookDone // its top-level awaits, then the rest of its tests
  const root = current.scope
  current = null
  const tests = [] // [test, its full title], in file order
  const made = [] // contexts beforeAll hooks made: closed when the file is done
  const collect = async (node, titles) => {
    if (node.fn) return tests.push([node, [...titles, node.title].filter(Boolean).join(' › ')])
    for (const fn of node.beforeAll) await fn({ browser: browserFixture(br, cfg.use, baseURL, cfg, made), baseURL })
    for (const child of node.children) await collect(child, node.title ? [...titles, node.title] : titles)
  }
  await collect(root, [])
  // fullyParallel projects declare their tests independent: run `parallel` at once, each in its own context
  const width = cfg.fullyParallel ? Math.max(1, parallel) : 1
  while (lanes.length < width) lanes.push({ context: null })
  let next = 0
  const lane = async (mine) => {
    while (next < tests.length) {
      const [t, title] = tests[next++]
      if (t.skip) { out.skipped++; continue }
      const r = await runTest(t, cfg, baseURL, br, mine)
      if (r === 'passed') out.passed++
      else if (r === 'skipped') out.skipped++
      else {
        out.failed++
        out.failures.push({ spec: path.basename(file), title, error: String(r && r.message || r).slice(0, 2000) })
      }
    }
  }
  try {
    await Promise.all(lanes.slice(0, width).map(lane))
  } finally {
    await Promise.all(made.map((c) => c.close().catch(() => {})))
  }
}

// Why one web server and warm lanes for the whole process: a context costs ~200 ms of browser CPU, and a context
// keeps its origin; with the same origin check after check, a lane's context serves every check (reset between
// tests as above). The browser must not cache one check's files for the next: every response says no-store.
let served = null // the folder the current check serves
let server = null
const lanes = [] // [{context, page, cdp, key}], reused across checks
function origin() {
  if (!server) {
    server = http.createServer((q, s) => {
      if (!served) { s.statusCode = 503; return s.end() }
      s.setHeader('Cache-Control', 'no-store')
      handler(q, s, { public: served })
    })
    server.keepAliveTimeout = 1000
  }
  if (server.listening) return Promise.resolve(`http://127.0.0.1:${server.address().port}`)
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(`http://127.0.0.1:${server.address().port}`)))
}

async function check(req) {
  const t0 = Date.now()
  modules = req.modules || {}
  transformed = [path.resolve(req.project), ...Object.values(modules).map((m) => path.resolve(m))]
  search = req.search || []
  process.env.EVAL_PROJECT_ROOT = req.root // as the official run sets it: some specs import modules from it
  const cfg = loadConfig(req.project, !!req.production, req.production ? 0 : (req.wait_ms || 0))
  expectNow = real.expect.configure({ timeout: cfg.expectTimeout })
  served = req.root
  const baseURL = await origin()
  const out = { id: req.id, passed: 0, failed: 0, skipped: 0, total: 0, failures: [] }
  try {
    const br = await getBrowser()
    for (const spec of req.specs) {
      const file = path.resolve(req.project, spec)
      forget(path.dirname(file))
      await runFile(file, cfg, baseURL, br, out, req.parallel || 1)
    }
  } finally {
    forget(path.resolve(req.project)) // its scratch folder is gone after this check
    served = null
  }
  out.total = out.passed + out.failed + out.skipped
  out.ms = Date.now() - t0
  return out
}

// stdout is the protocol: what specs and pages log goes to stderr
for (const level of ['log', 'info', 'debug', 'warn']) console[level] = (...a) => process.stderr.write(require('util').format(...a) + '\n')
process.on('unhandledRejection', () => {}) // a page promise left behind by a timed-out test must not end the server
const lines = readline.createInterface({ input: process.stdin })
let queue = Promise.resolve()
lines.on('line', (line) => {
  queue = queue.then(async () => {
    let req
    try {
      req = JSON.parse(line)
      process.stdout.write(JSON.stringify(await check(req)) + '\n')
    } catch (e) {
      process.stdout.write(JSON.stringify({ id: req && req.id, error: String(e && e.stack || e).slice(0, 2000) }) + '\n')
    }
  })
})
lines.on('close', () => queue.then(async () => { if (browser) await browser.close(); process.exit(0) }))
process.stdin.on('end', () => {})
process.stdout.write(JSON.stringify({ ready: true }) + '\n')
