"""Level-1 containers: recognise the delivery form and unpack archives (spec 01 §1.1).

Forms:

- Landsat: product folder with ``*_MTL.txt``; ``.tar`` (Collection 2) or ``.tar.gz``/``.tgz``
  (Collection 1), named ``L[CTEMO]0[4-9]_L1..._...``;
- Sentinel-2 L1C: ``S2?_MSIL1C_*.SAFE`` folder, the same as ``.zip``, or one granule folder
  ``….SAFE/GRANULE/L1C_T…``.

Archives are unpacked into a fresh temporary folder that the caller removes (see
``l2ps.level1.open_level1``). Members that would land outside that folder (absolute paths,
``..``, links pointing out) make the archive unacceptable; the members FORCE excludes from
Landsat tars (§1.1) are not unpacked.
"""
from __future__ import annotations

import errno
import fnmatch
import gzip
import os
import re
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import Level1Error

# spec 01 §1.1: members never unpacked from Landsat tars (tar --exclude patterns)
TAR_EXCLUDE = ("gap_mask", "*GCP.txt", "*VER.jpg", "*VER.txt", "*BQA.TIF", "*.GTF",
               "LE07*B8.TIF", "LE07*B6_VCID_2.TIF", "LC08*B11.TIF", "LC08*B8.TIF")

LANDSAT_NAME = re.compile(r"^L[CTEMO]0[4-9]_L1[A-Z0-9]{2}_\d{6}_\d{8}_\d{8}_\d{2}_[A-Z0-9]{2}")
S2_PRODUCT_NAME = re.compile(r"^S2[ABCD]_(?:OPER_PRD_)?MSIL1C_")
S2_GRANULE_NAME = re.compile(r"^(?:L1C_T\d{2}[A-Z]{3}_|S2[ABCD]_OPER_MSI_L1C_TL_)")

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def archive_kind(path: Path) -> str | None:
    """'tar', 'zip' or None, from the file name."""
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    return None


def archive_stem(path: Path) -> str:
    """The file name without .tar/.tar.gz/.tgz/.zip."""
    name = path.name
    for suf in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def excluded(member: str) -> bool:
    """Is this tar member excluded by FORCE's tar exclusion list (any path component)?"""
    parts = PurePosixPath(member).parts
    for pat in TAR_EXCLUDE:
        for part in parts:
            if fnmatch.fnmatchcase(part, pat):
                return True
    return False


def _corrupt(path: Path, exc: BaseException) -> Level1Error:
    msg = str(exc) or exc.__class__.__name__
    return Level1Error(f"{path}: corrupt archive ({msg})")


def _is_corruption(exc: BaseException) -> bool:
    if isinstance(exc, (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error,
                        gzip.BadGzipFile, UnicodeDecodeError)):
        return True
    # lzma/bz2 errors and odd gzip states surface as OSError without an errno
    return isinstance(exc, OSError) and exc.errno is None


def extract_tar(path: Path, dest: Path) -> Path:
    """Unpack a Landsat tar/tar.gz into ``dest/<stem>`` and return that folder."""
    out = dest / archive_stem(path)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = []
            for m in tar:        # streams through the archive once
                if excluded(m.name):
                    continue
                if m.isdev():
                    continue
                members.append(m)
            if not members:
                raise Level1Error(f"{path}: archive holds no files (expected a Landsat product)")
            # 'data' filter: refuses absolute names, '..' and links leaving ``out``
            tar.extractall(out, members=members, filter="data")
    except Level1Error:
        raise
    except tarfile.FilterError as exc:
        raise Level1Error(f"{path}: unsafe archive member ({exc}); nothing outside the "
                          "product folder may be written") from None
    except FileNotFoundError as exc:
        if not path.exists():
            raise Level1Error(f"{path}: file not found") from None
        raise _corrupt(path, exc) from None
    except Exception as exc:   # noqa: BLE001 - classify below
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise
        if _is_corruption(exc):
            raise _corrupt(path, exc) from None
        raise
    return out


def extract_zip(path: Path, dest: Path) -> Path:
    """Unpack a Sentinel-2 zip into ``dest`` and return the ``.SAFE`` folder it holds."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not names:
                raise Level1Error(f"{path}: archive holds no files (expected a .SAFE product)")
            for info in zf.infolist():
                target = (root / info.filename).resolve()
                if os.path.isabs(info.filename) or not target.is_relative_to(root):
                    raise Level1Error(f"{path}: unsafe archive member {info.filename!r}; "
                                      "nothing outside the product folder may be written")
                # symlinks stored in zips (unix mode 0o120000) are not followed: refuse them
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise Level1Error(f"{path}: archive member {info.filename!r} is a "
                                      "symbolic link (not expected in a Sentinel-2 product)")
            zf.extractall(root)
    except Level1Error:
        raise
    except FileNotFoundError:
        if not path.exists():
            raise Level1Error(f"{path}: file not found") from None
        raise
    except Exception as exc:   # noqa: BLE001
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise
        if _is_corruption(exc):
            raise _corrupt(path, exc) from None
        raise
    safes = sorted(p for p in root.rglob("*.SAFE") if p.is_dir())
    # CDSE downloads may nest X.SAFE/X.SAFE: take the innermost folder with a GRANULE dir
    safes = [p for p in safes if (p / "GRANULE").is_dir()]
    if not safes:
        raise Level1Error(f"{path}: no .SAFE folder with a GRANULE directory inside "
                          "(expected a Sentinel-2 L1C product)")
    safes.sort(key=lambda p: (-len(p.parts), str(p)))
    return safes[0]


def extract(path: Path, dest: Path) -> Path:
    """Unpack an archive into ``dest``; return the product folder (Landsat) or .SAFE folder."""
    kind = archive_kind(path)
    if kind == "tar":
        return extract_tar(path, dest)
    if kind == "zip":
        return extract_zip(path, dest)
    raise Level1Error(f"{path}: not an archive (expected .tar, .tar.gz, .tgz or .zip)")
