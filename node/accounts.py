"""This PC's copies of its account's keys, next to the node key in the data dir, readable by the owner only:
`account.key` (strong: team, rename, detach, rotate; only the PC that made the account has it unless copied) and
`attach.key` (weak: attaches more PCs). HEARTH_ACCOUNT_KEY overrides the file, e.g. on a second PC."""

import os
from pathlib import Path
from typing import Optional

ACCOUNT_KEY_FILE, ATTACH_KEY_FILE = "account.key", "attach.key"
ACCOUNT_KEY_ENV = "HEARTH_ACCOUNT_KEY"


def write_private(path: Path, text: str) -> None:
    """Write `text` with mode 0600 from the start (never briefly world-readable), replacing the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def save_keys(data_dir: Path, answer: dict) -> None:
    """Keep whichever keys a coordinator answer carries (`account_key`, `attach_key`)."""
    if answer.get("account_key"):
        write_private(Path(data_dir) / ACCOUNT_KEY_FILE, answer["account_key"])
    if answer.get("attach_key"):
        write_private(Path(data_dir) / ATTACH_KEY_FILE, answer["attach_key"])


def account_key(data_dir: Path) -> Optional[str]:
    return os.environ.get(ACCOUNT_KEY_ENV, "").strip() or _read(Path(data_dir) / ACCOUNT_KEY_FILE)


def attach_key(data_dir: Path) -> Optional[str]:
    return _read(Path(data_dir) / ATTACH_KEY_FILE)


def any_key(data_dir: Path) -> Optional[str]:
    """The strongest key this PC holds: to read the account."""
    return account_key(data_dir) or attach_key(data_dir)


IDENTITY_FILES = ("node.key", "p2p.key", ACCOUNT_KEY_FILE, ATTACH_KEY_FILE, "profile.json", "outbox.sqlite")


def forget_identity(data_dir: Path) -> list[str]:
    """After `hearth account delete`: remove this PC's keys, profile and outbox (signed reports of the erased node),
    so a later `hearth join` starts a new, unlinkable identity. The names removed."""
    removed = []
    for name in IDENTITY_FILES:
        for path in (Path(data_dir) / name, *Path(data_dir).glob(f"{name}-*")):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path.name)
    return removed


NO_ACCOUNT_KEY = ("this PC holds no account key (only the PC that created the account has {file}); run this there, "
                  "or set HEARTH_ACCOUNT_KEY").format(file=ACCOUNT_KEY_FILE)  # fmt: skip
