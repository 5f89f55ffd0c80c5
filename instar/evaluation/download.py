"""Download the standard benchmarks from their official sources and lay them out for the loaders.

``download_dataset(name, dest)`` fetches every file of a dataset (table :data:`SOURCES`),
extracts the archives safely and arranges the result exactly as
:func:`instar.evaluation.datasets.load_dataset` expects it, returning the folder to pass as
``data``:

=============  ==================================================================
roxford5k      ``DEST/roxford5k/jpg/*.jpg`` (flattened), ``DEST/roxford5k/gnd_roxford5k.pkl``
rparis6k       ``DEST/rparis6k/jpg/*.jpg`` (flattened), ``DEST/rparis6k/gnd_rparis6k.pkl``
oxford5k       ``DEST/oxford5k/jpg/*.jpg``, ``DEST/oxford5k/gt_files/*.txt``
paris6k        ``DEST/paris6k/jpg/*.jpg``, ``DEST/paris6k/gt_files/*.txt``
holidays       ``DEST/holidays/jpg/NNNNNN.jpg``
ukbench        ``DEST/ukbench/jpg/ukbenchNNNNN.jpg`` (the archive's ``full/`` images)
=============  ==================================================================

Archives are kept in ``DEST/downloads/`` (shared between datasets: Oxford images serve both
``oxford5k`` and ``roxford5k``) unless ``keep_archives=False``. Every download goes to a
``.part`` file that is renamed only once it is complete (size and, where known, MD5
checked), so an interrupted run never leaves a file that looks complete; files already
present are not fetched again, and an archive already extracted (marker
``DEST/NAME/.extracted-ARCHIVE``) is not extracted again.

A mirror (argument or environment variable ``INSTAR_DATA_MIRROR``) replaces everything
before a file's basename: the file is fetched from ``mirror.rstrip('/') + '/' + basename``;
a mirror without ``://`` is a local folder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..extract.images import IMAGE_EXTENSIONS
from ..core.urls import mirror_url, url_basename

__all__ = [
    "DownloadError",
    "UnsafeArchiveError",
    "Source",
    "SOURCES",
    "KNOWN_MD5",
    "MIRROR_ENV",
    "download_dataset",
    "fetch",
    "extract_archive",
]

MIRROR_ENV = "INSTAR_DATA_MIRROR"
USER_AGENT = "instar-dataset-download/0.1"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched (message names the URL and the reason)."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the extraction folder, or is a link/device."""


@dataclass(frozen=True)
class Source:
    """One file of a dataset.

    ``urls``: official address first, then known older/alternative addresses tried in turn
    on failure. ``role``: ``'images'`` (archive; its image files are flattened into
    ``NAME/jpg/``), ``'gt'`` (archive; its ``.txt`` files are flattened into
    ``NAME/gt_files/``) or ``'file'`` (saved as ``NAME/<basename>``). ``subdir``: for
    ``'images'``, take only members inside a folder of that name (UKBench's ``full/``).
    """

    urls: tuple[str, ...]
    role: str
    subdir: str | None = None

    @property
    def basename(self) -> str:
        return url_basename(self.urls[0])


_VGG_OX = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
_VGG_PA = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
_REVISITOP = "http://cmp.felk.cvut.cz/revisitop/data/datasets/"
_HOLIDAYS = "ftp://ftp.inrialpes.fr/pub/lear/douze/data/"

# The VGG site renamed its image archives to *-v1.tgz; the old names are kept as fallbacks.
_OX_IMAGES = Source((_VGG_OX + "oxbuild_images-v1.tgz", _VGG_OX + "oxbuild_images.tgz"), "images")
_PA_IMAGES = (
    Source((_VGG_PA + "paris_1-v1.tgz", _VGG_PA + "paris_1.tgz"), "images"),
    Source((_VGG_PA + "paris_2-v1.tgz", _VGG_PA + "paris_2.tgz"), "images"),
)

