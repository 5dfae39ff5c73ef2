"""The ``cellblock`` command."""

from __future__ import annotations

import argparse
import os
import sys

import msgspec

from protocol import messages as m
from protocol.client import Client, ServiceError
from protocol.profile import ConfigError, MiB
from protocol.wire import to_json

EXIT_TIMEOUT = 124
EXIT_NOT_RUN = 70


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    from supervisor.config import load_config, runtime_dir

    return os.path.join(runtime_dir(load_config(getattr(args, "config", None))), "client.sock")


def _service_answers(path: str) -> bool:
    if not os.path.exists(path):
        return False
    with Client(path, connect_timeout=0.5) as client:
        try:
            client.status(timeout=2.0)
        except ServiceError:
            return False
    return True


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
    return {".js": "javascript", ".mjs": "javascript", ".sh": "bash", ".bash": "bash", ".swift": "swift"}.get(
        ext, "python"
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
    if result.error is not None:
        parts.append(f"error={result.error.code.value}: {result.error.message}")
    return "[cellblock] " + " ".join(parts)


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
    path = _socket_path(args)
    embedded = None
    if not _service_answers(path):
        if args.socket:
            print(f"cellblock: no service answers on {path}", file=sys.stderr)
            return EXIT_NOT_RUN
        from supervisor.embedded import Embedded, EmbeddedError

        embedded = Embedded(config=args.config)
        try:
            path = embedded.start()
        except EmbeddedError as exc:
            print(f"cellblock: {exc}", file=sys.stderr)
            return EXIT_NOT_RUN
    try:
        on_chunk = None
        if args.stream and not args.json:

            def on_chunk(chunk: m.OutputChunk) -> None:
                out = sys.stdout if chunk.stream == "stdout" else sys.stderr
                out.write(chunk.data)
                out.flush()

        with Client(path) as client:
            result = client.execute(
                code, _language(args), stdin=stdin, limits=limits, client_id=args.client_id or "cli", on_chunk=on_chunk
            )
    finally:
        if embedded is not None:
            embedded.stop()
    if args.json:
        sys.stdout.buffer.write(to_json(result) + b"\n")
    else:
        if not args.stream:
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
        print(_summary(result), file=sys.stderr)
    return _exit_code(result)


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
        return serve(config, profile, ready_fd=args.ready_fd)
    except ServiceRunning as exc:
        print(f"cellblock: {exc}", file=sys.stderr)
        return 1


def cmd_status(args: argparse.Namespace) -> int:
    path = _socket_path(args)
    with Client(path, connect_timeout=1.0) as client:
        try:
            status = client.status()
        except ServiceError as exc:
            print(f"cellblock: {exc.error.message}", file=sys.stderr)
            return 1
    if args.json:
        sys.stdout.buffer.write(to_json(status) + b"\n")
        return 0
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
    interesting = {k: v for k, v in sorted(status.counters.items()) if v}
    if interesting:
        print("counters: " + ", ".join(f"{k}={v}" for k, v in interesting.items()))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from supervisor.doctor import run_doctor

    return run_doctor(_socket_path(args))


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellblock", description="Run untrusted code in a sandbox.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--socket", help="client socket of a running service")
        p.add_argument("--config", help="service config file (to find its socket)")

    run = sub.add_parser("run", help="run a file (or - for stdin) in the sandbox")
    run.add_argument("file")
    run.add_argument("--language", "-l")
    run.add_argument("--timeout", type=float, help="wall-clock limit in seconds")
    run.add_argument("--memory", type=float, help="memory limit in MiB")
    run.add_argument("--stdin", help="file to feed as stdin")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.add_argument("--stream", action="store_true", help="print output as it is produced")
    run.add_argument("--client-id", default="")
    common(run)
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="run the service in the foreground")
    serve.add_argument("--config")
    serve.add_argument("--profile", help="profile name or path (overrides the config)")
    serve.add_argument("--runtime-dir", help=argparse.SUPPRESS)
    serve.add_argument("--pool", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=-1, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser("status", help="pool, queue, counters and sandbox layers")
    status.add_argument("--json", action="store_true")
    common(status)
    status.set_defaults(func=cmd_status)

    doctor = sub.add_parser("doctor", help="what this host is missing, and how to fix it")
    common(doctor)
    doctor.set_defaults(func=cmd_doctor)
    return parser


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
