"""Output files and directories: checked before the work, written atomically, readable as the umask allows.

Atomic: everything is written under a temporary name beside its target and renamed onto it when complete, so a
killed run never leaves a half-written file or directory, and a reader never sees one. Temporary files are created
private (0600 / 0700, as `tempfile` makes them); the rename would keep that, so they get the permissions an ordinary
`open`/`mkdir` would have given them (0666 / 0777 less the umask), and colleagues on a shared machine can read them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from re2tal_cli.errors import BadDataError, BadInputError, OutputExistsError


def read_json(path: str | os.PathLike, error: type[BadInputError] = BadDataError) -> Any:
    """A JSON file's content; a missing, unreadable or malformed file raises `error` naming it, in one wording."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: a directory, not a JSON file") from None
    except OSError as os_error:
        raise error(f"{path}: cannot be read ({os_error.strerror or os_error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as decode_error:
        raise error(f"{path}: malformed JSON: {decode_error}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_if_created(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _as_if_created(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """JSON (UTF-8, non-ASCII kept) written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, ensure_ascii=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it replaces `out` (whatever was there), else is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for path in [tmp, *tmp.rglob("*")]:  # libraries may create private files (safetensors writes 0600)
        _as_if_created(path, directory=path.is_dir())
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_creatable(path: str | os.PathLike, directory: bool = False) -> Path:
    """Refuse, before any work, an output path that cannot be written: its nearest existing ancestor must be a
    directory in which an entry can be created (tried, then removed), and the path itself, if it exists, must be of
    the right kind. Nothing is left behind."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise BadInputError(f"{path}: exists and is {'not ' if directory else ''}a directory")
    ancestor = path.parent if not path.exists() else path if directory else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BadInputError(f"{path}: cannot be created: {ancestor} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".re2tal-check-", dir=ancestor))
    except OSError as error:
        raise BadInputError(f"{path}: cannot be created in {ancestor} ({error.strerror})") from None
    return path


def check_output_dir(out: str | os.PathLike, force: bool, marker: str | None = None) -> Path:
    """Refuse an output directory that cannot be created, or that holds results, unless `force`; call before any
    work so bad input writes nothing. Results: anything, or with `marker` only that file (a dataset directory may
    already hold videos, say, and still receive annotations)."""
    out = check_creatable(out, directory=True)
    if out.is_dir() and not force:
        taken = (out / marker).exists() if marker else any(out.iterdir())
        if taken:
            what = f"{out / marker}: exists" if marker else f"{out}: directory exists and is not empty"
            raise OutputExistsError(f"{what}; pass `force` to replace it")
    return out


def check_table_path(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a table output that is not a creatable `.csv` file (CSV only: Parquet would need
    pyarrow, which re2tal does not depend on; `pandas.read_csv` loads the CSV in one line)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        why = "Parquet needs pyarrow, not a dependency of re2tal" if path.suffix.lower() == ".parquet" else "CSV only"
        raise BadInputError(f"{path}: a table is written as .csv ({why}); name the file FILE.csv")
    return check_creatable(path)


def write_table_atomic(path: str | os.PathLike, table) -> Path:
    """A pandas DataFrame as CSV (UTF-8, no index column), written atomically."""
    path = check_table_path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
