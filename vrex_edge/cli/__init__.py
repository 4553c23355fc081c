"""The `vrex-edge` command line: parse, call the library, render events. Kept thin on purpose."""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from vrex_edge import __version__
from vrex_edge.cli.accel import accel_app
from vrex_edge.cli.errors import user_errors
from vrex_edge.cli.help import HelpGroup
from vrex_edge.errors import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Real-time streaming video LLM runtime for edge devices (ReSV KV-cache retrieval).",
    pretty_exceptions_enable=False,
    cls=HelpGroup,  # flags render without '<bool>', repeatable options without '<list[...]>'
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"vrex-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


app.add_typer(accel_app, name="accel")

DEFAULT_MODEL_NAME = "vrex-tiny"


def default_model() -> Path:
    """The embedded bundle: $VREX_EDGE_MODEL, else models/vrex-tiny beside the package."""
    env = os.environ.get("VREX_EDGE_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL_NAME


def parse_ask(values: list[str]) -> list[tuple[float, str]]:
    """'T=question' with T in seconds or [hh:]mm:ss -> sorted (t, question)."""
    out = []
    for v in values:
        t_str, sep, question = v.partition("=")
        if not sep or not question.strip():
            raise ConfigError(f"--ask expects 'TIME=question', got {v!r}")
        fields = t_str.strip().split(":")
        try:
            parts = [float(p) if i == len(fields) - 1 else int(p) for i, p in enumerate(fields)]
        except ValueError:
            raise ConfigError(f"--ask time must be seconds or [hh:]mm:ss, got {t_str!r}") from None
        if len(parts) > 3 or not all(math.isfinite(p) and p >= 0 for p in parts) or any(p >= 60 for p in parts[1:]):
            raise ConfigError(
                f"--ask time out of range: {t_str!r} (seconds >= 0, or [hh:]mm:ss with mm and ss below 60)"
            )
        t = 0.0
        for p in parts:
            t = t * 60 + p
        out.append((t, question.strip()))
    return sorted(out, key=lambda x: x[0])


def session_config(
    *,
    model: Path | None,
    policy: str,
    opt: list[str],
    accel: str | None,
    provider: list[str],
    threads: int | None,
    fps: float,
    kv: object,
) -> object:
    """The flags shared by caption and live -> one SessionConfig (validated before anything loads)."""
    from vrex_edge.runtime.config import SessionConfig

    return SessionConfig.from_cli(
        model=model or default_model(),
        policy=policy,
        opts=opt,
        accel=accel,
        providers=provider,
        threads=threads,
        kv=kv,
        fps=fps,
    )


ModelOpt = Annotated[
    Path | None, typer.Option("--model", "-m", help="Bundle folder (default: the embedded vrex-tiny).")
]
PolicyOpt = Annotated[str, typer.Option("--policy", help="KV retrieval policy: resv, full, window, topk.")]
OptOpt = Annotated[list[str], typer.Option("--opt", help="Policy option key=value (repeatable), e.g. tau=0.95.")]


def format_for(output: Path | None, default: str) -> str:
    """The output format an -o path's suffix names (.srt, .jsonl, .txt), else `default`."""
    suffix = output.suffix.lower() if output is not None else ""
    return {".srt": "srt", ".jsonl": "jsonl", ".txt": "text"}.get(suffix, default)


ProviderOpt = Annotated[
    list[str],
    typer.Option(
        "--provider",
        help="onnxruntime execution provider: cpu, cuda, tensorrt or a full name (repeatable; default cpu).",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads (default: all cores).")]
AccelOpt = Annotated[str | None, typer.Option("--accel", help="Retrieval backend for resv: host, dre-emu, fpga.")]
KVBudgetOpt = Annotated[
    str | None, typer.Option("--kv-budget", help="Resident KV bytes (e.g. 512M, 2G); older KV goes to a disk store.")
]
KeepKVOpt = Annotated[
    Path | None, typer.Option("--keep-kv", help="Keep the KV disk store (and a resume state) in this folder.")
]
ResumeOpt = Annotated[
    Path | None, typer.Option("--resume", help="Continue the stream kept by --keep-kv in this folder.")
]
KVFullOpt = Annotated[str, typer.Option("--kv-on-full", help="When the KV store's disk is full: error or drop-oldest.")]
KVPrefetchOpt = Annotated[
    bool,
    typer.Option(
        "--kv-prefetch/--no-kv-prefetch",
        help="With --kv-budget: predict and read the next layer's clusters on a second thread (default on).",
    ),
]
WebOpt = Annotated[
    str | None,
    typer.Option(
        "--web",
        metavar="[HOST:]PORT",
        help="Also serve a web view here (host 127.0.0.1 unless given; any other host needs a token).",
    ),
]


@app.command()
def export(
    model: Annotated[str, typer.Option("--model", "-m", help="HF folder, GGUF file, or vrex_videollm checkpoint.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create.")],
    family: Annotated[str | None, typer.Option(help="Model family (default: detected from the source).")] = None,
    dtype: Annotated[str, typer.Option(help="fp32, fp16, int8 or int4 (experimental).")] = "fp32",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at --out.")] = False,
) -> None:
    """Export a model to a bundle: one ONNX graph per stage, verified against PyTorch."""
    from vrex_edge.ui import export_progress, print_export_report

    with user_errors():
        try:
            from vrex_edge.export import export_bundle
        except ImportError as e:
            raise ConfigError(f"export needs the export extra ({e.name} missing): pip install -e '.[export]'") from None
        with export_progress() as progress:
            report = export_bundle(model, out, family=family, dtype=dtype, force=force, progress=progress)
        print_export_report(report)


@app.command()
def info(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Hash every file again (runs trust files verified before and unchanged since)."),
    ] = False,
) -> None:
    """Show what a bundle holds."""
    from vrex_edge.bundle import load_manifest
    from vrex_edge.ui import print_manifest

    with user_errors():
        print_manifest(bundle, load_manifest(bundle, full_verify=verify), full=verify)


@app.command()
def caption(
    video: Annotated[Path, typer.Argument(help="Video file to narrate.")],
    model: ModelOpt = None,
    fps: Annotated[float, typer.Option(help="Frames per second fed to the model.")] = 2.0,
    policy: PolicyOpt = "resv",
    opt: OptOpt = [],  # noqa: B006 (typer reads the default)
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="text, srt or jsonl (default: from -o's suffix, else text).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")
    ] = None,
    ask: Annotated[list[str], typer.Option("--ask", help="Question at a stream time: 'T=question' (repeatable).")] = [],  # noqa: B006
    provider: ProviderOpt = [],  # noqa: B006
    threads: ThreadsOpt = None,
    accel: AccelOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    kv_budget: KVBudgetOpt = None,
    keep_kv: KeepKVOpt = None,
    resume: ResumeOpt = None,
    kv_on_full: KVFullOpt = "error",
    kv_prefetch: KVPrefetchOpt = True,
) -> None:
    """Narrate a video file as it streams; answer questions asked at given times."""
    from vrex_edge.cli.commands import caption_video, kv_config

    with user_errors():
        questions = parse_ask(ask)
        config = session_config(
            model=model,
            policy=policy,
            opt=opt,
            accel=accel,
            provider=provider,
            threads=threads,
            fps=fps,
            kv=kv_config(kv_budget, keep_kv, resume, kv_on_full, prefetch=kv_prefetch),
        )
        fmt = fmt or format_for(output, "text")
        caption_video(video, config, fmt=fmt, output=output, questions=questions, quiet=quiet)


