"""Install CALVIN's simulator (`calvin_env`, not on PyPI) from a user's git checkout into the current
Python environment, without moving any package that is already installed.

calvin_env must stay a *source* checkout: it reads its conf/ and data/ folders next to its code and
records its own git commit when an environment is built, so it is installed editable (`pip install -e`).
Its requirements are loose (`numpy`, `opencv-python`, ...) and pip would happily upgrade torch's
numpy; a constraints file pinning every installed distribution to its current version makes pip
add only what is missing (pybullet, gym, numpy-quaternion, gitpython, ...) or fail with a clear
conflict instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vla.sim.base import SimError

# Our own distribution names for calvin_env: never pin it, a re-install of another checkout must win.
CALVIN_DISTRIBUTION = "calvin-env"
CALVIN_URL = "https://github.com/mees/calvin_env"
SETUP_HINT = "vla sim calvin-setup PATH"


class CalvinSetupError(SimError):
    """The CALVIN simulator cannot be installed as asked (bad checkout, no pip, resolver conflict...)."""


@dataclass(frozen=True)
class Checkout:
    """A calvin_env source checkout ready to install."""

    path: Path  # the folder with setup.py, calvin_env/, conf/ and data/
    commit: str  # git HEAD (40 hex digits)
    dirty: bool  # tracked files modified: the commit alone does not describe the code
    tacto: bool  # the optional `tacto` submodule is checked out (only the tactile camera needs it)


@dataclass(frozen=True)
class Change:
    """One distribution pip would install: `old` is None when it is new to this environment."""

    name: str
    old: str | None
    new: str


def canonical_name(name: str) -> str:
    """PEP 503 name normalisation (`GitPython` == `gitpython`, `calvin_env` == `calvin-env`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def find_checkout(path: str | Path) -> Checkout:
    """The calvin_env checkout at `path`, or inside it when `path` is the calvin repository."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise CalvinSetupError(f"{root}: no such folder; pass a git clone of {CALVIN_URL} (or of mees/calvin)")
    inner = root / "calvin_env"
    if not (root / "setup.py").is_file() and inner.is_dir() and not any(inner.iterdir()):
        raise CalvinSetupError(
            f"{inner}: the calvin_env submodule is empty; run `git -C {root} submodule update --init calvin_env`"
        )
    if (inner / "setup.py").is_file() and (inner / "calvin_env").is_dir():
        root = inner  # the calvin repository with its calvin_env submodule
    missing = [name for name in ("setup.py", "calvin_env/__init__.py", "conf", "data") if not (root / name).exists()]
    if missing:
        raise CalvinSetupError(
            f"{root}: not a calvin_env checkout (missing {', '.join(missing)}); clone {CALVIN_URL} and pass that folder"
        )
    if not (root / ".git").exists():  # a folder for a clone, a file for a submodule
        raise CalvinSetupError(
            f"{root}: not a git checkout (no .git); calvin_env records its git commit when an environment is "
            f"built, so install from `git clone {CALVIN_URL}`, not from a copied or downloaded folder"
        )
    commit, dirty = git_commit(root)
    tacto = (root / "tacto").is_dir() and any((root / "tacto").iterdir())
    return Checkout(path=root, commit=commit, dirty=dirty, tacto=tacto)


def git_commit(path: Path) -> tuple[str, bool]:
    """(HEAD commit, whether tracked files differ from it) of the git work tree at `path`."""
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as e:
        raise CalvinSetupError(f"{path}: the `git` program is needed to read the checkout's commit: {e}") from e
    if head.returncode != 0:
        raise CalvinSetupError(f"{path}: git cannot read the commit: {head.stderr.strip()}")
    return head.stdout.strip(), bool(status.stdout.strip())


def installed_versions() -> dict[str, str]:
    """Canonical name -> version of every distribution the current interpreter sees (first one wins,
    as for imports)."""
    versions: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version:
            versions.setdefault(canonical_name(name), dist.version)
    return versions


def constraints_text(versions: dict[str, str]) -> str:
    """A pip constraints file that holds every installed distribution at its current version."""
    pins = {name: version for name, version in versions.items() if name != CALVIN_DISTRIBUTION}
    # calvin_env asks for opencv-python; next to a lone headless build, keep the two at one version
    # so they do not fight over `cv2` with different binaries.
    if "opencv-python-headless" in pins and "opencv-python" not in pins:
        pins["opencv-python"] = pins["opencv-python-headless"]
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    header = "# vla sim calvin-setup: every installed distribution stays at its current version\n"
    return header + "\n".join(lines) + "\n"


def pip_command(
    checkout: Checkout,
    constraints: Path,
    *,
    python: str = sys.executable,
    report: Path | None = None,
    build_isolation: bool | None = None,
) -> list[str]:
    """The one pip call that installs the checkout (editable) with its missing dependencies; with
    `report`, a resolver-only dry run that writes pip's installation report there.

    Builds run without isolation when this environment has setuptools: pybullet (an sdist on
    Python 3.12) compiles its numpy support only if numpy is importable while it builds; an
    isolated build environment has none, and getCameraImage then returns slow Python lists."""
    if build_isolation is None:
        build_isolation = importlib.util.find_spec("setuptools") is None
    cmd = [python, "-m", "pip", "install", "--constraint", str(constraints)]
    if not build_isolation:
        cmd.append("--no-build-isolation")
    if report is not None:
        cmd += ["--dry-run", "--quiet", "--report", str(report)]
    return [*cmd, "--editable", str(checkout.path)]


def planned_changes(report: dict, versions: dict[str, str]) -> list[Change]:
    """What pip's installation report says it would install, compared with what is installed."""
    changes = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = canonical_name(meta.get("name", "?"))
        changes.append(Change(name=name, old=versions.get(name), new=meta.get("version", "?")))
    return changes


def moved(changes: list[Change]) -> list[Change]:
    """The changes that would up- or downgrade something already installed (calvin_env itself aside)."""
    return [c for c in changes if c.old is not None and c.old != c.new and c.name != CALVIN_DISTRIBUTION]


def require_pip() -> None:
    if importlib.util.find_spec("pip") is None:
        raise CalvinSetupError(
            f"{sys.executable}: this environment has no pip; add it with `{sys.executable} -m ensurepip` and retry"
        )


def resolve(checkout: Checkout, constraints: Path, report: Path) -> list[Change]:
    """Let pip resolve without installing anything; the distributions it would install."""
    require_pip()
    cmd = pip_command(checkout, constraints, report=report)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CalvinSetupError(
            f"pip cannot resolve calvin_env's requirements without changing installed packages "
            f"(constraints: {constraints}):\n{_tail(done.stderr or done.stdout)}"
        )
    return planned_changes(json.loads(report.read_text()), installed_versions())


def install(checkout: Checkout, constraints: Path) -> None:
    """Run the pip install, its output going straight to the terminal (a pybullet build takes minutes)."""
    require_pip()
    done = subprocess.run(pip_command(checkout, constraints), check=False)
    if done.returncode != 0:
        raise CalvinSetupError(
            f"pip install of {checkout.path} failed (exit {done.returncode}); its messages are above "
            f"(constraints: {constraints})"
        )


def verify_import(python: str = sys.executable) -> tuple[str, bool]:
    """Import calvin_env's environment module in a fresh interpreter: the checkout folder it comes
    from, and whether its pybullet was built with numpy support (fast camera images)."""
    code = (
        "import pathlib, calvin_env, calvin_env.envs.play_table_env, pybullet; "
        "print(pathlib.Path(calvin_env.__file__).resolve().parents[1], bool(pybullet.isNumpyEnabled()))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CalvinSetupError(f"calvin_env was installed but does not import:\n{_tail(done.stderr)}")
    source, numpy_enabled = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)  # pybullet prints a banner first
    return source, numpy_enabled == "True"


@dataclass
class SetupResult:
    checkout: Checkout
    constraints: Path
    command: list[str]
    changes: list[Change] = field(default_factory=list)  # what pip installs (or would)
    installed: bool = False
    seconds: float = 0.0  # of the pip install itself


def run_setup(
    path: str | Path, *, dry_run: bool = False, constraints: Path | None = None, say: Callable[[str], None] = print
) -> SetupResult:
    """Validate the checkout, pin the environment, let pip resolve (refusing any up- or downgrade),
    then, unless `dry_run`, install and check that calvin_env imports."""
    checkout = find_checkout(path)
    say(f"calvin_env checkout: {checkout.path}")
    say(f"commit: {checkout.commit}" + ("  (WARNING: tracked files are modified)" if checkout.dirty else ""))
    say(
        "tacto submodule: "
        + (
            "checked out"
            if checkout.tacto
            else "not checked out (fine: only the tactile camera needs it, and it is off)"
        )
    )
    if constraints is None:
        constraints = Path(tempfile.mkdtemp(prefix="vla-calvin-setup-")) / "constraints.txt"
    constraints.parent.mkdir(parents=True, exist_ok=True)
    versions = installed_versions()
    constraints.write_text(constraints_text(versions))
    say(f"constraints: {constraints} ({len(versions)} installed distributions held at their versions)")
    command = pip_command(checkout, constraints)
    say("pip command: " + " ".join(command))
    result = SetupResult(checkout=checkout, constraints=constraints, command=command)

    say("resolving (pip --dry-run) ...")
    result.changes = resolve(checkout, constraints, constraints.with_name("pip-report.json"))
    bad = moved(result.changes)
    if bad:  # only possible when a pin cannot hold (e.g. a distribution pip cannot see as installed)
        listed = ", ".join(f"{c.name} {c.old} -> {c.new}" for c in bad)
        raise CalvinSetupError(f"pip would change installed packages despite the constraints: {listed}")
    for change in result.changes:
        say(f"  {'would install' if dry_run else 'installs'} {change.name} {change.new}")
    say("no installed package changes version")
    if dry_run:
        say("dry run: nothing installed")
        return result

    start = time.perf_counter()
    install(checkout, constraints)
    result.seconds = time.perf_counter() - start
    result.installed = True
    source, numpy_enabled = verify_import()
    say(f"installed in {result.seconds:.0f} s; calvin_env imports from {source} (commit {checkout.commit[:12]})")
    if not numpy_enabled:
        say(
            "WARNING: this pybullet was built without numpy support, so camera images are slow Python lists; "
            "rebuild it: python -m pip cache remove pybullet && python -m pip install --no-build-isolation "
            "--force-reinstall --no-deps pybullet==" + importlib.metadata.version("pybullet")
        )
    say(
        "verify the simulator: python -m pytest tests/sim/calvin/test_simulator.py  "
        "(or: python -c 'from vla.sim.calvin.simulator import CalvinSimulator; CalvinSimulator().close()')"
    )
    return result


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
