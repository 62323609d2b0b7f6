"""The README and docs/ stay true to the code: the README's line budget, every relative link and anchor, every
repository path, config option and config key they name, a config menu and a file map that leave nothing out,
and the commands users type shown once each. Reads files only; no training."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from nanugpt.bench.__main__ import speedrun_experiment, split_command
from nanugpt.config import BenchConfig, TrainConfig, register_configs
from nanugpt.utils import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
CONF = Path(CONF_DIR)
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

GROUPS = ("model", "data", "tokenizer", "optim", "sched", "loss", "scaler", "experiment", "debug", "hparams_search")
SECTIONS = ("training", "eval", "logging", "paths")
# Mistakes the docs show on purpose, as examples of what fails (a typo, a key that moved); each must really be wrong.
DELIBERATE_TYPOS = {"training.max_stpes", "model=gpt2_125m", "model.foo", "logging.wandb.tags"}
# `section.key` words that are file names, not config keys (data.md, tokenizer.json)
FILE_SUFFIXES = {"md", "py", "yaml", "png", "json", "jsonl", "txt", "bin", "pt"}


def prose(page: Path) -> str:
    """The page without fenced code blocks (links and headings live outside them)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def code_lines(page: Path) -> list[str]:
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+ (.+)$", prose(page), flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def option_keys(group: str) -> set[str]:
    """Every key any option of the group sets (model.n_kv_head is llama's, data.p grokking's, ...)."""
    keys: set[str] = set()
    for path in (CONF / group).glob("*.yaml"):
        keys |= set(yaml.safe_load(path.read_text()) or {})
    return keys


def schema_has(dotted: str) -> bool:
    node: object = TrainConfig
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return False
        node = fields[part].default_factory() if callable(fields[part].default_factory) else None
    return True


