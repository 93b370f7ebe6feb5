"""ArtifactsBench's own judge, for numbers that can be put beside published ArtifactsBench results.

What the benchmark's evaluation does (read in its repository, Tencent-Hunyuan/ArtifactsBenchmark, as mirrored at
commit 0b57972a7897780efec7dd94141822192ce383e0): `src/infer_qvl.py` sends one chat request, a fixed system
message (`system_content`) and one user message whose text is the template of `src/prompts/prompt_mllm_check.py`
(`prompt_mllm_content`, a `string.Template` with `$Checklist`, `$Question`, `$Answer`: the task's checklist, the
question, and the model's whole answer after any `</think>`), followed by the screenshots as base64 PNG image parts;
temperature 0.7, no reply limit. `src/extract_ans.py` reads the score: the last `"Overall Score": "NN"` (or the
Chinese key); a reply without one is asked again, up to 4 requests in all.

We do not copy the benchmark's text: `load_judge(repo)` reads both strings from a checkout of the benchmark (its
`ast`, nothing imported or run), so the prompt is the benchmark's own byte for byte, and a change upstream shows.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

TEMPLATE_FILE = "src/prompts/prompt_mllm_check.py"  # defines prompt_mllm_content
SYSTEM_FILE = "src/infer_qvl.py"  # defines system_content
TEMPERATURE = 0.7  # the benchmark's sampling temperature for the judge
ATTEMPTS = 4  # requests per answer until a score can be read
MAX_PROMPT_CHARS = 27000 * 4  # the benchmark truncates the prompt to 27k judge tokens; ~4 characters a token
_OVERALL = [re.compile(r'"Overall Score":\s*(")?(\d+(\.\d+)?|\d+-\d+)(")?'),
            re.compile(r'"总体打分":\s*(")?(\d+(\.\d+)?|\d+-\d+)(")?')]


class JudgeFileError(ValueError):
    """The configured checkout does not hold the benchmark's judge; the message names the key and the file."""


@dataclass(frozen=True)
class Judge:
    system: str
    template: Template

    def prompt(self, checklist: str, question: str, answer: str) -> str:
        text = self.template.substitute(Checklist=checklist, Question=question, Answer=answer)
        return text[:MAX_PROMPT_CHARS]


def _string_constant(path: Path, name: str) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        raise JudgeFileError(f"critic.artifactsbench_repo: cannot read {path} ({e})") from e
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                break
            if isinstance(value, str):
                return value
    raise JudgeFileError(f"critic.artifactsbench_repo: {path} defines no string constant {name!r}")


def load_judge(repo: str | Path) -> Judge:
    """The system message and prompt template of the ArtifactsBench checkout at `repo`."""
    root = Path(repo)
    template = _string_constant(root / TEMPLATE_FILE, "prompt_mllm_content")
    missing = [p for p in ("$Checklist", "$Question", "$Answer") if p not in template]
    if missing:
        raise JudgeFileError(f"critic.artifactsbench_repo: the template in {root / TEMPLATE_FILE} lacks {missing}")
    return Judge(_string_constant(root / SYSTEM_FILE, "system_content"), Template(template))


def answer_text(answer: str) -> str:
    """What the judge reads as [answer]: the reply after its reasoning, as the benchmark's get_answer keeps it."""
    return answer.split("</think>")[-1].strip()


def checklist_text(checklist: list[str]) -> str:
    """The benchmark's checklist is one text (the loader keeps it as one item); a list of items is joined by lines."""
    return "\n".join(checklist)


def overall_score(text: str) -> float | None:
    """The last "Overall Score" in a reply (the English key first, then the Chinese one), 0-100, else None. The
    benchmark's patterns are used as they are: in "70-80" their first alternative wins, so a range reads as 70."""
    for pattern in _OVERALL:
        found = pattern.findall(text)
        if found:
            value = float(found[-1][1].partition("-")[0])
            return value if 0 <= value <= 100 else None
    return None
