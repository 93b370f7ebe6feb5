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
  const shownOf = new Map();  // element -> shown, measured once: the structure pass asks about the same elements often
  const shown = (el) => {
    if (!shownOf.has(el)) shownOf.set(el, el.checkVisibility({ opacityProperty: true, visibilityProperty: true }) &&
      onPage(el.getBoundingClientRect()) && !clipped(el));
    return shownOf.get(el);
  };
  // Visible text: every text node, judged by its own box and its element's colours.
  const parts = [], seenText = [];  // seenText: [element, text] of each visible text node
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
    if (visible) { parts.push(n.data); seenText.push([el, n.data]); } else hiddenChars += n.data.trim().length;
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
    const border = parseFloat(s.borderTopWidth) >= 1 && !transparent(s.borderTopColor) && s.borderTopStyle !== "none" ? s.borderTopColor : null;
    if (!bg && !border && !/^(BUTTON|A|H1|H2|H3)$/.test(el.tagName)) continue;
    // content: it holds something a person reads or uses (a coloured band with nothing in it is decoration)
    const content = (el.innerText || "").trim().length >= 2 || !!el.querySelector("input, select, textarea, img, svg, canvas");
    components.push({ tag: el.tagName.toLowerCase(), id: el.id || null,
      cls: (typeof el.className === "string" && el.className.split(/\s+/)[0]) || null,
      bg, fg: s.color, border, content, area: Math.round(area * 1e4) / 1e4 });
  }
  components.sort((a, b) => b.area - a.area);
  const structure = describe(blocksOf(seenText));
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
              components: components.slice(0, 12), used: components.filter((c) => c.content).slice(0, 60) },
    scroll: { width: doc.scrollWidth, height: doc.scrollHeight, viewport: [vw, vh] },
    structure,
  };

  // What each kind of element the critic asks for looks like as shown: the best visible instance of each, measured.
  function describe(blocks) {  // shown, styleOf, vw, vh, pageH: the summary's own, in scope
    const all = (sel) => Array.from(document.querySelectorAll(sel)).slice(0, 300).filter(shown);
    const box = (el) => { const r = el.getBoundingClientRect(); return { x: r.left, y: r.top + window.scrollY, w: r.width, h: r.height }; };
    const words = (el) => (el.innerText || el.getAttribute("aria-label") || el.value || "").trim();
    const textInputs = "input:not([type=hidden]):not([type=button]):not([type=submit]):not([type=reset]):not([type=checkbox]):not([type=radio]):not([type=range]):not([type=color]), textarea, select";
    const labelled = (inp) => !!(inp.labels && inp.labels.length && Array.from(inp.labels).some((l) => shown(l) && words(l)))
      || !!(inp.getAttribute("aria-label") || inp.getAttribute("placeholder") || inp.getAttribute("title"));
    const submits = "button, input[type=submit], input[type=button], [role=button]";
    // forms: a <form> or, for pages that skip it, the nearest container of several inputs
    const groups = new Set(all("form"));
    for (const inp of all(textInputs)) { let g = inp.parentElement; for (let k = 0; k < 3 && g && g.querySelectorAll(textInputs).length < 2; k++) g = g.parentElement; if (g) groups.add(g); }
    let form = { inputs: 0, labelled: 0, submit: false, search: false };
    for (const g of groups) {
      const inputs = Array.from(g.querySelectorAll(textInputs)).filter(shown);
      const submit = Array.from(g.querySelectorAll(submits)).some((b) => shown(b) && words(b).length >= 2);
      const f = { inputs: inputs.length, labelled: inputs.filter(labelled).length, submit, search: false };
      if (f.inputs + f.labelled + 2 * submit > form.inputs + form.labelled + 2 * form.submit) form = f;
    }
    const searchy = (inp) => inp.type === "search" || /search|find|look ?up/i.test([inp.placeholder, inp.name, inp.id,
      inp.getAttribute("aria-label"), ...(inp.labels ? Array.from(inp.labels).map(words) : [])].join(" "));
    const search = all("input, [role=searchbox]").some(searchy);
    // tables: rows with at least two visible, non-empty cells
    let table = { rows: 0, cols: 0, filled: 0 };
    for (const t of all("table, [role=table], [role=grid]")) {
      const rows = Array.from(t.querySelectorAll("tr, [role=row]")).filter(shown).map((r) =>
        Array.from(r.querySelectorAll("td, th, [role=cell], [role=gridcell], [role=columnheader]")).filter(shown));
      const full = rows.filter((cells) => cells.length >= 2);
      const cells = full.flat();
      const t2 = { rows: full.length, cols: Math.max(0, ...full.map((c) => c.length)),
                   filled: cells.length ? cells.filter((c) => words(c)).length / cells.length : 0 };
      if (t2.rows * Math.min(t2.cols, 4) > table.rows * Math.min(table.cols, 4)) table = t2;
    }
    // charts: marks in an <svg>, painted columns of a <canvas>, or a row of sized blocks (a CSS bar chart)
    const sizes = (els) => new Set(els.map((e) => { const b = box(e); return Math.round(b.h / 4) + "x" + Math.round(b.w / 4); })).size;
    let chart = { marks: 0, sizes: 0 };
    const better = (c) => { if (Math.min(c.sizes, 6) * 10 + Math.min(c.marks, 20) > Math.min(chart.sizes, 6) * 10 + Math.min(chart.marks, 20)) chart = c; };
    for (const svg of all("svg")) {
      const b = box(svg); if (b.w < 80 || b.h < 40) continue;  // an icon is not a chart
      const marks = Array.from(svg.querySelectorAll("rect, circle, ellipse, path, line, polyline, polygon")).slice(0, 200)
        .filter((m) => { const r = m.getBoundingClientRect(); return r.width + r.height >= 4 && r.width * r.height < 0.9 * b.w * b.h; });
      better({ marks: marks.length, sizes: sizes(marks) });
    }
    for (const c of all("canvas")) {
      const b = box(c); if (b.w < 80 || b.h < 40) continue;
      try {
        const ctx = c.getContext("2d"); if (!ctx) continue;
        const { data, width, height } = ctx.getImageData(0, 0, c.width, c.height);
        const heights = [];
        for (let x = 0; x < width; x += Math.max(1, Math.floor(width / 64))) {
          let n = 0; for (let y = 0; y < height; y += 2) if (data[(y * width + x) * 4 + 3] > 0) n++;
          heights.push(Math.round(n / 4));
        }
        const runs = heights.filter((h, i) => h > 0 && (i === 0 || heights[i - 1] !== h)).length;
        better({ marks: runs, sizes: new Set(heights.filter((h) => h > 0)).size });
      } catch (e) { /* a webgl canvas or a tainted one: not measured */ }
    }
    for (const el of all("div, ul, section, figure")) {
      const kids = Array.from(el.children).filter((k) => shown(k) && !transparent(styleOf(k).backgroundColor) && !words(k).replace(/[\d%$.,\s]/g, "").length);
      if (kids.length >= 3 && kids.length <= 40) better({ marks: kids.length, sizes: sizes(kids) });
    }
    // navigation: the most links side by side (or stacked, a sidebar) in one bar near the top of the page
    let nav = { links: 0, top: 0 };
    for (const el of all("nav, header, [role=navigation], ul, div")) {
      const b = box(el); if (b.y > Math.max(200, vh * 0.3) || b.h > vh * (el.matches("nav, [role=navigation]") ? 1 : 0.4)) continue;
      const links = Array.from(el.querySelectorAll(el.matches("nav, [role=navigation], header") ? "a, button" : "a"))
        .filter((a) => shown(a) && words(a)).map(box);
      const lines = new Map();  // links in one row, or in one column
      for (const l of links) { for (const k of ["y" + Math.round(l.y / 30), "x" + Math.round(l.x / 30)]) lines.set(k, (lines.get(k) || 0) + 1); }
      const most = Math.max(0, ...lines.values());
      if (most > nav.links) nav = { links: most, top: Math.round(b.y) };
    }
    // images: pictures of a real size, and whether they sit in a grid (two or more side by side)
    const pics = all("img, picture, svg, [role=img], video").map(box).filter((b) => b.w >= 60 && b.h >= 60);
    for (const el of all("div, figure, li, a")) {
      const bgi = styleOf(el).backgroundImage; const b = box(el);
      if (bgi && bgi !== "none" && b.w >= 60 && b.h >= 60 && b.w < vw * 0.9) pics.push(b);
    }
    const rowsOf = new Map(); for (const b of pics) { const k = Math.round(b.y / 20); rowsOf.set(k, (rowsOf.get(k) || 0) + 1); }
    const images = { count: pics.length, per_row: Math.max(0, ...rowsOf.values()) };
    // footer: the bottom of the page, with its links
    let footer = { present: false, links: 0 };
    for (const el of all("footer, [role=contentinfo]")) {
      const b = box(el); if (b.y + b.h < pageH * 0.6) continue;
      const links = Array.from(el.querySelectorAll("a")).filter((a) => shown(a) && words(a)).length;
      if (!footer.present || links > footer.links) footer = { present: true, links };
    }
    const buttons = all(submits + ", a").filter((b) => words(b).length >= 2 &&
      (b.tagName === "BUTTON" || b.type === "submit" || !transparent(styleOf(b).backgroundColor))).map(box);
    return { form, search, table, chart, nav, images, footer,
             buttons: { count: buttons.length, first_screen: buttons.filter((b) => b.y < vh).length }, blocks };
  }

  // Visible text by what it is: headings, labels (buttons, links, table headers, form labels, placeholders) and copy;
  // one block per element, from the visible text nodes only.
  function blocksOf(seenText) {
    const by = new Map();
    for (const [el, text] of seenText) by.set(el, (by.get(el) || "") + " " + text);
    const role = (el) => el.closest("h1, h2, h3, h4, h5, h6") ? "heading" :
      el.closest("label, button, a, th, legend, option, summary, dt, [role=button]") ? "label" : "copy";
    const out = [];
    for (const [el, text] of by) {
      if (out.length >= 300) break;
      out.push({ role: role(el), text: text.replace(/\s+/g, " ").trim().slice(0, 400) });
    }
    for (const inp of document.querySelectorAll("input[placeholder], textarea[placeholder]"))
      if (out.length < 300 && shown(inp) && inp.placeholder.trim()) out.push({ role: "label", text: inp.placeholder.slice(0, 200) });
    return out;
  }
}