@app.command()
def live(
    camera: Annotated[int | None, typer.Option("--camera", help="Camera index (e.g. 0 for /dev/video0).")] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Video file (played in real time), RTSP/HTTP URL, or device path.")
    ] = None,
    model: ModelOpt = None,
    fps: Annotated[float, typer.Option(help="Frames per second fed to the model.")] = 2.0,
    policy: PolicyOpt = "resv",
    opt: OptOpt = [],  # noqa: B006
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Append the session here as it goes.")] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="Format of --output: jsonl, srt or text (default: from its suffix, else jsonl)."
        ),
    ] = None,
    show: Annotated[bool, typer.Option("--show", help="Open a window with the frame and the latest caption.")] = False,
    retry: Annotated[
        float, typer.Option("--retry", help="Seconds to keep retrying a source that stops delivering.")
    ] = 10.0,
    provider: ProviderOpt = [],  # noqa: B006
    threads: ThreadsOpt = None,
    accel: AccelOpt = None,
    kv_budget: KVBudgetOpt = None,
    keep_kv: KeepKVOpt = None,
    resume: ResumeOpt = None,
    kv_on_full: KVFullOpt = "error",
    kv_prefetch: KVPrefetchOpt = True,
    web: WebOpt = None,
) -> None:
    """Narrate a camera or stream in real time; type a question and press Enter to ask it."""
    from vrex_edge.cli.commands import kv_config, live_stream

    with user_errors():
        config = session_config(
            model=model,
            policy=policy,
            opt=opt,
            accel=accel,
            provider=provider,
            threads=threads,
            fps=fps,
            kv=kv_config(kv_budget, keep_kv, resume, kv_on_full, prefetch=kv_prefetch),
        )
        live_stream(
            config,
            camera=camera,
            source=source,
            output=output,
            fmt=fmt or format_for(output, "jsonl"),
            show=show,
            retry_s=retry,
            web=web,
            notice=lambda line: typer.echo(line, err=True),
        )


