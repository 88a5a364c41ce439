"""The deployment files (deploy/systemd/tessera.service, deploy/Containerfile, docs/deployment.md) name
only settings and commands that exist, and what can be checked on this machine is checked for real:
systemd parses the unit (``systemd-analyze verify``) and scores its hardening (``systemd-analyze
security --offline``); the container's health check path answers on a live server. There is no container
engine here, so the Containerfile is not built: its instructions are checked instead.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import httpx
import pytest

from support import TESSERA, LiveServer
from tessera.cli.main import main
from tessera.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "tessera.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
DOC = ROOT / "docs" / "deployment.md"
FILES = (UNIT, CONTAINERFILE, DOC)


def _commands(text: str) -> set[tuple[str, ...]]:
    """``tessera <verb> [<verb>]`` invocations named in a text (options and arguments left out)."""
    found = set()
    for m in re.finditer(r"(?:^|[\s`\"'(]|/bin/)tessera((?:[ \t]+[a-z][a-z-]*)+)", text, re.M):
        found.add(tuple(m.group(1).split()))
    return found


def _resolve(words: tuple[str, ...]) -> list[str]:
    """The longest prefix of ``words`` that is a command path of the CLI (at least one word)."""
    cmd: click.Command = main
    path: list[str] = []
    for word in words:
        if not isinstance(cmd, click.Group) or word not in cmd.commands:
            break
        cmd = cmd.commands[word]
        path.append(word)
    return path


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_setting_named_is_a_real_setting(path: Path) -> None:
    names = set(re.findall(r"\bTESSERA_([A-Z][A-Z0-9_]*)", path.read_text()))
    assert names, f"{path.name} names no settings"
    real = {n.upper() for n in Settings.model_fields}
    assert names <= real, f"{path.name} names settings that do not exist: {sorted(names - real)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_command_named_exists(path: Path) -> None:
    commands = _commands(path.read_text())
    if path is not CONTAINERFILE:  # there: ENTRYPOINT ["tessera"] and CMD ["serve"] (checked below)
        assert any(c[:1] == ("serve",) for c in commands), commands
    for words in commands:
        assert _resolve(words), f"{path.name}: `tessera {' '.join(words)}` is not a command"


def test_systemd_unit_parses_runs_tessera_serve_and_is_hardened(tmp_path: Path) -> None:
    text = UNIT.read_text()
    settings = dict(re.findall(r"^([A-Za-z]+)=(.*)$", text, re.M))
    assert shlex.split(settings["ExecStart"])[1:] == ["serve"]
    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "tessera",
        "CapabilityBoundingSet": "",
    }.items():
        assert settings.get(key) == value, f"{key}={settings.get(key)!r}"
    assert settings["EnvironmentFile"].startswith("/etc/")
    data_dir = re.search(r"^Environment=TESSERA_DATA_DIR=(\S+)$", text, re.M)
    assert data_dir and data_dir.group(1) == "/var/lib/" + settings["StateDirectory"], "the data dir is the state dir"

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (Debian package systemd)")
    # The unit as installed, with ExecStart pointing at the tessera of this environment.
    unit = tmp_path / "tessera.service"
    unit.write_text(text.replace(shlex.split(settings["ExecStart"])[0], TESSERA))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert security.returncode == 0, security.stdout[-2000:]
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure and float(exposure.group(1)) <= 2.0, security.stdout[-500:]


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_builds_from_debian_slim_runs_unprivileged_and_checks_health() -> None:
    steps = _instructions(CONTAINERFILE.read_text())
    bases = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert bases and all(re.fullmatch(r"docker\.io/library/python:3\.1[1-9]-slim-(bookworm|trixie)", b) for b in bases)
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert re.search(r"pip install [^&]*\"\.\[server\]\"", runs), runs
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must not run as root"
    entry = [rest for word, rest in steps if word in ("ENTRYPOINT", "CMD")]
    assert entry == ['["tessera"]', '["serve"]']
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert "/healthz" in health


def test_the_health_check_path_answers_on_a_live_server(server: LiveServer) -> None:
    health = next(rest for word, rest in _instructions(CONTAINERFILE.read_text()) if word == "HEALTHCHECK")
    path = re.search(r"(/[a-z]+)'", health)
    assert path is not None
    r = httpx.get(server.issuer + path.group(1), timeout=10)
    assert r.status_code == 200, r.text
