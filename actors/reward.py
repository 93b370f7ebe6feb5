"""The reward, all of it: one config (the `reward` group) and the pure functions that turn a trajectory's final
page into a number. What a run trains on is exactly `RewardConfig.formula()`, which the trainer prints and logs.

    reward = score / score_scale + format_weight x format     if the final page renders and is scored
           = invalid                                         otherwise (ReLook's strict zero)

On tasks that carry executable specs (Web-Bench), the score itself is a blend of what the critic sees and what
the task's own end-to-end tests find (clicks, typing, computed results no screenshot shows):
    score = (1 - tests_weight) x critic score + tests_weight x 100 x specs passed / specs run

An unscorable final page (the critic could not answer) also gets `invalid`, and is left out of its group's GRPO
baseline by the learner, so a critic outage never reads as a bad page.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from common.checks import check

from .revision import apply_edits, extract_html, parse_edits


@dataclass
class RewardConfig:
    score_scale: float = 100.0  # the critic's score is divided by this (critics answer on 0..100)
    format_weight: float = 0.1  # weight of the format score (1: one ```html block with a whole document, or every edit applied)
    invalid: float = 0.0  # reward of a trajectory whose final page does not render or cannot be scored (ReLook: 0)
    tests_weight: float = 0.5  # on tasks with specs (Web-Bench): the share of the score given by the pass fraction of the task's own specs
    spec_lanes: int = 1  # a spec check runs this many of its tests at once (fullyParallel projects; more pays on more cores)
    spec_wait_ms: int = 500  # a spec's assertion waits at most this long in training (the config's own if shorter; 0 = the config's)

    def validate(self) -> "RewardConfig":
        return check("reward", self, [("score_scale", self.score_scale > 0, "> 0"),
                                      ("format_weight", self.format_weight >= 0, ">= 0"),
                                      ("tests_weight", 0 <= self.tests_weight <= 1, "in [0, 1]"),
                                      ("spec_lanes", self.spec_lanes >= 1, "an integer >= 1"),
                                      ("spec_wait_ms", self.spec_wait_ms >= 0, "milliseconds >= 0 (0 = the config's)")])

    def formula(self) -> str:
        return (f"reward = score/{self.score_scale:g} + {self.format_weight:g} x format if the final page renders "
                f"and is scored, else {self.invalid:g}; with specs (Web-Bench): score = {1 - self.tests_weight:g} x "
                f"critic + {self.tests_weight:g} x 100 x specs passed")


def judged_score(critic: float | None, tests: float | None, cfg: RewardConfig) -> float | None:
    """The page's score: the critic's, blended with the specs' pass fraction (0..1) when the task has specs.
    Unscorable by the critic stays unscorable."""
    if critic is None or tests is None:
        return critic
    return (1 - cfg.tests_weight) * critic + cfg.tests_weight * 100 * tests


def format_score(text: str) -> float:
    """A whole-page reply: 1 for exactly one well-formed ```html block holding a complete document; 0.5 for one of
    the two; else 0."""
    one_block = len(re.findall(r"```[ \t]*html", text, re.I)) == 1 and text.count("```") == 2
    html = extract_html(text) or ""
    complete = bool(re.search(r"<html[\s>]", html, re.I) and re.search(r"</html\s*>", html, re.I))
    return 0.5 * one_block + 0.5 * complete


def edits_format_score(text: str, html: str | None) -> float:
    """An edit reply: the share of its SEARCH/REPLACE blocks that apply to the page html."""
    edits = parse_edits(text)
    return apply_edits(html, edits)[1] / len(edits) if edits and html is not None else 0.0


def reward(valid: bool, score: float | None, fmt: float, cfg: RewardConfig) -> float:
    """The final accepted page's score, scaled, plus the format term; `cfg.invalid` when it did not render or
    could not be scored."""
    if not valid or score is None:
        return cfg.invalid
    return score / cfg.score_scale + cfg.format_weight * fmt