SOURCES: dict[str, tuple[Source, ...]] = {
    "roxford5k": (_OX_IMAGES, Source((_REVISITOP + "roxford5k/gnd_roxford5k.pkl",), "file")),
    "rparis6k": (*_PA_IMAGES, Source((_REVISITOP + "rparis6k/gnd_rparis6k.pkl",), "file")),
    "oxford5k": (_OX_IMAGES, Source((_VGG_OX + "gt_files_170407.tgz",), "gt")),
    "paris6k": (*_PA_IMAGES, Source((_VGG_PA + "paris_120310.tgz",), "gt")),
    "holidays": (
        Source((_HOLIDAYS + "jpg1.tar.gz",), "images"),
        Source((_HOLIDAYS + "jpg2.tar.gz",), "images"),
    ),
    "ukbench": (Source(("https://archive.org/download/ukbench/ukbench.zip",), "images", subdir="full"),),
}

# MD5 of files whose content is known (the official revisitop ground truth).
KNOWN_MD5: dict[str, str] = {
    "gnd_roxford5k.pkl": "f2b67579f625a587b5b0828dbf2e8eb0",
    "gnd_rparis6k.pkl": "2feae0a8257a5c6ca1b31b8eb73c8571",
}


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def fetch(url: str, target: Path, *, md5: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` to `target` atomically (via ``target.part``); verify length and `md5` if given.

    On any failure the partial file is removed and :class:`DownloadError` names the URL.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    _remove(part)
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            h = hashlib.md5()
            written = 0
            bar = _bar(total, target.name, progress)
            try:
                with open(part, "wb") as f:
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        h.update(chunk)
                        written += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                if bar is not None:
                    bar.close()
        if total is not None and written != total:
            raise DownloadError(f"{url}: download incomplete ({written} of {total} bytes)")
        if md5 is not None and h.hexdigest() != md5:
            raise DownloadError(f"{url}: checksum mismatch (MD5 {h.hexdigest()}, expected {md5}); file discarded")
        os.replace(part, target)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP error {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{url}: cannot download ({e.reason})") from None
    except DownloadError:
        raise
    except Exception as e:  # network/socket/HTTP protocol errors, disk full, ...
        raise DownloadError(f"{url}: download failed ({type(e).__name__}: {e})") from e
    finally:  # success renamed it away; any failure, KeyboardInterrupt included, leaves no partial file
        _remove(part)
    return target


def _bar(total: int | None, desc: str, progress: bool):
    if not progress:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


def _fetch_any(src: Source, target: Path, mirror: str | None, progress: bool) -> Path:
    """Fetch `src` trying its URLs in order; the error lists every address tried."""
    md5 = KNOWN_MD5.get(target.name)
    errors = []
    tried = set()
    for url in src.urls:
        actual = mirror_url(url, mirror)
        if actual in tried:
            continue
        tried.add(actual)
        try:
            return fetch(actual, target, md5=md5, progress=progress)
        except DownloadError as e:
            errors.append(str(e))
    if len(errors) == 1:
        raise DownloadError(errors[0])
    raise DownloadError("; ".join(errors))


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _safe_parts(name: str, archive: Path) -> tuple[str, ...]:
    """Split an archive member name into safe path components, or raise UnsafeArchiveError."""
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":") or PurePosixPath(n).is_absolute():
        raise UnsafeArchiveError(f"{archive}: refusing to extract member with an absolute path: {name!r}")
    parts = tuple(p for p in n.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: refusing to extract member with '..' in its path: {name!r}")
    return parts


def _copy_stream(src, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)


def extract_archive(archive: Path, dest: Path, want=None, progress: bool = False) -> list[Path]:
    """Safely extract a tar (any compression) or zip `archive` into folder `dest`.

    Every member is checked before it is written: absolute paths, ``..`` components, links
    and device files raise :class:`UnsafeArchiveError`. `want(parts)` (a tuple of path
    components) selects which regular files are written; all others are only checked.
    Returns the written files. On error, files already written stay in `dest` (callers
    extract into a scratch folder).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []

    def take(parts: tuple[str, ...], open_member) -> None:
        """Write one checked regular file, if `want` selects it; `open_member()` gives its byte stream."""
        if want is not None and not want(parts):
            return
        t = dest.joinpath(*parts)
        if not t.resolve().is_relative_to(root):
            raise UnsafeArchiveError(f"{archive}: member {'/'.join(parts)!r} would be written outside {dest}")
        with open_member() as src:
            _copy_stream(src, t)
        written.append(t)
        if bar is not None:
            bar.update(1)

    bar = tqdm(unit=" files", desc=f"extract {archive.name}", leave=False) if progress else None
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    parts = _safe_parts(info.filename, archive)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise UnsafeArchiveError(f"{archive}: refusing to extract symbolic link {info.filename!r}")
                    if info.is_dir() or not parts:
                        continue
                    take(parts, lambda: zf.open(info))
        else:
            try:
                tf = tarfile.open(archive, "r:*")
            except tarfile.TarError as e:
                raise DownloadError(f"{archive}: not a readable tar or zip archive ({e})") from None
            with tf:
                for m in tf:  # streaming: one pass over the (compressed) file
                    parts = _safe_parts(m.name, archive)
                    if m.issym() or m.islnk():
                        raise UnsafeArchiveError(f"{archive}: refusing to extract link {m.name!r} -> {m.linkname!r}")
                    if m.isdir() or not parts:
                        continue
                    if not m.isfile():
                        raise UnsafeArchiveError(f"{archive}: refusing to extract special file {m.name!r}")
                    take(parts, lambda: tf.extractfile(m))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DownloadError(f"{archive}: damaged archive ({type(e).__name__}: {e})") from None
    finally:
        if bar is not None:
            bar.close()
    return written


def _install(src: Source, archive: Path, out: Path, progress: bool) -> None:
    """Extract `archive` into a scratch folder in `out`, then move its files into the layout."""
    if src.role == "images":

        def want(parts: tuple[str, ...]) -> bool:
            if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS or parts[-1].startswith("._"):
                return False
            return src.subdir is None or src.subdir in parts[:-1]

        target_dir = out / "jpg"
    elif src.role == "gt":

        def want(parts: tuple[str, ...]) -> bool:
            return parts[-1].endswith(".txt") and not parts[-1].startswith("._")

        target_dir = out / "gt_files"
    else:  # pragma: no cover - table error
        raise ValueError(f"unknown source role {src.role!r}")
    scratch = out / f".extracting-{archive.name}"
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        files = extract_archive(archive, scratch, want=want, progress=progress)
        if not files:
            what = "image" if src.role == "images" else ".txt ground-truth"
            extra = f" inside a '{src.subdir}/' folder" if src.subdir else ""
            raise DownloadError(f"{archive}: no {what} files{extra} in this archive")
        seen: dict[str, Path] = {}
        for f in files:
            if f.name in seen:
                raise DownloadError(f"{archive}: two members named {f.name} ({seen[f.name]} and {f}); cannot flatten")
            seen[f.name] = f
        target_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            os.replace(f, target_dir / f.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def download_dataset(
    name: str,
    dest: Path | str,
    mirror: str | None = None,
    progress: bool = True,
    keep_archives: bool = True,
) -> Path:
    """Download benchmark `name` into ``dest/name`` and return that folder (pass it as ``data``).

    `mirror` (default: environment variable ``INSTAR_DATA_MIRROR``) replaces everything
    before each file's basename. Files already downloaded and archives already extracted are
    skipped, so an interrupted run can simply be repeated. With ``keep_archives=False`` each
    archive is deleted once extracted.
    """
    key = str(name).strip().lower()
    if key not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r}; downloadable: {', '.join(SOURCES)}")
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    dest = Path(dest)
    out = dest / key
    out.mkdir(parents=True, exist_ok=True)
    cache = dest / "downloads"
    for src in SOURCES[key]:
        if src.role == "file":
            target = out / src.basename
            if not target.is_file():
                _fetch_any(src, target, mirror, progress)
            continue
        marker = out / f".extracted-{src.basename}"
        if marker.is_file():
            continue
        archive = cache / src.basename
        if not archive.is_file():
            _fetch_any(src, archive, mirror, progress)
        _install(src, archive, out, progress)
        marker.write_text(f"{archive.name}\n")
        if not keep_archives:
            _remove(archive)
    return out
