"""cascade_jax.assets: installing from a local archive, the cache location, the CLI; and the real installed cache.

The unmarked tests never touch the network or the real cache: they build small fake distributions (a wheel, and an
sdist holding a nested tar.gz) in ``tmp_path``, register an :class:`assets.Asset` for them temporarily and point
``CASCADE_JAX_CACHE`` at a temporary directory. Tests marked ``real`` check the cache that ``./run setup`` filled.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import pathlib
import tarfile
import zipfile

import pytest

from cascade_jax import assets

WHEEL_FILES = {
    "fakepkg/data/config.json": b'{"layers": 2}\n',
    "fakepkg/data/weights.bin": bytes(range(256)) * 64,
    "fakepkg-1.0.dist-info/LICENSE": b"MIT\n",
}
INNER_FILES = {"inner/movies.txt": b"1\t2.5\tgood film\n", "inner/tweets.txt": b"2\t-1.0\tmeh\n"}
SDIST_TOP = "fakesdist-2.0/"
NESTED = SDIST_TOP + "resources/inner.tar.gz"


@pytest.fixture(autouse=True)
def _private_cache(request, tmp_path, monkeypatch):
    """Every test not marked ``real`` gets an empty private cache, so the real one is never read or written."""
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("CASCADE_JAX_CACHE", str(tmp_path / "cache"))


def _sha256(file: pathlib.Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _tar_gz_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A wheel (zip) in tmp_path and a registered asset ``fake-wheel`` keeping two of its three files."""
    archive = tmp_path / "dl" / "fakepkg-1.0-py3-none-any.whl"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in WHEEL_FILES.items():
            z.writestr(name, data)
    asset = assets.Asset(
        name="fake-wheel",
        requirement="fakepkg==1.0",
        filename=archive.name,
        sha256=_sha256(archive),
        members={"fakepkg/data/config.json": "config.json", "fakepkg/data/weights.bin": "weights.bin"},
        licence="MIT (test)",
        description="a fake wheel",
    )
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    return asset, archive


@pytest.fixture
def fake_sdist(tmp_path, monkeypatch):
    """An sdist (tar.gz) with a nested tar.gz, and a registered asset ``fake-sdist`` reading through the nesting."""
    archive = tmp_path / "dl" / "fakesdist-2.0.tar.gz"
    archive.parent.mkdir(exist_ok=True)
    archive.write_bytes(
        _tar_gz_bytes({SDIST_TOP + "LICENSE.txt": b"Apache-2.0\n", NESTED: _tar_gz_bytes(INNER_FILES)})
    )
    asset = assets.Asset(
        name="fake-sdist",
        requirement="fakesdist==2.0",
        filename=archive.name,
        sha256=_sha256(archive),
        members={
            NESTED + "!inner/movies.txt": "movies.txt",
            NESTED + "!inner/tweets.txt": "tweets.txt",
            SDIST_TOP + "LICENSE.txt": "LICENSE",
        },
        licence="Apache-2.0 (test)",
        description="a fake sdist",
        sdist=True,
    )
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    return asset, archive


def _assert_not_installed(name: str):
    d = assets.asset_dir(name)
    assert not assets.is_installed(name)
    assert not (d / ".complete").exists()
    with pytest.raises(assets.AssetMissingError):
        assets.path(name)


# ---------------------------------------------------------------------------------------------------------------
# install_from_file


def test_wheel_members_land_where_declared_with_marker(fake_wheel, tmp_path):
    asset, archive = fake_wheel
    d = assets.install_from_file(asset.name, archive)
    assert d == tmp_path / "cache" / "assets" / "fake-wheel"
    assert (d / "config.json").read_bytes() == WHEEL_FILES["fakepkg/data/config.json"]
    assert (d / "weights.bin").read_bytes() == WHEEL_FILES["fakepkg/data/weights.bin"]
    assert sorted(p.name for p in d.iterdir()) == [".complete", "config.json", "weights.bin"]  # Nothing else.
    assert (d / ".complete").read_text() == f"fakepkg==1.0 sha256={asset.sha256}\n"
    assert assets.is_installed(asset.name) and assets.path(asset.name) == d
    assert not d.with_name(d.name + ".partial").exists()


