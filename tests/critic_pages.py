"""Pages for judging the critic: for a procedural task, a page that does it (written here, kind by kind, the way a
front-end developer would) and its degenerate twins, which a person would not call a page for the task.
The critic was not tuned on these: tests/test_critic.py asks only that each twin scores far below the real page."""
from __future__ import annotations

import re

# kind -> (site name, tagline, three sections of copy, table header + rows, chart label + values, gallery captions)
COPY = {
    "landing page for a bakery": (
        "Golden Crust Bakery", "Bread and cakes baked every morning in the heart of town.",
        ["Our sourdough rises for two days before it meets the oven.", "Birthday cakes are made to order with a "
         "week's notice.", "Pastries come out of the oven at seven, while they last."],
        ["Item", "Price"], [["Sourdough loaf", "$6"], ["Rye bread", "$5"], ["Carrot cake", "$24"], ["Croissant", "$3"]],
        ("Loaves sold per day", [40, 65, 52, 80, 71]), ["Sourdough", "Fruit tart", "Baguettes", "Layer cake"]),
    "weather dashboard": (
        "SkyWatch Weather", "Today's conditions and the week's forecast for your city.",
        ["Expect light rain in the afternoon, clearing by evening.", "Humidity stays near 70 percent with a gentle "
         "westerly wind.", "The weekend brings sunshine and warmer temperatures."],
        ["Day", "High", "Low", "Rain"], [["Mon", "18°", "11°", "40%"], ["Tue", "21°", "12°", "10%"],
                                         ["Wed", "16°", "9°", "80%"], ["Thu", "19°", "10°", "30%"]],
        ("Temperature this week", [18, 21, 16, 19, 23, 25]), ["Morning fog", "Storm front", "Clear night", "Radar"]),
    "music player page": (
        "Tempo Music Player", "Play your playlists, albums and favourite songs in one place.",
        ["Now playing: Night Drive by The Coastlines, from the album Harbour Lights.", "Shuffle your playlist or "
         "repeat a song you cannot stop humming.", "Your library keeps every album you have saved."],
        ["Track", "Artist", "Length"], [["Night Drive", "The Coastlines", "3:42"], ["Paper Moon", "Ivy Lane", "4:05"],
                                        ["Low Tide", "The Coastlines", "2:58"], ["Satellite", "Marlo", "3:31"]],
        ("Songs played per day", [12, 30, 22, 41, 18]), ["Harbour Lights", "Quiet Hours", "Summer Static", "Echoes"]),
    "hotel booking page": (
        "Seaside Grand Hotel", "Book a room with a view of the bay for your next stay.",
        ["Every room has a balcony, free breakfast and late check-out on request.", "Suites sleep up to four guests "
         "with a separate lounge.", "Pick your dates and the number of guests to see what is available."],
        ["Room", "Guests", "Per night"], [["Standard room", "2", "$120"], ["Deluxe room", "3", "$160"],
                                          ["Family suite", "4", "$240"], ["Penthouse suite", "4", "$420"]],
        ("Occupancy by month", [55, 62, 78, 91, 84]), ["Lobby", "Ocean room", "Pool deck", "Restaurant terrace"]),
    "pricing page for a software product": (
        "CloudDesk Pricing", "Plans for CloudDesk, the help-desk software product for teams of every size.",
        ["The Starter plan covers one project and five users.", "The Team plan adds unlimited projects and priority "
         "support.", "Enterprise customers get single sign-on and a dedicated manager."],
        ["Plan", "Users", "Price per month"], [["Starter", "5", "$9"], ["Team", "25", "$29"], ["Business", "100", "$79"],
                                               ["Enterprise", "Unlimited", "Contact us"]],
        ("Teams on each plan", [120, 340, 210, 60]), ["Dashboard view", "Reports", "Team chat", "Integrations"]),
    "recipe page": (
        "Grandma's Lemon Chicken", "A weeknight recipe that serves four in forty minutes.",
        ["Marinate the chicken in lemon, garlic and thyme for twenty minutes.", "Roast at 200 degrees until golden, "
         "then rest for five minutes.", "Serve with the pan juices and a green salad."],
        ["Ingredient", "Amount"], [["Chicken thighs", "8"], ["Lemons", "2"], ["Garlic cloves", "4"], ["Thyme", "1 bunch"]],
        ("Minutes per step", [10, 20, 35, 5]), ["Marinating", "In the oven", "Resting", "On the plate"]),
}


