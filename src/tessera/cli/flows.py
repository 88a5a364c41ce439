"""``tessera flows``: check, test, compare, publish and roll back flows (docs/flows.md).

``validate``, ``test`` and ``schema`` work on files alone (CI needs no server); ``list``, ``diff``,
``publish`` and ``rollback`` open the configured store. With no directory, ``validate`` and ``test``
check the flows that ship with Tessera.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tessera.cli.common import echo_json, fail, runtime

if TYPE_CHECKING:
    from tessera.runtime import Runtime
    from tessera.workflows.model import Flow
    from tessera.workflows.testing import Report

__all__ = ["flows"]

ACTOR = "cli"
_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@contextmanager
def _runtime() -> Iterator[Runtime]:
    rt = runtime()
    try:
        yield rt
    finally:
        rt.close()


def _dirs(directories: Sequence[Path]) -> list[Path]:
    from tessera.flow_runtime import DEFAULT_FLOWS

    return list(directories) or [DEFAULT_FLOWS]


def _load(directory: Path) -> tuple[list[Flow], list[str]]:
    """The flows of a directory, and ``file:line: message`` for each problem (flows and test files)."""
    from tessera.workflows.loader import FlowError, load_dir
    from tessera.workflows.testing import check_tests

    try:
        found = load_dir(directory)
    except FlowError as e:
        out: list[str] = []
        for _, msg in e.problems:
            out.extend(msg.splitlines())
        return [], out
    return found, check_tests(directory, found)


def _tests(directory: Path) -> Report:
    from tessera.workflows.testing import run_tests

    return run_tests(directory)


def _in_force(rt: Runtime) -> tuple[list[Flow], set[str]]:
    from tessera.flow_runtime import list_versions, published_flows

    published = {v["version"] for v in list_versions(rt.store) if v["status"] == "published"}
    return published_flows(rt.store), published


def _document(flow: Flow) -> list[str]:
    import yaml

    return yaml.safe_dump(dict(flow.document), sort_keys=False, allow_unicode=True).splitlines()


def _show_changes(current: Sequence[Flow], candidate: Sequence[Flow]) -> list[dict[str, Any]]:
    """Print what publishing ``candidate`` would change; flows it does not name stay as they are."""
    from tessera.workflows.versions import diff

    changes = [c for c in diff(current, candidate) if c["change"] != "removed"]
    old = {f.id: f for f in current}
    new = {f.id: f for f in candidate}
    for c in changes:
        if c["change"] == "added":
            click.echo(f"added    {c['flow']}\t{c['on']}\t{c['version']}")
            continue
        click.echo(f"changed  {c['flow']}\t{c['on']}\t{c['from']} -> {c['to']}")
        for line in difflib.unified_diff(
            _document(old[c["flow"]]), _document(new[c["flow"]]), "in force", "candidate", lineterm="", n=2
        ):
            click.echo("    " + line)
    unchanged = sorted(set(new) - {c["flow"] for c in changes})
    if unchanged:
        click.echo(f"unchanged {', '.join(unchanged)}")
    if not changes:
        click.echo("nothing to publish: the flows in force are the same")
    return changes


@click.group()
def flows() -> None:
    """Flows: versioned, testable identity policy (validate, test, list, diff, publish, rollback)."""


@flows.command("validate")
@click.argument("directories", nargs=-1, type=_DIR)
def flows_validate(directories: tuple[Path, ...]) -> None:
    """Check flow files (and their test files) without running anything.

    Prints each flow's id, trigger and version; errors as file:line: message. Default: the flows
    that ship with Tessera.
    """
    problems: list[str] = []
    for directory in _dirs(directories):
        found, errors = _load(directory)
        for f in found:
            click.echo(f"{f.id}\t{f.on}\t{f.version}\t{f.source}")
        problems.extend(errors)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        fail(f"{len(problems)} problem(s)")


@flows.command("test")
@click.argument("directories", nargs=-1, type=_DIR)
def flows_test(directories: tuple[Path, ...]) -> None:
    """Run the *.test.yaml files beside the flows; exit 1 on any mismatch.

    Default: the flows that ship with Tessera.
    """
    from tessera.workflows.testing import Report

    report = Report()
    for directory in _dirs(directories):
        report.extend(_tests(directory))
    click.echo(report.render())
    if not report.ok:
        sys.exit(1)


@flows.command("list")
@click.option("--all", "every", is_flag=True, help="Every stored version, not only the flows in force.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of one line per flow.")
def flows_list(every: bool, as_json: bool) -> None:
    """The flows in force (published, and shipped defaults not overridden): id, trigger, version, source."""
    with _runtime() as rt:
        if every:
            from tessera.flow_runtime import list_versions

            rows = list_versions(rt.store)
            if as_json:
                echo_json(rows)
                return
            for v in rows:
                click.echo(f"{v['flow']}\t{v['on']}\t{v['version']}\t{v['status']}\t{v['tag'] or '-'}")
            return
        current, published = _in_force(rt)
    entries = [
        {"flow": f.id, "on": f.on, "version": f.version, "source": "published" if f.version in published else "default"}
        for f in current
    ]
    if as_json:
        echo_json(entries)
        return
    for e in entries:
        click.echo(f"{e['flow']}\t{e['on']}\t{e['version']}\t{e['source']}")


@flows.command("diff")
@click.argument("directory", type=_DIR)
def flows_diff(directory: Path) -> None:
    """What publishing DIRECTORY would change in the flows in force."""
    found, problems = _load(directory)
    if problems:
        for p in problems:
            click.echo(p, err=True)
        fail(f"{len(problems)} problem(s)")
    with _runtime() as rt:
        current, _ = _in_force(rt)
    _show_changes(current, found)


@flows.command("publish")
@click.argument("directory", type=_DIR)
@click.option("--tag", help="A label stored with the versions (a commit SHA, a release).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--approval",
    help="The approved approval request this publication opened earlier (it covers exactly these versions "
    "and is used once).",
)
def flows_publish(directory: Path, tag: str | None, yes: bool, approval: str | None) -> None:
    """Validate and test DIRECTORY, then make its flows the ones in force (audited flow.published).

    Refused when a flow is invalid or a test fails. Flows in force that DIRECTORY does not name stay.
    When TESSERA_FLOW_PUBLISH_APPROVAL is set, or recorded denials on a high-risk trigger would become
    allows, the first run opens an approval request and exits with status 3; once it is approved, run
    again with --approval REQUEST_ID.
    """
    from tessera.flow_runtime import PublicationRefused, publish

    found, problems = _load(directory)
    if problems:
        for p in problems:
            click.echo(p, err=True)
        fail(f"not published: {len(problems)} problem(s)")
    if not found:
        fail(f"not published: no flow in {directory}")
    report = _tests(directory)
    if not report.ok:
        click.echo(report.render())
        fail("not published: the flows' tests fail")
    if not report.results:
        click.echo("warning: no test file in " + str(directory), err=True)
    with _runtime() as rt:
        current, _ = _in_force(rt)
        if not _show_changes(current, found):
            return
        ids = {f.id for f in found}
        report = _replay(rt, [*found, *(f for f in current if f.id not in ids)], None)
        if report.total:
            click.echo(report.render())
        opened = report.high_risk_opened
        needed = rt.settings.flow_publish_approval is not None or bool(opened)
        why = (
            f"{len(opened)} recorded denial(s) on a high-risk trigger would be allowed"
            if opened
            else "publications need an approval (TESSERA_FLOW_PUBLISH_APPROVAL)"
        )
        if needed and not approval:
            _ask_approval(rt, "publish", [(f.id, f.version) for f in found], why)
        if not needed:
            approval = None
        if not yes:
            click.confirm("publish these flows?", abort=True)
        try:
            changes = publish(rt, found, ACTOR, tag=tag, approval=approval)
        except PublicationRefused as e:
            fail(f"not published: {e}")
        if approval:
            click.echo(f"published under approval {approval} ({why})")
        for c in changes:
            click.echo(f"published {c['flow']} {c['version']} (was {c['previous'] or 'not published'})")


def _ask_approval(rt: Runtime, kind: str, pairs: list[tuple[str, str]], why: str) -> None:
    """Open the approval request this change needs, say how to go on, exit 3 (nothing changed)."""
    from tessera.approvals.errors import ApprovalError
    from tessera.flow_runtime import request_publication_approval

    done = {"publish": "published", "rollback": "rolled back"}[kind]
    if rt.settings.flow_publish_approval is None:
        fail(
            f"not {done}: {why}; set TESSERA_FLOW_PUBLISH_APPROVAL (who approves flow changes), "
            f"run again to open the approval request, then {kind} with --approval <its id>"
        )
    try:
        view = request_publication_approval(rt, kind, pairs, ACTOR, why)
    except ApprovalError as e:
        fail(f"not {done}: the approval request cannot be opened: {e.description}")
    click.echo(f"approval requested: {view['request_id']} (check code {view['check_code']}; {why})")
    fail(
        f"not {done} yet: once {view['request_id']} is approved, run again with --approval {view['request_id']}",
        code=3,
    )


def _replay(rt: Runtime, candidate: Sequence[Flow], limit: int | None) -> Any:
    """Replay the recorded decisions against ``candidate`` (a progress bar on long runs)."""
    import sqlalchemy as sa

    from tessera.store.sql.tables import audit_log
    from tessera.workflows.replay import replay

    def count(conn: Any) -> int:
        q = sa.select(sa.func.count()).select_from(audit_log).where(audit_log.c.event == "flow.decision")
        return int(conn.execute(q).scalar_one())

    total = rt.store.read(count)
    if limit is not None:
        total = min(total, limit)

    def records() -> Iterator[dict[str, Any]]:
        import orjson

        after, seen = 0, 0
        while limit is None or seen < limit:
            query = (
                sa.select(audit_log.c.seq, audit_log.c.ts, audit_log.c.data)
                .where(audit_log.c.event == "flow.decision", audit_log.c.seq > after)
                .order_by(audit_log.c.seq)
                .limit(2000)
            )

            def batch(conn: Any, query: Any = query) -> list[Any]:
                return list(conn.execute(query).all())

            rows = rt.store.read(batch)
            if not rows:
                return
            for row in rows:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield {"seq": row.seq, "ts": row.ts, "data": orjson.loads(row.data)}
            after = int(rows[-1].seq)

    if total >= 1000 and sys.stderr.isatty():
        with click.progressbar(length=total, label="replaying", file=sys.stderr) as bar:
            return replay(records(), candidate, progress=bar.update)
    return replay(records(), candidate)


@flows.command("replay")
@click.option("--candidate", "directory", required=True, type=_DIR, help="The flows to try (a directory).")
@click.option("--limit", type=int, help="Replay at most this many decisions (oldest first).")
@click.option("--json", "as_json", is_flag=True, help="The full report as JSON (every changed decision's seq).")
def flows_replay(directory: Path, limit: int | None, as_json: bool) -> None:
    """Which recorded decisions the candidate flows would decide differently (allow→deny, deny→allow,
    approvals added or removed), with the records that cannot be replayed listed apart."""
    found, problems = _load(directory)
    if problems:
        for p in problems:
            click.echo(p, err=True)
        fail(f"the candidate has {len(problems)} problem(s)")
    with _runtime() as rt:
        current, _ = _in_force(rt)
        ids = {f.id for f in found}
        candidate = [*found, *(f for f in current if f.id not in ids)]
        report = _replay(rt, candidate, limit)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(report.render())


@flows.command("rollback")
@click.argument("flow_id")
@click.option("--to", "version", help="The stored version to publish again (default: the one before).")
@click.option("--approval", help="The approved approval request this rollback opened earlier (used once).")
def flows_rollback(flow_id: str, version: str | None, approval: str | None) -> None:
    """Publish an earlier stored version of FLOW_ID again (audited flow.rolled_back). Under
    TESSERA_FLOW_PUBLISH_APPROVAL the first run opens an approval request (exit status 3)."""
    from tessera.flow_runtime import PublicationRefused, rollback, rollback_target

    with _runtime() as rt:
        try:
            target = rollback_target(rt, flow_id, version)
            if rt.settings.flow_publish_approval is None:
                approval = None
            elif not approval:
                _ask_approval(rt, "rollback", [(flow_id, target)], f"roll {flow_id} back to {target[:22]}")
            c = rollback(rt, flow_id, target, ACTOR, approval=approval)
        except LookupError as e:
            fail(str(e.args[0] if e.args else e))
        except PublicationRefused as e:
            fail(f"not rolled back: {e}")
    click.echo(f"rolled back {c['flow']} to {c['version']} (was {c['previous'] or 'not published'})")


@flows.command("schema")
def flows_schema() -> None:
    """Print the flow format's JSON Schema (for editors and CI)."""
    from tessera.workflows.loader import schema

    echo_json(schema())
