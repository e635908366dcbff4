"""The documentation stays true: README.md, CONTRIBUTING.md and docs/ against the code they describe.

- Every shell command that calls the project (`python -m fabric_mvsplat...`, `python -m benchmarks...`, the console
  scripts, `torchrun ... -m fabric_mvsplat...`), in fenced shell blocks or inline code: a training or test command
  composes with Hydra and passes the typed config's checks (config only: no data, weights or checkpoint needed);
  any other module answers `--help`, and every option the docs give it appears in that help.
- Every relative link and image resolves, anchors included.
- docs/configuration.md lists every key of the composed config tree (the default composition, each group option
  and each experiment) with its default, and every key it names exists with the stated default.
- `python -m fabric_mvsplat.train --help` shows the README's demo and everyday commands and points to docs/.

The checks read the pages and the config as they are; nothing here is a hand-kept list of commands or keys.
"""

import dataclasses
import functools
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fabric_mvsplat.config import load_config
from fabric_mvsplat.train import CONFIG_DIR
from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONFIGURATION_PAGE = REPO / "docs" / "configuration.md"
TRAIN_MODULE = "fabric_mvsplat.train"


def documentation_pages() -> list[Path]:
    """The user docs and the developer guide: whose commands must work."""
    return [README, REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]


def linked_pages() -> list[Path]:
    """Every page whose links must resolve: the docs, plus the benchmark notes they send readers to."""
    return [*documentation_pages(), REPO / "benchmarks" / "README.md", REPO / "benchmarks" / "results" / "HISTORY.md"]


# ----------------------------------------------------------------------------------------- reading markdown
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", ""}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without its fenced blocks (links and inline code live here)."""
    return FENCE.sub("", text)


def shell_lines(block: str) -> list[str]:
    """Logical lines of a shell block: backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def console_scripts() -> dict[str, str]:
    """Console script name -> module, from pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    pairs = re.findall(r'^([\w-]+)\s*=\s*"([\w.]+):\w+"', section.group(1) if section else "", re.M)
    return {name: target for name, target in pairs}


PROJECT_PACKAGES = ("fabric_mvsplat", "benchmarks")


def project_command(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(module, arguments) when the tokens run one of the project's modules, else None."""
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):  # leading VAR=value
        tokens = tokens[1:]
    if not tokens:
        return None
    scripts = console_scripts()
    if tokens[0] in scripts:
        return scripts[tokens[0]], tokens[1:]
    if tokens[0] in ("python", "python3", "torchrun") and "-m" in tokens:
        at = tokens.index("-m")
        if at + 1 < len(tokens) and tokens[at + 1].split(".")[0] in PROJECT_PACKAGES:
            return tokens[at + 1], tokens[at + 2:]
    return None


def split_pipeline(tokens: list[str]) -> list[list[str]]:
    parts, current = [], []
    for token in tokens:
        if token in ("&&", "||", ";", "|", "&"):
            parts.append(current)
            current = []
        else:
            current.append(token.rstrip(";&"))
    return [*parts, current]


@dataclasses.dataclass(frozen=True)
class DocCommand:
    page: str
    line: str
    module: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}: {self.line}"


def commands_in(path: Path) -> list[DocCommand]:
    text = path.read_text()
    candidates = [(line, False) for language, body in fenced_blocks(text) if language in SHELL_LANGUAGES
                  for line in shell_lines(body)]
    for span in re.findall(r"`([^`]+)`", prose(text)):
        span = " ".join(span.split())
        if re.match(r"(python3? -m |torchrun |[A-Za-z_]+=\S+ python3? -m )", span) or \
                span.split(" ")[0] in console_scripts():
            candidates.append((span, True))
    found = []
    for line, inline in candidates:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as error:
            raise AssertionError(f"{path.name}: cannot parse the shell line {line!r}: {error}") from None
        for part in split_pipeline(tokens):
            command = project_command(part)
            if command is not None and not (inline and not command[1]):  # prose naming a module is no command
                found.append(DocCommand(path.relative_to(REPO).as_posix(), line.strip(), command[0],
                                        tuple(command[1])))
    return found


def all_commands() -> list[DocCommand]:
    return [command for page in documentation_pages() for command in commands_in(page)]


def is_help(args: typing.Sequence[str]) -> bool:
    return any(a in ("--help", "-h", "--hydra-help") for a in args)


def training_commands() -> list[DocCommand]:
    return [c for c in all_commands() if c.module == TRAIN_MODULE and not is_help(c.args)]


# ------------------------------------------------------------------------------------- composing with Hydra
def flatten(node: typing.Any, prefix: str = "") -> dict[str, typing.Any]:
    """Leaf keys of a plain container (dicts nest, anything else, empty dicts included, is a value)."""
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


