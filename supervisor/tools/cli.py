"""The ``cellblock`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from protocol import messages as m
from protocol.client import Client, ServiceError, service_answers
from protocol.files import name_problem
from protocol.profile import ConfigError, MiB
from protocol.wire import to_json
from supervisor.tools import envs
from supervisor.tools.export import export_text

EXIT_TIMEOUT = 124
EXIT_NOT_RUN = 70


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    from supervisor.config import load_config, runtime_dir

    return os.path.join(runtime_dir(load_config(getattr(args, "config", None))), "client.sock")


# --- run ----------------------------------------------------------------------------------


def _read_code(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    with open(source, encoding="utf-8") as src:
        return src.read()


def _language(args: argparse.Namespace) -> str:
    if args.language:
        return str(args.language)
    ext = os.path.splitext(args.file)[1].lower()
    return {".py": "python", ".js": "javascript", ".mjs": "mjs", ".sh": "bash", ".bash": "bash", ".swift": "swift"}.get(
        ext, "auto"
    )


def _summary(result: m.ExecuteResult) -> str:
    parts = [f"status={result.status.value}"]
    if result.exit_code is not None:
        parts.append(f"exit={result.exit_code}")
    if result.signal is not None:
        parts.append(f"signal={result.signal}")
    if result.reason:
        parts.append(f"reason={result.reason!r}")
    parts.append(f"wall={result.wall_ms:.1f}ms cpu={result.cpu_ms:.1f}ms mem={result.memory_peak_bytes / MiB:.1f}MiB")
    if result.stdout_truncated or result.stderr_truncated:
        parts.append(f"dropped={result.stdout_dropped + result.stderr_dropped}B")
    if result.redactions:
        parts.append("redacted=" + ",".join(f"{k}x{v}" for k, v in sorted(result.redactions.items())))
    for d in result.network:
        verdict = f"allowed in={d.bytes_in}B out={d.bytes_out}B" if d.allowed else f"denied ({d.reason})"
        parts.append(f"net {d.host}:{d.port} {verdict}")
    if result.artifacts:
        parts.append("files=" + ",".join(_artifact_note(a) for a in result.artifacts))
    if result.session:
        parts.append(f"session={result.session}" + (" (ended)" if result.session_ended else ""))
    if result.error is not None:
        parts.append(f"error={result.error.code.value}: {result.error.message}")
    return "[cellblock] " + " ".join(parts)


def _artifact_note(artifact: m.Artifact) -> str:
    size = f"{artifact.size / 1024:.1f}KiB" if artifact.size >= 1024 else f"{artifact.size}B"
    return f"{artifact.name}({size}{', not sent: over the cap' if artifact.dropped else ''})"


def _files_in(specs: list[str]) -> dict[str, bytes]:
    """--file PATH (named by its base name in /work) or --file NAME=PATH."""
    files = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = os.path.basename(spec), spec
        with open(path, "rb") as src:
            files[name] = src.read()
    return files


def _save_artifacts(result: m.ExecuteResult, folder: str) -> None:
    """--out DIR: each artifact written under DIR (names as the broker checked them, checked again)."""
    for artifact in result.artifacts:
        problem = name_problem(artifact.name)
        if artifact.dropped or problem:
            why = problem or f"over the profile's cap ({artifact.size} bytes)"
            print(f"cellblock: {artifact.name}: not saved: {why}", file=sys.stderr)
            continue
        target = os.path.join(folder, *artifact.name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.write(artifact.data)


def _exit_code(result: m.ExecuteResult) -> int:
    if result.status in (m.Status.OK, m.Status.ERROR) and result.exit_code is not None:
        return result.exit_code
    if result.status is m.Status.TIMEOUT:
        return EXIT_TIMEOUT
    return EXIT_NOT_RUN


def cmd_run(args: argparse.Namespace) -> int:
    code = _read_code(args.file)
    limits = m.Limits(
        timeout_ms=int(args.timeout * 1000) if args.timeout else None,
        memory_bytes=int(args.memory * MiB) if args.memory else None,
    )
    stdin = _read_code(args.stdin) if args.stdin else ""
    files = _files_in(args.files)
    on_chunk = None
    if args.stream and not args.json:

        def on_chunk(chunk: m.OutputChunk) -> None:
            out = sys.stdout if chunk.stream == "stdout" else sys.stderr
            out.write(chunk.data)
            out.flush()

    def run(client: Client) -> int:
        result = client.execute(
            code,
            _language(args),
            stdin=stdin,
            limits=limits,
            capabilities=args.cap,
            client_id=args.client_id or "cli",
            conversation_id=args.conversation,
            environment=args.env,
            session=args.session,
            files=files,
            on_chunk=on_chunk,
        )
        if args.out:
            _save_artifacts(result, args.out)
        if args.json:
            sys.stdout.buffer.write(to_json(result) + b"\n")
        else:
            if not args.stream:
                sys.stdout.write(result.stdout)
                sys.stderr.write(result.stderr)
            print(_summary(result), file=sys.stderr)
        return _exit_code(result)

    return _with_service(args, run, daemon=bool(args.session))


# --- sessions ----------------------------------------------------------------------------------


def _print_session(s: m.SessionInfo) -> None:
    env = f" env {s.environment}" if s.environment else ""
    conversation = f" conversation {s.conversation_id}" if s.conversation_id else ""
    print(
        f"{s.session}  {s.language}{env}  {s.state}  client {s.client_id}{conversation}  cells {s.cells}  "
        f"age {s.age_s:.0f}s  idle {s.idle_s:.0f}s  "
        f"mem {s.memory_bytes / MiB:.1f}/{s.memory_limit_bytes / MiB:.0f}MiB  "
        f"(ends after {s.idle_timeout_s:.0f}s idle, {s.max_lifetime_s:.0f}s in all)"
    )


def cmd_session(args: argparse.Namespace) -> int:
    client_id = args.client_id or "cli"

    def action(client: Client) -> int:
        if args.action == "open":
            limits = m.Limits(
                timeout_ms=int(args.timeout * 1000) if args.timeout else None,
                memory_bytes=int(args.memory * MiB) if args.memory else None,
            )
            info = client.session_open(
                args.language,
                environment=args.env,
                limits=limits,
                client_id=client_id,
                conversation_id=args.conversation,
            )
            print(info.session)
            _print_session(info)
        elif args.action == "close":
            if not args.session:
                print("cellblock: session close needs the session's id", file=sys.stderr)
                return 2
            client.session_close(args.session, client_id=client_id)
            print(f"closed {args.session}")
        else:
            sessions = client.sessions(client_id=client_id)
            for info in sessions:
                _print_session(info)
            if not sessions:
                print(f"no sessions for client {client_id!r}")
        return 0

    return _with_service(args, action, daemon=True)


# --- serve, status ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from supervisor.config import load_config, profile_for
    from supervisor.main import ServiceRunning, serve

    try:
        config = load_config(args.config)
        if args.runtime_dir or args.pool is not None or args.profile:
            service = config.service
            if args.runtime_dir:
                service = msgspec.structs.replace(service, runtime_dir=os.path.abspath(args.runtime_dir))
            if args.profile:
                service = msgspec.structs.replace(service, profile=args.profile)
            if args.pool is not None:
                service = msgspec.structs.replace(service, pool={"python": args.pool, **service.pool})
            config = msgspec.structs.replace(config, service=service)
        profile = profile_for(config)
    except ConfigError as exc:
        print(f"cellblock: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(config, profile, ready_fd=args.ready_fd, lifeline_fd=args.lifeline_fd)
    except ServiceRunning as exc:
        print(f"cellblock: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a listener's key files, read at start
        print(f"cellblock: bad configuration: {exc}", file=sys.stderr)
        return 2


def _check(status: m.StatusReply, what: str) -> int:
    """``status --check``: live (the broker answers) or ready (it offers a runtime, and its TCP
    listener, if configured, is running): exit 0, or 1 with the reason. For probes."""
    problem = ""
    if what == "ready":
        if not any(rt.offered for rt in status.runtimes):
            problem = "no runtime offered yet"
        elif status.gateway is not None and not status.gateway.running:
            problem = "the TCP listener (gateway) is not running"
    print(f"cellblock: {what}: {problem or 'ok'}", file=sys.stderr if problem else sys.stdout)
    return 1 if problem else 0


def _fetch_status(args: argparse.Namespace) -> list[m.StatusReply] | None:
    if args.endpoint:
        from protocol.nodes import Nodes, expand

        replies = []
        for endpoint in expand(args.endpoint):
            with Nodes([endpoint], args.server_key, args.client_key, connect_timeout=3.0) as nodes:
                replies.append(nodes.status())
        return replies
    with Client(_socket_path(args), connect_timeout=1.0) as client:
        return [client.status()]


def cmd_status(args: argparse.Namespace) -> int:
    try:
        replies = _fetch_status(args)
    except ServiceError as exc:
        print(f"cellblock: {exc.error.message}", file=sys.stderr)
        if exc.error.code == "connection_lost" and not args.check:
            print(
                "cellblock: start one with `cellblock serve` (as root: `sudo .venv/bin/cellblock serve`), "
                "`cellblock run` starts its own for one call",
                file=sys.stderr,
            )
        return 1
    assert replies
    if args.check:
        return max(_check(status, args.check) for status in replies)
    for status in replies:
        _print_status(status, args.json)
    return 0


def _print_status(status: m.StatusReply, json: bool) -> None:
    if json:
        sys.stdout.buffer.write(to_json(status) + b"\n")
        return
    print(f"cellblock {status.version}  mode: {status.mode}  profile: {status.profile}  up {status.uptime_s:.0f}s")
    print(f"queue: {status.queue}/{status.queue_limit}  in flight: {status.in_flight}")
    print("runtimes:")
    for rt in status.runtimes:
        state = "offered" if rt.offered else f"NOT offered ({rt.reason})"
        print(f"  {rt.name:<10} {rt.version:<22} {state}")
        print(
            f"  {'':<10} warm {rt.warm}  busy {rt.busy}  starting {rt.starting}  "
            f"restarts {rt.restarts}  setup failures {rt.setup_failures}"
        )
    print("sandbox layers:")
    for layer in status.layers:
        print(f"  [{'on ' if layer.active else 'off'}] {layer.name:<12} {layer.detail}")
    if status.sessions:
        print(f"sessions: {len(status.sessions)}")
        for session in status.sessions:
            _print_session(session)
    if status.gateway is not None:
        _print_gateway(status.gateway)
    interesting = {k: v for k, v in sorted(status.counters.items()) if v}
    if interesting:
        print("counters: " + ", ".join(f"{k}={v}" for k, v in interesting.items()))


def _print_gateway(gw: m.GatewayStatus) -> None:
    state = "" if gw.running else "  NOT RUNNING (the gateway has not reported; see the service's log)"
    for endpoint in gw.listen:
        print(f"tcp listener: {endpoint} (CURVE){state}")
    print(f"  server key {gw.server_key}  authorized keys {gw.authorized_keys}")
    if gw.keys_error:
        print(f"  authorized_keys: {gw.keys_error}")
    peers = ", ".join(f"{p.client_id} x{p.relays}" for p in gw.peers)
    print(f"  connections {gw.connections}" + (f": {peers}" if peers else ""))
    print(
        f"  refused handshakes: unknown key {gw.refused_unknown_key}, failed (no CURVE, another server key) "
        f"{gw.refused_handshake}, over max_remote_peers {gw.refused_full}"
    )
    if gw.counters:
        print("  " + ", ".join(f"{k}={v}" for k, v in sorted(gw.counters.items())))


# --- grants, history, export ------------------------------------------------------------------


def _with_service(args: argparse.Namespace, action: Callable[[Client], int], daemon: bool = False) -> int:
    """Run ``action`` against the running service, or an embedded one (same state dir);
    ``daemon``: only a running service will do (a session outlives this command).
    With ``--endpoint``: the nodes named, over TCP with CURVE."""
    if getattr(args, "endpoint", None):
        return _with_nodes(args, action)
    path = _socket_path(args)
    embedded = None
    if not service_answers(path):
        if args.socket or daemon:
            print(f"cellblock: no service answers on {path}", file=sys.stderr)
            if daemon:
                print(
                    "cellblock: sessions live in a running service: start one with `cellblock serve`", file=sys.stderr
                )
            return EXIT_NOT_RUN
        from supervisor.tools.embedded import Embedded, EmbeddedError

        embedded = Embedded(config=args.config)
        try:
            path = embedded.start()
        except EmbeddedError as exc:
            print(f"cellblock: {exc}", file=sys.stderr)
            return EXIT_NOT_RUN
    try:
        with Client(path) as client:
            return action(client)
    except ServiceError as exc:
        print(f"cellblock: {exc.error.code.value}: {exc.error.message}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()


def _with_nodes(args: argparse.Namespace, action: Callable[[Any], int]) -> int:
    from protocol.curve import KeyProblem
    from protocol.nodes import Nodes

    if not args.server_key or not args.client_key:
        print("cellblock: --endpoint needs --server-key (the nodes' public key) and --client-key", file=sys.stderr)
        return 2
    try:
        nodes = Nodes(args.endpoint, args.server_key, args.client_key, retries=getattr(args, "retry", False))
    except KeyProblem as exc:
        print(f"cellblock: {exc}", file=sys.stderr)
        return 2
    try:
        with nodes:
            return action(nodes)
    except ServiceError as exc:
        print(f"cellblock: {exc.error.code.value}: {exc.error.message}", file=sys.stderr)
        return 1


def parse_capability(text: str) -> m.Capability:
    try:
        return m.Capability.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_grants(grants: list[m.Grant]) -> None:
    if not grants:
        print("no grants")
    for g in grants:
        scope = f" conversation {g.conversation_id}" if g.conversation_id else ""
        expires = f" expires {time.strftime('%Y-%m-%d %H:%M', time.localtime(g.expires))}" if g.expires else ""
        print(f"#{g.grant_id}  {g.client_id}{scope}  {g.capability.kind.value}:{g.capability.target}{expires}")


def cmd_grant(args: argparse.Namespace) -> int:
    def action(client: Client) -> int:
        reply = client.grant(args.client, args.capability, args.conversation or "", args.expires)
        _print_grants(reply.grants)
        return 0

    return _with_service(args, action)


def cmd_revoke(args: argparse.Namespace) -> int:
    def action(client: Client) -> int:
        client.revoke(args.grant_id)
        print(f"revoked #{args.grant_id}")
        return 0

    return _with_service(args, action)


def cmd_grants(args: argparse.Namespace) -> int:
    def action(client: Client) -> int:
        reply = client.grants(args.client or "")
        if args.json:
            sys.stdout.buffer.write(to_json(reply) + b"\n")
        else:
            _print_grants(reply.grants)
        return 0

    return _with_service(args, action)


def cmd_history(args: argparse.Namespace) -> int:
    def action(client: Client) -> int:
        reply = client.history(
            client_id=args.client or "",
            conversation_id=args.conversation or "",
            language=args.language or "",
            status=m.Status(args.status) if args.status else None,
            since=time.time() - args.since if args.since else None,
            limit=args.limit,
        )
        if args.json:
            sys.stdout.buffer.write(to_json(reply) + b"\n")
            return 0
        for e in reply.entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.started))
            code = "" if e.exit_code is None else f" exit {e.exit_code}"
            extras = [] if e.uid is None else [f"uid {e.uid}"]
            if e.redactions:
                extras.append("redacted " + ",".join(f"{k}x{v}" for k, v in sorted(e.redactions.items())))
            if e.findings:
                extras.append("findings " + ",".join(e.findings))
            if e.session:
                extras.append(f"session {e.session}")
            for label, files in (("in", e.files_in), ("out", e.files_out)):
                if files:
                    extras.append(f"files {label} " + ",".join(f"{f.name}({f.size}B)" for f in files))
            print(
                f"{when}  {e.run_id}  {e.client_id:<16} {e.language:<8} {e.status.value:<19}{code}  "
                f"{e.wall_ms:.1f}ms  {e.code_bytes}B sha256:{e.code_sha256[:12]}  {'; '.join(extras)}"
            )
        if not reply.entries:
            print("no runs recorded")
        return 0

    return _with_service(args, action)


def cmd_export(args: argparse.Namespace) -> int:
    """The broker keeps no output: export a result the client kept (``run --json``)."""
    try:
        raw = sys.stdin.buffer.read() if args.result == "-" else open(args.result, "rb").read()  # noqa: SIM115
        result = msgspec.json.decode(raw, type=m.ExecuteResult)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        print(f"cellblock: {args.result} is not a saved result ({exc})", file=sys.stderr)
        return 2
    text = export_text(result, args.format)
    if args.output and args.output != "-":
        with open(args.output, "wb") as out:
            out.write(text)
    else:
        sys.stdout.buffer.write(text)
    return 0


def cmd_harness(args: argparse.Namespace) -> int:
    from supervisor.tools import harness

    return harness.main(args.cases, args.socket, args.profile, args.json, args.category, args.config)


def cmd_mcp(args: argparse.Namespace) -> int:
    from supervisor.tools import mcp_server

    remote = None
    if args.endpoint:
        if not args.server_key or not args.client_key:
            print("cellblock: --endpoint needs --server-key and --client-key", file=sys.stderr)
            return 2
        remote = (args.endpoint, args.server_key, args.client_key)
    default = args.socket or _socket_path(args)
    return mcp_server.main(args.socket, default, args.http, args.config, args.client_id, remote)


def cmd_console(args: argparse.Namespace) -> int:
    from supervisor.tools.console.app import main as console_main

    default = args.socket or _socket_path(args)
    return console_main(args.socket, default, args.config, args.host, args.port, args.client_id)


def cmd_keys(args: argparse.Namespace) -> int:
    """``cellblock keys new NAME``: a CURVE key pair for a node or a client (libzmq makes it)."""
    from protocol.curve import new_pair

    try:
        public_path, secret_path, public = new_pair(args.name)
    except FileExistsError as exc:
        print(f"cellblock: {exc.filename} exists; keys are never overwritten", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cellblock: cannot write {exc.filename or args.name}: {exc.strerror}", file=sys.stderr)
        return 1
    print(public.decode())
    print(f"cellblock: wrote {public_path} (public) and {secret_path} (secret, mode 0600)", file=sys.stderr)
    print(
        "cellblock: a client: add the first line to the node's authorized_keys (optionally with a name after it) "
        f"and pass --client-key {secret_path}; a node: [service] server_key = {secret_path!r}, and clients "
        f"pass --server-key {public_path}",
        file=sys.stderr,
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from supervisor.tools.doctor import print_cgroup_commands, run_doctor

    if args.delegate_cgroups is not None or args.undelegate_cgroups is not None:
        return print_cgroup_commands(args.delegate_cgroups, args.undelegate_cgroups)
    return run_doctor(_socket_path(args))


# --- parser ----------------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 (got {text}); leave it out for the service's default")
    return value


def _common(p: argparse.ArgumentParser, remote: bool = True) -> None:
    p.add_argument("--socket", help="client socket of a running service")
    p.add_argument("--config", help="service config file (to find its socket)")
    if remote:
        p.add_argument(
            "--endpoint",
            action="append",
            default=[],
            metavar="tcp://HOST:PORT",
            help="a node over TCP with CURVE (repeat for several; a name resolving to many is many)",
        )
        p.add_argument("--server-key", metavar="KEY|FILE", help="the nodes' public key (Z85, or its .key file)")
        p.add_argument("--client-key", metavar="FILE", help="this client's .key_secret file (cellblock keys new)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellblock", description="Run untrusted code in a sandbox.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_service(sub)
    _add_admin(sub)
    envs.add_parser(sub)
    _add_session(sub)
    return parser


def _add_session(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    session = sub.add_parser(
        "session", help="sessions: one sandbox whose variables and /work last between runs (open, list, close)"
    )
    session.add_argument("action", choices=["open", "list", "close"])
    session.add_argument("session", nargs="?", default="", help="the session to close")
    session.add_argument("--language", "-l", default="python", help="open: python, javascript or bash")
    session.add_argument("--env", default="", metavar="NAME", help="open: a package environment")
    session.add_argument("--timeout", type=_positive, help="open: each cell's default wall-clock limit, seconds")
    session.add_argument("--memory", type=_positive, help="open: the session's memory limit in MiB")
    session.add_argument("--conversation", default="", help="open: the conversation the session belongs to")
    session.add_argument("--client-id", default="")
    _common(session)
    session.set_defaults(func=cmd_session)


def _add_run(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="run a file (or - for stdin) in the sandbox")
    run.add_argument("file")
    run.add_argument("--language", "-l")
    run.add_argument("--timeout", type=_positive, help="wall-clock limit in seconds")
    run.add_argument("--memory", type=_positive, help="memory limit in MiB")
    run.add_argument("--conversation", default="", help="the conversation the run belongs to (its grants apply)")
    run.add_argument(
        "--env", default="", metavar="NAME", help="a package environment (default: the profile's; none: none)"
    )
    run.add_argument("--stdin", help="file to feed as stdin")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.add_argument("--stream", action="store_true", help="print output as it is produced")
    run.add_argument("--client-id", default="")
    run.add_argument(
        "--retry",
        action="store_true",
        help="with --endpoint: if the node is lost mid-run, run it again on another (it may run twice)",
    )
    run.add_argument("--session", default="", help="run as the next cell of this session (cellblock session open)")
    run.add_argument(
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="hand a file in: written into /work (as NAME, or its base name) before the code runs",
    )
    run.add_argument("--out", metavar="DIR", help="write the files the run left in /work/out into DIR")
    run.add_argument(
        "--cap",
        action="append",
        default=[],
        type=parse_capability,
        metavar="KIND:TARGET",
        help="a capability the run uses (granted beforehand): net:example.com, fs_read:/srv/data, fs_write:/srv/out",
    )
    _common(run)
    run.set_defaults(func=cmd_run)


def _add_service(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The service itself and the tools around it."""
    serve = sub.add_parser("serve", help="run the service in the foreground")
    serve.add_argument("--config")
    serve.add_argument("--profile", help="profile name or path (overrides the config)")
    serve.add_argument("--runtime-dir", help=argparse.SUPPRESS)
    serve.add_argument("--pool", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=-1, help=argparse.SUPPRESS)
    serve.add_argument("--lifeline-fd", type=int, default=-1, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser("status", help="pool, queue, counters, sandbox layers, the TCP listener")
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--check", choices=["live", "ready"], help="for probes: exit 0 if the service is live (answers) or ready"
    )
    _common(status)
    status.set_defaults(func=cmd_status)

    harness = sub.add_parser("harness", help="attack a service with hostile programs and score it")
    harness.add_argument("--cases", help="a folder of cases (default: tests/harness/cases)")
    harness.add_argument("--profile", help="profile of the embedded service (name or path)")
    harness.add_argument("--category", action="append", help="only these categories")
    harness.add_argument("--json", help="where to write the report (default harness-results/harness.json)")
    _common(harness, remote=False)
    harness.set_defaults(func=cmd_harness)

    mcp = sub.add_parser("mcp", help="MCP server with the execute_code tool (stdio, or --http PORT)")
    mcp.add_argument("--http", type=int, metavar="PORT", help="streamable HTTP on 127.0.0.1:PORT instead of stdio")
    mcp.add_argument(
        "--client-id",
        default="",
        help="the cellblock client every call is (grants survive restarts); default: one per MCP session",
    )
    _common(mcp)
    mcp.set_defaults(func=cmd_mcp)

    console = sub.add_parser("console", help="the web console: run a chat's code blocks, grants, history, status")
    console.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    console.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    console.add_argument("--client-id", default="console", help="the cellblock client the console acts as")
    _common(console, remote=False)
    console.set_defaults(func=cmd_console)

    keys = sub.add_parser("keys", help="CURVE keys for TCP: keys new NAME writes NAME.key and NAME.key_secret")
    keys.add_argument("action", choices=["new"])
    keys.add_argument("name", help="path and base name of the two files")
    keys.set_defaults(func=cmd_keys)

    doctor = sub.add_parser("doctor", help="what this host is missing, and how to fix it")
    doctor.add_argument(
        "--delegate-cgroups", type=int, metavar="UID", help="cgroup v1: print root's commands that delegate to UID"
    )
    doctor.add_argument("--undelegate-cgroups", type=int, metavar="UID", help="print the commands that remove it again")
    _common(doctor, remote=False)
    doctor.set_defaults(func=cmd_doctor)


