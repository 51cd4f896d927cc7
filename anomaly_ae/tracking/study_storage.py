"""The sweep's Optuna study in a database (``--optuna-storage URL``).

Only the driver writes to it (Ray's OptunaSearch lives there), so a SQLite file serves one
machine and PostgreSQL a cluster; trials never connect to it. Ray's OptunaSearch creates its study
with ``load_if_exists=True``, so a name already in the storage would silently gain the new trials:
each sweep gets a name of its own, and a taken name is refused.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from anomaly_ae.tracking.server import redact

SCHEMES = ("sqlite", "postgresql", "mysql")


class StudyStorageError(ValueError):
    """An --optuna-storage that cannot be used; raised before Ray starts."""


def open_study_storage(url: str):
    """An ``optuna.storages.RDBStorage`` for ``url`` (OptunaSearch takes an instance, not a URL)."""
    import optuna
    import sqlalchemy

    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise StudyStorageError(f"--optuna-storage: expected a database URL ({', '.join(SCHEMES)}), got "
                                f"{redact(url)!r}")
    try:
        # pool_pre_ping: the driver may sit idle between trials longer than a proxy keeps a connection.
        return optuna.storages.RDBStorage(url, engine_kwargs={} if scheme == "sqlite" else {"pool_pre_ping": True})
    except ModuleNotFoundError as exc:
        raise StudyStorageError(f"--optuna-storage {redact(url)}: the database driver is not installed "
                                f"({exc.name}); pip install 'psycopg[binary]' for postgresql") from exc
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StudyStorageError(f"--optuna-storage {redact(url)}: cannot open: {first}") from exc


def sweep_study_name(experiment: str, parent_run_id: str) -> str:
    """The study's name: the sweep's experiment and its parent run, so it is the sweep's alone."""
    return f"{experiment}.{parent_run_id[:12]}"


def claim_study_name(storage, name: str) -> str:
    import optuna

    if name in optuna.study.get_all_study_names(storage):
        raise StudyStorageError(f"--optuna-storage: a study named {name!r} already exists there; a sweep never "
                                f"appends to another's study (continue that sweep with --resume)")
    return name

