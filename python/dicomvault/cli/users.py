"""Account commands: ``dicomvault user add|remove|list|passwd`` and ``dicomvault token
create|revoke|list``, on the users and tokens of the archive root (``<root>/users.json``),
which a running server reads as they change. Each change is in the audit trail."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from dicomvault.cli.common import ConfigOption, RootOption, fail, recorded, settings
from dicomvault.cli.output import print_json, print_table
from dicomvault.config import Settings
from dicomvault.security.accounts import AccountError, Accounts, Role, parse_duration

users = typer.Typer(help="Users of the HTTP server and web UI: add, remove, list, passwd.")
tokens = typer.Typer(help="API tokens (HTTP Bearer): create, revoke, list.")

RoleOption = Annotated[str, typer.Option("--role", help="read, write or admin.")]
StdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _role(name: str) -> Role:
    try:
        return Role.named(name)
    except ValueError as e:
        fail(str(e))


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _change(conf: Settings, change: Callable[[], None], what: str, **detail: str) -> None:
    try:
        change()
    except AccountError as e:
        fail(str(e))
    recorded(conf, "account", what, **detail)


@users.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: RoleOption = "read",
    password_stdin: StdinOption = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Add a user (the password is asked twice, or read from standard input)."""
    conf = settings(config, root)
    level = _role(role)
    password = _password(password_stdin)
    accounts = Accounts(conf.root)
    _change(
        conf,
        lambda: accounts.add_user(name, level, password),
        "user add",
        user=name,
        role=level.label,
    )
    typer.echo(f"user {name} added, role {level.label}")


@users.command("passwd")
def user_passwd(
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: StdinOption = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Change a user's password."""
    conf = settings(config, root)
    password = _password(password_stdin)
    accounts = Accounts(conf.root)
    _change(conf, lambda: accounts.set_password(name, password), "user passwd", user=name)
    typer.echo(f"password of {name} changed")


@users.command("remove")
def user_remove(
    name: Annotated[str, typer.Argument(help="User name.")],
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Remove a user (sessions of theirs end at their next request)."""
    conf = settings(config, root)
    accounts = Accounts(conf.root)
    _change(conf, lambda: accounts.remove_user(name), "user remove", user=name)
    typer.echo(f"user {name} removed")


@users.command("list")
def user_list(
    as_json: JsonOption = False, config: ConfigOption = None, root: RootOption = None
) -> None:
    """List the users and their roles."""
    found = [
        {"name": u.name, "role": u.role, "created": u.created}
        for u in Accounts(settings(config, root).root).users()
    ]
    if as_json:
        print_json(found)
        return
    print_table(["name", "role", "created"], ([u["name"], u["role"], u["created"]] for u in found))


@tokens.command("create")
def token_create(
    role: RoleOption = "read",
    expires: Annotated[
        str, typer.Option("--expires", help="Lifetime: 30d, 12h, 90m, or never.")
    ] = "30d",
    name: Annotated[str | None, typer.Option("--name", help="What it is for.")] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Create an API token and print it: it is shown this once (only its hash is kept)."""
    conf = settings(config, root)
    level = _role(role)
    try:
        lifetime = parse_duration(expires)
    except ValueError as e:
        fail(str(e))
    token = Accounts(conf.root).create_token(level, lifetime, name)
    token_id = token.split("_")[1]
    recorded(conf, "account", "token create", token=token_id, role=level.label, expires=expires)
    typer.echo(token)


@tokens.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (token list).")],
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Revoke a token: it is refused from its next request on."""
    conf = settings(config, root)
    accounts = Accounts(conf.root)
    _change(conf, lambda: accounts.revoke_token(token_id), "token revoke", token=token_id)
    typer.echo(f"token {token_id} revoked")


@tokens.command("list")
def token_list(
    as_json: JsonOption = False, config: ConfigOption = None, root: RootOption = None
) -> None:
    """List the tokens (never their secrets)."""
    found = [
        {"id": t.id, "name": t.name, "role": t.role, "created": t.created, "expires": t.expires}
        for t in Accounts(settings(config, root).root).tokens()
    ]
    if as_json:
        print_json(found)
        return
    columns = ["id", "name", "role", "created", "expires"]
    print_table(columns, ([t[c] or "never" for c in columns] for t in found))