def _add_admin(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Grants, history and export."""
    grant = sub.add_parser("grant", help="grant a capability to a client (optionally one conversation)")
    grant.add_argument("client")
    grant.add_argument(
        "capability", type=parse_capability, help="limits:memory_bytes, net:*.example.com, fs_read:/data"
    )
    grant.add_argument("--conversation")
    grant.add_argument("--expires", type=int, metavar="SECONDS")
    _common(grant, remote=False)
    grant.set_defaults(func=cmd_grant)

    revoke = sub.add_parser("revoke", help="revoke a grant by its id")
    revoke.add_argument("grant_id", type=int)
    _common(revoke, remote=False)
    revoke.set_defaults(func=cmd_revoke)

    grants = sub.add_parser("grants", help="list grants")
    grants.add_argument("client", nargs="?")
    grants.add_argument("--json", action="store_true")
    _common(grants)
    grants.set_defaults(func=cmd_grants)

    history = sub.add_parser("history", help="past runs (metadata only: never code, never output)")
    history.add_argument("--client")
    history.add_argument("--conversation")
    history.add_argument("--language")
    history.add_argument("--status", choices=[s.value for s in m.Status])
    history.add_argument("--since", type=float, metavar="SECONDS", help="only runs from the last SECONDS")
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--json", action="store_true")
    _common(history)
    history.set_defaults(func=cmd_history)

    export = sub.add_parser("export", help="write a saved result (from run --json) as JSON or Markdown")
    export.add_argument("result", help="a file with the result JSON, or -")
    export.add_argument("--format", choices=["json", "markdown"], default="markdown")
    export.add_argument("--output", "-o")
    export.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, ConfigError) as exc:
        print(f"cellblock: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