@functools.lru_cache(maxsize=None)
def composed(overrides: tuple[str, ...]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("main", overrides=list(overrides))


def composed_keys(overrides: tuple[str, ...]) -> dict[str, typing.Any]:
    return flatten(OmegaConf.to_container(composed(overrides), resolve=False))


def written_config_files(tmp_path: Path) -> Path:
    """The YAML files the docs show (a header comment `# <folder>/<group>/<name>.yaml`), written as shown."""
    for page in documentation_pages():
        for language, body in fenced_blocks(page.read_text()):
            header = [line for line in body.splitlines() if line.startswith("#")][:2]
            match = next((m for line in header if (m := re.match(r"#\s*([\w./-]+\.yaml)\b", line))), None)
            if language in ("yaml", "yml") and match:
                target = tmp_path / match.group(1)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(body)
    return tmp_path


def hydra_overrides(args: typing.Sequence[str], files: Path) -> list[str]:
    """The command's Hydra overrides; --config-dir becomes a search path into the folder the docs wrote."""
    overrides, args = [], list(args)
    while args:
        arg = args.pop(0)
        if arg in ("--config-dir", "-cd") or arg.startswith("--config-dir="):
            folder = arg.split("=", 1)[1] if "=" in arg else args.pop(0)
            written = files / folder
            assert written.is_dir(), (f"--config-dir {folder}: no YAML block in the docs shows a file of that "
                                      f"folder (first line '# {folder}/<group>/<name>.yaml')")
            overrides.append(f"hydra.searchpath=[file://{written}]")
        elif arg in ("--cfg", "-c", "--config-name", "-cn", "--package", "-p"):
            args.pop(0)  # printing flags and their value: nothing to compose
        elif arg in ("--resolve", "--multirun", "-m"):
            continue
        else:
            assert not arg.startswith("-"), f"unknown Hydra flag {arg!r}"
            overrides.append(arg)
    return overrides


@pytest.fixture(scope="module")
def doc_config_files(tmp_path_factory) -> Path:
    return written_config_files(tmp_path_factory.mktemp("doc_configs"))


def test_the_docs_hold_training_and_test_commands():
    commands = training_commands()
    assert len(commands) >= 20, [str(c) for c in commands]
    assert any("mode=test" in c.args for c in commands)
    assert {c.page for c in commands} >= {"README.md", "docs/training.md", "docs/testing.md"}


@pytest.mark.parametrize("command", training_commands(), ids=str)
def test_training_command_composes(command, doc_config_files):
    """Hydra composes it from the package's configs and the typed config accepts every key and value."""
    overrides = hydra_overrides(command.args, doc_config_files)
    dict_config = composed(tuple(overrides))
    load_config(dict_config)


# --------------------------------------------------------------------------------------- --help of modules
def help_targets() -> dict[str, set[str]]:
    """Module -> long and short options the docs pass it (subcommands as 'module sub')."""
    targets: dict[str, set[str]] = {}
    for command in all_commands():
        if command.module == TRAIN_MODULE:
            continue
        positional = [a for a in command.args if not a.startswith("-")]
        key = command.module
        # A first positional word (not a path, not a placeholder) may be a subcommand; the help says which.
        if command.args and positional and command.args[0] == positional[0] and \
                re.fullmatch(r"[a-z][a-z0-9_]*", positional[0]):
            key = f"{command.module} {positional[0]}"
        targets.setdefault(key, set()).update(a.split("=")[0] for a in command.args if re.match(r"--?[A-Za-z]", a))
    return targets


def run_help(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args, "--help"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def option_in_help(option: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


@pytest.mark.parametrize("target", sorted(help_targets()))
def test_module_answers_help_with_the_documented_options(target):
    module, *sub = target.split(" ")
    result = run_help([module])
    assert result.returncode == 0, f"python -m {module} --help failed:\n{result.stderr[-2000:]}"
    help_text = result.stdout
    if sub:
        choices = re.search(r"\{([\w,-]+)\}", help_text)
        if choices and sub[0] in choices.group(1).split(","):
            result = run_help([module, sub[0]])
            assert result.returncode == 0, f"python -m {module} {sub[0]} --help failed:\n{result.stderr[-2000:]}"
            help_text = result.stdout
    stale = sorted(o for o in help_targets()[target] if o not in ("-h", "--help") and not option_in_help(o, help_text))
    assert not stale, f"the docs pass {stale} to `python -m {target}`, whose --help does not list them"


# --------------------------------------------------------------------------------------------- links, images
def github_anchor(heading: str) -> str:
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), re.M)}


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]+src=\"([^\"]+)\"")


def broken_links(page: Path) -> list[str]:
    broken = []
    for match in LINK.finditer(prose(page.read_text())):
        link = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no {target.relative_to(REPO) if target.is_relative_to(REPO) else target})")
        elif anchor and target.suffix == ".md" and anchor not in anchors_of(target):
            broken.append(f"{link} (no heading with anchor #{anchor} in {target.name})")
    return broken


