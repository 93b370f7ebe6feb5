// What a critic needs to know about a rendered page besides its pixels. Evaluated once, after the last shot.
(maxText) => {
  const count = (sel) => document.querySelectorAll(sel).length;
  const body = document.body || document.documentElement;
  const text = (body && body.innerText ? body.innerText : "").replace(/\s+/g, " ").trim();
  const transparent = (c) => !c || c === "transparent" || c === "rgba(0, 0, 0, 0)";
  const vw = window.innerWidth, vh = window.innerHeight;
  const styleOf = (el) => getComputedStyle(el);
  let pageBg = transparent(styleOf(body).backgroundColor) ? styleOf(document.documentElement).backgroundColor : styleOf(body).backgroundColor;
  if (transparent(pageBg)) pageBg = "rgb(255, 255, 255)";
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
  const doc = document.documentElement;
  return {
    title: document.title || "",
    text: text.slice(0, maxText),
    text_chars: text.length,
    counts: {
      buttons: count("button, input[type=button], input[type=submit], input[type=reset], [role=button]"),
      inputs: count("input:not([type=hidden]):not([type=button]):not([type=submit]):not([type=reset]), textarea, select"),
      forms: count("form"), tables: count("table"), canvas: count("canvas"), svg: count("svg"),
      images: count("img, picture"), links: count("a[href]"), nav: count("nav, [role=navigation]"),
      headings: count("h1, h2, h3, h4, h5, h6"), lists: count("ul, ol"), elements: count("body *"),
    },
    colors: { body_bg: pageBg, body_fg: styleOf(body).color, components: components.slice(0, 12) },
    scroll: { width: doc.scrollWidth, height: doc.scrollHeight, viewport: [vw, vh] },
  };
}
