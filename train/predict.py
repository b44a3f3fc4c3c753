"""Predict with a trained cascade from the command line: texts in, one JSON line (or CSV row) per text out.

Examples (from the repository root):

    ./run predict --run runs/quick --target-speedup 1.5 reviews.txt > answers.jsonl
    echo "a gripping film" | ./run predict --run runs/quick -
    ./run predict --members runs/l3-dar/model runs/l6/model --threshold 0.9 --column text data.csv --format csv
    ./run predict --run runs/quick --save my-cascade            # the run's cascade as one folder
    ./run predict --cascade my-cascade --target-speedup 2 reviews.jsonl --column sentence --output out.jsonl

Input: a text file with one text per line, or a .csv/.tsv/.jsonl/.json file with --column NAME (--pair-column for
pair tasks); '-' reads stdin (one text per line; JSON lines with --column). Output (stdout or --output): JSONL
(default) or CSV with label, label_name, confidence, exit_stage, in input order. stderr: a progress bar for long
inputs (--no-progress turns it off) and a summary (examples/second, the share answered at each stage, the layer
speed-up achieved).

The cascade: --run DIR (a finished pipeline run: the cascade it chose, and its thresholds per target speed-up),
--members DIR DIR ... (fine-tuned model directories, fewest layers first; with --task), or --cascade DIR (a folder
written by --save or CascadePredictor.save). The operating point: --target-speedup S (the threshold the run chose
on dev for that layer speed-up) or --threshold T; else the cascade's default.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time

from cascade_jax import configs
from train import cli

OUTPUT_FIELDS = ("label", "label_name", "confidence", "exit_stage")
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", default=None,
                   help="text file (one per line), .csv/.tsv/.jsonl/.json with --column, or - for stdin")
    g = p.add_argument_group("the cascade (one of)").add_mutually_exclusive_group(required=True)
    g.add_argument("--run", metavar="DIR", help="a finished pipeline run folder (./run main --output-dir)")
    g.add_argument("--members", metavar="DIR", nargs="+", help="fine-tuned member directories, fewest layers first")
    g.add_argument("--cascade", metavar="DIR", help="a saved cascade folder (--save, CascadePredictor.save)")
    m = p.add_argument_group("with --members")
    m.add_argument("--task", default="rotten_tomatoes", help="task name (label names) (default: rotten_tomatoes)")
    m.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens (default: 128)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype of the members (bfloat16: bf16 weights and activations, float32 accumulation; "
                        "fast on CPUs with AVX512-BF16 or AMX, and on GPU/TPU) (default: float32; --cascade: the "
                        "dtype it was saved with)")
    o = p.add_argument_group("operating point (default: the cascade's own)").add_mutually_exclusive_group()
    o.add_argument("--target-speedup", type=float, metavar="S",
                   help="use the threshold chosen on dev for this layer speed-up (--run, --cascade)")
    o.add_argument("--threshold", type=float, metavar="T", help="exit when the max probability exceeds T")
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--column", metavar="NAME", help="the text column of a CSV/TSV/JSONL input")
    io_.add_argument("--pair-column", metavar="NAME", help="the second text's column (pair tasks)")
    io_.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="output format (default: jsonl)")
    io_.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    io_.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    io_.add_argument("--batch-size", type=int, default=64, help="rows per model call (default: 64)")
    io_.add_argument("--save", metavar="DIR", help="also save the cascade as one folder (loadable with --cascade)")
    return p


def read_texts(source: str, column: str | None, pair_column: str | None) -> tuple[list[str], list[str] | None]:
    """The texts (and second texts) of ``source``: a file path or ``-`` (stdin)."""
    from cascade_jax import data
    from cascade_jax.data import readers

    if pair_column and not column:
        raise data.DataError("--pair-column needs --column (the first text's column)")
    if source == "-":
        raw = sys.stdin.read()
        if column:  # JSON lines on stdin
            with_path = pathlib.Path("<stdin>")
            return _columns(with_path, readers._jsonl_records(with_path, raw), column, pair_column)
        return _lines(pathlib.Path("<stdin>"), raw.splitlines()), None
    path = pathlib.Path(source).expanduser()
    if not path.is_file():
        raise data.DataFileNotFoundError(f"input file not found: {path}")
    is_table = readers.file_format(path) in ("csv", "tsv", "json", "jsonl", "parquet")
    if is_table:
        if not column:
            table = readers.read_table(path)
            raise data.DataError(f"{path} is a table: name the text column with --column (its columns: "
                                 f"{', '.join(map(str, table.columns))})")
        table = readers.read_table(path)
        return _columns(path, table.rows, column, pair_column, table.columns)
    if column:
        raise data.DataError(f"--column {column}: {path} is not a .csv/.tsv/.json/.jsonl/.parquet file; a plain text "
                             f"file has one text per line and no columns")
    return _lines(path, [line.rstrip("\r\n") for line in readers.decoded_lines(path)]), None


def _lines(path: pathlib.Path, lines: list[str]) -> list[str]:
    from cascade_jax import data

    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines
    for i, line in enumerate(lines, start=1):
        if data.is_blank(line):
            raise data.BadRowError(f"{path}, line {i}: empty text (nothing but whitespace or invisible characters); "
                                   f"remove the line (answers are written one per input line)")
    if not lines:
        raise data.DataError(f"{path}: no texts")
    return lines


def _columns(path: pathlib.Path, rows, column: str, pair_column: str | None, header=None):
    from cascade_jax import data

    wanted = [c for c in (column, pair_column) if c]
    if header is not None:
        missing = [c for c in wanted if c not in header]
        if missing:
            raise data.MissingColumnError(f"{path}: no column {', '.join(map(repr, missing))}; its columns: "
                                          f"{', '.join(map(str, header))}")
    out: list[list[str]] = [[] for _ in wanted]
    for where, record in rows:
        for values, c in zip(out, wanted):
            value = record.get(c)
            if value is None:
                raise data.BadRowError(f"{path}, {where}: column {c!r} is missing")
            if not isinstance(value, str):
                raise data.BadRowError(f"{path}, {where}: column {c!r} is not text: {value!r}")
            if data.is_blank(value):
                raise data.BadRowError(f"{path}, {where}: column {c!r} is empty (nothing but whitespace or "
                                       f"invisible characters); fix or remove the row")
            values.append(value)
    if not out[0]:
        raise data.DataError(f"{path}: no rows")
    return out[0], (out[1] if pair_column else None)


def load_predictor(args):
    from cascade_jax.predict import CascadePredictor

    if args.run:
        return CascadePredictor.from_pipeline(args.run, target_speedup=args.target_speedup, batch_size=args.batch_size,
                                              dtype=args.dtype or "float32")
    if args.cascade:
        return CascadePredictor.load(args.cascade, batch_size=args.batch_size, dtype=args.dtype)
    if args.target_speedup is not None:
        raise configs.ConfigError("--target-speedup needs --run or --cascade (thresholds chosen on dev); with "
                                      "--members give --threshold")
    return CascadePredictor.from_members(args.members, task=args.task, max_length=args.max_length,
                                         batch_size=args.batch_size, dtype=args.dtype or "float32")


def _writer(fmt: str, stream):
    if fmt == "csv":
        w = csv.DictWriter(stream, fieldnames=OUTPUT_FIELDS, lineterminator="\n")
        w.writeheader()
        return w.writerow
    return lambda row: stream.write(json.dumps(row) + "\n")


def predict_stream(predictor, texts, pairs, *, threshold, write, progress: bool, chunk: int):
    """Predict ``texts`` chunk by chunk, writing each row; returns (seconds, exit stages, layers)."""
    import numpy as np
    from tqdm.auto import tqdm

    stages, layers = [], []
    bar = tqdm(total=len(texts), unit="ex", desc="predict", file=sys.stderr,
               disable=not progress or len(texts) <= chunk, dynamic_ncols=True)
    start = time.perf_counter()
    for lo in range(0, len(texts), chunk):
        result = predictor.run(texts[lo:lo + chunk], None if pairs is None else pairs[lo:lo + chunk],
                               threshold=threshold)
        for row in predictor.rows(result):
            write(row)
        stages.append(result.exit_stage)
        layers.append(result.layers)
        bar.update(len(result.exit_stage))
    seconds = time.perf_counter() - start
    bar.close()
    return seconds, np.concatenate(stages), np.concatenate(layers)


def summary_line(predictor, threshold: float, seconds: float, exit_stage, layers) -> str:
    """examples/second, the share answered at each stage, the layer speed-up achieved."""
    import numpy as np

    n = len(exit_stage)
    counts = np.bincount(exit_stage, minlength=len(predictor.stages))
    shares = ", ".join(f"stage {k} ({s.num_layers} layers) {100 * c / n:.1f}%"
                       for k, (s, c) in enumerate(zip(predictor.stages, counts)))
    reference = max(s.num_layers for s in predictor.stages)
    speedup = reference / float(np.mean(layers))
    return (f"predict: {n} examples in {seconds:.2f} s ({n / max(seconds, 1e-9):.1f} examples/s); answered at "
            f"{shares}; layer speed-up {speedup:.2f}x over the {reference}-layer member "
            f"(threshold {threshold:g}, {predictor.exit_rule})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.input is None and not args.save:
            raise configs.ConfigError("give an input file, or - to read stdin (or --save DIR to only save)")
        # Read the input first: a bad file fails before the models load.
        texts, pairs = read_texts(args.input, args.column, args.pair_column) if args.input else (None, None)
        predictor = load_predictor(args)
        threshold = predictor.resolve_threshold(args.threshold, None if args.run else args.target_speedup)
        if args.save:
            predictor.threshold = threshold
            saved = predictor.save(args.save)
            print(f"predict: saved the cascade in {saved} (use it with --cascade {saved})", file=sys.stderr)
        if texts is None:
            return 0
        out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
        try:
            seconds, stages, layers = predict_stream(
                predictor, texts, pairs, threshold=threshold, write=_writer(args.format, out),
                progress=not args.no_progress, chunk=max(16 * predictor.batch_size, 256))
        finally:
            if args.output:
                out.close()
            else:
                out.flush()
        print(summary_line(predictor, threshold, seconds, stages, layers), file=sys.stderr)
        return 0

    return cli.run_cli("predict", body)


if __name__ == "__main__":
    sys.exit(main())