@pytest.mark.parametrize("page", linked_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_and_images_resolve(page):
    assert page.exists()
    assert broken_links(page) == []


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    handbook = {Path(link).name for link in re.findall(r"\]\((docs/[\w-]+\.md)\)", text)}
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages - handbook == set(), "README's handbook table (## The handbook) misses these docs pages"


# ----------------------------------------------------------------------------------------- the key reference
@dataclasses.dataclass(frozen=True)
class KeyRow:
    context: tuple[str, ...]  # the group overrides of the section the row is in
    key: str
    default: str | None
    meaning: str


def key_rows(text: str) -> list[KeyRow]:
    """Rows of every `| key | default | meaning |` table; a heading naming `group=option` sets their context."""
    rows, context, in_table = [], (), False
    for line in prose(text).splitlines():
        if line.startswith("#"):
            context = tuple(s for s in re.findall(r"`([^`]+)`", line) if re.fullmatch(r"[+~]?[\w/]+=\S+", s))
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells[:3] == ["key", "default", "meaning"]:
            in_table = True
        elif not cells:
            in_table = False
        elif in_table and not set(cells[0]) <= set("-: "):
            key = re.fullmatch(r"`([\w.]+(?:\.\*)?)`", cells[0])
            assert key, f"configuration.md: a key table row without a `key` in its first cell: {line}"
            default = re.fullmatch(r"`(.*)`", cells[1]) if len(cells) > 1 else None
            rows.append(KeyRow(context, key.group(1), default.group(1) if default else None,
                               cells[2] if len(cells) > 2 else ""))
    return rows


def parse_default(text: str) -> typing.Any:
    return OmegaConf.to_container(OmegaConf.create(f"value: {text}"), resolve=False)["value"]


def group_options() -> list[tuple[str, ...]]:
    """One composition per option of every config group the package ships, and per experiment."""
    root = Path(CONFIG_DIR)
    options = []
    for yaml_file in sorted(root.rglob("*.yaml")):
        group = yaml_file.parent.relative_to(root).as_posix()
        if group == "." or group.endswith("view_sampler_dataset_specific_config"):
            continue  # main.yaml; the overlays follow dataset and view sampler by themselves
        if group == "experiment":
            options.append((f"+experiment={yaml_file.stem}",))
        elif group == "loss":
            options.append((f"loss=[mse,{yaml_file.stem}]",))
        else:
            options.append((f"{group}={yaml_file.stem}",))
    return options


def config_tree_keys() -> dict[str, tuple[str, ...]]:
    """Every leaf key of the default composition and of each group option -> the overrides that have it."""
    keys = {key: () for key in composed_keys(())}
    for option in group_options():
        for key in composed_keys(option):
            keys.setdefault(key, option)
    return keys


def documented(key: str, rows: list[KeyRow]) -> bool:
    return any(row.key == key or (row.key.endswith(".*") and key.startswith(row.key[:-1])) for row in rows)


def test_configuration_page_lists_every_key_of_the_config_tree():
    rows = key_rows(CONFIGURATION_PAGE.read_text())
    assert len(rows) > 100
    missing = sorted(f"{key} (with {' '.join(option) or 'the defaults'})"
                     for key, option in config_tree_keys().items() if not documented(key, rows))
    assert not missing, f"docs/configuration.md does not list these config keys (key, default, meaning): {missing}"


def test_every_key_on_the_configuration_page_exists_with_its_stated_default():
    wrong = []
    for row in key_rows(CONFIGURATION_PAGE.read_text()):
        keys = composed_keys(row.context)
        where = " ".join(row.context) or "the defaults"
        if not row.meaning:
            wrong.append(f"{row.key}: no meaning given")
        if row.key.endswith(".*"):
            if not any(k.startswith(row.key[:-1]) for k in keys):
                wrong.append(f"{row.key}: no such keys with {where}")
            continue
        if row.key not in keys:
            wrong.append(f"{row.key}: no such key with {where}")
        elif row.default is None:
            wrong.append(f"{row.key}: no default given (the config has {keys[row.key]!r})")
        elif parse_default(row.default) != keys[row.key]:
            wrong.append(f"{row.key}: the page says {row.default}, the config has {keys[row.key]!r} with {where}")
    assert not wrong, "docs/configuration.md is stale:\n" + "\n".join(wrong)


def typed_leaves(node: typing.Any, prefix: str = "") -> dict[str, typing.Any]:
    """Leaf fields of the typed config; an optional block that is off (None, e.g. an unused loss) is no leaf."""
    out = {}
    hints = typing.get_type_hints(type(node))
    for field in dataclasses.fields(node):
        value, path = getattr(node, field.name), f"{prefix}{field.name}"
        members = typing.get_args(hints[field.name]) or (hints[field.name],)
        if dataclasses.is_dataclass(value):
            out.update(typed_leaves(value, path + "."))
        elif value is None and any(dataclasses.is_dataclass(m) for m in members):
            continue
        elif isinstance(value, dict) and field.name == "wandb":
            continue  # free-form
        else:
            out[path] = value
    return out


@pytest.mark.parametrize("overrides", [
    ("+experiment=re10k",),
    ("+experiment=re10k", "dataset/view_sampler=evaluation"),
    ("+experiment=re10k", "dataset/view_sampler=arbitrary"),
    ("+experiment=demo", "loss=[mse,lpips,depth,ssim]", "train.depth_mode=log"),
], ids=" ".join)
def test_every_typed_config_field_is_in_the_yaml_tree_with_the_same_default(overrides):
    """A key added to the typed config only would be invisible to --cfg job, the docs and the original's tools."""
    keys = composed_keys(overrides)
    typed = typed_leaves(load_config(composed(overrides)))
    assert sorted(set(typed) - set(keys)) == []
    resolved = flatten(OmegaConf.to_container(composed(overrides), resolve=True))
    differ = {k: (resolved[k], v) for k, v in typed.items() if k in resolved and resolved[k] != v
              and not k.startswith(("output_dir", "wandb"))}
    assert differ == {}


# ------------------------------------------------------------------------------------------------- --help
def test_help_shows_the_readme_commands_and_points_to_the_docs():
    result = run_help([TRAIN_MODULE])
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.replace("\\\n", " ").split())
    readme = README.read_text()
    everyday = readme[readme.index("## Demo"):readme.index("## Tests")]
    shown = [" ".join(line.split()) for lang, body in fenced_blocks(everyday) if lang in SHELL_LANGUAGES
             for line in shell_lines(body) if line.strip()]
    assert len(shown) >= 8
    missing = [line for line in shown if line not in help_text]
    assert not missing, (f"--help does not show these README commands (add them to hydra.help.template in "
                         f"fabric_mvsplat/configs/main.yaml): {missing}")
    assert "docs/" in help_text and "README.md" in help_text