def parse(prompt: str) -> tuple[str, str, str, list[str]]:
    """A procedural prompt -> (kind, background, component colour, the two elements)."""
    m = re.match(r"Write an? (.+?) with (.+?) and (.+?)\. Use (.+?) for the background and (.+?) for components\.", prompt)
    if not m:
        raise ValueError(f"not a procedural prompt: {prompt!r}")
    kind, e1, e2, bg, comp = m.groups()
    return kind, bg.replace(" ", ""), comp.replace(" ", ""), [e1, e2]


def task(kind: str, e1: str, e2: str, bg: str = "ivory", comp: str = "forest green") -> str:
    art = "an" if kind[0] in "aeiou" else "a"
    return f"Write {art} {kind} with {e1} and {e2}. Use {bg} for the background and {comp} for components."


def _element(name: str, kind: str) -> str:
    title, _, _, head, rows, (chart_label, values), captions = COPY[kind]
    if "navigation" in name:
        return ""  # every real page has its header bar (below)
    if "contact form" in name:
        return ("<section><h2>Get in touch</h2><form class=card><label>Your name <input name=name></label>"
                "<label>Email <input type=email name=email></label><label>Message <textarea name=msg></textarea></label>"
                "<button type=submit>Send message</button></form></section>")
    if "data table" in name:
        th = "".join(f"<th>{h}</th>" for h in head)
        tr = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        return f"<section><h2>At a glance</h2><table><tr>{th}</tr>{tr}</table></section>"
    if "bar chart" in name:
        top = max(values)
        bars = "".join(f"<rect x='{20 + i * 70}' y='{170 - 150 * v // top}' width='50' height='{150 * v // top}' "
                       f"class=bar></rect>" for i, v in enumerate(values))
        return f"<section><h2>{chart_label}</h2><svg width='420' height='180'>{bars}</svg></section>"
    if "call-to-action" in name:
        return f"<section class=hero><p>Ready when you are.</p><button class=cta>Start with {title.split()[0]}</button></section>"
    if "gallery" in name:
        tints = ("#cc99aa", "#99bbcc")
        tiles = "".join(f"<figure><svg width='220' height='150'><rect width='220' height='150' fill='{tints[i % 2]}'/>"
                        f"<circle cx='{60 + 30 * i}' cy='70' r='{30 + 5 * i}' fill='#fff8'/></svg><figcaption>{c}</figcaption>"
                        f"</figure>" for i, c in enumerate(captions))
        return f"<section><h2>Gallery</h2><div class=grid>{tiles}</div></section>"
    if "search box" in name:
        return (f"<section><h2>Find what you need</h2><form role=search><input type=search placeholder='Search "
                f"{title.split()[-1].lower()}'><button>Search</button></form></section>")
    if "footer" in name:
        return ""  # every real page has its footer (below); this one gets links
    raise ValueError(name)


