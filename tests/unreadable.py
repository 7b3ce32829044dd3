"""A folder that cannot be read, as tests running as root can have one: for root, chmod 000 changes nothing."""
import os


def deny_folder(monkeypatch, name: str) -> None:
    """os.scandir of any folder whose path ends with `name` raises EACCES, as it does for a user without the right."""
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith(name):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