# ------------------------------------------------------------------------------------------------ lab notes
LAB_NOTES = [
    (re.compile(r"\bissues? #?\d+\b|\bPR #?\d+\b", re.I), "an issue or pull-request number"),
    # A commit hash in prose: git's 7-12 character short form or all 40, with a digit and a letter, not part of a
    # file name (vgg16-397923af.pth). Program output in code blocks holds 16-character scene keys, not hashes.
    (re.compile(r"(?<![\w.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])(?:[0-9a-f]{7,12}|[0-9a-f]{40})(?![\w.-])"),
     "a commit hash"),
    (re.compile(r"\btarget[^.|\n]{0,40}:\s*met\b|\(target [\d.]+\)", re.I), "a project target"),
    (re.compile(r"\bno GPU (has been|was) (lent|available)\b", re.I), "a note about the project's own machines"),
]


@pytest.mark.parametrize("page", [README, *sorted((REPO / "docs").glob("*.md"))],
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_user_docs_hold_no_lab_notes(page):
    """History belongs in benchmarks/results/; a user page says what is, measured how."""
    text = page.read_text()
    found = [f"{what}: {m.group(0)!r}" for pattern, what in LAB_NOTES
             for m in pattern.finditer(prose(text) if what == "a commit hash" else text)]
    assert not found, f"{page.name} holds lab notes (move them to benchmarks/results/): {found}"


def test_errors_page_names_every_error_type():
    """Each error the project raises for a user to act on has its row (when, exit code, fix) on docs/errors.md."""
    import inspect

    from fabric_mvsplat import errors

    page = (REPO / "docs" / "errors.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", page, re.M))
    raised = {name for name, cls in inspect.getmembers(errors, inspect.isclass)
              if issubclass(cls, Exception) and cls.__module__ == errors.__name__ and name != "UserError"}
    assert raised - rows == set(), "docs/errors.md has no row for these errors"
    assert "UserError" in page


def test_ci_runs_the_readme_install_and_test_commands():
    """.ci/run installs and tests exactly as README.md tells a newcomer to."""
    readme = README.read_text()
    ci_lines = {" ".join(line.split()) for line in (REPO / ".ci" / "run").read_text().splitlines()}

    def commands(section: str) -> list[str]:
        start = readme.index(section)
        block = fenced_blocks(readme[start:])[0][1]
        return [" ".join(line.split()) for line in shell_lines(block) if line.strip()]

    installs = [c for c in commands("## Install") if c.startswith("pip install")]
    tests = commands("## Tests")
    assert len(installs) == 2 and len(tests) == 1
    assert [c for c in installs + tests if c not in ci_lines] == []
