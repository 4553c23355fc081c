"""`vrex-edge accel list|probe`: which retrieval backends exist, which work here, and why not."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from vrex_edge.cli.errors import user_errors
from vrex_edge.errors import AccelError

accel_app = typer.Typer(help="Retrieval backends: host reference, DRE emulator, FPGA card.", no_args_is_help=True)


def availability() -> list[tuple[str, bool, str]]:
    """(name, available, reason or class) for every registered backend, instantiating each once."""
    from vrex_edge.accel import backend_names, get_backend

    rows = []
    for name in backend_names():
        try:
            b = get_backend(name)
        except AccelError as e:
            rows.append((name, False, str(e)))
            continue
        rows.append((name, True, type(b).__module__ + "." + type(b).__qualname__))
        close = getattr(b, "close", None)
        if close is not None:
            close()
    return rows


@accel_app.command("list")
def list_backends() -> None:
    """List the registered backends and whether each can be used on this machine."""
    with user_errors():
        _list()


def _list() -> None:
    for name, ok, why in availability():
        typer.echo(f"{name:10s} {'available' if ok else 'unavailable'}  {why}")


@accel_app.command("probe")
def probe(
    name: Annotated[str, typer.Argument(help="Backend name, e.g. host, dre-emu, fpga.")],
    prefix: Annotated[
        str, typer.Option("--prefix", help="fpga: XDMA device prefix (default /dev/xdma0 or $VREX_XDMA_PREFIX).")
    ] = "",
) -> None:
    """Show the details of one backend: the cycle model, or the device nodes looked for."""
    with user_errors():
        _probe(name, prefix)


def _probe(name: str, prefix: str) -> None:
    from vrex_edge.accel import backend_names, get_backend

    if name not in backend_names():
        raise AccelError(f"unknown retrieval backend '{name}' (available: {', '.join(backend_names())})")
    if name == "fpga":
        from vrex_edge.accel import fpga

        info = fpga.probe(prefix or None)
        typer.echo(f"fpga: XDMA prefix {info['prefix']}")
        for kind, (path, exists) in info["nodes"].items():  # type: ignore[union-attr]
            typer.echo(f"  {kind:5s} {path}  {'found' if exists else 'not found'}")
        if "device" in info:
            d = info["device"]
            typer.echo(
                f"  DRE {d.version}, {d.mem_size >> 20} MiB card memory, {d.clock_hz / 1e6:g} MHz, lanes {d.caps}"
            )
        else:
            reason = info.get("error") or "no device node: the fpga backend is unavailable"
            typer.echo(f"  {reason}")
        return
    b = get_backend(name)
    typer.echo(f"{name}: {type(b).__module__}.{type(b).__qualname__}")
    model = getattr(b, "model", None)
    if model is not None:
        for k, v in asdict(model).items():
            typer.echo(f"  {k:15s} {v:g}")
