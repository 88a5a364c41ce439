"""Helpers shared by the ``tessera`` command modules."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from tessera.runtime import Runtime

__all__ = ["Group", "echo_json", "fail", "json_option", "runtime"]


def runtime(migrate: bool = True) -> Runtime:
    from tessera.runtime import open_runtime
    from tessera.settings import load_settings

    return open_runtime(load_settings(), migrate=migrate)


def fail(msg: str, code: int = 1) -> NoReturn:
    click.echo(f"tessera: {msg}", err=True)
    sys.exit(code)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def json_option(text: str, option: str, *, want_object: bool = False) -> Any:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not valid JSON ({e})", param_hint=option) from None
    if want_object and not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return value


class Group(click.Group):
    """Turns configuration and storage errors into one readable line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own exits and usage errors
        except ImportError as e:
            fail(f"{e.name or e}: the server is not installed here; pip install 'tessera[server]'")
        except Exception as e:
            try:
                from tessera.oauth.errors import OAuthError
                from tessera.oauth.keys import KekError, TooManyKeys
                from tessera.settings import SettingsError
            except ImportError:
                raise e from None  # the relying-party install: nothing of the server to translate
            if isinstance(e, SettingsError | KekError | TooManyKeys):
                fail(str(e))
            if isinstance(e, OAuthError):
                fail(f"{e.error}: {e.description}")
            from tessera.approvals.errors import ApprovalError

            if isinstance(e, ApprovalError):
                fail(f"{e.code}: {e.description}")
            raise
