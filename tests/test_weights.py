"""ImageNet weights on a student's machine: list, fetch (offline: a clear failure), and bad weights files."""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cxrcore.__main__ import COMMANDS
from cxrcore.cli import dispatch
from cxrcore.models import IMAGENET_WEIGHTS, build_model, imagenet_weights_file, load_model, save_model
from cxrcore.weights import weights_table

ROOT = Path(__file__).resolve().parents[1]


def cxrcore_cli(*argv: str) -> int:
    """`python -m cxrcore ARGV` in this process."""
    return dispatch(COMMANDS, "python -m cxrcore", "", list(argv))


def offline(monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> None:
    """A fresh TORCH_HOME, and HTTPS through a closed local port: offline on any machine, online CI included."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def place_resnet18(torch_home: Path) -> tuple[Path, nn.Module]:
    """A real ResNet-18 state dict saved under torchvision's ImageNet file name in the hub cache."""
    reference = torchvision.models.resnet18(weights=None)
    path, _ = imagenet_weights_file("resnet18")
    assert path.is_relative_to(torch_home)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    return path, reference


def test_fetch_offline_fails_at_once_says_where_to_put_each_file_and_writes_nothing(tmp_path, monkeypatch):
    torch_home = tmp_path / "torch"
    offline(monkeypatch, torch_home)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        cxrcore_cli("weights", "fetch", "--timeout", "5")
    assert time.monotonic() - start < 10
    message = str(exit_.value.code)
    assert "cannot reach download.pytorch.org" in message and "nothing was downloaded or written" in message
    for arch, weights in IMAGENET_WEIGHTS.items():
        path, url = imagenet_weights_file(arch)
        assert f"{arch}: {weights.url}\n    -> {path}" in message and url == weights.url
    assert not torch_home.exists()


def test_placed_weights_are_listed_as_present_and_loaded_by_build_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, reference = place_resnet18(tmp_path)
    assert cxrcore_cli("weights") == 0
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.split()[0] == "resnet18")
    assert row.split() == ["resnet18", "present", f"{path.stat().st_size / 1e6:.1f}", str(path)]
    assert "vgg16 MISSING" in " ".join(out.split()) and "4 missing" in err
    table = weights_table().set_index("arch")
    assert table.at["resnet18", "status"] == "present" and table.at["resnet50", "status"] == "MISSING"
    model = build_model("resnet18", 2, weights="imagenet")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert str(path) in model.weights_report.source


