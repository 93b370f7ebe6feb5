// Injected before any page script runs (Playwright add_init_script). Three jobs:
// 1. Determinism: a seeded Math.random and, in virtual mode, a frozen clock, so the same HTML gives the same shots.
// 2. Virtual time: the page's clocks (setTimeout/setInterval, requestAnimationFrame, requestIdleCallback, Date,
//    performance.now) run on a virtual clock that the farm advances with __relook.advance(ms) - 2 s of page time
//    in milliseconds of wall time. CSS/Web/SMIL animations are seeked to the virtual time before each shot.
//    (Chromium's own CDP virtual time was measured to stall Page.captureScreenshot on 35-60 % of pages in
//    Chromium 156: with the clock paused the compositor may never produce the frame a capture waits for.)
// 3. Change tracking: the farm skips a screenshot when nothing that paints could have run since the last one.
// Plus the sandbox's page-side half: no popups, no blocking dialogs.
(() => {
  const VIRTUAL = __RELOOK_VIRTUAL__;
  const EPOCH_MS = 1700000000000;  // Date.now() at load in virtual mode
  let ran = false;       // a timer / frame / idle callback ran since the last check
  let volatile = false;  // something we cannot track (workers, channels) exists
  let mutated = false;

  // 1. Seeded PRNG (mulberry32).
  let seed = 0x5eed1234;
  Math.random = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const { port1: yieldPort, port2: yieldPort2 } = new MessageChannel();  // before the proxy below
  for (const name of ["Worker", "SharedWorker", "MessageChannel", "BroadcastChannel"]) {
    const Native = window[name];
    if (!Native) continue;
    window[name] = new Proxy(Native, { construct(T, args, nt) { volatile = true; return Reflect.construct(T, args, nt); } });
  }
  const asFunction = (fn) => (typeof fn === "function" ? fn : () => (0, eval)(String(fn)));

  // 2. The virtual clock.
  let now = 0;  // virtual ms since the document started
  const timers = new Map();  // id -> {due, seq, fn, args, every, nesting}
  let nextId = 1, seq = 0, nesting = 0;
  if (VIRTUAL) {
    const schedule = (fn, ms, args, repeat) => {
      const id = nextId++;
      // HTML timer clamping: nested timers (level >= 5) wait at least 4 ms, so a 0 ms chain cannot spin forever.
      let delay = Math.max(0, Number(ms) || 0);
      if (nesting >= 5) delay = Math.max(delay, 4);
      timers.set(id, { due: now + delay, seq: seq++, fn: asFunction(fn), args, every: repeat ? Math.max(delay, 1) : 0,
        nesting: nesting + 1 });
      return id;
    };
    window.setTimeout = (fn, ms, ...args) => schedule(fn, ms, args, false);
    window.setInterval = (fn, ms, ...args) => schedule(fn, ms, args, true);
    window.clearTimeout = window.clearInterval = (id) => { timers.delete(id); };
    window.requestIdleCallback = (fn) => schedule(() => fn({ didTimeout: false, timeRemaining: () => 50 }), 1, [], false);
    window.cancelIdleCallback = window.clearTimeout;
    // Frames: 60 per virtual second, every callback of a frame with the same timestamp.
    const FRAME_MS = 1000 / 60;
    let frame = new Map(), frameTimer = 0;
    window.requestAnimationFrame = (cb) => {
      const id = nextId++;
      frame.set(id, cb);
      if (!frameTimer) {
        frameTimer = schedule(() => {
          frameTimer = 0;
          const due = frame;
          frame = new Map();
          for (const f of due.values()) { try { f(now); } catch (e) { reportError(e); } }
        }, FRAME_MS - (now % FRAME_MS) || FRAME_MS, [], false);
      }
      return id;
    };
    window.cancelAnimationFrame = (id) => { frame.delete(id); };
    performance.now = () => now;
    const NativeDate = Date;
    window.Date = new Proxy(NativeDate, {
      construct: (T, args, nt) => Reflect.construct(T, args.length ? args : [EPOCH_MS + now], nt),
      apply: () => new NativeDate(EPOCH_MS + now).toString(),
      get: (T, key) => (key === "now" ? () => EPOCH_MS + now : Reflect.get(T, key)),
    });
  } else {
    const wrap = (fn) => { const f = asFunction(fn); return function (...a) { ran = true; return f.apply(this, a); }; };
    const nativeSetTimeout = window.setTimeout.bind(window), nativeSetInterval = window.setInterval.bind(window);
    const nativeRaf = window.requestAnimationFrame.bind(window);
    window.setTimeout = (fn, ms, ...a) => nativeSetTimeout(wrap(fn), ms, ...a);
    window.setInterval = (fn, ms, ...a) => nativeSetInterval(wrap(fn), ms, ...a);
    window.requestAnimationFrame = (fn) => nativeRaf(wrap(fn));
  }

  // Sandbox: no popups, no dialogs that would block the renderer.
  window.open = () => null;
  window.alert = () => {};
  window.confirm = () => false;
  window.prompt = () => null;
  window.print = () => {};

  const yieldTask = () => new Promise((resolve) => {  // one macrotask turn (not clamped like setTimeout)
    yieldPort.onmessage = () => resolve();
    yieldPort2.postMessage(0);
  });
  const firstSeen = new WeakMap();  // animation -> virtual ms when first seen
  let lastShotMs = 0;
  const helpers = {
    // Run every timer due up to now + ms, in due order, then leave the clock at now + ms.
    async advance(ms) {
      const target = now + ms;
      for (let n = 0; ; n++) {
        let next = null;
        for (const [id, t] of timers) {
          if (t.due <= target && (!next || t.due < next[1].due || (t.due === next[1].due && t.seq < next[1].seq))) next = [id, t];
        }
        if (!next) break;
        const [id, t] = next;
        now = Math.max(now, t.due);
        if (t.every) { t.due += t.every; t.seq = seq++; } else timers.delete(id);
        ran = true;
        nesting = t.nesting;
        try { t.fn(...t.args); } catch (e) { reportError(e); }
        nesting = 0;
        await yieldTask();  // let the callback's promise reactions run before the next timer, as between tasks
      }
      now = target;
    },
    // Seek every animation (CSS, transitions, Web Animations, SMIL) to where real time would have it.
    seek() {
      const t = VIRTUAL ? now : performance.now();
      let live = false;
      for (const a of document.getAnimations()) {
        if (!firstSeen.has(a)) firstSeen.set(a, Math.min(t, lastShotMs));
        const end = a.effect ? a.effect.getComputedTiming().endTime : 0;
        if (end > lastShotMs - firstSeen.get(a) || a.playState === "running") live = true;  // moved since the last shot
        if (VIRTUAL) { try { a.pause(); a.currentTime = t - firstSeen.get(a); } catch (e) { /* detached effect */ } }
      }
      for (const svg of document.querySelectorAll("svg")) {
        if (svg.querySelector("animate, animateTransform, animateMotion, set")) {
          live = true;
          if (VIRTUAL && svg.setCurrentTime) { svg.pauseAnimations(); svg.setCurrentTime(t / 1000); }
        }
      }
      lastShotMs = t;
      return live;
    },
    // True when something that paints may have happened since the last call.
    changed() {
      const live = helpers.seek();
      const media = document.querySelector("canvas, video, iframe, object, embed, img[src^='data:image/gif'], img[src^='data:image/webp']");
      const c = ran || mutated || volatile || live || media !== null;
      ran = false;
      mutated = false;
      return c;
    },
  };
  new MutationObserver(() => { mutated = true; })
    .observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  Object.defineProperty(window, "__relook", { value: helpers, enumerable: false });
})();