def test_sdist_members_from_nested_tar_gz(fake_sdist):
    asset, archive = fake_sdist
    d = assets.install_from_file(asset.name, archive)
    assert (d / "movies.txt").read_bytes() == INNER_FILES["inner/movies.txt"]
    assert (d / "tweets.txt").read_bytes() == INNER_FILES["inner/tweets.txt"]
    assert (d / "LICENSE").read_bytes() == b"Apache-2.0\n"
    assert (d / ".complete").read_text() == f"fakesdist==2.0 sha256={asset.sha256}\n"
    assert assets.path(asset.name) == d


def test_reinstall_replaces_previous_contents(fake_wheel):
    asset, archive = fake_wheel
    d = assets.install_from_file(asset.name, archive)
    (d / "stale.txt").write_text("left over from an older version")
    assert assets.install_from_file(asset.name, archive) == d
    assert not (d / "stale.txt").exists()
    assert assets.is_installed(asset.name)


def test_missing_member_raises_and_installs_nothing(fake_wheel, monkeypatch):
    asset, archive = fake_wheel
    broken = dataclasses.replace(asset, members={**asset.members, "fakepkg/data/absent.txt": "absent.txt"})
    monkeypatch.setitem(assets.ASSETS, asset.name, broken)
    with pytest.raises(KeyError):
        assets.install_from_file(asset.name, archive)
    _assert_not_installed(asset.name)


@pytest.mark.parametrize("fixture", ["fake_wheel", "fake_sdist"])
def test_sha256_mismatch_raises_and_installs_nothing(fixture, request, monkeypatch):
    asset, archive = request.getfixturevalue(fixture)
    monkeypatch.setitem(assets.ASSETS, asset.name, dataclasses.replace(asset, sha256="0" * 64))
    with pytest.raises(RuntimeError, match="sha256") as e:
        assets.install_from_file(asset.name, archive)
    assert asset.sha256 in str(e.value) and "0" * 64 in str(e.value)  # Both digests are reported.
    _assert_not_installed(asset.name)
    d = assets.asset_dir(asset.name)
    assert not d.exists() and not d.with_name(d.name + ".partial").exists()


def test_tampered_archive_is_refused_and_keeps_a_good_install(fake_wheel):
    asset, archive = fake_wheel
    d = assets.install_from_file(asset.name, archive)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("fakepkg/data/extra.txt", b"not what was pinned")
    with pytest.raises(RuntimeError, match="sha256"):
        assets.install_from_file(asset.name, archive)
    assert assets.path(asset.name) == d
    assert (d / "config.json").read_bytes() == WHEEL_FILES["fakepkg/data/config.json"]


@contextlib.contextmanager
def _fail_on_second_member(monkeypatch):
    """Within the block, reading the second archive member raises (as a full disk or a kill would)."""
    real_read = assets._read_member
    calls = []

    def flaky(archive, member):
        calls.append(member)
        if len(calls) == 2:
            raise OSError("simulated interruption while unpacking")
        return real_read(archive, member)

    with monkeypatch.context() as m:
        m.setattr(assets, "_read_member", flaky)
        yield calls


def test_interrupted_install_does_not_look_installed(fake_wheel, monkeypatch):
    asset, archive = fake_wheel
    with _fail_on_second_member(monkeypatch) as calls, pytest.raises(OSError, match="simulated"):
        assets.install_from_file(asset.name, archive)
    assert len(calls) == 2  # It really stopped mid-way, after one member was written.
    _assert_not_installed(asset.name)
    d = assets.asset_dir(asset.name)
    assert not d.exists()
    partial = d.with_name(d.name + ".partial")
    assert not (partial / ".complete").exists()  # Whatever was left is not marked complete.
    # A later install succeeds over the leftovers.
    assert assets.install_from_file(asset.name, archive) == d
    assert assets.is_installed(asset.name) and not partial.exists()


def test_interrupted_finish_step_does_not_look_installed(fake_sdist, monkeypatch):
    asset, archive = fake_sdist

    def crash(tmp):
        assert (tmp / "movies.txt").exists()  # All members were written before the finishing step.
        raise RuntimeError("simulated failure in the finishing step")

    monkeypatch.setitem(assets._FINISH, asset.name, crash)
    with pytest.raises(RuntimeError, match="finishing step"):
        assets.install_from_file(asset.name, archive)
    _assert_not_installed(asset.name)
    assert not assets.asset_dir(asset.name).exists()


def test_interrupted_reinstall_keeps_the_previous_install(fake_wheel, monkeypatch):
    asset, archive = fake_wheel
    d = assets.install_from_file(asset.name, archive)
    with _fail_on_second_member(monkeypatch), pytest.raises(OSError, match="simulated"):
        assets.install_from_file(asset.name, archive)
    assert assets.path(asset.name) == d
    assert (d / "weights.bin").read_bytes() == WHEEL_FILES["fakepkg/data/weights.bin"]


