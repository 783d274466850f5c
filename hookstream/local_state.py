"""The local profile's state: what `hookstream run` keeps across restarts, and where the commands find it.

`<data folder>/local.json` (0600, in the 0700 data folder, `HOOKSTREAM_DATA_DIR`, default `.data`)
holds the embedded servers' ports and generated passwords, the API token, the folders made outside
the data folder (as root, the servers' folders under /var/tmp) and the pid of the `hookstream run`
that uses them. `secrets/` beside it holds one file per URL, for `HOOKSTREAM_<NAME>_FILE`.

Only the standard library: `make clean` runs `python3 -m hookstream.local_state clean` with or
without the virtualenv.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "local.json"
BANNER_FILE = "banner.txt"
SECRETS_FOLDER = "secrets"
LOGS_FOLDER = "logs"
# Where root's servers live (the postgres and redis users cannot enter /root); `clean` removes only these.
OUTSIDE_PREFIX = "/var/tmp/hookstream-"
URL_VARIABLES = ("HOOKSTREAM_REDIS_URL", "HOOKSTREAM_DATABASE_URL")


@dataclass
class LocalState:
    redis_port: int
    postgres_port: int
    redis_password: str = field(repr=False)
    postgres_password: str = field(repr=False)
    api_token: str = field(repr=False)
    outside_folders: list[str] = field(default_factory=list)
    pid: int | None = None  # the `hookstream run` using them; None when it stopped

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres:{self.postgres_password}@127.0.0.1:{self.postgres_port}/postgres"


def data_folder(raw: str) -> Path:
    return Path(raw).expanduser().absolute()


def private_folder(path: Path) -> Path:
    """A 0700 folder (made if missing; an existing one is narrowed to 0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to a 0600 file, replaced whole (a reader never sees half of it), never through a link."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def load(folder: Path) -> LocalState | None:
    try:
        raw = json.loads((folder / STATE_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, PermissionError, json.JSONDecodeError):
        return None
    known = LocalState.__dataclass_fields__
    try:
        return LocalState(**{name: value for name, value in raw.items() if name in known})
    except TypeError:
        return None


def save(folder: Path, state: LocalState) -> None:
    """The state file, and one secret file per URL (what `HOOKSTREAM_REDIS_URL_FILE` and
    `HOOKSTREAM_DATABASE_URL_FILE` name)."""
    private_folder(folder)
    write_private(folder / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")
    secrets = private_folder(folder / SECRETS_FOLDER)
    write_private(secrets / "redis_url", state.redis_url + "\n")
    write_private(secrets / "database_url", state.database_url + "\n")
    write_private(secrets / "api_token", state.api_token + "\n")


def is_running(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def candidate_folders(env: Mapping[str, str], cwd: Path, prefix: Path) -> list[Path]:
    """Where a command looks for the local profile: HOOKSTREAM_DATA_DIR when set; else `.data` here,
    then `.data` beside the virtualenv the command runs from (the repository's)."""
    if env.get("HOOKSTREAM_DATA_DIR", "").strip():
        return [data_folder(env["HOOKSTREAM_DATA_DIR"].strip())]
    return list(dict.fromkeys([cwd / ".data", prefix.parent / ".data"]))


def url_is_set(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip() or env.get(f"{name}_FILE", "").strip())


def discover(env: Mapping[str, str], cwd: Path, prefix: Path) -> tuple[dict[str, str], Path | None]:
    """The URLs of a running local profile, for the variables that are not set: (variables, its folder).
    Nothing when both are set, when Sentinels are, or when no `hookstream run` is running."""
    wanted = [name for name in URL_VARIABLES if not url_is_set(env, name)]
    if not wanted or (env.get("HOOKSTREAM_REDIS_SENTINELS", "").strip() and wanted == [URL_VARIABLES[0]]):
        return {}, None
    for folder in candidate_folders(env, cwd, prefix):
        state = load(folder)
        if state is not None and is_running(state.pid):
            urls = {"HOOKSTREAM_REDIS_URL": state.redis_url, "HOOKSTREAM_DATABASE_URL": state.database_url}
            return {name: urls[name] for name in wanted}, folder
    return {}, None


def hint(env: Mapping[str, str], cwd: Path, prefix: Path) -> str:
    """What to do when a command found no server: start the local profile, or export its URLs."""
    folder = candidate_folders(env, cwd, prefix)[0]
    return ("no HOOKSTREAM_REDIS_URL / HOOKSTREAM_DATABASE_URL is set and no running `make run` was found"
            f" (looked in {', '.join(str(f) for f in candidate_folders(env, cwd, prefix))}).\n"
            "Start it with `make run` (the commands then find it), or point them at your servers:\n"
            "  export HOOKSTREAM_REDIS_URL=redis://:PASSWORD@HOST:6379/0\n"
            "  export HOOKSTREAM_DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DB\n"
            f"or, for a local profile in another folder: export HOOKSTREAM_DATA_DIR={folder}")


def clean(folder: Path) -> str:
    """Remove everything the local profile made: the data folder and the servers' folders outside it.
    Refused while its `hookstream run` is running."""
    state = load(folder)
    if state is not None and is_running(state.pid) and state.pid != os.getpid():
        raise SystemExit(f"hookstream run (pid {state.pid}) still uses {folder}: stop it (Ctrl-C) first")
    removed = []
    for outside in (state.outside_folders if state else []):
        path = Path(outside)
        # Only what run made, by its name: never a path an edited state file could point anywhere else.
        if str(path).startswith(OUTSIDE_PREFIX) and "/" not in str(path)[len(OUTSIDE_PREFIX):] and path.is_dir():
            shutil.rmtree(path)
            removed.append(str(path))
    if folder.is_dir():
        shutil.rmtree(folder)
        removed.append(str(folder))
    return "removed: " + (", ".join(removed) if removed else "nothing (no local profile)")


def main(argv: Sequence[str]) -> int:
    if len(argv) < 1 or argv[0] != "clean" or len(argv) > 2:
        print("usage: python -m hookstream.local_state clean [DATA_DIR]  (default: HOOKSTREAM_DATA_DIR or .data)",
              file=sys.stderr)
        return 2
    raw = argv[1] if len(argv) == 2 else (os.environ.get("HOOKSTREAM_DATA_DIR", "").strip() or ".data")
    print(clean(data_folder(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