def real_page(prompt: str) -> str:
    """A page that does the task: its own subject's copy, the two elements it asks for, its colours."""
    kind, bg, comp, elements = parse(prompt)
    title, tagline, copy, *_ = COPY[kind]
    footer_links = any("footer" in e for e in elements)
    nav = "".join(f"<a href='#{s}'>{s.title()}</a>" for s in ("home", "about", "details", "contact"))
    sections = "".join(_element(e, kind) for e in elements)
    paras = "".join(f"<div class=card><p>{p}</p></div>" for p in copy)
    footer = ("<footer><p>&copy; 2026 " + title + "</p>" +
              ("<a href='#privacy'>Privacy</a> <a href='#terms'>Terms</a> <a href='#help'>Help</a>" if footer_links else "")
              + "</footer>")
    return f"""<!DOCTYPE html><html><head><title>{title}</title><style>
body{{margin:0;background:{bg};font-family:sans-serif;color:#222}} header{{background:{comp};color:#fff;padding:20px 32px}}
header nav a{{color:#fff;margin-right:18px}} main{{max-width:1100px;margin:auto;padding:24px}}
.card{{border:2px solid {comp};border-radius:8px;padding:8px 16px;margin:10px 0}} button{{background:{comp};color:#fff;border:0;padding:10px 18px;border-radius:6px}}
th{{background:{comp};color:#fff}} td,th{{padding:6px 14px}} .bar{{fill:{comp}}} .grid{{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:12px}} .grid svg{{width:100%;height:auto}}
label{{display:block;margin:8px 0}} footer{{background:{comp};color:#fff;padding:16px 32px}} footer a{{color:#fff;margin-right:14px}}
h2{{color:{comp}}}</style></head><body>
<header><h1>{title}</h1><nav>{nav}</nav></header>
<main><p>{tagline}</p>{paras}{sections}</main>{footer}</body></html>"""


SALAD_WORDS = ("Bakery Photographer Portfolio Sales Dashboard Todo List Pricing Software Blog Restaurant Menu Event "
               "Registration Weather Recipe Hotel Booking Music Player Navigation Contact Form Data Table Bar Chart "
               "Call-to-action Button Image Gallery Search Box Footer Links")
BAND_COLOURS = ["navy", "forestgreen", "slategray", "indigo", "teal", "midnightblue", "maroon", "darkolivegreen",
                "steelblue", "crimson"]


def salad(bg: str) -> str:
    """One template for every task: each kind and element named in one heading and one paragraph, a tiny form, a
    two-row table, an SVG with two rectangles and ten 60-px bands in the ten component colours."""
    bands = "".join(f"<div style='height:60px;background:{c}'></div>" for c in BAND_COLOURS)
    return (f"<html><body style='background:{bg};margin:0'><h1>{SALAD_WORDS}</h1><p>{SALAD_WORDS.lower()}</p>"
            f"<form><input placeholder='Search'><button>Go</button></form><table><tr><th>A</th><th>B</th></tr>"
            f"<tr><td>1</td><td>2</td></tr></table><svg width=200 height=100><rect width=40 height=80 fill=navy />"
            f"<rect x=60 width=40 height=40 fill=teal /></svg><nav><a href=#a>Home</a><a href=#b>About</a></nav>"
            f"{bands}<footer><a href=#c>Contact</a></footer></body></html>")


def twins(prompt: str, other_prompt: str) -> dict[str, str]:
    """The degenerate twins of the task's real page."""
    kind, bg, comp, _ = parse(prompt)
    real = real_page(prompt)
    title = COPY[kind][0]
    near_empty = f"<html><body style='background:{bg}'><h1>{title}</h1><button>Go</button></body></html>"
    words = " ".join(w for w in re.findall(r"[A-Za-z-]{4,}", prompt) if w.lower() not in ("write", "with", "background", "components"))
    stuffed = near_empty.replace("<button>", f"<p>{(words + ' ') * 6}</p><button>")
    body = real[real.index("<body>") + 6:real.index("</body>")]
    hidden = near_empty.replace("</body>", "".join(f"<div style='{s}'>{body}</div>" for s in (
        "display:none", "position:absolute;left:-9999px", "opacity:0", "height:0;overflow:hidden")) + "</body>")
    okind, _, _, oel = parse(other_prompt)
    other = real_page(task(okind, *oel, bg=bg, comp=comp))  # another task's page, in this task's colours
    bands = near_empty.replace("<button>", "".join(f"<div style='height:70px;background:{comp};margin:8px 0'></div>"
                                                    for _ in range(6)) + "<button>")
    return {"near_empty": near_empty, "keyword_stuffed": stuffed, "hidden_text": hidden, "salad": salad(bg),
            "other_task": other, "colour_bands": bands}