# ---------------------------------------------------------------------------------------------------------------
# path(), the cache location, unknown names


def test_path_of_missing_asset_names_the_install_command(fake_wheel):
    asset, _ = fake_wheel
    with pytest.raises(assets.AssetMissingError) as e:
        assets.path(asset.name)
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    assert f"{assets.INSTALL_COMMAND} {asset.name}" in msg
    assert "python -m cascade_jax.assets install fake-wheel" in msg
    assert str(assets.asset_dir(asset.name)) in msg


@pytest.mark.parametrize("name", sorted(assets.ASSETS))
def test_path_of_each_builtin_asset_missing_from_an_empty_cache(name):
    with pytest.raises(assets.AssetMissingError, match=f"install {name}"):
        assets.path(name)


def test_unknown_asset_name_is_a_key_error():
    with pytest.raises(KeyError, match="no-such-asset"):
        assets.path("no-such-asset")
    with pytest.raises(KeyError):
        assets.install_from_file("no-such-asset", pathlib.Path("/nonexistent.whl"))


def test_cache_env_var_is_honoured(fake_wheel, tmp_path, monkeypatch):
    asset, archive = fake_wheel
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("CASCADE_JAX_CACHE", str(other))
    assert assets.cache_dir() == other
    assert assets.asset_dir("vader") == other / "assets" / "vader"
    assert assets.install_from_file(asset.name, archive) == other / "assets" / asset.name
    assert (other / "assets" / asset.name / ".complete").exists()
    monkeypatch.setenv("CASCADE_JAX_CACHE", str(tmp_path / "cache"))
    assert not assets.is_installed(asset.name)  # Installed under the other root only.


def test_default_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("CASCADE_JAX_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "cascade_jax"


# ---------------------------------------------------------------------------------------------------------------
# The CLI


def _listed_states(out: str) -> dict[str, str]:
    states = {}
    for line in out.splitlines():
        name, state = line.split()[:2]
        states[name] = state
    return states


def test_list_cli_shows_every_asset_missing_in_an_empty_cache(capsys):
    assert assets.main(["list"]) == 0
    out = capsys.readouterr().out
    assert _listed_states(out) == {name: "missing" for name in assets.ASSETS}
    for a in assets.ASSETS.values():
        assert a.requirement in out and a.description in out


def test_list_cli_shows_installed_after_install(fake_wheel, capsys):
    asset, archive = fake_wheel
    assets.install_from_file(asset.name, archive)
    assert assets.main(["list"]) == 0
    states = _listed_states(capsys.readouterr().out)
    assert set(states) == set(assets.ASSETS)
    assert states[asset.name] == "installed"
    assert all(s == "missing" for n, s in states.items() if n != asset.name)


def test_cli_needs_a_command(capsys):
    with pytest.raises(SystemExit) as e:
        assets.main([])
    assert e.value.code == 2


# ---------------------------------------------------------------------------------------------------------------
# The real installed cache (filled by `./run setup` / `python -m cascade_jax.assets install`)


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(assets.ASSETS))
def test_real_asset_installed_with_pinned_sha256(name):
    d = assets.path(name)  # Raises AssetMissingError with the install command if not installed.
    requirement, _, recorded = (d / ".complete").read_text().strip().partition(" sha256=")
    assert requirement == assets.ASSETS[name].requirement
    assert recorded == assets.ASSETS[name].sha256
    for dest in assets.ASSETS[name].members.values():
        # The minilm finishing steps move the model files into hf/.
        assert (d / dest).is_file() or (d / "hf" / dest).is_file(), f"{name}: {dest} missing"


@pytest.mark.real
def test_real_minilm_l3_hf_directory():
    hf = assets.path("minilm-l3") / "hf"
    config = json.loads((hf / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    assert config["model_type"] == "bert" and config["hidden_size"] == 384
    weights = hf / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size > 10_000_000
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:
        layers = {k.split("layer.")[1].split(".")[0] for k in f.keys() if "layer." in k}
    assert layers == {"0", "1", "2"}


@pytest.mark.real
def test_real_minilm_l6_hf_directory():
    hf = assets.path("minilm-l6") / "hf"
    assert json.loads((hf / "config.json").read_text())["num_hidden_layers"] == 6
    for f in ["model.safetensors", "vocab.txt", "tokenizer.json"]:
        assert (hf / f).is_file()
