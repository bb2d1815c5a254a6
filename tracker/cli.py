"""The `tracker` command: parse options, call the library, print the answer.

Commands that change data write to the same SQLite file as the server, with
or without a server running; the server reads the database on every request,
so it sees the change at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from tracker import __version__
from tracker.auth import SCOPES, AuthConfigError, parse_ttl
from tracker.config import ConfigError, Settings, load_settings, redacted_url
from tracker.errors import StorageUnavailable
from tracker.models import (
    DeviceToken,
    InstanceName,
    InvalidField,
    MqttTopic,
    Profile,
    validated,
)
from tracker.store import Database, devices, instances, open_database

log = logging.getLogger("tracker")


class CommandError(Exception):
    """A command cannot do what was asked; the message says why and what to do (exit 2)."""

    exit_status = 2


class CommandFailed(CommandError):
    """A command was right but failed at run time: no server, port taken, disk full (exit 1)."""

    exit_status = 1


def _emit(args: argparse.Namespace, value: dict, text: str) -> None:
    print(json.dumps(value) if getattr(args, "json", False) else text)


def _open_database(settings: Settings) -> Database:
    if settings.storage.engine == "postgresql":
        try:
            return open_database(settings.storage)
        except StorageUnavailable as error:
            raise CommandError(
                f"cannot open the database {redacted_url(settings.storage.url)} ({error}): check"
                " that PostgreSQL runs and the URL is right, or set storage.url"
                " (TRACKER_STORAGE_URL)"
            ) from None
    path = Path(settings.storage.sqlite_path)
    if not path.resolve().parent.is_dir():
        raise CommandError(
            f"cannot open the database {path}: the directory {path.resolve().parent} does not"
            " exist; create it, or set storage.path (TRACKER_STORAGE_PATH)"
        )
    try:
        return open_database(settings.storage)
    except (sqlite3.Error, StorageUnavailable) as error:
        raise CommandError(
            f"cannot open the database {path} ({error}): check that {path.resolve().parent}"
            " is writable and has free space, or set storage.path (TRACKER_STORAGE_PATH)"
        ) from None


def _listen_overrides(args: argparse.Namespace, settings: Settings) -> Settings:
    """`--host` / `--port` over the config's server.host / server.port.

    A public_url that was just this host and port follows them, so share
    links stay right.
    """
    server = settings.server
    changes = {
        key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None
    }
    if not changes:
        return settings
    if server.public_url == f"http://{server.host}:{server.port}":
        host, port = changes.get("host", server.host), changes.get("port", server.port)
        changes["public_url"] = f"http://{host}:{port}"
    return settings.replace(server=changes)


def _serve_until_stopped(run: Callable[[], Awaitable[None]], settings: Settings) -> None:
    """trio.run(run), with a listener that cannot bind told in one line (exit 1)."""
    import trio

    try:
        trio.run(run)
    except BaseExceptionGroup as group:
        bind_errors, _ = group.split(OSError)
        if bind_errors is None:
            raise
        error = _first_leaf(bind_errors)
        server = settings.server
        raise CommandFailed(
            f"cannot listen on {server.host}:{server.port}: {error.strerror or error}"
            " (is another server running there? choose another with --port or server.port)"
        ) from None


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import trio

    from tracker.app import create_app
    from tracker.server import log_serving, serve

    settings = _listen_overrides(args, settings)
    db = _open_database(settings)  # a path that cannot be opened is told in one line
    try:
        if args.workers == 1:
            _refuse_sharing_without_broker(db, settings)
    finally:
        db.close()
    if args.workers > 1:
        _serve_workers(args, settings)
        return
    app = create_app(settings)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, settings))
            log_serving(binds, settings)

    _serve_until_stopped(run, settings)


def _refuse_sharing_without_broker(db: Database, settings: Settings) -> None:
    """Several processes on one database need a broker: without one, a second is refused."""
    from tracker.leases import other_live_processes

    if settings.broker.url:
        return
    others = other_live_processes(db)
    if others:
        host, _, rest = others[0].partition(":")
        raise CommandError(
            f"another tracker process (pid {rest.partition(':')[0]} on {host}) serves this"
            " database, and several processes share live positions only through a broker:"
            " stop it, or set broker.url (TRACKER_BROKER_URL) to a Redis server for all of them"
        )


def _serve_workers(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.workers import supervise, workers_for

    if not settings.broker.url:
        raise CommandError(
            f"--workers {args.workers} runs {args.workers} processes on one database, and they"
            " share live positions only through a broker: set broker.url (TRACKER_BROKER_URL)"
            " to a Redis server, e.g. redis://127.0.0.1:6379/0"
        )
    server, osmand_port = settings.server, settings.ingest.osmand_port
    last = server.port + args.workers - 1
    if server.port == 0:
        raise CommandError(f"--workers {args.workers} needs a port to count from, not 0")
    if last > 65535 or (osmand_port and osmand_port + args.workers - 1 > 65535):
        raise CommandError(f"--workers {args.workers} from port {server.port} runs past 65535")
    workers = workers_for(args.config, server.host, server.port, osmand_port, args.workers)
    log.info("starting %d workers on %s ports %d-%d", args.workers, server.host, server.port, last)
    if supervise(workers):
        raise CommandFailed("a worker stopped with an error (see its log lines above)")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.demo import demo

    settings = _listen_overrides(args, settings)
    _open_database(settings).close()
    _serve_until_stopped(partial(demo, settings, getattr(args, "json", False)), settings)


def cmd_watch(args: argparse.Namespace, settings: Settings) -> None:
    from trio_websocket import HandshakeError

    from tracker.watch import run_watch

    server = settings.server
    url = args.url or f"ws://{server.host}:{server.port}{server.api_prefix}/ws/realtime"
    extra = {"units": args.units, "timezone": args.timezone, "date_format": args.date_format}
    try:
        code, reason = run_watch(url, args.token, args.instance, **extra)
    except (HandshakeError, OSError) as error:
        detail = f"HTTP {error.status_code}" if hasattr(error, "status_code") else "no answer"
        raise CommandFailed(
            f"cannot reach the server at {url} ({detail}): is `tracker serve` running there?"
            " (or give the stream's address with --url)"
        ) from None
    if code not in (1000, 1001):
        because = f": {reason}" if reason else ""
        raise CommandFailed(f"the server closed the stream with code {code}{because}")


def cmd_instance_create(args: argparse.Namespace, settings: Settings) -> None:
    try:
        name = validated(InstanceName, args.name, "name")
    except InvalidField as error:
        raise CommandError(str(error)) from None
    db = _open_database(settings)
    instance = db.write_sync(instances.create, name)
    _emit(args, {"instance_id": instance.id, "name": instance.name}, instance.id)


def _profile_from_name(name: str | None) -> dict[str, str]:
    if not name:
        return {}
    first, _, last = name.strip().partition(" ")
    profile = {"full_name": name.strip(), "first_name": first}
    if last:
        profile["last_name"] = last.strip()
    return profile


def cmd_device_add(args: argparse.Namespace, settings: Settings) -> None:
    db = _open_database(settings)
    if db.read_sync(instances.get, args.instance) is None:
        raise CommandError(f"no instance {args.instance!r}")
    try:
        token = validated(DeviceToken, args.token or str(uuid.uuid4()), "--token")
        profile = validated(Profile, _profile_from_name(args.name), "--name").as_dict()
        topic = args.mqtt_topic and validated(MqttTopic, args.mqtt_topic, "--mqtt-topic")
    except InvalidField as error:
        raise CommandError(str(error)) from None
    if topic:
        from tracker.ingest.mqtt import is_subscribed, subscription

        prefix = settings.ingest.mqtt_topic_prefix
        if not is_subscribed(topic, prefix):
            raise CommandError(
                f"--mqtt-topic: tracker subscribes to {subscription(prefix)}, so messages on"
                f" {topic} would never arrive (ingest.mqtt_topic_prefix sets the first level)"
            )
    try:
        device, key = db.write_sync(
            devices.create, args.instance, token, profile, "full_name", topic
        )
    except devices.DuplicateDevice:
        raise CommandError(f"a device {token!r} already exists") from None
    except devices.DuplicateMqttTopic:
        raise CommandError(f"another device already has the MQTT topic {topic!r}") from None
    answer = {"device_token": device.token, "ingest_key": key, "instance_id": device.instance_id}
    text = f"device_token: {device.token}\ningest_key:   {key}"
    if topic:
        answer["mqtt_topic"] = topic
        text += f"\nmqtt_topic:   {topic}"
    _emit(args, answer, text)


def cmd_device_rotate_key(args: argparse.Namespace, settings: Settings) -> None:
    key = _open_database(settings).write_sync(devices.rotate_ingest_key, args.token)
    if key is None:
        raise CommandError(f"no device {args.token!r}")
    _emit(args, {"device_token": args.token, "ingest_key": key}, f"ingest_key: {key}")


def cmd_device_remove(args: argparse.Namespace, settings: Settings) -> None:
    if not _open_database(settings).write_sync(devices.delete, args.token):
        raise CommandError(f"no device {args.token!r}")
    _emit(args, {"device_token": args.token, "removed": True}, f"removed {args.token}")


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.app import open_verifier

    db = _open_database(settings)
    if args.instance != "*" and db.read_sync(instances.get, args.instance) is None:
        raise CommandError(f"no instance {args.instance!r}")
    if args.device:
        device = db.read_sync(devices.get, args.device)
        if device is None or (args.instance != "*" and device.instance_id != args.instance):
            raise CommandError(f"no device {args.device!r} in that instance")
    try:
        ttl = parse_ttl(args.ttl)
        verifier = open_verifier(settings, db)
        token = verifier.mint(
            subject=args.subject,
            instances="*" if args.instance == "*" else [args.instance],
            scope=args.scope,
            ttl_seconds=ttl,
            device_token=args.device,
        )
    except (ValueError, AuthConfigError) as error:
        raise CommandError(str(error)) from None
    _emit(args, {"token": token, "scope": args.scope, "expires_in_seconds": ttl}, token)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.store.backup import BackupError, backup_database

    if settings.storage.engine == "postgresql":
        raise CommandError(
            "tracker backup copies a SQLite file; back a PostgreSQL database up with pg_dump"
        )
    try:
        done = backup_database(settings.storage.sqlite_path, args.path, overwrite=args.force)
    except BackupError as error:
        raise CommandError(str(error)) from None
    _emit(
        args,
        {"path": str(done.path), "size_bytes": done.size_bytes, "positions": done.positions},
        f"{done.path}: {done.size_bytes} bytes, {done.positions} positions, integrity ok",
    )


def cmd_migrate_data(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.config import engine_of
    from tracker.migrate_data import Copied, MigrationRefused, migrate_data

    for option, url in (("--from", args.source), ("--to", args.target)):
        try:
            engine_of(url)
        except ValueError as error:
            raise CommandError(f"{option}: {error}") from None

    def progress(each: Copied) -> None:
        if not getattr(args, "json", False):
            print(f"{each.table}: {each.rows} rows")

    try:
        copied = migrate_data(args.source, args.target, progress)
    except MigrationRefused as refused:
        raise CommandError(str(refused)) from None
    except StorageUnavailable as error:
        raise CommandFailed(f"cannot migrate: {error}") from None
    total = sum(each.rows for each in copied)
    _emit(
        args,
        {"tables": {each.table: each.rows for each in copied}, "rows": total},
        f"copied {total} rows; every table's count checked",
    )


def _read_password(args: argparse.Namespace) -> str:
    """The new password: one line of stdin (--password-stdin), or asked twice at the terminal."""
    import getpass

    from tracker.accounts import InvalidAccount, check_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CommandError("the two passwords differ; nothing was changed")
    else:
        raise CommandError("no terminal to ask for a password: give it with --password-stdin")
    try:
        return check_password(password)
    except InvalidAccount as error:
        raise CommandError(str(error)) from None


def _user_view(user) -> dict:
    return {
        "username": user.username,
        "instance_id": user.instance_id or "*",
        "role": user.role,
        "created_at": int(user.created_at),
    }


def cmd_user_add(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.accounts import InvalidAccount, check_role, check_username, hash_password
    from tracker.store import users

    try:
        username = check_username(args.username)
        role = check_role(args.role)
    except InvalidAccount as error:
        raise CommandError(str(error)) from None
    db = _open_database(settings)
    instance_id = None if args.instance == "*" else args.instance
    if instance_id is not None and db.read_sync(instances.get, instance_id) is None:
        raise CommandError(f"no instance {args.instance!r}")
    if db.read_sync(users.by_username, username) is not None:
        raise CommandError(f"a user {username!r} already exists")
    password_hash = hash_password(_read_password(args))
    try:
        user = db.write_sync(users.create, username, instance_id, role, password_hash)
    except users.DuplicateUser:
        raise CommandError(f"a user {username!r} already exists") from None
    _emit(args, _user_view(user), f"user {user.username} added ({user.role} of {args.instance})")


def cmd_user_list(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.store import users

    listed = _open_database(settings).read_sync(users.listed, args.instance)
    views = [_user_view(user) for user in listed]
    lines = [f"{v['username']}\t{v['role']}\t{v['instance_id']}" for v in views]
    _emit(args, {"users": views}, "\n".join(lines) if lines else "no users")


def cmd_user_remove(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.store import users

    if not _open_database(settings).write_sync(users.delete, args.username):
        raise CommandError(f"no user {args.username!r}")
    _emit(args, {"removed": args.username}, f"user {args.username} removed")


def cmd_user_passwd(args: argparse.Namespace, settings: Settings) -> None:
    from tracker.accounts import hash_password
    from tracker.store import users

    db = _open_database(settings)
    if db.read_sync(users.by_username, args.username) is None:
        raise CommandError(f"no user {args.username!r}")
    password_hash = hash_password(_read_password(args))
    db.write_sync(users.set_password_hash, args.username, password_hash)
    _emit(args, {"username": args.username}, f"password of {args.username} changed")


def cmd_export(args: argparse.Namespace, settings: Settings) -> None:
    import trio

    from tracker.api.history import export_chunks, parse_window
    from tracker.exports import writer_for

    db = _open_database(settings)
    device = db.read_sync(devices.get, args.device)
    if device is None:
        raise CommandError(f"no device {args.device!r}")
    try:
        low, high = parse_window(args.from_, args.to)
    except InvalidField as error:
        raise CommandError(f"--{error.field}: {error.message}") from None
    writer = writer_for(args.format, args.points)
    out = sys.stdout.buffer

    async def run() -> None:
        chunks = export_chunks(db.read, device, low, high, writer, settings.trips.split_gap_seconds)
        async for chunk in chunks:
            out.write(chunk.encode())

    try:
        trio.run(run)
        out.flush()
    except BrokenPipeError:  # `tracker export ... | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = argparse.ArgumentParser(
        prog="tracker", description="Self-hosted realtime tracking server.", parents=[common]
    )
    parser.add_argument("--config", help="config file (default: tracker.toml, or $TRACKER_CONFIG)")
    parser.add_argument("--version", action="version", version=f"tracker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    for name, handler, help in (
        ("serve", cmd_serve, "run the server"),
        ("demo", cmd_demo, "run the server with a demo fleet driving"),
    ):
        serving = command(commands, name, handler, help)
        serving.add_argument("--host", help="address to listen on (default: server.host)")
        serving.add_argument("--port", type=_port, help="port to listen on (default: server.port)")
    serve_parser = commands.choices["serve"]
    serve_parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="server processes, each on its own port from --port up (more than one needs"
        " broker.url)",
    )

    watch = command(commands, "watch", cmd_watch, "print an instance's live stream")
    watch.add_argument("--instance", required=True, help="instance id")
    watch.add_argument("--token", required=True, help="a read or admin JWT")
    watch.add_argument("--url", help="the /ws/realtime URL (default: from the config)")
    watch.add_argument("--units", default="metric", choices=("metric", "imperial"))
    watch.add_argument("--timezone", default="UTC")
    watch.add_argument("--date-format", default="iso", choices=("unix", "iso", "human"))

    instance = commands.add_parser("instance", help="manage instances (fleets)")
    instance_commands = instance.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = command(instance_commands, "create", cmd_instance_create, "create an instance")
    create.add_argument("name")

    device = commands.add_parser("device", help="manage devices")
    device_commands = device.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = command(device_commands, "add", cmd_device_add, "register a device, print its ingest key")
    add.add_argument("--instance", required=True, help="instance id")
    add.add_argument("--token", help="device token (default: a new UUID)")
    add.add_argument("--name", help='display name, e.g. "First Last"')
    add.add_argument(
        "--mqtt-topic",
        help="the topic its OwnTracks app publishes to over MQTT, e.g. owntracks/alice/phone",
    )
    rotate = command(
        device_commands, "rotate-key", cmd_device_rotate_key, "give a device a new ingest key"
    )
    rotate.add_argument("token", help="device token")
    remove = command(
        device_commands, "remove", cmd_device_remove, "remove a device and its positions"
    )
    remove.add_argument("token", help="device token")

    export = command(commands, "export", cmd_export, "write a device's positions as a file")
    export.add_argument("--device", required=True, help="device token")
    export.add_argument(
        "--from", dest="from_", help="unix seconds or ISO 8601 (default: 7 days before --to)"
    )
    export.add_argument("--to", help="unix seconds or ISO 8601 (default: now)")
    export.add_argument("--format", default="gpx", choices=("gpx", "geojson", "csv"))
    export.add_argument("--points", action="store_true", help="GeoJSON: a Point per fix")

    token = commands.add_parser("token", help="mint access tokens")
    token_commands = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    mint = command(token_commands, "create", cmd_token_create, "mint a JWT, printed alone")
    mint.add_argument("--instance", required=True, help="instance id, or * for every instance")
    mint.add_argument("--scope", required=True, choices=SCOPES)
    mint.add_argument("--ttl", default="30d", help="lifetime, e.g. 30d, 12h (default 30d)")
    mint.add_argument("--device", help="bind an ingest token to one device")
    mint.add_argument("--subject", default="cli", help="the token's sub claim (default: cli)")

    backup = command(
        commands, "backup", cmd_backup, "copy the database to PATH, safe while the server runs"
    )
    backup.add_argument("path", help="the backup file to write")
    backup.add_argument("--force", action="store_true", help="replace PATH if it exists")
    migrate = command(
        commands,
        "migrate-data",
        cmd_migrate_data,
        "copy every device, key, position, trip and session to an empty database",
    )
    migrate.add_argument("--from", dest="source", required=True, help="e.g. sqlite:///tracker.db")
    migrate.add_argument(
        "--to", dest="target", required=True, help="e.g. postgresql://user:pass@host/db"
    )
    user = commands.add_parser("user", help="manage console users")
    user_commands = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    user_add = command(user_commands, "add", cmd_user_add, "add a console user")
    user_add.add_argument("--instance", required=True, help="instance id, or * for every instance")
    user_add.add_argument("--username", required=True)
    user_add.add_argument("--role", required=True, choices=("admin", "viewer"))
    user_add.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    user_list = command(user_commands, "list", cmd_user_list, "list console users")
    user_list.add_argument("--instance", help="only this instance's users")
    user_remove = command(user_commands, "remove", cmd_user_remove, "remove a console user")
    user_remove.add_argument("--username", required=True)
    passwd = command(user_commands, "passwd", cmd_user_passwd, "change a user's password")
    passwd.add_argument("--username", required=True)
    passwd.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.handler not in (cmd_serve, cmd_demo):
        # A command says what went wrong in its own one line (below).
        logging.getLogger("tracker.store").setLevel(logging.CRITICAL)
    try:
        settings = load_settings(args.config)
        args.handler(args, settings)
    except CommandError as error:
        print(f"tracker: {error}", file=sys.stderr)
        raise SystemExit(error.exit_status) from None
    except (ConfigError, AuthConfigError) as error:
        print(f"tracker: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (StorageUnavailable, sqlite3.Error) as error:  # e.g. the disk is full
        print(f"tracker: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