@app.command()
def bench(
    workload: Annotated[
        str, typer.Option("--workload", "-w", help="text (SmolLM2-135M on real text) or video (generated world).")
    ] = "text",
    sizes: Annotated[
        list[str], typer.Option("--sizes", help="Cached tokens before measuring: '1000,10000,40000' (or repeat).")
    ] = ["1000,10000,40000"],  # noqa: B006
    policies: Annotated[
        list[str],
        typer.Option(
            "--policies", help="Variants 'policy[:key=val,...]', space separated (or repeat); full always runs."
        ),
    ] = ["full resv topk window"],  # noqa: B006
    opt: OptOpt = [],  # noqa: B006
    accel: Annotated[
        list[str], typer.Option("--accel", help="Retrieval backend(s) for resv rows (repeatable): host, dre-emu, ...")
    ] = [],  # noqa: B006
    frames: Annotated[int, typer.Option("--frames", help="Measured frames per size.")] = 20,
    gen: Annotated[int, typer.Option("--gen", help="Tokens per reply (decode phase); 0 skips decoding.")] = 8,
    probes: Annotated[int, typer.Option("--probes", help="Replies per size, spread over the frames.")] = 2,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Bundle (default: SmolLM2-135M for text, vrex-tiny or a tiny random videollm for video).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for the Markdown table and PNG plots.")
    ] = None,
    provider: ProviderOpt = [],  # noqa: B006
) -> None:
    """Benchmark the retrieval policies side by side: latency, kept fraction and fidelity vs full."""
    from vrex_edge.bench import run
    from vrex_edge.runtime.retrieval.options import parse_pairs

    with user_errors():
        try:
            size_list = [int(x) for v in sizes for x in v.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"--sizes expects token counts like 1000,10000,40000, got {' '.join(sizes)!r}") from None
        variants = [x for v in policies for x in v.split()]
        argv = [
            "--workload",
            workload,
            "--sizes",
            ",".join(map(str, size_list)),
            "--policies",
            " ".join(variants),
            *[a for o in opt for a in ("--opt", o)],
            *[a for b in accel for a in ("--accel", b)],
            "--frames",
            str(frames),
            "--gen",
            str(gen),
            "--probes",
            str(probes),
            *(["--model", str(model)] if model else []),
            *(["--out", str(out)] if out else []),
            *[a for p in provider for a in ("--provider", p)],
        ]
        line = "vrex-edge bench " + shlex.join(argv)  # the run, reproducible (written at the top of the table)
        report = run(
            workload=workload,
            sizes=size_list,
            policies=variants,
            options=parse_pairs(opt),
            accels=accel,
            frames=frames,
            gen=gen,
            probes=probes,
            out=out,
            bundle=model,
            command=line,
            progress=lambda msg: typer.echo(msg, err=True),
            providers=provider or ["cpu"],
        )
        typer.echo(report.markdown)
        for f in report.files:
            typer.echo(f"wrote {f}", err=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # outside a command body
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
