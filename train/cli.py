"""Command-line flags generated from the config dataclasses (each default is written once, in the dataclass), and
the pieces every entry point shares: the multi-process flags, clean error messages, exit codes."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from typing import Any, Callable

from cascade_jax import configs

_PREFIX = "cfg:"


def _base_type(tp):
    """``int | None`` -> int; ``tuple[int, ...]`` -> (tuple, int)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    if typing.get_origin(tp) is tuple:
        return tuple, typing.get_args(tp)[0]
    return tp, None


def _flag_names(cls, flat_sections: tuple[str, ...] | None) -> dict[str, str]:
    """``{dotted path: flag}``: a leaf's own name where it is unique in ``cls`` (and its section is in
    ``flat_sections``, when given), else its dotted path."""
    paths = configs.leaves(cls)
    counts: dict[str, int] = {}
    for p in paths:
        leaf = p.rsplit(".", 1)[-1]
        counts[leaf] = counts.get(leaf, 0) + 1
    out = {}
    for p in paths:
        leaf = p.rsplit(".", 1)[-1]
        section = p.split(".")[0] if "." in p else ""
        flat = counts[leaf] == 1 and (flat_sections is None or section == "" or section in flat_sections)
        out[p] = (leaf if flat else p).replace("_", "-")
    return out


def add_config_flags(parser: argparse.ArgumentParser, cls, *, exclude: tuple[str, ...] = (),
                     flat_sections: tuple[str, ...] | None = None, titles: dict[str, str] | None = None,
                     defaults: dict[str, Any] | None = None, default_label: str = "default") -> None:
    """One flag per leaf setting of ``cls`` (a config dataclass), grouped by section. Flags left out keep the
    dataclass default (or ``defaults``, e.g. a preset's values, shown in the help as ``default_label``);
    :func:`config_overrides` collects the ones given."""
    names = _flag_names(cls, flat_sections)
    shown_defaults = {**configs.defaults(cls), **(defaults or {})}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for path, (f, tp) in configs.leaves(cls).items():
        if path in exclude:
            continue
        section = path.split(".")[0] if "." in path else ""
        title = (titles or {}).get(section, section or "run")
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        name = names[path]
        flat = "." not in name
        if flat and f.metadata.get("flag"):
            name = f.metadata["flag"]  # A short name that says more (--lr, --model, --loss).
        base, item = _base_type(tp)
        default = shown_defaults[path]
        help_text = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": _PREFIX + path, "default": argparse.SUPPRESS}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
            help_text += f" ({default_label}: {'automatic' if default is None else 'on' if default else 'off'})"
        else:
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += " (required)" if default == "" else f" ({default_label}: {shown})"
            kw["metavar"] = path.rsplit(".", 1)[-1].upper()
            kw["type"] = item if base is tuple else base
            if base is tuple:
                kw["nargs"] = "+"
            if f.metadata.get("choices"):
                kw["choices"] = list(f.metadata["choices"])
        if "choices" in kw:
            kw.pop("metavar")
        group.add_argument(f"--{name}", help=help_text.replace("%", "%%"), **kw)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{dotted path: value}`` of the config flags given on the command line."""
    out = {}
    for dest, value in vars(args).items():
        if dest.startswith(_PREFIX):
            out[dest[len(_PREFIX):]] = tuple(value) if isinstance(value, list) else value
    return out


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """--distributed and its three explicit settings (see :func:`maybe_initialize_distributed`)."""
    g = parser.add_argument_group("multi-process runs")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run first (jax.distributed.initialize; gloo collectives on CPU). "
                        "SLURM, Open MPI, Kubernetes and Cloud TPU are detected; elsewhere give the three below")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0 (implies --distributed)")
    g.add_argument("--num-processes", type=int, default=None, help="processes in the run (implies --distributed)")
    g.add_argument("--process-id", type=int, default=None, help="this process, 0..N-1 (implies --distributed)")


def maybe_initialize_distributed(args: argparse.Namespace) -> None:
    """Join the multi-process run when --distributed or any of its three explicit settings was given."""
    manual = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in manual):
        from cascade_jax import parallel

        parallel.initialize_distributed(*manual)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what went wrong and what to do: printed as they are, without a traceback.

    Bad settings (ConfigError), bad data (DataError and its kinds), missing files and folders (FileNotFoundError:
    data files, model directories, AssetMissingError for a built-in asset not installed or damaged), models that
    cannot be used (ModelLoadError: unreadable or cut-short weights, no tokenizer files, inputs beyond the
    vocabulary or position table) and unusable prediction inputs (PredictError).
    """
    from cascade_jax import assets, data, models
    from cascade_jax.predict import PredictError

    return (configs.ConfigError, data.DataError, data.DataFileNotFoundError, data.HubUnavailableError,
            models.ModelLoadError, assets.AssetMissingError, PredictError, FileNotFoundError,
            NotADirectoryError, IsADirectoryError, PermissionError)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run an entry point's ``body``; a user error prints ``prog: error: message`` as one line on stderr (no
    traceback) and returns 2. Compiled programs are cached on disk (:func:`cascade_jax.xla.enable_compilation_cache`;
    ``CASCADE_JAX_COMPILATION_CACHE=0`` turns that off)."""
    from cascade_jax import xla

    xla.enable_compilation_cache()
    try:
        return body()
    except user_errors() as e:
        message = " ".join(str(e).split("\n")).strip() or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


def config_command(prog: str, doc: str, cls, *, titles: dict[str, str], required: dict[str, str],
                   run: Callable[[Any], tuple[Any, dict]]) -> Callable[[list[str] | None], int]:
    """A ``main(argv)`` for an entry point that builds a ``cls`` config from its flags (``required``: dotted path ->
    flag) and runs it: ``run(config) -> (result, summary)``. A pre-empted result (``status == "preempted"``) says how
    to resume; a finished one prints ``summary`` as JSON."""
    import json

    def build_parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_flags(p, cls, titles=titles)
        add_distributed_flags(p)
        return p

    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)
        name = prog.rsplit(".", 1)[-1]

        def body() -> int:
            overrides = config_overrides(args)
            for key, flag in required.items():
                if key not in overrides:
                    raise configs.ConfigError(f"{flag} is required")
            config = configs.create(cls, overrides)
            maybe_initialize_distributed(args)
            result, summary = run(config)
            if result.status == "preempted":
                print(f"{name}: stopped by SIGTERM or Ctrl-C; checkpoint saved in {config.output_dir}. Run the same "
                      f"command again to resume.", file=sys.stderr)
                return 0
            print(json.dumps(summary, indent=2))
            return 0

        return run_cli(name, body)

    main.build_parser = build_parser
    return main