def test_readme_fits_its_line_budget():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into a docs/ page (budget {README_MAX_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
        if re.match(r"[a-z]+:", target):  # http(s), mailto
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading '#{anchor}' in {file.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_repository_paths_exist(page):
    paths = re.findall(r"(?<![\w./~-])((?:nanugpt|launch|tests|docs)/[\w./*-]*)", page.read_text())
    missing = [p for p in {p.rstrip(".,") for p in paths} if not list(REPO.glob(p))]
    assert not missing, f"{page.name} names paths that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_group_options_exist(page):
    text = page.read_text()
    named = []  # (group, option)
    for group, values in re.findall(r"(?<![\w.])(hydra/launcher|" + "|".join(GROUPS) + r")=([\w,|]+)", text):
        named += [(group, v) for v in re.split(r"[,|]", values) if v]
    named += menu_options(page)
    unknown = [
        f"{g}={o}" for g, o in named if not (CONF / g / f"{o}.yaml").exists() and f"{g}={o}" not in DELIBERATE_TYPOS
    ]
    assert not unknown, f"{page.name} names options with no config file under nanugpt/conf/: {sorted(set(unknown))}"


def menu_options(page: Path) -> list[tuple[str, str]]:
    """Options listed in tables: a row `| `model=` | `gpt_tiny`, ... |`, or the first cells under a header
    `| `experiment=` | ... |`."""
    found = []
    header_group = None
    for line in page.read_text().splitlines():
        if not line.startswith("|"):
            header_group = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        first = re.fullmatch(r"`(\w+)=`", cells[0])
        if header_group is None and first and first.group(1) in GROUPS and not line.startswith("|---"):
            if len(cells) > 1 and re.search(r"`\w+`", cells[1]):  # a menu row: options in the second cell
                found += [(first.group(1), o) for o in re.findall(r"`(\w+)`", cells[1])]
            else:  # a header: options in the first cell of each row below
                header_group = first.group(1)
        elif header_group and not line.startswith("|---"):
            found += [(header_group, o) for o in re.findall(r"`(\w+)`", cells[0])]
    return found


def test_readme_menu_lists_every_option():
    listed: dict[str, set[str]] = {}
    for group, option in menu_options(README):
        listed.setdefault(group, set()).add(option)
    missing = {g: sorted(options(g) - listed.get(g, set())) for g in GROUPS}
    assert not any(missing.values()), f"options missing from the README's config menu: {missing}"


def test_readme_lists_every_key_of_the_plain_sections():
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", README.read_text(), flags=re.M)}
    missing = []
    for section in SECTIONS:
        node = {f.name: f for f in dataclasses.fields(TrainConfig)}[section].default_factory()
        names = [f.name for f in dataclasses.fields(node)]
        names += [f"wandb.{f.name}" for f in dataclasses.fields(node.wandb)] if section == "logging" else []
        row = rows.get(section, "")
        missing += [f"{section}.{n}" for n in names if not re.search(rf"\b{n.split('.')[-1]}\b", row)]
    assert "resume" in rows, "the README's plain-sections table has no `resume` row"
    assert not missing, f"keys missing from the README's plain-sections table: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_config_keys_exist(page):
    roots = "|".join((*SECTIONS, *GROUPS, "bench", r"hydra\.launcher"))
    launcher_keys = option_keys("hydra/launcher")
    unknown = []
    # `+key=value` adds a key no config has, on purpose: not checked
    for root, key, after in re.findall(rf"(?<![\w./$+-])({roots})\.(\w+(?:\.\w+)*)(.?)", page.read_text()):
        dotted = f"{root}.{key}"
        if after == "(" or key.split(".")[-1] in FILE_SUFFIXES or dotted in DELIBERATE_TYPOS:
            continue  # a method (model.flops_per_token()), a file name (data.md), a typo shown on purpose
        if root in SECTIONS:
            ok = schema_has(dotted)
        elif root == "bench":
            ok = key.split(".")[0] in {f.name for f in dataclasses.fields(BenchConfig)}
        elif root == "hydra.launcher":
            ok = key.split(".")[0] in launcher_keys
        else:
            ok = key.split(".")[0] in option_keys(root)
        if not ok:
            unknown.append(dotted)
    assert not unknown, f"{page.name} names config keys that no config has: {sorted(set(unknown))}"


def test_deliberate_typos_are_really_wrong():
    assert not schema_has("training.max_stpes")
    assert not schema_has("logging.wandb.tags") and schema_has("tags")  # moved to the top level
    assert "gpt2_125m" not in options("model")
    assert "foo" not in option_keys("model")


def test_file_map_lists_every_module_config_dir_script_test_and_page():
    readme = README.read_text()
    expected = [
        *(p for p in (REPO / "nanugpt").rglob("*.py") if p.read_text().strip()),  # empty __init__.py: no module
        *(REPO / "hydra_plugins").rglob("*_launcher.py"),
        *(p.parent for p in CONF.rglob("*.yaml") if p.parent != CONF),
        *CONF.glob("*.yaml"),
        *(p for p in (REPO / "launch").rglob("*") if p.is_file()),
        *(p for p in (REPO / "tests").glob("*.py") if p.name != "__init__.py"),
        *(REPO / "docs").glob("*.md"),
    ]
    missing = []
    for path in expected:
        name = path.relative_to(REPO).as_posix() + ("/" if path.is_dir() else "")
        if "__pycache__" not in name and not re.search(rf"^{re.escape(name)}\s", readme, flags=re.M):
            missing.append(name)
    assert not missing, f"README.md's file map lacks: {sorted(missing)}"


def test_every_docs_image_is_shown():
    shown = " ".join(p.read_text() for p in PAGES)
    unused = [
        p.name
        for p in (REPO / "docs").glob("*.png")
        if f"]({p.name})" not in shown and f"](docs/{p.name})" not in shown
    ]
    assert not unused, f"images in docs/ that no page shows: {unused}"


# The commands users type, each shown once in the README's code blocks.
COMMANDS = {
    "install": r'pip install -e "\.\[dev\]"',
    "default run": r"python -m nanugpt\.train\s*(#|$)",
    "recipe": r"python -m nanugpt\.train experiment=",
    "local sweep": r"python -m nanugpt\.train -m optim\.lr=",
    "Slurm sweep": r"python -m nanugpt\.train -m hydra/launcher=slurm ",
    "DDP": r"torchrun .*-m nanugpt\.train",
    "sampling": r"python -m nanugpt\.generate ckpt=",
    "benchmarks": r"python -m nanugpt\.bench <",
    "tests": r"pytest -q",
}


@pytest.mark.parametrize("name", COMMANDS)
def test_readme_shows_each_command_once(name):
    hits = [line for line in code_lines(README) if re.match(COMMANDS[name], line)]
    assert len(hits) == 1, f"the {name} command should appear once in README.md's code blocks, found {hits}"


def test_readme_bench_commands_are_the_bench_commands():
    line = next(line for line in code_lines(README) if line.startswith("python -m nanugpt.bench <"))
    in_readme = set(re.search(r"<([\w|]+)>", line).group(1).split("|"))
    with pytest.raises(SystemExit) as usage:
        split_command([])
    in_code = set(re.search(r"\{([\w|]+)\}", str(usage.value)).group(1).split("|"))
    assert in_readme == in_code


def shown_commands(page: Path) -> list[tuple[str, list[str]]]:
    """(entry point, its arguments) for every train / generate / prepare / bench / sbatch command in the page's
    code blocks, continuation lines joined."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    out = []
    entries = ("nanugpt.train", "nanugpt.generate", "nanugpt.prepare", "nanugpt.bench", "train.sbatch")
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        if not re.match(r"(python -m|torchrun|sbatch) ", line):  # console output, sample text
            continue
        words = shlex.split(line, comments=True)
        for entry in entries:
            hits = [i for i, w in enumerate(words) if w.endswith(entry)]
            if hits:
                out.append((entry, words[hits[0] + 1 :]))
    return out


def as_overrides(entry: str, args: list[str]) -> tuple[str, list[str]]:
    """The config a command composes and its overrides: placeholders (`<run dir>`, `...`) and flags dropped, the
    first value of each sweep list, bench's subcommand set aside (its typed bench.* keys compose with the rest)."""
    config = {"nanugpt.generate": "generate", "nanugpt.prepare": "prepare", "nanugpt.bench": "bench"}.get(
        entry, "train"
    )
    overrides = []
    if entry == "nanugpt.bench" and args[:1] == ["speedrun"]:  # the bench composes the experiment it runs
        overrides.append(speedrun_experiment(args))
    for arg in args:
        if "<" in arg or "..." in arg or arg.startswith("-"):
            continue
        if arg.startswith("~"):  # delete a key
            overrides.append(arg)
            continue
        if "=" not in arg:  # the bench's subcommand, [overrides]
            continue
        key, value = arg.split("=", 1)
        if "," in value and value[:1] not in "[{'\"":  # a sweep: a,b,c
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return config, overrides


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shown_commands_compose(page):
    """Every command shown composes its config with its overrides (the run itself is not started)."""
    register_configs()
    failed = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for entry, args in shown_commands(page):
            config, overrides = as_overrides(entry, args)
            try:
                with_hydra = any(o.lstrip("+~").startswith("hydra") for o in overrides)  # launcher keys
                compose(config_name=config, overrides=overrides, return_hydra_config=with_hydra)
            except Exception as err:  # noqa: BLE001 - collect every failing command, then report them all
                failed.append(f"{entry} {' '.join(args)}: {type(err).__name__}: {err}")
    assert not failed, f"{page.name}: commands that do not compose:\n" + "\n".join(failed)
