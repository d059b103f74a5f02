"""A table's first merge COPYs its stage straight into the target when the target is empty (PostgreSQL).

A merge stages its rows, DELETEs the target rows whose keys are staged and INSERTs the staged rows
deduplicated by key (``statements``). Into an empty target the DELETE finds nothing, and when no key is
staged twice the INSERT writes exactly the staged rows: the staging table, the dedup sort and the second
write of every row are pure overhead, and a first sync is the largest load a table ever has. So a merge
planned from no state row (``base.first_merge``) takes its LOCKs before filling the staging table, and
under them (no other load can write the target until COMMIT) COPYs into the target instead when all of
this is certain; else it fills the staging table and merges, as any merge:

- the target's shape, read under the lock, takes the binary data as it is (``Direct.fits``: the casts the
  staging INSERT applies, ``insert_expr``, are then identities), and the evolution changed nothing;
- its primary key is the merge key, in the source's order (no re-key due): a key staged twice (pending
  stages loaded together, rows re-read by a lookback, a row moved between planned units' reads) then
  fails the COPY with a unique violation, which rolls back to a savepoint taken before it, and the load
  merges (the merge keeps the last of the duplicates);
- the target has no row (``empty_sql``, in the transaction, after the LOCK), nor a rule or row security
  (an INSERT applies them; a COPY ignores rules and refuses row security).

The state row is appended after the rows in the same transaction, as after a merge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from src.common.log import get_logger
from src.warehouse.catalog import Executor, PrimaryKey, Shape
from src.warehouse.errors import UNIQUE_VIOLATION, sqlstate_of
from src.warehouse.statements import LoadSpec

SAVEPOINT = "s3shift_direct"
log = get_logger("warehouse")


@dataclass(frozen=True)
class Direct:
    """How a warehouse COPYs a stage straight into the target."""

    sql: str  # the COPY, as ``render`` lists it
    fits: Callable[[Shape], bool]  # the target, as read under the lock, takes the staged data uncast
    copy: Callable[[Executor], Awaitable[int | None]]  # the rows copied (None: the tag had no count)


def empty_sql(spec: LoadSpec) -> str:
    """True when the target has no row, and no rule (an INSERT applies the target's rules, a COPY does not)
    nor row security (which a COPY refuses); $1: the target's qualified name."""
    return (
        f"SELECT NOT EXISTS (SELECT 1 FROM {spec.target_sql}) AND NOT EXISTS (SELECT 1 FROM "
        "pg_catalog.pg_rewrite WHERE ev_class = $1::regclass) AND NOT (SELECT relrowsecurity FROM "
        "pg_catalog.pg_class WHERE oid = $1::regclass)"
    )


def keyed_as_merged(spec: LoadSpec, key: PrimaryKey | None) -> bool:
    """The target's primary key (None: unknown, the evolution changed the table) is the merge key and the
    source's key, in order: it refuses a key staged twice, and no re-key is due."""
    wanted = tuple(spec.schema.primary_key)
    return key is not None and bool(wanted) and key.columns == wanted and set(spec.key) == set(wanted)


def direct_sqls(spec: LoadSpec, direct: Direct) -> list[str]:
    """What ``copy_if_empty`` sends when it COPYs."""
    return [empty_sql(spec), f"SAVEPOINT {SAVEPOINT}", direct.sql]


async def copy_if_empty(
    ex: Executor, spec: LoadSpec, shape: Shape, key: PrimaryKey | None, direct: Direct
) -> int | None:
    """COPY the stage into the target when that gives the rows the merge would (the module docstring);
    the rows copied. None: nothing changed, merge (a unique violation rolled back to the savepoint)."""
    if not (keyed_as_merged(spec, key) and direct.fits(shape)) or not await ex.fetchval(
        empty_sql(spec), spec.target_sql
    ):
        return None
    await ex.execute(f"SAVEPOINT {SAVEPOINT}")
    try:
        copied = await direct.copy(ex)
    except Exception as exc:
        if sqlstate_of(exc) != UNIQUE_VIOLATION:
            raise
        await ex.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        log.info("%s: a key is staged more than once: merging the stage instead", spec.target_name)
        return None
    log.info("%s: empty: the stage was COPYed into it, not merged", spec.target_name)
    return int(await ex.fetchval(f"SELECT COUNT(*) FROM {spec.target_sql}")) if copied is None else copied


def takes_created(spec: LoadSpec, direct: Direct) -> bool:
    """A target as ``target_create_sql`` creates it (a plain table, ``kind`` 'r') would take the stage
    directly: what ``render`` shows of a first merge."""
    created: Shape = (list(zip(spec.schema.names, spec.target_types, strict=True)), "r")
    return keyed_as_merged(spec, PrimaryKey("", tuple(spec.schema.primary_key))) and direct.fits(created)
