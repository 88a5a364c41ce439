"""The configuration reference is generated from settings.py and must not drift; the SDK's public
surface is exactly what ``tessera.verify.__all__`` declares (as httpx checks its exported members)."""

from __future__ import annotations

import pathlib

import tessera.verify
from tessera.settings import Settings, reference_markdown

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert on_disk == reference_markdown(), "run: tessera config --reference > docs/configuration.md"


def test_every_setting_is_documented_with_its_environment_name() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name, field in Settings.model_fields.items():
        assert f"`TESSERA_{name.upper()}`" in text
        assert field.description, f"setting {name} has no description"


def test_verify_exports_exactly_its_public_names() -> None:
    exported = set(tessera.verify.__all__)
    public = {name for name in dir(tessera.verify) if not name.startswith("_")}
    # mcp and tool_calls (the mcp extra) are never imported by the package: present only when a test did.
    modules = {"asgi", "bundle", "dpop", "errors", "jws", "report", "status_list", "trust", "verifier"}
    modules |= {"mcp", "tool_calls"}
    assert exported == public - modules
    for name in exported:
        assert getattr(tessera.verify, name).__module__.startswith("tessera.verify")