def test_fetch_checks_the_hash_of_a_present_file_and_leaves_it_alone(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    path, _ = place_resnet18(tmp_path)  # right names and shapes, not torchvision's bytes
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        cxrcore_cli("weights", "fetch", "--arch", "resnet18")
    assert f"do not match the SHA-256 prefix in their names (a download or copy that did not finish?): {path}." \
        in str(exit_.value.code)
    assert path.read_bytes() == before and sorted(path.parent.iterdir()) == [path]


def test_fetch_unknown_arch_is_a_clear_error(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match=r"no ImageNet weights exist for 'resnet38'"):
        cxrcore_cli("weights", "fetch", "--arch", "resnet38")


def bad_file(path: Path, kind: str) -> Path:
    """A weights file that torch.load cannot read: random bytes, empty, or a checkpoint cut in half."""
    if kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        whole = save_model(build_model("resnet18", 2, seed=0), path).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    return path


@pytest.mark.parametrize(("kind", "why"), [("random", "it is corrupt or not a PyTorch file"),
                                           ("empty", "it is empty (0 bytes)"),
                                           ("truncated", "it is truncated or corrupt")])
def test_a_bad_weights_file_names_the_file_and_the_config_key(tmp_path, kind, why):
    path = bad_file(tmp_path / "upstream.pt", kind)
    with pytest.raises(ValueError) as error:
        build_model("resnet18", 2, weights=str(path))
    message = str(error.value)
    assert message.startswith(f"{path} is not a valid PyTorch checkpoint: {why}")
    assert f"the config's `weights` value (build_model(weights=...)) is {str(path)!r}" in message
    assert "weights_only" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__  # PyTorch's advice is not shown
    with pytest.raises(ValueError, match=f"not a valid PyTorch checkpoint: {re.escape(why)}.*load_model was given"):
        load_model(path)


def test_a_pickled_module_is_refused_without_suggesting_weights_only_false(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(ValueError) as error:
        build_model("resnet18", 2, weights=path)
    assert "pickled Python objects besides tensors" in str(error.value) and "weights_only" not in str(error.value)


def test_a_bad_imagenet_file_says_fetch_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url = imagenet_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    bad_file(path, "empty")
    with pytest.raises(ValueError) as error:
        build_model("resnet18", 2, weights="imagenet")
    message = str(error.value)
    assert message.startswith(f"{path} is not a valid PyTorch checkpoint: it is empty")
    assert "weights='imagenet'" in message and "python -m cxrcore weights fetch" in message and url in message
    assert path.read_bytes() == b""  # left where it is: the user moves it


def test_weights_help_does_not_import_torch():
    code = ("import sys\nfrom cxrcore.__main__ import COMMANDS\nfrom cxrcore.cli import dispatch\n"
            "try:\n    dispatch(COMMANDS, 'python -m cxrcore', '', ['weights', 'fetch', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "--timeout" in result.stdout and result.stdout.endswith("no torch\n")


def make_dry_run(*args: str, **env: str) -> str:
    """`make -n -B ARGS` in the repository (prints the commands, runs none) with only `env` as active environments."""
    cleared = ("VIRTUAL_ENV", "CONDA_PREFIX", "PY_ENV", "NO_DEPS", "LAB_ARGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    base = {key: value for key, value in os.environ.items() if key not in cleared}
    result = subprocess.run(["make", "-n", "-B", *args], capture_output=True, text=True, cwd=ROOT,
                            env={**base, **env}, check=True)
    return result.stdout


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_makefile_uses_venv_by_default_and_an_active_environment_when_one_is_active(tmp_path):
    default = ".venv/bin/pip install --quiet --progress-bar off --no-compile torch=="
    assert default in make_dry_run("venv")
    # our own .venv active, or PY_ENV=venv: still the default (CI may run inside some environment)
    assert default in make_dry_run("venv", VIRTUAL_ENV=str(ROOT / ".venv"), CONDA_PREFIX=str(tmp_path / "conda"))
    assert default in make_dry_run("venv", VIRTUAL_ENV=str(tmp_path / "env"), PY_ENV="venv")
    active = f"{tmp_path}/env/bin/python -m pip install --quiet --progress-bar off --no-compile"
    commands = make_dry_run("venv", "test", VIRTUAL_ENV=str(tmp_path / "env"))
    assert f'{active}  -e ".[book,test]"' in commands and "torch==" not in commands
    assert f"{tmp_path}/env/bin/pytest" in commands and ".venv" not in commands.replace("PY_ENV=venv for .venv", "")
    assert f"{tmp_path}/env/bin/python -c 'import sys; print" in commands  # says which python and torch
    conda = make_dry_run("venv", CONDA_PREFIX=str(tmp_path / "conda"), NO_DEPS="1")
    assert f'{tmp_path}/conda/bin/python -m pip install --quiet --progress-bar off --no-compile --no-deps -e' in conda
    with pytest.raises(subprocess.CalledProcessError):
        make_dry_run("venv", PY_ENV="conda")


@needs_make
def test_make_lab_allows_root_and_takes_lab_args():
    last = make_dry_run("lab", LAB_ARGS="--no-browser --port=8899").splitlines()[-1]
    root = " --allow-root" if os.getuid() == 0 else ""
    assert last == f".venv/bin/jupyter lab book{root} --no-browser --port=8899"
