"""Write ``docs/results.md`` from ``docs/results/manifest.json`` and the summaries it names.

Each manifest section gives a title, the commands that produced it, the settings, seeds
and wall-clock, and either ``summary`` (a ``<stem>_summary.json`` of
``experiments/aggregate.py``, rendered as its table), ``dyna_summary`` (the summary of
``experiments/bench_dyna.py``) or ``recorded`` (a table a benchmark script printed)::

    .venv/bin/python experiments/write_results.py            # rewrite docs/results.md
    .venv/bin/python experiments/write_results.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aggregate import table
from bench_dyna import report as dyna_report

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.errors import UserError

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
OUTPUT = REPO / "docs" / "results.md"


def per_step_line(summaries: dict[str, dict[str, Any]]) -> str:
    """Share of tasks within the limit after each inner step, per variant."""
    parts = [
        f"{name} {' / '.join(f'{100 * v:.0f}' for v in s['within_limit'])}%"
        for name, s in summaries.items()
    ]
    return "Within the limit after 0 / 1 / ... / K inner steps: " + "; ".join(parts) + "."


def load(name: str) -> dict[str, Any]:
    path = RESULTS / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} (named in docs/results/manifest.json) does not exist")
    return json.loads(path.read_text())


def section(entry: dict[str, Any]) -> str:
    out = [f"## {entry['title']}", ""]
    if "summary" in entry:
        summaries = load(entry["summary"])
        out += [table(summaries, entry.get("stem", "evaluation")), "", per_step_line(summaries)]
    elif "dyna_summary" in entry:
        out.append(dyna_report(load(entry["dyna_summary"])))
    else:
        out.append(entry["recorded"])
    out += ["", f"**Settings.** {entry['settings']}", ""]
    out += [f"**Seeds:** {entry['seeds']}. **Wall-clock:** {entry['wall_clock']}", ""]
    out += ["```bash", *entry["commands"], "```"]
    for figure in entry.get("figures", []):
        if not (RESULTS / figure).is_file():
            raise FileNotFoundError(f"docs/results/{figure} (named in the manifest) does not exist")
        out += ["", f"![{entry['title']}](results/{figure})"]
    return "\n".join(out)


def render(manifest: dict[str, Any]) -> str:
    parts = [f"# {manifest['title']}", "", manifest["intro"], ""]
    parts += ["\n\n".join(section(entry) for entry in manifest["sections"]), ""]
    return "\n".join(parts)


def main() -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if results.md is stale")
    args = parser.parse_args()
    try:
        text = render(json.loads((RESULTS / "manifest.json").read_text()))
    except FileNotFoundError as error:
        raise UserError(str(error)) from error
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        if current != text:
            print("docs/results.md is out of date: run experiments/write_results.py")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    run_cli(main)
