// What a critic needs to know about a rendered page besides its pixels. Evaluated once, after the last shot.
// Text and elements count only if a person can see them: rendered, not transparent, inside the page, not clipped
// away, at least 6px tall, and in a colour that stands out from what is behind it (contrast ratio >= 1.5), so
// ivory-on-ivory keywords, display:none blocks and text pushed off-screen earn nothing.
(maxText) => {
  const body = document.body || document.documentElement;
  const doc = document.documentElement;
  const transparent = (c) => !c || c === "transparent" || c === "rgba(0, 0, 0, 0)";
  const vw = window.innerWidth, vh = window.innerHeight;
  const styleOf = (el) => getComputedStyle(el);
  const rgba = (c) => { const m = (c || "").match(/[\d.]+/g) || [0, 0, 0, 0]; return m.map(Number).concat([1]).slice(0, 4); };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  let pageBg = transparent(styleOf(body).backgroundColor) ? styleOf(doc).backgroundColor : styleOf(body).backgroundColor;
  const bgSet = !transparent(pageBg);
  if (transparent(pageBg)) pageBg = "rgb(255, 255, 255)";
  const behind = new Map();  // element -> [r, g, b] of the first opaque-ish background at or above it (null: an image)
  const backdrop = (el) => {
    if (!el || el.nodeType !== 1) return rgba(pageBg);
    if (behind.has(el)) return behind.get(el);
    const s = styleOf(el);
    const c = rgba(s.backgroundColor);
    const out = s.backgroundImage !== "none" ? null : (c[3] >= 0.5 ? c : backdrop(el.parentElement));
    behind.set(el, out);
    return out;
  };
  const hiddenBox = new Map();  // element -> clipped away by itself or an ancestor (overflow with no room, clip-path)
  const clipped = (el) => {
    if (!el || el.nodeType !== 1 || el === body) return false;
    if (hiddenBox.has(el)) return hiddenBox.get(el);
    const s = styleOf(el);
    let out = false;
    if (s.overflow !== "visible" || s.clipPath !== "none") {
      const r = el.getBoundingClientRect();
      out = r.width < 2 || r.height < 2 || s.clipPath.startsWith("inset(50%") || /rect\(0(px)?,? 0(px)?,? 0/.test(s.clip);
    }
    out = out || clipped(el.parentElement);
    hiddenBox.set(el, out);
    return out;
  };
  const pageW = Math.max(doc.scrollWidth, vw), pageH = Math.max(doc.scrollHeight, vh);
  const onPage = (r) => r.width * r.height >= 4 && r.right > 0 && r.bottom + window.scrollY > 0 && r.left < pageW && r.top < pageH;
  const shown = (el) => el.checkVisibility({ opacityProperty: true, visibilityProperty: true }) &&
    onPage(el.getBoundingClientRect()) && !clipped(el);
  // Visible text: every text node, judged by its own box and its element's colours.
  const parts = [];
  let hiddenChars = 0, seen = 0;
  const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT, {
    acceptNode: (n) => (/^(SCRIPT|STYLE|NOSCRIPT|TEMPLATE)$/.test(n.parentElement?.tagName || "") || !n.data.trim())
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT });
  const range = document.createRange();
  for (let n = walker.nextNode(); n && seen < 3000; n = walker.nextNode(), seen++) {
    const el = n.parentElement, s = styleOf(el);
    range.selectNodeContents(n);
    const fg = rgba(s.color), bg = backdrop(el);
    const contrast = bg === null ? 21 : (Math.max(lum(fg), lum(bg)) + 0.05) / (Math.min(lum(fg), lum(bg)) + 0.05);
    const visible = el.checkVisibility({ opacityProperty: true, visibilityProperty: true }) && fg[3] * Number(s.opacity) > 0.1 &&
      parseFloat(s.fontSize) >= 6 && contrast >= 1.5 && onPage(range.getBoundingClientRect()) && !clipped(el);
    if (visible) parts.push(n.data); else hiddenChars += n.data.trim().length;
  }
  const text = parts.join(" ").replace(/\s+/g, " ").trim();
  const count = (sel) => { let k = 0; for (const el of document.querySelectorAll(sel)) if (k < 200 && shown(el)) k++; return k; };
  const components = [];
  const candidates = body ? body.querySelectorAll("header, nav, main, footer, section, aside, article, form, table, button, a, div, ul, li, input, h1, h2, h3") : [];
  for (const el of candidates) {
    if (components.length > 400) break;
    const s = styleOf(el);
    if (s.display === "none" || s.visibility === "hidden" || Number(s.opacity) === 0) continue;
    const r = el.getBoundingClientRect();
    const w = Math.max(0, Math.min(r.right, vw) - Math.max(r.left, 0));
    const h = Math.max(0, Math.min(r.bottom, vh * 3) - Math.max(r.top, 0));
    const area = (w * h) / (vw * vh);
    if (area < 0.002) continue;
    const bg = transparent(s.backgroundColor) ? null : s.backgroundColor;
    if (!bg && !/^(BUTTON|A|H1|H2|H3)$/.test(el.tagName)) continue;
    components.push({ tag: el.tagName.toLowerCase(), id: el.id || null,
      cls: (typeof el.className === "string" && el.className.split(/\s+/)[0]) || null,
      bg, fg: s.color, area: Math.round(area * 1e4) / 1e4 });
  }
  components.sort((a, b) => b.area - a.area);
  return {
    title: document.title || "",
    text: text.slice(0, maxText),
    text_chars: text.length,
    hidden_text_chars: hiddenChars,
    counts: {  // visible elements only
      buttons: count("button, input[type=button], input[type=submit], input[type=reset], [role=button]"),
      inputs: count("input:not([type=hidden]):not([type=button]):not([type=submit]):not([type=reset]), textarea, select"),
      forms: count("form"), tables: count("table"), canvas: count("canvas"), svg: count("svg"),
      images: count("img, picture"), links: count("a[href]"), nav: count("nav, [role=navigation]"),
      headings: count("h1, h2, h3, h4, h5, h6"), lists: count("ul, ol"), elements: count("body *"),
    },
    colors: { body_bg: pageBg, body_fg: styleOf(body).color, bg_set: bgSet || components.some((c) => c.bg && c.area >= 0.5),
              components: components.slice(0, 12) },
    scroll: { width: doc.scrollWidth, height: doc.scrollHeight, viewport: [vw, vh] },
  };
}
