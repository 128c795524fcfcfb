"""ImageNet weights on this machine: list what the torch hub cache holds, and fetch what is missing on request.

Nothing in the project downloads at run time (CI and offline machines rely on it): `build_model(weights="imagenet")`
reads torchvision's file from the local torch hub cache (`$TORCH_HOME/hub/checkpoints`, see
`cxrcore.models.imagenet_weights_file`). `python -m cxrcore weights fetch` (`make weights`) is the one explicit step
that downloads, through torchvision's own weights API, which checks each file against the SHA-256 prefix in its
name. Offline it fails within seconds, before writing anything, and says where each file must go.

`python -m cxrcore weights` lists the files: present or missing, size, path.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TIMEOUT_S = 10.0
_HASH = re.compile(r"-([a-f0-9]+)\.")  # torchvision's file names end in -<sha256 prefix>.pth (torch.hub.HASH_REGEX)


class WeightsUnavailable(RuntimeError):
    """The ImageNet weights could not be fetched (offline, refused, or a download with the wrong hash)."""


@dataclass(frozen=True)
class WeightsFile:
    """One architecture's ImageNet weights: where the file must lie and where it comes from."""

    arch: str
    path: Path
    url: str

    @property
    def present(self) -> bool:
        """True when the file is in the torch hub cache."""
        return self.path.is_file()

    @property
    def size_mb(self) -> float | None:
        """The file's size in MB, None when it is missing."""
        return self.path.stat().st_size / 1e6 if self.present else None

    def hash_matches(self) -> bool:
        """True when the file's SHA-256 starts with the prefix torchvision publishes in its name."""
        expected = _HASH.search(self.path.name)
        digest = hashlib.sha256()
        with self.path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return expected is None or digest.hexdigest().startswith(expected.group(1))


def weights_files(archs: Sequence[str] | None = None) -> list[WeightsFile]:
    """The ImageNet weights files of `archs` (default: every architecture the book uses with ImageNet weights)."""
    from cxrcore.models import IMAGENET_WEIGHTS, imagenet_weights_file  # torch: only when needed

    return [WeightsFile(arch, *imagenet_weights_file(arch)) for arch in (archs or IMAGENET_WEIGHTS)]


def weights_table(archs: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per architecture: present or MISSING, size in MB, the path it must have (and the URL)."""
    import pandas as pd

    return pd.DataFrame([{"arch": f.arch, "status": "present" if f.present else "MISSING",
                          "MB": round(f.size_mb, 1) if f.present else float("nan"), "path": str(f.path), "url": f.url}
                         for f in weights_files(archs)])


def where_to_put(files: Sequence[WeightsFile]) -> str:
    """Lines telling where each file must go and where to download it from."""
    return "\n".join(f"  {f.arch}: {f.url}\n    -> {f.path}" for f in files)


def _check_reachable(url: str, timeout: float) -> None:
    """Fail at once when the download server cannot be reached (a HEAD request honouring the proxy settings)."""
    try:
        # a new opener reads the proxy variables now (urlopen's shared one keeps those of its first call)
        urllib.request.build_opener().open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the server answered: online; the download itself reports what is wrong
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsUnavailable(f"cannot reach {url.split('/')[2]} ({reason}) within {timeout:g} s") from err


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub's urlopen has no timeout: a stalled download fails after `seconds` without data instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(file: WeightsFile, timeout: float, progress: bool) -> None:
    """torchvision's weights enum -> torch.hub.load_state_dict_from_url(check_hash=True) into the hub cache."""
    from cxrcore.models import IMAGENET_WEIGHTS

    try:
        with _socket_timeout(max(timeout, 30.0)):
            IMAGENET_WEIGHTS[file.arch].get_state_dict(progress=progress, check_hash=True, weights_only=True,
                                                       map_location="cpu")
    except (urllib.error.URLError, OSError, RuntimeError) as err:  # torch.hub: RuntimeError on a hash mismatch
        kept = f"{file.path} was written: move it away first" if file.present else "nothing was kept"
        raise WeightsUnavailable(f"{file.arch}: downloading {file.url} to {file.path} failed ({err}); {kept}. "
                                 f"Run the command again, or place the file by hand:\n{where_to_put([file])}") from err


def fetch(archs: Sequence[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT_S,
          progress: bool = True) -> list[WeightsFile]:
    """Download the missing ImageNet weights (hash-checked) and check the present ones; the explicit network step."""
    files = weights_files(archs)
    corrupt = [f for f in files if f.present and not f.hash_matches()]
    if corrupt:
        raise WeightsUnavailable(
            "these files do not match the SHA-256 prefix in their names (a download or copy that did not finish?): "
            + ", ".join(str(f.path) for f in corrupt) + ". Move them away, then run `python -m cxrcore weights "
            "fetch` again (nothing was changed).")
    missing = [f for f in files if not f.present]
    if missing:
        try:
            _check_reachable(missing[0].url, timeout)
        except WeightsUnavailable as err:
            raise WeightsUnavailable(
                f"{err}: nothing was downloaded or written. On a machine with internet access, download each "
                f"missing file and copy it to the exact path below (or set TORCH_HOME so that "
                f"$TORCH_HOME/hub/checkpoints/ holds them):\n{where_to_put(missing)}") from None
    for file in missing:
        _download(file, timeout, progress)
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`weights [list]` and `weights fetch [--arch A ...] [--timeout S]`."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="which ImageNet weights are in the torch hub cache (the default)")
    fetch_parser = actions.add_parser("fetch", help="download the missing ones (hash-checked), check the present ones")
    fetch_parser.add_argument("--arch", action="append", help="only this architecture (repeatable); default: all")
    fetch_parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                              help=f"seconds to wait for the server before giving up (default {DEFAULT_TIMEOUT_S:g})")
    fetch_parser.add_argument("--no-progress", action="store_true", help="no download progress bars")


def main(args: argparse.Namespace) -> int:
    """List the weights, or fetch them; an error is one clear message on stderr and exit status 1."""
    try:
        if getattr(args, "action", None) == "fetch":
            fetch(args.arch, timeout=args.timeout, progress=not args.no_progress)
    except (WeightsUnavailable, ValueError) as err:
        raise SystemExit(f"python -m cxrcore weights fetch: {err}") from None
    table = weights_table(getattr(args, "arch", None))
    print(table.drop(columns="url").to_string(index=False, na_rep="-"))
    missing = table[table.status == "MISSING"]
    if len(missing):
        print(f"\n{len(missing)} missing: `make weights` or `python -m cxrcore weights fetch` downloads them "
              "(online), or place them by hand:", file=sys.stderr)
        print(where_to_put(weights_files(list(missing.arch))), file=sys.stderr)
    return 0
