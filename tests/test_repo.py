"""Invariants of the repository: layout, packaging pins, notebooks free of widget state, README in sync."""
import configparser
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


def _settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    return cfg["DEFAULT"]


def test_top_level_layout():
    for name in ("nbs", "opt_lab", "tests", "settings.ini", "setup.py", "_quarto.yml", "README.md", "LICENSE",
                 "MANIFEST.in", ".gitignore", "CITATION.cff", ".ci/run", ".github/workflows/test.yaml", ".github/workflows/deploy.yaml"):
        assert (ROOT / name).exists(), f"missing {name}"
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_nbdev2_pins_and_flags():
    s = _settings()
    dev = s["dev_requirements"].split()
    for pin in ("nbdev==2.4.14", "execnb<0.2", "fastcore>=1.12.3,<1.13", "ghapi<2"): assert pin in dev
    assert s["tst_flags"].split() == ["notest", "slow"]
    assert s["min_python"] == "3.11"
    assert s["jupyter_hooks"] == "True" and s["custom_sidebar"] == "True"
    assert "opt_lab=opt_lab.cli:main" in s["console_scripts"].split()
    runtime = {re.split(r"[<>=!~]", r)[0] for r in s["requirements"].split()}
    assert runtime == {"numpy", "jax", "jaxlib", "matplotlib", "pandas", "ipywidgets"}, runtime


def test_setup_py_does_not_need_pkg_resources():
    assert "pkg_resources" not in re.sub(r"#.*", "", (ROOT / "setup.py").read_text())


def test_quarto_yml_is_a_relative_symlink():
    link = NBS / "_quarto.yml"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve() == (ROOT / "_quarto.yml").resolve()
    assert "relative to nbs/" in (ROOT / "_quarto.yml").read_text().split("project:")[0]


@pytest.mark.parametrize("nb", sorted(NBS.glob("**/*.ipynb")), ids=lambda p: p.name)
def test_no_saved_widget_state(nb):
    data = json.loads(nb.read_text())
    assert "widgets" not in data.get("metadata", {}), f"{nb.name} carries saved widget state (metadata.widgets)"
    for cell in data["cells"]:
        for out in cell.get("outputs", []):
            assert "application/vnd.jupyter.widget-state+json" not in out.get("data", {})


def test_sidebar_lists_every_notebook():
    side = (NBS / "sidebar.yml").read_text()
    listed = set(re.findall(r"[\w./-]+\.ipynb", side))
    actual = {str(p.relative_to(NBS)) for p in NBS.glob("**/*.ipynb") if not p.name.startswith("_")}
    assert listed == actual


def test_readme_agrees_with_index():
    "README.md and the figures it links are what `opt_lab readme` writes from nbs/index.ipynb."
    from opt_lab.cli import notebook_markdown, write_readme
    figures = {}
    assert (ROOT / "README.md").read_text() == notebook_markdown(NBS / "index.ipynb", figures), "run `opt_lab readme`"
    assert figures, "the README shows no figure"
    write_readme(check=True)


def _readme_commands():
    return re.findall(r"^python3 -m venv .*$", (ROOT / "README.md").read_text(), flags=re.M)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    docs_cmd, test_cmd = _readme_commands()
    assert docs_cmd.endswith("opt_lab docs") and test_cmd.endswith("opt_lab test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci, ".ci/run must run the README's test command verbatim"
    assert "set -euo pipefail" in ci and re.search(r"apt-get install -y .*chromium", ci)
